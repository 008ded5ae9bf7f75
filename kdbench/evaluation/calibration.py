"""Calibration of zero-shot label scoring: how well a model's probability over a fixed label set (e.g. the
embedded benchmark's sentiment labels) matches how often it is right.

`score_labels` turns a causal LM into a classifier over label strings; `calibration_metrics` reports accuracy,
top-label ECE, the multi-class Brier score and a reliability diagram. Every value here is a fraction in [0, 1]
(Brier in [0, 2]), not x 100. Empty inputs are an error (ValueError), not 0: a calibration error of nothing
would read as perfect calibration.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench.data.template import left_truncate
from kdbench.evaluation.long_text import eval_mode, length_batches, model_device, pad_id_of, target_log_probs, to_device


def _vector(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().cpu().to(torch.float64).reshape(-1)
    if t.numel() == 0:
        raise ValueError(f"{name}: empty input; a calibration metric of no items is undefined")
    return t


def _confidences_and_correct(confidences, correct) -> tuple[torch.Tensor, torch.Tensor]:
    conf = _vector(confidences, "confidences")
    corr = _vector(correct, "correct")
    if conf.shape != corr.shape:
        raise ValueError(f"{conf.numel()} confidences for {corr.numel()} correctness flags")
    if torch.isnan(conf).any() or (conf < 0).any() or (conf > 1).any():
        raise ValueError("confidences must lie in [0, 1]")
    return conf, corr


def _bin_index(conf: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Bin b = [b/n, (b+1)/n) for b < n-1, the last bin [(n-1)/n, 1] closed: floor(conf * n), 1.0 -> n-1."""
    if n_bins < 1:
        raise ValueError(f"n_bins={n_bins}: must be >= 1")
    return torch.clamp(torch.floor(conf * n_bins).long(), 0, n_bins - 1)


def reliability_diagram(confidences, correct, n_bins: int = 10) -> dict:
    """Per equal-width confidence bin: count, accuracy and mean confidence. JSON-serialisable (plain lists and
    floats); an empty bin has accuracy and confidence None.

        {"n_bins": 10, "n": N, "edges": [0.0, 0.1, ..., 1.0], "counts": [...],
         "accuracy": [... or None], "confidence": [... or None]}

    Binning as in `expected_calibration_error`.
    """
    conf, corr = _confidences_and_correct(confidences, correct)
    b = _bin_index(conf, n_bins)
    counts = torch.bincount(b, minlength=n_bins)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, b, corr)
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, b, conf)
    return {
        "n_bins": n_bins,
        "n": int(conf.numel()),
        "edges": [i / n_bins for i in range(n_bins + 1)],
        "counts": [int(c) for c in counts],
        "accuracy": [float(a / c) if c else None for a, c in zip(acc_sum, counts)],
        "confidence": [float(s / c) if c else None for s, c in zip(conf_sum, counts)],
    }


def expected_calibration_error(confidences, correct, n_bins: int = 10) -> float:
    """Top-label expected calibration error (Guo et al. 2017), a fraction in [0, 1]:

        ECE = sum over bins b of (n_b / N) * |accuracy(b) - mean confidence(b)|

    `confidences` [N] are the probabilities of the PREDICTED label (the max over the label set) and `correct` [N]
    whether that prediction was right (bool or 0/1). Bins are equal-width over [0, 1]: bin b holds
    b/n <= confidence < (b+1)/n, the last bin includes 1.0, so 0 falls in the first bin and 1.0 in the last.
    Empty bins contribute nothing; empty input raises ValueError.

    Not torchmetrics' BinaryCalibrationError: that one bins P(class 1) for every item (so a confident "class 0"
    prediction, P(class 1) = 0.05, sits in the lowest bin), not the confidence of the predicted label; use
    its MulticlassCalibrationError (top-label) for a comparable number.
    """
    diagram = reliability_diagram(confidences, correct, n_bins)
    n = diagram["n"]
    total = 0.0
    for c, acc, conf in zip(diagram["counts"], diagram["accuracy"], diagram["confidence"]):
        if c:
            total += c / n * abs(acc - conf)
    return total


def _probs_and_labels(probs, labels) -> tuple[torch.Tensor, torch.Tensor]:
    p = torch.as_tensor(probs).detach().cpu().to(torch.float64)
    y = torch.as_tensor(labels).detach().cpu().long().reshape(-1)
    if p.ndim != 2:
        raise ValueError(f"probs must be [N, K], got shape {tuple(p.shape)}")
    if p.shape[0] == 0:
        raise ValueError("probs: empty input; a calibration metric of no items is undefined")
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"{p.shape[0]} probability rows for {y.shape[0]} labels")
    if (y < 0).any() or (y >= p.shape[1]).any():
        raise ValueError(f"labels must be class indices in [0, {p.shape[1]})")
    return p, y


def brier_score(probs, labels) -> float:
    """Multi-class Brier score (Brier 1950): the mean over items of sum_k (p_k - onehot(label)_k)^2, in [0, 2].

    `probs` [N, K] (rows should sum to 1; not enforced), `labels` [N] class indices. For K = 2 this is twice
    the binary convention (sklearn's brier_score_loss on P(class 1)), since both classes' errors are summed.
    """
    p, y = _probs_and_labels(probs, labels)
    onehot = F.one_hot(y, p.shape[1]).to(p.dtype)
    return float(((p - onehot) ** 2).sum(-1).mean())


def calibration_metrics(probs, labels, n_bins: int = 10) -> dict:
    """{"accuracy", "ece", "brier", "n", "reliability"} from label probabilities [N, K] and gold labels [N].

    The prediction is the argmax (first index on ties), its confidence the max probability; accuracy and ECE are
    fractions in [0, 1], Brier multi-class in [0, 2]; "reliability" is `reliability_diagram`'s dict.
    """
    p, y = _probs_and_labels(probs, labels)
    conf, pred = p.max(dim=-1)
    correct = (pred == y).to(torch.float64)
    return {
        "accuracy": float(correct.mean()),
        "ece": expected_calibration_error(conf, correct, n_bins),
        "brier": brier_score(p, y),
        "n": int(p.shape[0]),
        "reliability": reliability_diagram(conf, correct, n_bins),
    }


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def split_label_tokens(tokenizer, prompt: str, label_words: list[str],
                       on_mismatch: str = "shared_prefix") -> tuple[list[int], list[list[int]]]:
    """(context ids, one token list per label) for one prompt, each label tokenized as it FOLLOWS the prompt:
    tokenize prompt + label as one string (no special tokens) and take the tokens after the prompt's own.

    When the prompt's tokens are not a prefix of prompt + label (BPE merged across the boundary, e.g. a prompt
    ending in a space before a word label), on_mismatch="error" raises ValueError; "shared_prefix" (default)
    moves the boundary back to the longest token prefix shared by the prompt and EVERY prompt + label, so all
    labels are scored against the same context and each label's tokens also cover the same tail of prompt text
    (the comparison between labels stays fair; the tail's own probability is part of every label's score).
    """
    if on_mismatch not in ("shared_prefix", "error"):
        raise ValueError(f"on_mismatch={on_mismatch!r}: 'shared_prefix' or 'error'")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    joint = [tokenizer(prompt + label, add_special_tokens=False)["input_ids"] for label in label_words]
    cut = min(_common_prefix(prompt_ids, j) for j in joint)
    if cut < len(prompt_ids) and on_mismatch == "error":
        raise ValueError(f"the prompt's tokens are not a prefix of prompt + label for prompt ending "
                         f"{prompt[-30:]!r} and labels {label_words}: the tokenizer merges across the boundary")
    if cut == 0:
        raise ValueError(f"prompt {prompt[:30]!r}...: no context token before the labels to condition on")
    labels = [j[cut:] for j in joint]
    for label, toks in zip(label_words, labels):
        if not toks:
            raise ValueError(f"label {label!r} adds no token after the prompt")
    return prompt_ids[:cut], labels


@torch.no_grad()
def score_labels(model, tokenizer, prompts: list[str], label_words: list[str], batch_size: int = 16, *,
                 max_prompt_length: int | None = None, vocab_size: int | None = None,
                 on_mismatch: str = "shared_prefix", return_log_probs: bool = False,
                 chunk_rows: int = 1024) -> torch.Tensor:
    """Zero-shot label probabilities [N, K] (float32 on CPU; rows sum to 1).

    For prompt i and label k: s_ik = sum over ALL the label's tokens of log p(token | prompt, earlier label
    tokens), the label tokenized as it follows the prompt (`split_label_tokens`, which also handles a prompt
    whose tokens merge with the label's); then softmax over the K summed log-probs (a label of more tokens is
    not length-normalised). return_log_probs=True returns the summed log-probs s [N, K] instead.

    Prompt + label sequences are run in right-padded, length-sorted batches of `batch_size` sequences with an
    attention mask; the context is left-truncated to max_prompt_length tokens if given (its end stays); logits
    are cut to len(tokenizer) (or vocab_size). The model runs in eval mode under no_grad.
    """
    if not label_words:
        raise ValueError("label_words is empty")
    vocab_size = vocab_size or len(tokenizer)
    K = len(label_words)
    items = []
    for prompt in prompts:
        ctx, labels = split_label_tokens(tokenizer, prompt, label_words, on_mismatch)
        if max_prompt_length is not None:
            ctx = left_truncate(ctx, max_prompt_length)
        items.extend({"prompt_ids": ctx, "response_ids": toks} for toks in labels)
    scores = torch.zeros(len(items), dtype=torch.float64)
    device = model_device(model)
    with eval_mode(model):
        for idx, batch in length_batches(items, batch_size, pad_id_of(tokenizer)):
            batch = to_device(batch, device)
            logp, rows = target_log_probs(model, batch, vocab_size, chunk_rows)
            sums = torch.zeros(len(idx), dtype=torch.float64, device=logp.device).index_add_(0, rows, logp.double())
            scores[torch.tensor(idx)] = sums.cpu()
    scores = scores.reshape(len(prompts), K)
    if return_log_probs:
        return scores.float()
    return torch.softmax(scores, dim=-1).float()
