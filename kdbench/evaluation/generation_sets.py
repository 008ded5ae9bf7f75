"""Generation sets: rows {instruction, input, output, references, category} -> generated responses (through the
generation engine; cached by content for a fingerprinted model such as the teacher) -> text metrics.

Per set and model: the configured text metrics (ROUGE-L, strict and MiniLLM's normalized exact match; overall and
per category), ROUGE-L per reference-length bucket, Dist-4, repetition rate and the LM loss of the gold responses;
MiniLLM's sampling profile (one sampled generation per seed, mean and std over the seeds). The metric functions
are kdbench.evaluation.metrics and long_text; this module only feeds them.
"""

from __future__ import annotations

import logging
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field, is_dataclass

from omegaconf import OmegaConf

from kdbench.data.datamodule import prompt_of
from kdbench.data.sources import load_rows
from kdbench.evaluation.long_text import distinct_n, lm_loss, repetition_rate, rouge_l_by_length
from kdbench.evaluation.metrics import PER_ITEM
from kdbench.generation.cache import cached_generate
from kdbench.generation.engine import GenerationResult, generate
from kdbench.generation.settings import GenerationSettings, generation_settings
from kdbench.schema import parse_length_buckets

log = logging.getLogger(__name__)


@dataclass
class SetOutput:
    """One model on one generation set."""
    metrics: dict[str, float] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)
    # {"0-5": {"rouge_l": float | None, "n": int}, ...} when the set has length buckets
    length_buckets: dict | None = None
    new_tokens: int = 0
    seconds: float = 0.0
    # `<set>/<metric>` -> its per-item scores, in row order: a one-seed run's report interval is a bootstrap over
    # them (kdbench.report.intervals).
    items: dict[str, list[float]] = field(default_factory=dict)


def _plain(node) -> dict:
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return asdict(node) if is_dataclass(node) else dict(node)


def effective_limit(*limits) -> int | None:
    """The smallest of the limits that are set (None: no limit)."""
    set_ = [int(x) for x in limits if x is not None]
    return min(set_) if set_ else None


def source_with_limit(source, limit: int | None):
    """A copy of a SourceConfig whose `limit` is also capped by `limit` (the source's own limit still holds)."""
    from kdbench.schema import SourceConfig

    src = SourceConfig(**_plain(source))
    src.limit = effective_limit(src.limit, limit)
    return src


def load_set_rows(set_cfg, eval_cfg, embedded_cfg) -> list[dict]:
    """A generation set's rows, at most min(set.limit, eval.limit) of them."""
    limit = effective_limit(set_cfg.limit, eval_cfg.limit)
    return load_rows(source_with_limit(set_cfg.source, limit), embedded_cfg)


def max_new_tokens(own: int, eval_cfg) -> int:
    return effective_limit(own, eval_cfg.max_new_tokens)


def greedy_settings(eval_cfg, new_tokens: int) -> GenerationSettings:
    """A set's generation pass: eval.generation (greedy unless it says do_sample) with the set's token cap."""
    g = eval_cfg.generation
    return generation_settings(g.decoding, do_sample=g.do_sample, batch_size=g.batch_size, seed=g.seed,
                               max_new_tokens=new_tokens)


def seeded_sampling_settings(eval_cfg, seed: int) -> GenerationSettings:
    """One seed of the sampling profile: pure sampling with eval.sampling.decoding."""
    sp = eval_cfg.sampling
    return generation_settings(sp.decoding, do_sample=True, batch_size=eval_cfg.generation.batch_size,
                               seed=int(seed), max_new_tokens=max_new_tokens(sp.decoding.max_new_tokens, eval_cfg))


def run_generation(model, tokenizer, prompts: list[str], settings: GenerationSettings, max_prompt_length: int,
                   description: str, cache_dir: str | None, fingerprint: str | None,
                   show_progress: bool) -> GenerationResult:
    """The engine's generations; with a fingerprint and a cache_dir (the teacher) through the content-keyed cache,
    whose key holds every generation setting, the prompt length limit and the prompts."""
    def run():
        return generate(model, tokenizer, prompts, settings, max_prompt_length,
                        max_new_tokens=settings.max_new_tokens, description=description, show_progress=show_progress)

    if fingerprint and cache_dir:
        key_settings = {**asdict(settings), "max_prompt_length": max_prompt_length}
        result, hit = cached_generate(cache_dir, fingerprint, prompts, key_settings, run)
        if hit:
            log.info("%s: reused from the generation cache", description)
        return result
    return run()


def text_metrics(name: str, rows: list[dict], texts: list[str], metrics, by_category: bool,
                 items: dict | None = None) -> dict[str, float]:
    """`<set>/<metric>` (mean over rows) and `<set>/<category>/<metric>`; `items`, when given, receives each
    `<set>/<metric>`'s per-item scores."""
    refs = [r["references"] for r in rows]
    out = {}
    for metric in metrics:
        scores = PER_ITEM[metric](texts, refs)
        out[f"{name}/{metric}"] = sum(scores) / len(scores)
        if items is not None:
            items[f"{name}/{metric}"] = [round(float(s), 4) for s in scores]
        if by_category:
            by_cat = defaultdict(list)
            for r, s in zip(rows, scores):
                if r.get("category"):
                    by_cat[r["category"]].append(s)
            for cat, vals in sorted(by_cat.items()):
                out[f"{name}/{cat}/{metric}"] = sum(vals) / len(vals)
    return out


def evaluate_generation_set(name: str, rows: list[dict], set_cfg, eval_cfg, model, tokenizer, role: str, *,
                            cache_dir: str | None = None, fingerprint: str | None = None,
                            show_progress: bool = True) -> SetOutput:
    """Greedy generation and every text metric the set asks for, for one model."""
    prompts = [prompt_of(r) for r in rows]
    settings = greedy_settings(eval_cfg, max_new_tokens(set_cfg.max_new_tokens, eval_cfg))
    result = run_generation(model, tokenizer, prompts, settings, eval_cfg.max_prompt_length, f"{role} on {name}",
                            cache_dir, fingerprint, show_progress)
    out = SetOutput(texts=result.texts, new_tokens=result.new_tokens, seconds=result.seconds)
    m = out.metrics
    m[f"{name}/n"] = len(rows)
    m[f"{name}/n_truncated_prompts"] = result.n_truncated
    m.update(text_metrics(name, rows, result.texts, set_cfg.metrics, set_cfg.by_category, out.items))
    refs = [r["references"] for r in rows]
    if set_cfg.length_buckets:
        buckets = parse_length_buckets(set_cfg.length_buckets, f"eval.sets.{name}.length_buckets")
        out.length_buckets = rouge_l_by_length(result.texts, refs, buckets)
        for bucket, v in out.length_buckets.items():
            m[f"{name}/n@{bucket}"] = v["n"]
            if v["rouge_l"] is not None:
                m[f"{name}/rouge_l@{bucket}"] = v["rouge_l"]
    if set_cfg.dist4:
        m[f"{name}/dist4"] = distinct_n(result.texts, 4)
    if set_cfg.repetition:
        m[f"{name}/repetition"] = repetition_rate(result.texts, 4)
    if set_cfg.lm_loss:
        # MiniLLM scores the gold response without EOS (its pad id is EOS and is masked out).
        value = lm_loss(model, tokenizer, prompts, [r["output"] for r in rows], batch_size=eval_cfg.score_batch_size,
                        max_prompt_length=eval_cfg.max_prompt_length,
                        max_response_length=eval_cfg.max_response_length, include_eos=False)
        if value == value:  # NaN when no row has a response token
            m[f"{name}/lm_loss"] = value
    return out


def evaluate_sampled(name: str, rows: list[dict], set_cfg, eval_cfg, model, tokenizer, role: str, *,
                     cache_dir: str | None = None, fingerprint: str | None = None,
                     show_progress: bool = True) -> tuple[dict[str, float], int]:
    """MiniLLM's sampling profile on one set: one sampled generation per seed; `<set>/sampled/<metric>_mean` and
    `_std` (sample standard deviation over seeds; 0 with one seed). Returns (metrics, new tokens)."""
    prompts = [prompt_of(r) for r in rows]
    per_seed: dict[str, list[float]] = defaultdict(list)
    new_tokens = 0
    for seed in eval_cfg.sampling.seeds:
        settings = seeded_sampling_settings(eval_cfg, seed)
        result = run_generation(model, tokenizer, prompts, settings, eval_cfg.max_prompt_length,
                                f"{role} on {name}, sampled (seed {seed})", cache_dir, fingerprint, show_progress)
        new_tokens += result.new_tokens
        for key, value in text_metrics(name, rows, result.texts, set_cfg.metrics, by_category=False).items():
            per_seed[key.split("/", 1)[1]].append(value)
        if set_cfg.dist4:
            per_seed["dist4"].append(distinct_n(result.texts, 4))
        if set_cfg.repetition:
            per_seed["repetition"].append(repetition_rate(result.texts, 4))
    out = {f"{name}/sampled/n_seeds": len(eval_cfg.sampling.seeds), f"{name}/sampled/n": len(rows)}
    for metric, values in per_seed.items():
        out[f"{name}/sampled/{metric}_mean"] = statistics.fmean(values)
        out[f"{name}/sampled/{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out, new_tokens


def samples_of(name: str, rows: list[dict], texts: list[str], role: str, n: int) -> list[dict]:
    """Up to n (prompt, reference, generation) records spread over the set, for the W&B table and results.json."""
    n_show = min(n, len(rows))
    if n_show <= 0:
        return []
    step = max(1, len(rows) // n_show)
    return [{"set": name, "category": rows[i].get("category", ""), "prompt": prompt_of(rows[i]),
             "reference": rows[i]["output"], "generation": texts[i], "model": role}
            for i in list(range(0, len(rows), step))[:n_show]]
