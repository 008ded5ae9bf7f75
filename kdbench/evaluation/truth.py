"""Metrics of a model against the true answer distribution p*(y | x) of each prompt (benchmark v5 gives every
embedded row one, kdbench.data.distributions), the model-facing half:

- `response_log_probs`: log q(text | prompt), teacher-forced, each pair encoded exactly as training encodes a row;
- `ModelLogQ`: those scores as the log_q callable of `true_forward_kl`;
- `sample_responses`: the model's own answers (pure T=1 samples, or greedy) through kdbench.generation.engine,
  for `precision`, `recall` and `longform_validity`;
- `label_calibration_vs_truth`, `truth_metrics`: the usual sets in one call.

The math is in kdbench.evaluation.truth_math (checked by hand there), re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kdbench.data.datamodule import encode_row
from kdbench.data.distributions import AnswerDistribution
from kdbench.data.template import tokenize_truncated
from kdbench.evaluation.calibration import score_labels
from kdbench.evaluation.long_text import eval_mode, length_batches, model_device, pad_id_of, target_log_probs, to_device
from kdbench.evaluation.truth_math import (
    LogQ,
    calibration_vs_truth,
    longform_validity,
    precision,
    recall,
    true_forward_kl,
    truth_label_probs,
)
from kdbench.generation.engine import encode_prompts, generate_ids
from kdbench.generation.settings import GenerationSettings

__all__ = ["LogQ", "ModelLogQ", "ResponseScores", "Samples", "calibration_vs_truth", "label_calibration_vs_truth",
           "longform_validity", "precision", "recall", "response_log_probs", "sample_responses", "true_forward_kl",
           "truth_label_probs", "truth_metrics"]


@dataclass
class ResponseScores:
    log_probs: list[float]  # per (prompt, text) pair, nats, the EOS included
    truncated: list[bool]  # the response had more than max_response_length tokens: scored cut (see below)
    n_prompt_truncated: int  # distinct prompts left-truncated to max_prompt_length tokens

    @property
    def n_truncated(self) -> int:
        return sum(self.truncated)


@torch.no_grad()
def response_log_probs(model, tokenizer, prompts: Sequence[str], texts: Sequence[str], max_prompt_length: int = 256,
                       max_response_length: int = 128, batch_size: int = 16, *, vocab_size: int | None = None,
                       chunk_rows: int = 1024) -> ResponseScores:
    """log q(texts[j] | prompts[j]) in nats: the sum over the response's tokens AND the EOS after them of
    log_softmax(logits cut to len(tokenizer), or vocab_size) at each token.

    Each pair is encoded exactly as training encodes a row (datamodule.encode_row: the prompt string as given,
    tokenized alone and left-truncated to max_prompt_length tokens; the response tokenized alone, cut to
    max_response_length tokens, then EOS) and scored teacher-forced in length-sorted, right-padded batches of
    `batch_size` (long_text.length_batches), eval mode, no grad. A pair listed twice is scored once.

    A response longer than max_response_length tokens is not given -inf: it is scored as training sees it (its
    first max_response_length tokens, then EOS) and flagged in `truncated`. That is the probability of the
    sequence every method trained the model on for such a text; -inf would turn any mean with one long answer
    into inf, and scoring past the limit would score tokens no method trains on. Its score is then not
    log q(text), so a KL over such answers is off: the count says how many, and the benchmark's
    max_response_length should keep it at 0.
    """
    if len(prompts) != len(texts):
        raise ValueError(f"{len(prompts)} prompts for {len(texts)} texts")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: a response's log-prob includes the model stopping")
    vocab_size = vocab_size or len(tokenizer)
    pairs = list(dict.fromkeys(zip(prompts, texts)))
    items, truncated, cut_prompts = [], [], set()
    for prompt, text in pairs:
        if not isinstance(prompt, str) or not prompt or not isinstance(text, str):
            raise ValueError(f"prompts must be non-empty strings and texts strings, got {prompt!r:.60} / {text!r:.60}")
        item = encode_row({"prompt": prompt, "output": text}, tokenizer, max_prompt_length, max_response_length)
        items.append(item)
        if item["truncated"]:  # encode_row's flag is the prompt's
            cut_prompts.add(prompt)
        # The response was cut iff it filled the limit and had more ids: only then is it tokenized again.
        truncated.append(len(item["response_ids"]) - 1 == max_response_length
                         and tokenize_truncated(tokenizer, text, max_response_length, keep_end=False)[1])
    scores = torch.zeros(len(items), dtype=torch.float64)
    device = model_device(model)
    with eval_mode(model):
        for idx, batch in length_batches(items, batch_size, pad_id_of(tokenizer)):
            logp, rows = target_log_probs(model, to_device(batch, device), vocab_size, chunk_rows)
            sums = torch.zeros(len(idx), dtype=torch.float64, device=logp.device).index_add_(0, rows, logp.double())
            scores[torch.tensor(idx)] = sums.cpu()
    where = {pair: j for j, pair in enumerate(pairs)}
    at = [where[pair] for pair in zip(prompts, texts)]
    return ResponseScores(log_probs=[float(scores[j]) for j in at], truncated=[truncated[j] for j in at],
                          n_prompt_truncated=len(cut_prompts))


class ModelLogQ:
    """A truth_math.LogQ backed by a model: log_q(indices, texts) scores texts[j] after prompts[indices[j]] with
    `response_log_probs` (the keyword arguments given here), every pair of one call in one length-sorted pass.
    n_truncated counts the responses max_response_length cut, over all calls."""

    def __init__(self, model, tokenizer, prompts: Sequence[str], **score_kwargs):
        self.model, self.tokenizer, self.prompts, self.score_kwargs = model, tokenizer, list(prompts), score_kwargs
        self.n_truncated = 0

    def __call__(self, indices: list[int], texts: list[str]) -> list[float]:
        scores = response_log_probs(self.model, self.tokenizer, [self.prompts[i] for i in indices], texts,
                                    **self.score_kwargs)
        self.n_truncated += scores.n_truncated
        return scores.log_probs


@dataclass
class Samples:
    texts: list[list[str]]  # [prompt][sample]
    finished: list[list[bool]]  # the answer ended with EOS within max_new_tokens
    n_prompt_truncated: int


def sample_responses(model, tokenizer, prompts: Sequence[str], k: int = 16, *, greedy: bool = False,
                     max_prompt_length: int = 256, max_new_tokens: int = 129, batch_size: int = 64,
                     seed: int = 0) -> Samples:
    """k answers per prompt through the generation engine (engine.generate_ids): pure samples of the model's own
    distribution q (temperature 1, top_p 1, top_k 0, seeded by `seed`: the same call gives the same answers), or
    with greedy its one greedy answer (k must be 1). Prompts are encoded as generation encodes them
    (engine.encode_prompts, left-truncated, counted); each answer is cut after its first EOS and decoded as
    engine.generate decodes (EOS and padding dropped, special tokens skipped). max_new_tokens should be
    max_response_length + 1: the longest answer training teaches, and its EOS."""
    if greedy and k != 1:
        raise ValueError(f"k={k}: greedy decoding gives one answer per prompt; pass k=1")
    if k < 1:
        raise ValueError(f"k={k}: must be >= 1")
    settings = GenerationSettings(do_sample=not greedy, temperature=1.0, top_p=1.0, top_k=0,
                                  max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)
    ids, n_prompt_truncated = encode_prompts(tokenizer, list(prompts), max_prompt_length)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    # Prompt i's k copies are rows i*k ... i*k + k - 1; the engine's stable length sort keeps them together.
    outs = generate_ids(model, [p for p in ids for _ in range(k)], settings, pad, eos,
                        description="greedy answers" if greedy else "sampling answers", show_progress=False)
    texts, finished = [], []
    for i in range(len(ids)):
        rows = outs[i * k:(i + 1) * k]
        finished.append([eos is not None and eos in seq for seq in rows])
        texts.append([tokenizer.decode([t for t in seq if t != eos and t != pad], skip_special_tokens=True)
                      for seq in rows])
    return Samples(texts=texts, finished=finished, n_prompt_truncated=n_prompt_truncated)


def label_calibration_vs_truth(model, tokenizer, prompts: Sequence[str], dists: Sequence[AnswerDistribution],
                               label_words: Sequence[str], answers: Sequence[str] | None = None,
                               batch_size: int = 16, max_prompt_length: int | None = None) -> dict:
    """`calibration_vs_truth` of the model's label probabilities (calibration.score_labels over label_words,
    renormalized over them) against p*'s over the same labels (truth_label_probs); `answers[k]` is label k's
    text as p* writes a response (default: label_words[k])."""
    q = score_labels(model, tokenizer, list(prompts), list(label_words), batch_size,
                     max_prompt_length=max_prompt_length)
    return calibration_vs_truth(q, truth_label_probs(dists, list(answers or label_words)))


def truth_metrics(model, tokenizer, prompts: Sequence[str], dists: Sequence[AnswerDistribution], *, k: int = 16,
                  kl_samples: int = 64, exact_up_to: int | None = None, max_prompt_length: int = 256,
                  max_response_length: int = 128, batch_size: int = 16, generation_batch_size: int = 64,
                  seed: int = 0) -> dict:
    """The metrics every prompt with a p* supports, for one model: {"forward_kl" (true_forward_kl),
    "precision" (of k T=1 samples a prompt), "greedy_precision", "recall" (of the same samples),
    "n_response_truncated" (answers max_response_length cut while scoring the KL), "n_prompt_truncated"}."""
    if len(prompts) != len(dists):
        raise ValueError(f"{len(prompts)} prompts for {len(dists)} distributions")
    log_q = ModelLogQ(model, tokenizer, prompts, max_prompt_length=max_prompt_length,
                      max_response_length=max_response_length, batch_size=batch_size)
    kl = true_forward_kl(dists, log_q, n_samples=kl_samples, seed=seed, exact_up_to=exact_up_to)
    generation = dict(max_prompt_length=max_prompt_length, max_new_tokens=max_response_length + 1,
                      batch_size=generation_batch_size, seed=seed)
    sampled = sample_responses(model, tokenizer, prompts, k, **generation)
    greedy = sample_responses(model, tokenizer, prompts, 1, greedy=True, **generation)
    return {"forward_kl": kl,
            "precision": precision(dists, sampled.texts, sampled.finished),
            "greedy_precision": precision(dists, greedy.texts, greedy.finished),
            "recall": recall(dists, sampled.texts, seed=seed, finished=sampled.finished),
            "n_response_truncated": log_q.n_truncated, "n_prompt_truncated": sampled.n_prompt_truncated}
