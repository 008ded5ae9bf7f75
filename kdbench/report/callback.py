"""A Hydra callback: when a multirun ends, print the comparison table of its cells (what kdbench-report prints)."""

from __future__ import annotations

from pathlib import Path

from hydra.experimental.callback import Callback


class ReportOnMultirunEnd(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        from kdbench.report.cli import main as report

        sweep_dir = Path(config.hydra.sweep.dir)
        print(f"\n== {sweep_dir} ==")
        report([str(sweep_dir)])
