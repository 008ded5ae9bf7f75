"""Should the embedded default train in bf16 autocast on CPU? (issue 3: make it the CPU default only if it wins
without changing the loss beyond bf16 noise.)

  python benchmarks/precision_default.py                    # kd, the default student, 300 steps per fit, 2 rounds
  python benchmarks/precision_default.py --student medium --steps 200

benchmarks/offline_step.py answers this for a 256-wide student and a 512-wide teacher (bf16 autocast ran the kd
step at 0.42x fp32). The default pair is far smaller (the `tiny` student is 32 wide), where matmuls are too small
for bf16 to pay: this times the real default, `kdbench`'s kd run on the shipped teacher and the embedded
benchmark, in fp32 (`trainer.precision=32-true`) and bf16 autocast (`bf16-mixed`), alternating fit by fit in one
process from the same initial weights and data order. Prints seconds per step, the ratio and the final losses.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="tiny")
    parser.add_argument("--method", default="kd")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from hydra import compose, initialize_config_dir

    from kdbench.data.datamodule import InstructionDataModule
    from kdbench.data.sources import load_rows
    from kdbench.methods.registry import TrainingContext, method_of
    from kdbench.paths import conf_dir
    from kdbench.schema import register_configs
    from kdbench.stages.models import load_student, load_teacher
    from kdbench.training.fit import fit, make_trainer

    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"student={args.student}", f"method={args.method}",
                                                      "trainer.progress=false", "logger=none"])
    cache = Path(cfg.paths.cache_dir).expanduser()
    teacher = load_teacher(cfg, cache, show_progress=False)
    student = load_student(cfg, cache, teacher.tokenizer)
    init = copy.deepcopy(student.model.state_dict())
    train = load_rows(cfg.data.train, cfg.data.embedded)
    val = load_rows(cfg.data.validation, cfg.data.embedded)
    print(f"{args.method}: teacher {teacher.name} ({teacher.parameters:,}), student {student.name} "
          f"({student.parameters:,}), {args.steps} steps x batch {cfg.trainer.batch_size}, {args.threads} thread(s), "
          f"torch {torch.__version__}, {args.rounds} rounds")

    results: dict[str, list[tuple[float, float]]] = {"32-true": [], "bf16-mixed": []}
    for r in range(args.rounds):
        for precision in results:
            student.model.load_state_dict(init)
            tc = copy.deepcopy(cfg.trainer)
            tc.precision = precision
            tc.val_every = args.steps  # one validation at the end, as cheap as possible
            tc.val_batches = 1
            dm = InstructionDataModule(train, val, student.tokenizer, tc.batch_size, cfg.seed,
                                       cfg.data.max_prompt_length, cfg.data.max_response_length)
            context = TrainingContext(steps=args.steps, batch_size=tc.batch_size, micro_batch_size=None, optim=tc.optim,
                                      vocab_size=len(student.tokenizer), seed=cfg.seed,
                                      max_prompt_length=cfg.data.max_prompt_length, cache_dir=None,
                                      show_progress=False)
            module = method_of(cfg.method).build(student, teacher, context)
            torch.manual_seed(cfg.seed)
            trainer = make_trainer(tc, args.steps, progress=False)
            t0 = time.perf_counter()
            fit(module, dm, trainer)
            seconds = time.perf_counter() - t0
            loss = float(trainer.callback_metrics["train/loss"])
            results[precision].append((seconds / args.steps, loss))
            print(f"round {r + 1} {precision}: {1000 * seconds / args.steps:.1f} ms/step, final train loss {loss:.4f}",
                  flush=True)
    fp32 = statistics.median(s for s, _ in results["32-true"])
    bf16 = statistics.median(s for s, _ in results["bf16-mixed"])
    l32 = results["32-true"][-1][1]
    l16 = results["bf16-mixed"][-1][1]
    print(f"\nbf16-mixed / fp32 step time: {bf16 / fp32:.2f}x ({1000 * bf16:.1f} vs {1000 * fp32:.1f} ms/step); "
          f"final loss {l16:.4f} vs {l32:.4f} ({(l16 - l32) / l32:+.2%})")
    print("verdict: " + ("bf16 autocast wins here" if bf16 < 0.9 * fp32 else
                         "bf16 autocast does not win on the default pair: fp32 stays the CPU default"))


if __name__ == "__main__":
    main()
