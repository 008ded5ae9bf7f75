"""Text metrics with the MiniLLM protocol.

ROUGE-L: rouge-score's RougeScorer(['rougeL'], use_stemmer=True) F-measure, the maximum over a row's
references, averaged over rows, x 100. Exact match here is strict: the whole answer, case and punctuation
included, after stripping surrounding whitespace (models often emit a leading space after "Response:\\n").
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_per_item(predictions: list[str], references: list[str | list[str]]) -> list[float]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scorer = _scorer()
    out = []
    for pred, refs in zip(predictions, references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        out.append(100.0 * max(scorer.score(ref, pred)["rougeL"].fmeasure for ref in refs))
    return out


def rouge_l(predictions: list[str], references: list[str | list[str]]) -> float:
    """Mean ROUGE-L F-measure x 100 in [0, 100]; a reference may be a list (max over references)."""
    scores = rouge_l_per_item(predictions, references)
    return sum(scores) / len(scores) if scores else 0.0


def exact_match_per_item(predictions: list[str], references: list[str | list[str]]) -> list[float]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    out = []
    for pred, refs in zip(predictions, references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        out.append(100.0 * any(pred.strip() == ref.strip() for ref in refs))
    return out


def exact_match(predictions: list[str], references: list[str | list[str]]) -> float:
    """Strict exact match x 100: the whole answer, case and punctuation included."""
    scores = exact_match_per_item(predictions, references)
    return sum(scores) / len(scores) if scores else 0.0


PER_ITEM = {"rouge_l": rouge_l_per_item, "exact_match": exact_match_per_item}
