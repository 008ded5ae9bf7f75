"""How close is the student to its teacher, token by token, on gold responses (teacher forcing)?

Both models read the same prompt + gold response; at every position that predicts a response token (EOS
included) we compare their next-token distributions: the forward KL(p_teacher || q_student) of
`kdbench.losses.divergences.forward_kl`, and whether their argmax tokens agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from kdbench.evaluation.long_text import encode_pairs, eval_mode, length_batches, model_device, pad_id_of, to_device
from kdbench.losses.divergences import forward_kl
from kdbench.models.surgery import base_and_head, response_hidden


def head_size(model) -> int:
    return int(base_and_head(model)[1].weight.shape[0])


def shared_vocab_size(teacher, student, tokenizer=None, vocab_size: int | None = None) -> int:
    """The number of logit columns to compare: vocab_size if given, else len(tokenizer) (models may pad their
    output layers past the tokenizer, differently: Qwen2.5-7B 152064 vs -0.5B 151936 rows; see
    kdbench.models.compat), else the output size the two models share. Raises if a head is smaller."""
    t, s = head_size(teacher), head_size(student)
    if vocab_size is None and tokenizer is not None:
        vocab_size = len(tokenizer)
    if vocab_size is None:
        if t != s:
            raise ValueError(f"teacher and student output {t} and {s} logits: pass the tokenizer or vocab_size "
                             "to slice both to the tokenizer's vocabulary")
        vocab_size = t
    if vocab_size > min(t, s):
        raise ValueError(f"vocab_size={vocab_size} exceeds an output layer (teacher {t}, student {s})")
    return int(vocab_size)


def response_divergences(teacher, student, batch: dict, vocab_size: int, temperature: float = 1.0,
                         chunk_rows: int = 1024) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """(row slice, KL(p_teacher || q_student) [rows], argmax agreement [rows] bool) over the response positions
    of `batch` (datamodule format), in `models.surgery.response_hidden`'s order, `chunk_rows` positions at a
    time; values live on the student's device. Caller holds no_grad and eval mode."""
    s_dev, t_dev = model_device(student), model_device(teacher)
    s_hidden, _ = response_hidden(student, to_device(batch, s_dev))
    t_hidden, _ = response_hidden(teacher, to_device(batch, t_dev))
    if s_hidden.shape[0] != t_hidden.shape[0]:
        raise RuntimeError("teacher and student disagree on the response positions")
    s_head, t_head = base_and_head(student)[1], base_and_head(teacher)[1]
    for start in range(0, s_hidden.shape[0], chunk_rows):
        sl = slice(start, min(start + chunk_rows, s_hidden.shape[0]))
        s_logits = s_head(s_hidden[sl])[:, :vocab_size]
        t_logits = t_head(t_hidden[sl])[:, :vocab_size].to(s_dev)
        kl = forward_kl(s_logits, t_logits, temperature=temperature)
        agree = s_logits.argmax(-1) == t_logits.argmax(-1)
        yield sl, kl, agree


@torch.no_grad()
def teacher_student_agreement(teacher, student, tokenizer=None, prompts: list[str] | None = None,
                              responses: list[str] | None = None, *, batches: Iterable[dict] | None = None,
                              vocab_size: int | None = None, batch_size: int = 16, max_prompt_length: int = 256,
                              max_response_length: int = 128, include_eos: bool = True, temperature: float = 1.0,
                              chunk_rows: int = 1024) -> dict:
    """Token-level agreement of student and teacher on gold responses, teacher-forced:

        {"forward_kl": mean over response tokens of KL(p_teacher || q_student) (nats),
         "top1_agreement": share of response tokens where argmax p == argmax q (a fraction in [0, 1]),
         "n_tokens": number of response tokens}

    Both means are over all response tokens of the set pooled (a long response weighs more), as a token-level
    distillation loss is reduced. Inputs: either (tokenizer, prompts, responses), encoded as training encodes
    them (`datamodule.encode_row`: prompt left-truncated, response cut, EOS appended and scored), or `batches`
    already in the datamodule's collate format (input_ids, attention_mask, labels with IGNORE off the response).
    Logits are sliced to `shared_vocab_size` columns; temperature tempers both distributions (1 = the models'
    own). Both models run in eval mode under no_grad.
    """
    vocab_size = shared_vocab_size(teacher, student, tokenizer, vocab_size)
    if batches is None:
        if tokenizer is None or prompts is None or responses is None:
            raise ValueError("pass either batches or (tokenizer, prompts, responses)")
        items = encode_pairs(tokenizer, prompts, responses, max_prompt_length, max_response_length, include_eos)
        batches = (b for _, b in length_batches(items, batch_size, pad_id_of(tokenizer)))
    kl_sum, agree_sum, n = 0.0, 0, 0
    with eval_mode(teacher, student):
        for batch in batches:
            for _, kl, agree in response_divergences(teacher, student, batch, vocab_size, temperature, chunk_rows):
                kl_sum += float(kl.double().sum())
                agree_sum += int(agree.sum())
                n += int(kl.numel())
    if n == 0:
        raise ValueError("no response token to compare")
    return {"forward_kl": kl_sum / n, "top1_agreement": agree_sum / n, "n_tokens": n}
