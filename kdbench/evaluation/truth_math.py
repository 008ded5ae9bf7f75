"""The math of the metrics against the true answer distribution p*(y | x) of each prompt
(kdbench.data.distributions): every function here takes distributions, numbers and texts — the model's
log-probabilities as a callable, its answers as texts — so each one is checked by hand in tests/test_truth.py.
kdbench.evaluation.truth turns a model into those inputs and re-exports these functions.

Conventions: natural logs (nats); prompt i's randomness comes from its own random.Random(f"{purpose}/{seed}/{i}"),
so a prompt's draws do not depend on the other prompts; an answer the model never finished (no EOS within the
generation budget, `finished` False) is not a valid answer, whatever its text.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence

from kdbench.data.distributions import AnswerDistribution

# log_q(prompt indices, texts) -> log q(text | prompt i) in nats for each pair: one call holds every pair a metric
# needs, so a model-backed log_q (truth.ModelLogQ) scores them in a few batches.
LogQ = Callable[[list[int], list[str]], Sequence[float]]

SUPPORT_TOLERANCE = 1e-6


def _support(i: int, dist: AnswerDistribution) -> dict[str, float] | None:
    support = dist.support()
    if support is not None:
        total = math.fsum(support.values())
        if abs(total - 1.0) > SUPPORT_TOLERANCE or any(p <= 0 for p in support.values()):
            raise ValueError(f"prompt {i}: p*.support() must list positive probabilities summing to 1, "
                             f"got a sum of {total:.6g} over {len(support)} texts")
    return support


def _flags(finished: Sequence[Sequence[bool]] | None, samples: Sequence[Sequence[str]]) -> list[list[bool]]:
    if finished is None:
        return [[True] * len(s) for s in samples]
    if [len(f) for f in finished] != [len(s) for s in samples]:
        raise ValueError("finished must hold one flag per sample, in the samples' shape")
    return [list(map(bool, f)) for f in finished]


def _check_lengths(dists: Sequence, samples: Sequence, what: str) -> None:
    if len(dists) != len(samples):
        raise ValueError(f"{len(dists)} distributions for {len(samples)} prompts' {what}")
    if not dists:
        raise ValueError(f"no prompts: a metric over no {what} is undefined")


def true_forward_kl(dists: Sequence[AnswerDistribution], log_q: LogQ, *, n_samples: int = 64, seed: int = 0,
                    exact_up_to: int | None = None) -> dict:
    """E_x KL(p*(. | x) || q(. | x)) in nats per response, over the prompts of `dists`.

    Prompt i is exact where p*.support() lists its answers (and there are at most `exact_up_to` of them; None: any
    number; 0 forces sampling): sum_y p(y) [log p(y) - log q(y)], no sampling error. Otherwise Monte Carlo:
    n_samples answers y_j ~ p* (random.Random(f"kl/{seed}/{i}")), the estimate mean_j [log p(y_j) - log q(y_j)]
    (unbiased) with standard error stdev_j / sqrt(n_samples).

    Returns {"mean", "standard_error", "prompt_standard_error", "per_prompt", "per_prompt_standard_error",
    "exact", "n_prompts"}: "standard_error" is the Monte Carlo error of "mean" for THESE prompts,
    sqrt(sum_i se_i^2) / N (prompts sampled independently; exact prompts add 0); "prompt_standard_error" is
    stdev_i(per_prompt) / sqrt(N), how far the mean would move with another draw of prompts (it includes the
    Monte Carlo noise). A supported answer with log q = -inf makes its prompt's KL (and the mean) inf.
    """
    if n_samples < 2:
        raise ValueError(f"n_samples={n_samples}: a Monte Carlo standard error needs at least 2 samples")
    if not dists:
        raise ValueError("no prompts: a KL over no prompts is undefined")
    # Per prompt: [(text, weight or None for a Monte Carlo draw, log p)], scored in one log_q call.
    terms: list[list[tuple[str, float | None, float]]] = []
    for i, dist in enumerate(dists):
        support = _support(i, dist)
        if support is not None and (exact_up_to is None or len(support) <= exact_up_to):
            terms.append([(y, p, math.log(p)) for y, p in support.items()])
            continue
        rng = random.Random(f"kl/{seed}/{i}")
        draws = []
        for _ in range(n_samples):
            y = dist.sample(rng)
            logp = dist.log_prob(y)
            if logp == -math.inf:
                raise ValueError(f"prompt {i}: p* sampled {y[:60]!r} but gives it log_prob -inf")
            draws.append((y, None, logp))
        terms.append(draws)
    pairs = sorted({(i, y) for i, ts in enumerate(terms) for y, _, _ in ts})
    scored = list(log_q([i for i, _ in pairs], [y for _, y in pairs]))
    if len(scored) != len(pairs):
        raise ValueError(f"log_q returned {len(scored)} values for {len(pairs)} (prompt, text) pairs")
    logq = dict(zip(pairs, map(float, scored)))
    values, errors, exact = [], [], []
    for i, ts in enumerate(terms):
        diffs = [logp - logq[(i, y)] for y, _, logp in ts]
        if ts[0][1] is not None:
            values.append(math.fsum(w * d for (_, w, _), d in zip(ts, diffs)))
            errors.append(0.0)
            exact.append(True)
        else:
            values.append(math.fsum(diffs) / len(diffs))
            errors.append(math.inf if math.isinf(values[-1]) else statistics.stdev(diffs) / math.sqrt(len(diffs)))
            exact.append(False)
    n = len(values)
    return {"mean": math.fsum(values) / n,
            "standard_error": math.sqrt(math.fsum(e * e for e in errors)) / n,
            "prompt_standard_error": statistics.stdev(values) / math.sqrt(n) if n > 1 else math.nan,
            "per_prompt": values, "per_prompt_standard_error": errors, "exact": exact, "n_prompts": n}


def _valid(dist: AnswerDistribution, text: str, finished: bool) -> bool:
    return finished and dist.log_prob(text) > -math.inf


def precision(dists: Sequence[AnswerDistribution], samples: Sequence[Sequence[str]],
              finished: Sequence[Sequence[bool]] | None = None) -> dict:
    """Share of the model's answers p* can produce (log_prob > -inf; an unfinished one never counts), pooled over
    every answer of every prompt (the mean over prompts when each has as many). `samples[i]`: prompt i's answers
    (its T=1 samples, or its one greedy answer). Returns {"precision", "per_prompt", "n", "n_unfinished"}."""
    _check_lengths(dists, samples, "samples")
    flags = _flags(finished, samples)
    per_prompt, valid, total = [], 0, 0
    for i, (dist, texts, fin) in enumerate(zip(dists, samples, flags)):
        if not texts:
            raise ValueError(f"prompt {i}: no sample to score")
        ok = sum(_valid(dist, y, f) for y, f in zip(texts, fin))
        per_prompt.append(ok / len(texts))
        valid, total = valid + ok, total + len(texts)
    return {"precision": valid / total, "per_prompt": per_prompt, "n": total,
            "n_unfinished": sum(not f for fin in flags for f in fin)}


def _distinct_mass(dist: AnswerDistribution, texts: Sequence[str], fin: Sequence[bool]) -> float:
    return math.fsum(math.exp(dist.log_prob(y)) for y in {y for y, f in zip(texts, fin) if f})


def recall(dists: Sequence[AnswerDistribution], samples: Sequence[Sequence[str]], *, seed: int = 0,
           finished: Sequence[Sequence[bool]] | None = None) -> dict:
    """How much of p* the model's answers cover, against what as many draws of p* itself cover.

    Prompt i with k = len(samples[i]) model answers: covered_i = the p*-mass of the DISTINCT valid answers among
    them; reference_i = the same for k answers drawn from p* (random.Random(f"recall/{seed}/{i}")), so 1 is what
    sampling p* itself reaches (a model can pass 1 by covering more distinct likely answers than p*'s own draws,
    which repeat). "recall" is the MEAN OF THE RATIOS covered_i / reference_i: each prompt weighs the same, so
    prompts with many answers (reference_i small) count as much as deterministic ones (reference_i = 1), where a
    ratio of means would be mostly the accuracy on the deterministic prompts. reference_i > 0 always (a draw of p*
    has positive mass). "ratio_of_means" (sum covered / sum reference) is reported beside it.
    Returns {"recall", "ratio_of_means", "per_prompt", "covered", "reference", "n_prompts"}.
    """
    _check_lengths(dists, samples, "samples")
    flags = _flags(finished, samples)
    covered, reference = [], []
    for i, (dist, texts, fin) in enumerate(zip(dists, samples, flags)):
        if not texts:
            raise ValueError(f"prompt {i}: no sample to score")
        rng = random.Random(f"recall/{seed}/{i}")
        draws = [dist.sample(rng) for _ in texts]
        covered.append(_distinct_mass(dist, texts, fin))
        reference.append(_distinct_mass(dist, draws, [True] * len(draws)))
        if reference[-1] <= 0:
            raise ValueError(f"prompt {i}: p*'s own samples have no probability under p*.log_prob")
    ratios = [c / r for c, r in zip(covered, reference)]
    return {"recall": math.fsum(ratios) / len(ratios), "ratio_of_means": math.fsum(covered) / math.fsum(reference),
            "per_prompt": ratios, "covered": covered, "reference": reference, "n_prompts": len(ratios)}


def truth_label_probs(dists: Sequence[AnswerDistribution], labels: Sequence[str]) -> list[list[float]]:
    """p*(label | x) for each prompt and label text, renormalized over the labels (as the model's label
    probabilities are, calibration.score_labels): both sides are then distributions over the same K labels.
    A prompt whose p* gives no mass to any label is an error."""
    if not labels:
        raise ValueError("labels is empty")
    out = []
    for i, dist in enumerate(dists):
        probs = [math.exp(dist.log_prob(label)) for label in labels]
        total = math.fsum(probs)
        if total <= 0:
            raise ValueError(f"prompt {i}: p* gives no probability to any of the labels {list(labels)}")
        out.append([p / total for p in probs])
    return out


def calibration_vs_truth(model_probs, truth_probs) -> dict:
    """Mean |q(label | x) - p*(label | x)| over items and labels (a fraction in [0, 1]): `model_probs` [N, K]
    (e.g. calibration.score_labels, renormalized over the label words) against `truth_probs` [N, K]
    (truth_label_probs), labels in the same order. Returns {"mean_abs_error", "per_item" (mean over the item's
    labels), "n"}."""
    q = [[float(v) for v in row] for row in (model_probs.tolist() if hasattr(model_probs, "tolist") else model_probs)]
    p = [[float(v) for v in row] for row in (truth_probs.tolist() if hasattr(truth_probs, "tolist") else truth_probs)]
    if not q or not q[0]:
        raise ValueError("model_probs: empty input; a calibration error of no items or labels is undefined")
    if [len(r) for r in q] != [len(r) for r in p]:
        raise ValueError(f"model_probs and truth_probs differ in shape: {len(q)} rows of {len(q[0])} labels vs "
                         f"{len(p)} rows of {len(p[0]) if p else 0}")
    per_item = [math.fsum(abs(a - b) for a, b in zip(qr, pr)) / len(qr) for qr, pr in zip(q, p)]
    return {"mean_abs_error": math.fsum(per_item) / len(per_item), "per_item": per_item, "n": len(per_item)}


def longform_validity(texts: Sequence[str], first_invalid_word: Sequence[Callable[[str], int | None]],
                      lengths: Sequence[int], finished: Sequence[bool] | None = None) -> dict:
    """Where long answers go wrong. first_invalid_word[j](texts[j]) -> None (the whole text valid and complete),
    or the index of its first invalid word, or len(words) for a valid but incomplete prefix; words are
    str.split()'s. A text cut by the generation budget (finished False) is never accepted, and a None from its
    check counts as incomplete (the error at its end: the model had not stopped there).

    "accepted": share of texts valid and complete. "survival": for each L (in words), the share of texts whose
    first L words are all valid (first error index >= L): a text that ended complete and valid before L words
    survives every L, an incomplete one fails at its end. "reached": how many texts have >= L words (what the
    curve at L rests on). Keys of both are str(L), as JSON stores them.
    Returns {"accepted", "survival", "reached", "n"}.
    """
    if len(texts) != len(first_invalid_word):
        raise ValueError(f"{len(texts)} texts for {len(first_invalid_word)} first_invalid_word functions")
    if not texts:
        raise ValueError("no texts: a validity share of nothing is undefined")
    if any(int(L) < 0 for L in lengths):
        raise ValueError(f"lengths {list(lengths)}: must be >= 0")
    fin = [True] * len(texts) if finished is None else list(map(bool, finished))
    if len(fin) != len(texts):
        raise ValueError(f"{len(fin)} finished flags for {len(texts)} texts")
    first_error: list[float] = []
    for j, (text, check, f) in enumerate(zip(texts, first_invalid_word, fin)):
        n_words = len(text.split())
        at = check(text)
        if at is not None and not 0 <= at <= n_words:
            raise ValueError(f"text {j}: first_invalid_word returned {at}, outside [0, {n_words}] (its word count)")
        first_error.append(math.inf if at is None and f else n_words if at is None else at)
    n = len(texts)
    word_counts = [len(t.split()) for t in texts]
    return {"accepted": sum(e == math.inf for e in first_error) / n,
            "survival": {str(L): sum(e >= L for e in first_error) / n for L in lengths},
            "reached": {str(L): sum(c >= L for c in word_counts) for L in lengths},
            "n": n}
