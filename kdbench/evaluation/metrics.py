"""Text metrics with the MiniLLM protocol.

ROUGE-L: rouge-score's RougeScorer(['rougeL'], use_stemmer=True) F-measure, the maximum over a row's
references, averaged over rows, x 100 (rouge-score's tokenizer, memoized, and a bit-parallel LCS: the same numbers,
tested against rouge-score itself, at a fraction of its cost). Exact match here is strict: the whole answer, case
and punctuation included, after stripping surrounding whitespace (models often emit a leading space after
"Response:\\n").
`normalized_exact_match` is MiniLLM's own exact match (see `normalize_answer`).
"""

from __future__ import annotations

import string
from functools import lru_cache


@lru_cache(maxsize=1)
def _rouge_tokens():
    """rouge-score's own tokenizer (`rouge_score.tokenize.tokenize` with nltk's Porter stemmer, as
    `RougeScorer(['rougeL'], use_stemmer=True)` builds it), memoized per word and per text: stemming is most of
    ROUGE-L's cost on real text, and a set's references are tokenized again for every model and sampling seed."""
    from nltk.stem import porter
    from rouge_score import tokenize

    class _CachedStemmer:
        stem = staticmethod(lru_cache(maxsize=1 << 16)(porter.PorterStemmer().stem))

    @lru_cache(maxsize=1 << 14)
    def tokens(text: str) -> tuple[str, ...]:
        return tuple(tokenize.tokenize(text, _CachedStemmer))

    return tokens


def lcs_length(a, b) -> int:
    """Length of the longest common subsequence of two token sequences, bit-parallel (Hyyrö 2004): one big-int
    update per token of `b` instead of rouge-score's len(a) x len(b) Python table; the same integer."""
    if len(a) < len(b):
        a, b = b, a
    masks: dict = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l_pair(reference: str, prediction: str) -> float:
    """rouge-score's ROUGE-L F-measure of one (reference, prediction) pair, computed as its `_score_lcs` does."""
    tokens = _rouge_tokens()
    target, pred = tokens(reference), tokens(prediction)
    if not target or not pred:
        return 0.0
    lcs = lcs_length(target, pred)
    precision, recall = lcs / len(pred), lcs / len(target)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def rouge_l_per_item(predictions: list[str], references: list[str | list[str]]) -> list[float]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    out = []
    for pred, refs in zip(predictions, references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        out.append(100.0 * max(rouge_l_pair(ref, pred) for ref in refs))
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
