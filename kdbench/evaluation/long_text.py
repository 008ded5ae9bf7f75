"""Metrics for long and open-ended responses: ROUGE-L by reference length, diversity (Dist-n), repetition inside a
response, and the language-modelling loss of the gold response (MiniLLM's "LM loss").

Also home of the teacher-forced helpers the model-based metrics share (calibration.score_labels,
agreement, exposure_bias): prompt/response pairs -> right-padded batches in `kdbench.data.datamodule`'s format
(input_ids, attention_mask, labels with IGNORE on prompt and padding), and the final hidden states at the
positions that predict a response token, run through the LM head a chunk of rows at a time so [tokens x vocab]
logits never exist for a whole batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F

from kdbench.data.datamodule import IGNORE, collate, encode_row
from kdbench.evaluation.metrics import rouge_l_per_item
from kdbench.models.surgery import base_and_head, response_hidden

# ----------------------------------------------------------------------------------------------------------------
# Text-only metrics
# ----------------------------------------------------------------------------------------------------------------


def _bucket_name(lo: int, hi: int | None) -> str:
    return f"{lo}+" if hi is None else f"{lo}-{hi}"


def rouge_l_by_length(predictions: list[str], references: list[str | list[str]],
                      buckets: Sequence[tuple[int, int | None]] = ((0, 5), (6, 10), (11, None))) -> dict[str, dict]:
    """ROUGE-L (`metrics.rouge_l_per_item`, the MiniLLM protocol, x 100) averaged per reference-length bucket.

    Length = number of whitespace-separated words (`str.split()`) of the reference; for a row with a list of
    references, of the FIRST one (the row's `output`; the score itself is still the max over all references).
    A bucket (lo, hi) holds lo <= length <= hi (both inclusive); hi None means no upper bound. Names are
    "lo-hi" / "lo+", e.g. {"0-5": {"rouge_l": 42.0, "n": 12}, "6-10": ..., "11+": ...}, in the buckets' order.
    An empty bucket has rouge_l None (JSON null), n 0. Rows whose length falls in no bucket are not counted;
    overlapping buckets are an error.
    """
    spans = [(int(lo), None if hi is None else int(hi)) for lo, hi in buckets]
    for lo, hi in spans:
        if lo < 0 or (hi is not None and hi < lo):
            raise ValueError(f"bucket ({lo}, {hi}): need 0 <= lo <= hi")
    ordered = sorted(spans, key=lambda b: b[0])
    for (_, hi1), (lo2, _) in pairwise(ordered):
        if hi1 is None or hi1 >= lo2:
            raise ValueError(f"buckets {spans} overlap")
    scores = rouge_l_per_item(predictions, references)
    sums = {b: 0.0 for b in spans}
    counts = {b: 0 for b in spans}
    for score, refs in zip(scores, references):
        first = refs if isinstance(refs, str) else refs[0]
        length = len(first.split())
        for lo, hi in spans:
            if lo <= length and (hi is None or length <= hi):
                sums[(lo, hi)] += score
                counts[(lo, hi)] += 1
                break
    return {_bucket_name(lo, hi): {"rouge_l": sums[(lo, hi)] / counts[(lo, hi)] if counts[(lo, hi)] else None,
                                   "n": counts[(lo, hi)]}
            for lo, hi in spans}


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = text.split()
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: list[str], n: int = 4) -> float:
    """Dist-n x 100 (a percentage, the scale MiniLLM's tables report Dist-4 on, e.g. 99.x): the number of distinct
    n-grams over the number of all n-grams, pooled over the whole set of generations (corpus level, not a mean of
    per-response ratios). Tokens are whitespace-separated words (`str.split()`: case and punctuation kept as
    written); n-grams never span two responses. 0.0 when the set has no n-gram at all (every response shorter
    than n words)."""
    if n < 1:
        raise ValueError(f"n={n}: must be >= 1")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        grams = _ngrams(text, n)
        total += len(grams)
        seen.update(grams)
    return 100.0 * len(seen) / total if total else 0.0


def repetition_rate(texts: list[str], n: int = 4) -> float:
    """Repetition inside a response, x 100: for each response, the share of its n-gram positions whose n-gram
    already occurred earlier in the SAME response (the first occurrence is not a repeat: "a b a b a b" has
    bigrams ab ba ab ba ab, 3 of 5 repeats -> 60), then the mean over responses. Tokens are whitespace words, as
    in `distinct_n`. Responses with fewer than n words (no n-gram) are left out of the mean, not counted as 0;
    0.0 when no response has an n-gram."""
    if n < 1:
        raise ValueError(f"n={n}: must be >= 1")
    rates = []
    for text in texts:
        grams = _ngrams(text, n)
        if not grams:
            continue
        seen: set[tuple[str, ...]] = set()
        repeats = 0
        for g in grams:
            repeats += g in seen
            seen.add(g)
        rates.append(repeats / len(grams))
    return 100.0 * sum(rates) / len(rates) if rates else 0.0


# ----------------------------------------------------------------------------------------------------------------
# Teacher-forced helpers shared by the model-based metrics
# ----------------------------------------------------------------------------------------------------------------


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def pad_id_of(tokenizer) -> int:
    """Right padding is masked (attention_mask 0, labels IGNORE), so any id works; prefer the tokenizer's."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def encode_pairs(tokenizer, prompts: list[str], responses: list[str], max_prompt_length: int,
                 max_response_length: int, include_eos: bool = True) -> list[dict]:
    """Items {"prompt_ids", "response_ids"} exactly as training encodes them (`datamodule.encode_row`: prompt and
    response tokenized separately without special tokens, the prompt left-truncated to max_prompt_length, the
    response cut to max_response_length tokens, then EOS appended). include_eos=False drops that EOS (MiniLLM's
    evaluation scores the response without it); a tokenizer without an EOS id gets none either way."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    items = []
    for prompt, response in zip(prompts, responses):
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise TypeError("prompts and responses must be strings (pass a row's `output`, not its reference list)")
        it = encode_row({"prompt": prompt, "output": response}, tokenizer, max_prompt_length, max_response_length)
        resp = it["response_ids"]
        # encode_row appends tokenizer.eos_token_id, None for a tokenizer without one
        if resp[-1] is None or not include_eos:
            resp = resp[:-1]
        items.append({"prompt_ids": list(it["prompt_ids"]), "response_ids": list(resp)})
    return items


def length_batches(items: list[dict], batch_size: int, pad_id: int) -> Iterator[tuple[list[int], dict]]:
    """(indices, right-padded batch) over `items` sorted by length, so that a batch pads little. Items with no
    response token are skipped (they have nothing to score)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    keep = [i for i, it in enumerate(items) if it["response_ids"]]
    order = sorted(keep, key=lambda i: len(items[i]["prompt_ids"]) + len(items[i]["response_ids"]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield idx, collate([items[i] for i in idx], pad_id)


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def response_rows(batch: dict) -> torch.Tensor:
    """Row index [N] of each response position, in the order `models.surgery.response_hidden` returns them
    (row-major boolean indexing of labels[:, 1:] != IGNORE)."""
    at = batch["labels"][:, 1:] != IGNORE
    rows = torch.arange(at.shape[0], device=at.device).unsqueeze(1).expand_as(at)
    return rows[at]


def chunked_logits(model, hidden: torch.Tensor, vocab_size: int,
                   chunk_rows: int) -> Iterator[tuple[slice, torch.Tensor]]:
    """(row slice, logits [rows, vocab_size]) of lm_head(hidden), `chunk_rows` rows at a time; logits are cut to
    the tokenizer's vocabulary (output layers padded past it, e.g. Qwen2.5, carry no real token)."""
    head = base_and_head(model)[1]
    for start in range(0, hidden.shape[0], chunk_rows):
        sl = slice(start, min(start + chunk_rows, hidden.shape[0]))
        yield sl, head(hidden[sl])[:, :vocab_size]


def target_log_probs(model, batch: dict, vocab_size: int, chunk_rows: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target token | prefix) [N] (float32 or better) at the N response positions of `batch`, and their row
    indices [N]. The batch must already be on the model's device."""
    hidden, targets = response_hidden(model, batch)
    out = torch.empty(targets.shape[0], dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
    for sl, logits in chunked_logits(model, hidden, vocab_size, chunk_rows):
        logp = F.log_softmax(logits.to(out.dtype), dim=-1)
        out[sl] = logp.gather(-1, targets[sl].unsqueeze(-1)).squeeze(-1)
    return out, response_rows(batch)


class eval_mode:
    """Context: model.eval() inside, the previous training flag restored after."""

    def __init__(self, *models):
        self.models = models

    def __enter__(self):
        self.flags = [m.training for m in self.models]
        for m in self.models:
            m.eval()
        return self

    def __exit__(self, *exc):
        for m, flag in zip(self.models, self.flags):
            m.train(flag)
        return False


# ----------------------------------------------------------------------------------------------------------------
# LM loss
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def lm_loss_per_item(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 16,
                     max_prompt_length: int = 256, max_response_length: int = 128, include_eos: bool = True,
                     vocab_size: int | None = None, chunk_rows: int = 1024) -> list[float | None]:
    """Per sample: the mean token cross-entropy (nats) of the gold response given the prompt; None for a sample
    with no response token (an empty response with include_eos=False). See `lm_loss`."""
    vocab_size = vocab_size or len(tokenizer)
    items = encode_pairs(tokenizer, prompts, responses, max_prompt_length, max_response_length, include_eos)
    out: list[float | None] = [None] * len(items)
    device = model_device(model)
    with eval_mode(model):
        for idx, batch in length_batches(items, batch_size, pad_id_of(tokenizer)):
            batch = to_device(batch, device)
            logp, rows = target_log_probs(model, batch, vocab_size, chunk_rows)
            nll = torch.zeros(len(idx), dtype=logp.dtype, device=logp.device).index_add_(0, rows, -logp)
            count = torch.bincount(rows, minlength=len(idx))
            for j, i in enumerate(idx):
                out[i] = float(nll[j] / count[j])
    return out


def lm_loss(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 16,
            max_prompt_length: int = 256, max_response_length: int = 128, include_eos: bool = True,
            vocab_size: int | None = None, chunk_rows: int = 1024) -> float:
    """MiniLLM's "LM loss": the mean token cross-entropy (natural log) of the gold response given the prompt,
    computed per sample and then averaged over samples (each sample weighs the same whatever its length; MiniLLM's
    evaluate_main.py: sum(loss * mask, -1) / sum(mask, -1), then .mean() over the set).

    Encoding is training's (`datamodule.encode_row`): prompt left-truncated to max_prompt_length tokens, response
    cut to max_response_length tokens, then the tokenizer's EOS, which is scored (it is a token the model must
    predict to stop). MiniLLM scores the response without EOS (its pad id is EOS and is masked); pass
    include_eos=False for that. Prompt tokens are masked; logits are cut to len(tokenizer) (or vocab_size).
    Samples with no response token are left out of the mean; NaN when none is left. Eval mode, no grad.
    """
    per_item = [v for v in lm_loss_per_item(model, tokenizer, prompts, responses, batch_size, max_prompt_length,
                                            max_response_length, include_eos, vocab_size, chunk_rows)
                if v is not None]
    return sum(per_item) / len(per_item) if per_item else float("nan")
