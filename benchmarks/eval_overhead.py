"""How much does the evaluation harness cost on top of generation, and how much does batching buy? (issue 4)

  python benchmarks/eval_overhead.py --student <kdbench run folder | model folder>
  python benchmarks/eval_overhead.py --student outputs/runs/default/default --rounds 5 --threads 1

The suite is dominated by generation, so the harness must add little to it:

1. Harness overhead. kdbench's ROUGE-L evaluator (generation_sets.evaluate_generation_set: the generation engine
   with its length-sorted batches, left padding and truncation bookkeeping, decoding, then ROUGE-L) on the first
   `--prompts` DollyEval prompts, against a bare batched `model.generate` loop over the same prompts, in the same
   length-sorted batches, with the same settings (greedy, batch 8, the set's max_new_tokens and prompt length
   limit), followed by nothing. The two run interleaved round by round in one process, after a warm-up, so start-up
   and one-time imports are excluded and both see the same machine phase. Target: overhead <= 15%.
   The bare loop in the prompts' own order (what a hand-written loop does) is printed too, for reference.
2. Batched against one prompt at a time: the generation engine at batch 8 and at batch 1 on the same prompts,
   new tokens per second. Target: >= 3.5x.

Without --student the default student is built from its config with random init (it then generates up to
max_new_tokens on every prompt: a valid timing, not a realistic one). DollyEval is the copy bundled with kdbench
(kdbench/assets/evalsets: MiniLLM's file with its exact prompt strings) unless --data names another JSONL file.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from kdbench.paths import conf_dir
    from kdbench.schema import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def load_model(cfg, student: str | None):
    from kdbench.evaluate import load_evaluated

    if student:
        cfg.student.path = student
        cfg.student.source = "pretrained"
    loaded, _ = load_evaluated(cfg, Path(cfg.paths.cache_dir).expanduser())
    return loaded.model, loaded.tokenizer, loaded.name


def bare_loop(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int,
              max_prompt_length: int) -> int:
    """What one writes by hand: tokenize a batch with left padding, generate greedily, decode. Returns new tokens
    (EOS included: transformers pads after it, so `!= pad` counts it)."""
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    new = 0
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                            max_length=max_prompt_length, add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            gen = out[:, enc["input_ids"].shape[1]:]
            texts = tokenizer.batch_decode(gen, skip_special_tokens=True)
            new += int((gen != tokenizer.pad_token_id).sum())
            assert len(texts) == gen.shape[0]
    return new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", help="kdbench run folder, model folder or HF id (default: untrained default)")
    parser.add_argument("--data", type=Path, default=None, help="a DollyEval JSONL copy (default: the bundled one)")
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (kdbench's CPU default: 1 per process)")
    args = parser.parse_args()

    from kdbench.data.datamodule import prompt_of
    from kdbench.evaluation.generation_sets import (
        evaluate_generation_set,
        greedy_settings,
        load_set_rows,
        max_new_tokens,
    )
    from kdbench.generation.engine import generate

    torch.set_num_threads(args.threads)
    if args.data is not None and not args.data.is_file():
        raise SystemExit(f"--data {args.data}: no such file")
    os.environ["HF_HUB_OFFLINE"] = "1"  # a timing benchmark reads no hub: the bundled copy, or --data
    source = [f"eval.sets.dollyeval.source.path={args.data}"] if args.data else []
    cfg = compose(["+eval_set@eval.sets.dollyeval=dollyeval", *source,
                   f"eval.sets.dollyeval.limit={args.prompts}", f"eval.generation.batch_size={args.batch_size}"])
    set_cfg = cfg.eval.sets.dollyeval
    # The ROUGE-L evaluator: generation + ROUGE-L, none of the set's extra passes (LM loss, Dist-4, buckets).
    set_cfg.metrics = ["rouge_l"]
    set_cfg.length_buckets = []
    set_cfg.dist4 = set_cfg.repetition = set_cfg.lm_loss = False
    rows = load_set_rows(set_cfg, cfg.eval, cfg.data.embedded)
    prompts = [prompt_of(r) for r in rows]
    model, tok, name = load_model(cfg, args.student)
    model.eval()
    settings = greedy_settings(cfg.eval, max_new_tokens(set_cfg.max_new_tokens, cfg.eval))
    new_max, plen = settings.max_new_tokens, cfg.eval.max_prompt_length
    print(f"model {name}, {sum(p.numel() for p in model.parameters()):,} params, {len(prompts)} DollyEval prompts "
          f"({args.data.name if args.data else 'bundled DollyEval'}), greedy, batch {args.batch_size}, "
          f"max_new_tokens {new_max}, max_prompt_length {plen}, "
          f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds after a warm-up")

    def harness():
        out = evaluate_generation_set("dollyeval", rows, set_cfg, cfg.eval, model, tok, "student", show_progress=False)
        return out.new_tokens

    def one_at_a_time():
        single = greedy_settings(cfg.eval, new_max)
        single.batch_size = 1
        return generate(model, tok, prompts, single, plen, show_progress=False).new_tokens

    def batched():
        return generate(model, tok, prompts, settings, plen, show_progress=False).new_tokens

    # The bare loop gets the engine's batches for free: sorted once here, outside the timing.
    by_length = sorted(prompts, key=lambda p: len(tok(p, add_special_tokens=False)["input_ids"]))
    variants = {
        "harness (ROUGE-L evaluator)": harness,
        "bare loop, same sorted batches": lambda: bare_loop(model, tok, by_length, args.batch_size, new_max, plen),
        "bare loop, prompts' order": lambda: bare_loop(model, tok, prompts, args.batch_size, new_max, plen),
        f"engine, batch {args.batch_size}": batched,
        "engine, batch 1": one_at_a_time,
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    tokens: dict[str, int] = {}
    harness()  # warm-up: one-time imports, the allocator, rouge-score's stemmer
    for r in range(args.rounds):
        for label, fn in variants.items():
            t0 = time.perf_counter()
            tokens[label] = fn()
            times[label].append(time.perf_counter() - t0)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    print("\n| variant | new tokens | median s | tokens/s |\n| --- | ---: | ---: | ---: |")
    for k in variants:
        print(f"| {k} | {tokens[k]} | {med[k]:.2f} | {tokens[k] / med[k]:.0f} |")
    per_round = [h / b for h, b in zip(times["harness (ROUGE-L evaluator)"], times["bare loop, same sorted batches"])]
    overhead = statistics.median(per_round) - 1
    b_key, s_key = f"engine, batch {args.batch_size}", "engine, batch 1"
    speedup = statistics.median((tokens[b_key] / b) / (tokens[s_key] / s)
                                for b, s in zip(times[b_key], times[s_key]))
    print(f"\nharness overhead (median over rounds of harness / bare loop - 1): {overhead * 100:+.1f}% "
          f"(per round: {', '.join(f'{(x - 1) * 100:+.1f}%' for x in per_round)}); target <= 15%: "
          f"{'met' if overhead <= 0.15 else 'NOT met'}")
    print(f"batch {args.batch_size} / batch 1 tokens per second: {speedup:.2f}x; target >= 3.5x: "
          f"{'met' if speedup >= 3.5 else 'NOT met'}")
    if tokens[b_key] != tokens[s_key]:
        print(f"note: batch {args.batch_size} and batch 1 generated {tokens[b_key]} and {tokens[s_key]} new tokens "
              "(padding changes greedy ties in float32 only at the last bits)")


if __name__ == "__main__":
    main()
