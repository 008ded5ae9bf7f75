"""A Hydra callback: when a multirun ends, print the comparison table of its cells (what kdbench-report prints)."""

from __future__ import annotations

from pathlib import Path

from hydra.experimental.callback import Callback


class ReportOnMultirunEnd(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        from kdbench.report.cli import main as report

        from kdbench.train import FAILED_FILE

        sweep_dir = Path(config.hydra.sweep.dir)
        print(f"\n== {sweep_dir} ==")
        report([str(sweep_dir)])
        failed = sorted(sweep_dir.rglob(FAILED_FILE))
        if failed:
            for f in failed:
                last = f.read_text().strip().splitlines()[-1:]
                print(f"FAILED {f.parent.name}: {last[0] if last else ''} (traceback: {f})")
            raise SystemExit(f"{len(failed)} cell(s) of {sweep_dir} failed; re-run the command to redo them")
