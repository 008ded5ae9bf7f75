"""Run the configured evaluation sets over one model: generate (through the engine, cached for a fingerprinted
model such as the teacher), score, and break each metric down by category."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field

from omegaconf import OmegaConf

from kdbench.data.datamodule import prompt_of
from kdbench.data.sources import load_rows
from kdbench.evaluation.metrics import PER_ITEM
from kdbench.generation.cache import cached_generate
from kdbench.generation.engine import generate

log = logging.getLogger(__name__)


@dataclass
class EvalOutput:
    metrics: dict[str, float] = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)
    generation_seconds: float = 0.0
    new_tokens: int = 0


def _settings(eval_cfg, max_new_tokens: int) -> dict:
    gen = OmegaConf.to_container(eval_cfg.generation, resolve=True) if OmegaConf.is_config(eval_cfg.generation) \
        else asdict(eval_cfg.generation)
    gen["max_new_tokens"] = max_new_tokens
    gen["max_prompt_length"] = eval_cfg.max_prompt_length
    return gen


def evaluate_model(model, tokenizer, eval_cfg, embedded_cfg, role: str, cache_dir: str | None = None,
                   fingerprint: str | None = None, show_progress: bool = True) -> EvalOutput:
    """Metrics keyed `<set>/<metric>` and `<set>/<category>/<metric>`, plus sample generations.

    With a fingerprint and a cache_dir (the teacher), generations come from the content-keyed cache.
    """
    out = EvalOutput()
    for set_cfg in eval_cfg.sets:
        rows = load_rows(set_cfg.source, embedded_cfg)
        prompts = [prompt_of(r) for r in rows]
        settings = _settings(eval_cfg, set_cfg.max_new_tokens)

        def run():
            return generate(model, tokenizer, prompts, eval_cfg.generation, eval_cfg.max_prompt_length,
                            max_new_tokens=set_cfg.max_new_tokens, description=f"{role} on {set_cfg.name}",
                            show_progress=show_progress)

        if fingerprint and cache_dir:
            result, hit = cached_generate(cache_dir, fingerprint, prompts, settings, run)
            if hit:
                log.info("%s generations on %s: reused from the cache", role, set_cfg.name)
        else:
            result = run()
        out.generation_seconds += result.seconds
        out.new_tokens += result.new_tokens
        refs = [r["references"] for r in rows]
        name = set_cfg.name
        out.metrics[f"{name}/n"] = len(rows)
        out.metrics[f"{name}/n_truncated_prompts"] = result.n_truncated
        for metric in set_cfg.metrics:
            scores = PER_ITEM[metric](result.texts, refs)
            out.metrics[f"{name}/{metric}"] = sum(scores) / len(scores)
            by_cat = defaultdict(list)
            for r, s in zip(rows, scores):
                if r.get("category"):
                    by_cat[r["category"]].append(s)
            for cat, vals in sorted(by_cat.items()):
                out.metrics[f"{name}/{cat}/{metric}"] = sum(vals) / len(vals)
        n_show = min(eval_cfg.num_samples, len(rows))
        step = max(1, len(rows) // max(n_show, 1))
        for i in list(range(0, len(rows), step))[:n_show]:
            out.samples.append({"set": name, "category": rows[i].get("category", ""), "prompt": prompts[i],
                                "reference": rows[i]["output"], "generation": result.texts[i], "model": role})
    return out
