"""The time budgets of the foundation, measured the way a new user meets them.

  python benchmarks/budget.py            # both commands, fresh caches and output folders
  python benchmarks/budget.py --only single

1. `kdbench --config-name first_table` (the README's first command without the install): the teacher comes from
   the package (its tokenizer, weights and test-split generations are computed or loaded as a first run would),
   sft and kd on the smallest student run as two parallel cells, then the table. Target: <= 15 min.
2. `kdbench` with no arguments, the teacher available: one kd run on the smallest student, evaluation included.
   Target: <= 6 min.

Each runs in a subprocess with an empty KDBENCH_CACHE and output folder, so nothing is reused from earlier runs
(except what ships in the package). Prints wall time and the ratio to its target.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"first_table": 15 * 60, "single": 6 * 60}
COMMANDS = {"first_table": ["--config-name", "first_table"], "single": []}


def timed(name: str, work: Path) -> float:
    env = {**os.environ, "KDBENCH_CACHE": str(work / "cache"), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-c", "from kdbench.train import cli; cli()", *COMMANDS[name]]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
    print(out.stdout[-2500:])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=sorted(TARGETS))
    args = parser.parse_args()
    rows = []
    for name in ([args.only] if args.only else ["first_table", "single"]):
        with tempfile.TemporaryDirectory(prefix=f"kdbench-budget-{name}-") as tmp:
            seconds = timed(name, Path(tmp))
        rows.append((name, seconds, seconds / TARGETS[name]))
    print("| command | wall time | target | ratio |\n| --- | ---: | ---: | ---: |")
    for name, seconds, ratio in rows:
        print(f"| {' '.join(['kdbench', *COMMANDS[name]])} | {seconds / 60:.1f} min | {TARGETS[name] / 60:.0f} min "
              f"| {ratio:.2f} |")


if __name__ == "__main__":
    main()
