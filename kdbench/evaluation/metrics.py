"""Text metrics with the MiniLLM protocol.

ROUGE-L: rouge-score's RougeScorer(['rougeL'], use_stemmer=True) F-measure, the maximum over a row's
references, averaged over rows, x 100. Exact match here is strict: the whole answer, case and punctuation
included, after stripping surrounding whitespace (models often emit a leading space after "Response:\\n").
`normalized_exact_match` is MiniLLM's own exact match (see `normalize_answer`).
"""

from __future__ import annotations

import string
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


_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """MiniLLM's answer normalization (minillm/rouge_metric.py, `normalize_answer`, "adapted from SQuAD v1.1
    evaluation, without removing the articles"): lowercase, delete every ASCII punctuation character
    (`string.punctuation`; other characters, e.g. curly quotes, are kept), then collapse runs of whitespace to one
    space and strip the ends. Articles (a / an / the) are NOT removed, unlike SQuAD's normalizer."""
    return " ".join(text.lower().translate(_PUNCTUATION).split())


def normalized_exact_match_per_item(predictions: list[str], references: list[str | list[str]]) -> list[float]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    out = []
    for pred, refs in zip(predictions, references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        norm = normalize_answer(pred)
        out.append(100.0 * any(norm == normalize_answer(ref) for ref in refs))
    return out


def normalized_exact_match(predictions: list[str], references: list[str | list[str]]) -> float:
    """MiniLLM's exact match x 100: equal after `normalize_answer` (case, ASCII punctuation and whitespace
    ignored; articles kept), the maximum over a row's references, averaged over rows."""
    scores = normalized_exact_match_per_item(predictions, references)
    return sum(scores) / len(scores) if scores else 0.0


PER_ITEM = {"rouge_l": rouge_l_per_item, "exact_match": exact_match_per_item,
            "normalized_exact_match": normalized_exact_match_per_item}
