"""Eval sets scored against the true answer distribution p*(y | x) of each row (eval.sets.<name>.truth, embedded
benchmark v5): the suite (kdbench.evaluation.suite) calls `load_truth_rows` once per set and `evaluate_truth` once
per set and model, student and teacher alike.

Rows: the first truth.num_prompts rows of each family (`category`), in the set's order, so the same config always
scores the same prompts; p* from kdbench.data.embedded.answer_distribution (the prompt alone, never the row's
sampled output). Metrics (kdbench.evaluation.truth; the math, checked by hand, in truth_math):

    generation set       `<set>/truth/forward_kl` (+ `_se`, its Monte Carlo standard error over these prompts),
                         `/precision` (truth.k T=1 samples a prompt), `/greedy_precision`, `/recall`; the same per
                         family as `<set>/<family>/truth/...`; for the long-form family (a p* with
                         `first_invalid_word`) `<set>/<family>/truth/valid` (share of whole sampled texts accepted)
                         and `valid@<L>` (share whose first L words are valid)
    classification set   `<set>/truth/calibration_mae`: mean |q(label) - p*(label)| over items and label words,
                         beside the set's ECE (which is against the row's one sampled label)

A group's KL is the mean of its prompts' KLs and its standard error sqrt(sum se_i^2) / n (truth_math's definition);
precision pools every answer of its prompts (each prompt has as many); recall is the mean of per-prompt ratios.
Details (per role): per family means and counts, the validity curve with how many texts reach each length, the
answers cut by the length limits; never the sampled texts.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass

from kdbench.data.distributions import AnswerDistribution
from kdbench.data.embedded import answer_distribution
from kdbench.data.sources import DataError, load_rows
from kdbench.evaluation.generation_sets import effective_limit
from kdbench.evaluation.truth import (
    ModelLogQ,
    label_calibration_vs_truth,
    longform_validity,
    precision,
    recall,
    sample_responses,
    true_forward_kl,
)
from kdbench.schema.checks import ConfigError

log = logging.getLogger(__name__)

# The first embedded benchmark version whose rows have a p* (kdbench.data.embedded: v4's answers are one string).
FIRST_TRUTH_VERSION = 5


@dataclass
class TruthRows:
    """The prompts a set is scored on against p*, each with its distribution and family, in the set's order."""
    prompts: list[str]
    dists: list[AnswerDistribution]
    families: list[str]
    label_words: list[str] | None = None  # a classification set's labels, in its class order


def first_per_family(families: list[str], num_prompts: int | None) -> list[int]:
    """Indices of the first num_prompts rows of each family (None: all), in their original order."""
    seen: dict[str, int] = defaultdict(int)
    keep = []
    for i, family in enumerate(families):
        if num_prompts is None or seen[family] < num_prompts:
            seen[family] += 1
            keep.append(i)
    return keep


def load_truth_rows(name: str, set_cfg, eval_cfg, embedded_cfg, rows: list[dict] | None = None) -> TruthRows:
    """The rows set `name` is scored on against p*. A generation set passes its loaded `rows` (the rows its greedy
    pass scores); a classification set's rows are read here, filtered and limited as its items are, so each row
    pairs with its item's prompt (the set's own template, classification_sets.load_items)."""
    from kdbench.data.datamodule import prompt_of
    from kdbench.evaluation.classification_sets import load_items

    key = f"eval.sets.{name}.truth"
    if int(embedded_cfg.version) < FIRST_TRUTH_VERSION:
        raise ConfigError(f"{key}.enabled=true: data.embedded.version={embedded_cfg.version} has no true answer "
                          f"distribution; p* exists from benchmark version {FIRST_TRUTH_VERSION} on (run with "
                          f"data.embedded.version={FIRST_TRUTH_VERSION}), or switch truth off")
    label_words = None
    if set_cfg.kind == "classification":
        items = load_items(name, set_cfg, eval_cfg, embedded_cfg)
        category = set_cfg.classification.category
        rows = [r for r in load_rows(set_cfg.source, embedded_cfg) if r.get("category") == category]
        rows, prompts, label_words = rows[:len(items.prompts)], items.prompts, items.label_words
    else:
        if rows is None:
            raise ValueError("a generation set's truth rows are its loaded rows: pass them")
        prompts = [prompt_of(r) for r in rows]
    keep = first_per_family([r.get("category") for r in rows], set_cfg.truth.num_prompts)
    dists = []
    for i in keep:
        try:
            dists.append(answer_distribution(rows[i]))
        except ValueError as e:
            raise DataError(f"eval.sets.{name}: row {i} ({set_cfg.source.split} split) has no true answer "
                            f"distribution ({key}.enabled is true): {e}") from None
    if not keep:
        raise DataError(f"eval.sets.{name}: no row to score against p* ({key}.enabled is true)")
    return TruthRows([prompts[i] for i in keep], dists, [rows[i]["category"] for i in keep], label_words)


# Bump when what evaluate_truth computes changes: cached teacher results made by older code are then not reused.
TRUTH_CACHE_VERSION = 1


def cached_evaluate_truth(cache_dir: str | None, fingerprint: str | None, name: str, truth: TruthRows, set_cfg,
                          eval_cfg, model, tokenizer, response_length: int | None = None
                          ) -> tuple[dict[str, float], dict, bool]:
    """`evaluate_truth` through a content-keyed cache for a model with a fingerprint (the teacher: every cell of a
    sweep scores the same teacher on the same prompts, ~80 s a set on CPU): (metrics, details, hit). The key
    holds the fingerprint, the set's config, every eval setting the computation reads, the response length and
    every prompt; entries are checksummed and written under a lock (kdbench.storage.cache_entry)."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from kdbench.generation.cache import generation_key
    from kdbench.storage.cache_entry import cached_entry, require

    if not cache_dir or not fingerprint:
        return (*evaluate_truth(name, truth, set_cfg, eval_cfg, model, tokenizer, response_length), False)
    set_plain = OmegaConf.to_container(set_cfg, resolve=True, enum_to_str=True) if OmegaConf.is_config(set_cfg) \
        else set_cfg
    settings = {"version": TRUTH_CACHE_VERSION, "set": name, "set_cfg": set_plain,
                "max_prompt_length": eval_cfg.max_prompt_length, "max_response_length": eval_cfg.max_response_length,
                "max_new_tokens": eval_cfg.max_new_tokens, "score_batch_size": eval_cfg.score_batch_size,
                "generation_batch_size": eval_cfg.generation.batch_size, "response_length": response_length}

    def payload() -> dict:
        metrics, details = evaluate_truth(name, truth, set_cfg, eval_cfg, model, tokenizer, response_length)
        return {"model": fingerprint, "settings": settings, "metrics": metrics, "details": details}

    # The same content key as a generation's: the model, every setting and every prompt.
    key = generation_key(fingerprint, truth.prompts, settings)
    data, hit = cached_entry(Path(cache_dir) / "truth" / f"{key}.json", require(metrics=dict, details=dict),
                             payload)
    return data["metrics"], data["details"], hit


def evaluate_truth(name: str, truth: TruthRows, set_cfg, eval_cfg, model, tokenizer,
                   response_length: int | None = None) -> tuple[dict[str, float], dict]:
    """One model on one set against p*: (metrics, JSON-able details). `response_length`: the max_response_length
    the models were trained with, if known (None: eval.max_response_length)."""
    if set_cfg.kind == "classification":
        return _classification(name, truth, eval_cfg, model, tokenizer)
    return _generation(name, truth, set_cfg.truth, eval_cfg, model, tokenizer, response_length)


def _classification(name: str, truth: TruthRows, eval_cfg, model, tokenizer) -> tuple[dict[str, float], dict]:
    # The label words are p*'s answers as written (mood: "positive" / "negative"), so q and p* are over the same
    # texts, both renormalized over them.
    cal = label_calibration_vs_truth(model, tokenizer, truth.prompts, truth.dists, truth.label_words,
                                     batch_size=eval_cfg.score_batch_size,
                                     max_prompt_length=eval_cfg.max_prompt_length)
    metrics = {f"{name}/truth/calibration_mae": cal["mean_abs_error"], f"{name}/truth/n": cal["n"]}
    by_family = defaultdict(list)
    for family, err in zip(truth.families, cal["per_item"]):
        by_family[family].append(err)
    return metrics, {"n": cal["n"], "calibration_mae": cal["mean_abs_error"], "label_words": truth.label_words,
                     "families": {f: {"n": len(v), "calibration_mae": math.fsum(v) / len(v)}
                                  for f, v in sorted(by_family.items())}}


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def _group_metrics(at: list[int], kl: dict, sampled: dict, greedy: dict, covered: dict) -> dict[str, float]:
    """One group of prompts (all, or one family): the metrics over its prompt indices `at`."""
    errors = [kl["per_prompt_standard_error"][i] for i in at]
    return {"forward_kl": _mean([kl["per_prompt"][i] for i in at]),
            "forward_kl_se": math.sqrt(math.fsum(e * e for e in errors)) / len(at),
            # Every prompt has k samples (and one greedy answer): the mean over prompts is the pooled share.
            "precision": _mean([sampled["per_prompt"][i] for i in at]),
            "greedy_precision": _mean([greedy["per_prompt"][i] for i in at]),
            "recall": _mean([covered["per_prompt"][i] for i in at])}


def _generation(name: str, truth: TruthRows, t, eval_cfg, model, tokenizer,
                response_length: int | None) -> tuple[dict[str, float], dict]:
    # Responses are scored as training encoded them: the training max_response_length when the caller knows it
    # (train.py / evaluate.py pass data.max_response_length), else eval.max_response_length. Answers longer than
    # that are scored cut (truth.response_log_probs) and counted in the details.
    length = response_length or eval_cfg.max_response_length
    length_from = "training (data.max_response_length)" if response_length else "eval.max_response_length"
    prompts, dists = truth.prompts, truth.dists
    log_q = ModelLogQ(model, tokenizer, prompts, max_prompt_length=eval_cfg.max_prompt_length,
                      max_response_length=length, batch_size=eval_cfg.score_batch_size)
    kl = true_forward_kl(dists, log_q, n_samples=t.kl_samples, seed=t.seed, exact_up_to=t.exact_up_to)
    # The longest answer training teaches and its EOS; eval.max_new_tokens (quick runs) caps it as every other
    # generation, leaving long answers unfinished (never valid).
    generation = dict(max_prompt_length=eval_cfg.max_prompt_length,
                      max_new_tokens=effective_limit(length + 1, eval_cfg.max_new_tokens),
                      batch_size=eval_cfg.generation.batch_size, seed=t.seed)
    samples = sample_responses(model, tokenizer, prompts, t.k, **generation)
    greedy_answers = sample_responses(model, tokenizer, prompts, 1, greedy=True, **generation)
    sampled = precision(dists, samples.texts, samples.finished)
    greedy = precision(dists, greedy_answers.texts, greedy_answers.finished)
    covered = recall(dists, samples.texts, seed=t.seed, finished=samples.finished)

    groups: dict[str, list[int]] = defaultdict(list)
    for i, family in enumerate(truth.families):
        groups[family].append(i)
    metrics = {f"{name}/truth/{k}": v
               for k, v in _group_metrics(list(range(len(prompts))), kl, sampled, greedy, covered).items()}
    metrics[f"{name}/truth/n"] = len(prompts)
    families = {}
    for family, at in sorted(groups.items()):
        values = _group_metrics(at, kl, sampled, greedy, covered)
        metrics.update({f"{name}/{family}/truth/{k}": v for k, v in values.items()})
        families[family] = {"n": len(at), **values, "exact_kl": sum(kl["exact"][i] for i in at),
                            "n_unfinished": sum(not f for i in at for f in samples.finished[i])}
    validity = {}
    for family, at in sorted(groups.items()):
        checks = [getattr(dists[i], "first_invalid_word", None) for i in at]
        if not all(checks):  # not a long-form family: its answers are whole strings, precision says it all
            continue
        curve = longform_validity([text for i in at for text in samples.texts[i]],
                                  [check for check in checks for _ in range(t.k)], list(t.validity_lengths),
                                  [f for i in at for f in samples.finished[i]])
        metrics[f"{name}/{family}/truth/valid"] = curve["accepted"]
        metrics.update({f"{name}/{family}/truth/valid@{L}": v for L, v in curve["survival"].items()})
        validity[family] = curve
    details = {"n_prompts": len(prompts), "k": t.k, "kl_samples": t.kl_samples, "exact_up_to": t.exact_up_to,
               "response_length": length, "response_length_from": length_from,
               "max_new_tokens": generation["max_new_tokens"],
               "n_response_truncated": log_q.n_truncated, "n_prompt_truncated": samples.n_prompt_truncated,
               "kl_prompt_standard_error": kl["prompt_standard_error"], "recall_ratio_of_means":
               covered["ratio_of_means"], "families": families, "validity": validity}
    return metrics, details
