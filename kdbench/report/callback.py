"""A Hydra callback: when a multirun ends, print the comparison table of its cells (what kdbench-report prints)."""

from __future__ import annotations

from pathlib import Path

from hydra.experimental.callback import Callback


class ReportOnMultirunEnd(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        from kdbench.report.cli import main as report
        from kdbench.tracking.results import FAILED_FILE, INTERRUPTED_FILE

        sweep_dir = Path(config.hydra.sweep.dir)
        print(f"\n== {sweep_dir} ==")
        report([str(sweep_dir)])
        failed = sorted(sweep_dir.rglob(FAILED_FILE))
        interrupted = sorted(sweep_dir.rglob(INTERRUPTED_FILE))
        for f in interrupted:
            print(f"INTERRUPTED {f.parent.name}: {_message(f)}")
        fixable = 0
        for f in failed:
            last = f.read_text().strip().splitlines()[-1:]
            line = last[0] if last else ""
            fixable += "a rerun fails the same way" in line
            print(f"FAILED {f.parent.name}: {line} (traceback: {f})")
        if failed or interrupted:
            parts = []
            if fixable:
                parts.append(f"{fixable} need a fix to their config or data first (a rerun fails the same way)")
            if len(failed) - fixable:
                parts.append(f"{len(failed) - fixable} may pass when re-run")
            if interrupted:
                parts.append(f"{len(interrupted)} were interrupted and continue when re-run")
            raise SystemExit(f"{len(failed) + len(interrupted)} cell(s) of {sweep_dir} did not finish: "
                             + "; ".join(parts) + ". Re-running the command skips the finished cells.")


def _message(path: Path) -> str:
    import json

    try:
        return json.loads(path.read_text())["message"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"see {path}"
