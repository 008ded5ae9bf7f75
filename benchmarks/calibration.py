"""Is the embedded benchmark v4 calibrated? Issue 2's targets, measured (v4's families and its one right answer a
prompt: every run here is pinned to data=embedded_v4 eval=light_v4; v5's table is benchmarks/calibration_v5.py).

  python benchmarks/calibration.py --out /tmp/calib                       # teacher row + sft ladder of `tiny`
  python benchmarks/calibration.py --out /tmp/calib --steps 2000 4000 8000 16000 32000 --student tiny

1. The shipped teacher on the test split: target >= 80% exact match.
2. The smallest student trained with `sft` at doubling step counts (one thread each, `--jobs` side by side):
   converged when one doubling moves exact match by < 2 points; it must then stay >= 20 points below the teacher.

Each step count is one `kdbench` run (its own sweep cell under --out, so an interrupted ladder resumes: finished
runs are skipped). Prints a per-family table (exact match / ROUGE-L) and the verdicts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kdbench.data.embedded import FAMILIES

# Benchmark v4 and its profile: the table below reads v4's families and its `embedded_test` set.
V4 = ["data=embedded_v4", "eval=light_v4"]


def run(out: Path, overrides: list[str]) -> dict:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-c", "from kdbench.train import cli; cli()", "logger=none", "trainer.num_threads=1",
           "trainer.progress=false", "sweep_name=calibration", f"paths.output_root={out}", *overrides]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(overrides)} failed:\n{done.stderr[-3000:]}")
    folder = out / "runs" / "calibration" / ",".join(sorted(overrides))
    return json.loads((folder / "results.json").read_text())


def row(name: str, metrics: dict) -> str:
    def cell(k):
        return f"{metrics[f'embedded_test/{k}exact_match']:.1f} / {metrics[f'embedded_test/{k}rouge_l']:.1f}"

    return f"| {name} | {cell('')} | " + " | ".join(cell(f + '/') for f in FAMILIES) + " |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--student", default="tiny")
    parser.add_argument("--steps", type=int, nargs="+", default=[2000, 4000, 8000, 16000])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()

    jobs = [[*V4, "method=kd", f"student={args.student}", "trainer.max_steps=1"]]  # a 1-step run: the teacher row
    # The last weights, not the checkpoint the validation ROUGE-L selects: the question is where training
    # converges, and the selection rule (which favours `profile`, the longest answers) moved single families by
    # 20+ points between neighbouring budgets.
    jobs += [[*V4, "method=sft", f"student={args.student}", "eval.teacher=false", f"trainer.max_steps={s}",
              "trainer.select=last"] for s in args.steps]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda o: run(args.out, o), jobs))

    teacher = results[0]["teacher_metrics"]
    print("| model | all | " + " | ".join(FAMILIES) + " |\n| --- | ---: | "
          + " | ".join(["---:"] * len(FAMILIES)) + " |")
    print(row(f"teacher ({results[0]['labels']['teacher']})", teacher))
    em = []
    for steps, r in zip(args.steps, results[1:]):
        print(row(f"sft {args.student}, {steps} steps", r["metrics"]))
        em.append(r["metrics"]["embedded_test/exact_match"])
    t_em = teacher["embedded_test/exact_match"]
    print(f"\nteacher exact match {t_em:.1f} (target >= 80): {'ok' if t_em >= 80 else 'NOT MET'}")
    for (s0, e0), (s1, e1) in zip(zip(args.steps, em), zip(args.steps[1:], em[1:])):
        print(f"{s0} -> {s1} steps: {e1 - e0:+.1f} points ({'converged' if abs(e1 - e0) < 2 else 'moving'})")
    print(f"gap teacher - sft {args.student} at {args.steps[-1]} steps: {t_em - em[-1]:.1f} points (target >= 20)")


if __name__ == "__main__":
    main()
