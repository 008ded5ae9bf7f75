"""Any divergence from hidden states and LM-head weights, chunk by chunk over positions: the memory-bounded form.

The plain path materializes the student's and the teacher's logits, [N, V] each, plus the divergence's own
[N, V] temporaries and their gradients; at V ~ 150k and N ~ 16k tokens that is tens of GiB. Here the logits
exist for `chunk_size` rows at a time, in the forward and again in the backward:

    forward:  for each chunk of rows: logits = hidden @ W[:vocab_size].T (+ b), values = divergence(...)
              saves only the inputs (hidden states, weights), never logits
    backward: for each chunk: recompute both logits, dL/dlogits of sum_rows grad_output[row] * value[row] by
              autograd on the chunk, then grad_hidden[rows] = dlogits @ W and grad_W += dlogits.T @ hidden

Peak extra memory is O(chunk_size * V) plus the [V, H] weight gradient, whatever N. The price is one more
student and teacher head matmul per chunk (the recompute). Values and gradients equal the plain path's
`divergence(student_hidden @ W_s.T, teacher_hidden @ W_t.T)` (logits sliced to vocab_size) up to rounding, for
any grad_output, so callers may weight or mask the per-position values freely. The teacher side gets no
gradient. With `targets`, the student's cross-entropy to them comes from the same logits (one head matmul for
both losses), as a second per-position output.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

IGNORE_INDEX = -100


def _logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, vocab_size: int) -> torch.Tensor:
    return F.linear(hidden, weight[:vocab_size], None if bias is None else bias[:vocab_size])


def _ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return F.cross_entropy(logits.to(dtype), targets, reduction="none", ignore_index=IGNORE_INDEX)


class _ChunkedDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, targets, fn, vocab_size,
                temperature, chunk_size, hp):
        n = s_hidden.shape[0]
        div_chunks, ce_chunks = [], []
        with torch.no_grad():
            for start in range(0, n, chunk_size):
                rows = slice(start, start + chunk_size)
                s_logits = _logits(s_hidden[rows], s_weight, s_bias, vocab_size)
                t_logits = _logits(t_hidden[rows], t_weight, t_bias, vocab_size)
                div_chunks.append(fn(s_logits, t_logits, temperature=temperature, **hp))
                if targets is not None:
                    ce_chunks.append(_ce(s_logits, targets[rows]))
                del s_logits, t_logits
        out_dtype = torch.promote_types(torch.promote_types(s_hidden.dtype, s_weight.dtype), torch.float32)
        div = torch.cat(div_chunks) if div_chunks else s_hidden.new_zeros(0, dtype=out_dtype)
        ce = torch.cat(ce_chunks) if ce_chunks else torch.zeros_like(div)
        if targets is None:
            ctx.mark_non_differentiable(ce)
        ctx.save_for_backward(s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, targets)
        ctx.fn, ctx.vocab_size, ctx.temperature, ctx.chunk_size, ctx.hp = fn, vocab_size, temperature, chunk_size, hp
        return div, ce

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_div, grad_ce):
        s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, targets = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        fn, vocab_size, chunk_size = ctx.fn, ctx.vocab_size, ctx.chunk_size
        n = s_hidden.shape[0]
        grad_h = torch.zeros_like(s_hidden) if need_h else None
        # weight/bias gradients accumulate over chunks in at least fp32, cast to the parameter dtype at the end
        acc = torch.promote_types(s_weight.dtype, torch.float32)
        grad_w = torch.zeros(s_weight.shape, dtype=acc, device=s_weight.device) if need_w else None
        grad_b = torch.zeros(s_bias.shape, dtype=acc, device=s_bias.device) if need_b else None
        w = s_weight[:vocab_size].detach()
        with_ce = targets is not None and grad_ce is not None
        for start in range(0, n, chunk_size):
            rows = slice(start, start + chunk_size)
            h = s_hidden[rows].detach()
            with torch.no_grad():
                t_logits = _logits(t_hidden[rows], t_weight, t_bias, vocab_size)
                s_logits = _logits(h, s_weight.detach(), None if s_bias is None else s_bias.detach(), vocab_size)
            with torch.enable_grad():
                s_logits.requires_grad_(True)
                vals = fn(s_logits, t_logits, temperature=ctx.temperature, **ctx.hp)
                objective = (vals * grad_div[rows].to(vals.dtype)).sum()
                if with_ce:
                    ce = _ce(s_logits, targets[rows])
                    objective = objective + (ce * grad_ce[rows].to(ce.dtype)).sum()
                (dlogits,) = torch.autograd.grad(objective, s_logits, allow_unused=True)
            del t_logits, s_logits
            if dlogits is None:  # a divergence constant in the student (e.g. skew alpha = 1)
                continue
            if need_h:
                grad_h[rows] = dlogits @ w
            if need_w:
                grad_w[:vocab_size] += dlogits.t() @ h
            if need_b:
                grad_b[:vocab_size] += dlogits.sum(0)
        grad_w = grad_w.to(s_weight.dtype) if need_w else None
        grad_b = grad_b.to(s_bias.dtype) if need_b else None
        return grad_h, grad_w, grad_b, None, None, None, None, None, None, None, None, None


def chunked_divergence(student_hidden: torch.Tensor, student_head_weight: torch.Tensor,
                       teacher_hidden: torch.Tensor, teacher_head_weight: torch.Tensor,
                       divergence: str | Callable, *, vocab_size: int, temperature: float = 1.0,
                       chunk_size: int = 1024, student_head_bias: torch.Tensor | None = None,
                       teacher_head_bias: torch.Tensor | None = None, targets: torch.Tensor | None = None, **hp):
    """Per-position divergence values [N] between the student's and the teacher's next-token distributions,
    computed from hidden states [N, Hs] / [N, Ht] and LM-head weights [V_s, Hs] / [V_t, Ht] (rows beyond
    `vocab_size`, an output layer's padding, are ignored) chunk by chunk: never more than `chunk_size` rows of
    logits exist at once, in the forward or the backward.

    `divergence` is a name in kdbench.losses.DIVERGENCES or a function on the same contract; `temperature` and
    `**hp` (e.g. beta=0.5) are passed to it. Gradients flow to student_hidden, student_head_weight and
    student_head_bias, never to the teacher's tensors. With `targets` [N] (IGNORE_INDEX = -100 allowed), returns
    (divergence values [N], cross-entropy values [N]) where the CE (temperature 1) comes from the same student
    logits; otherwise the divergence values alone.
    """
    from kdbench.losses import DIVERGENCES

    if isinstance(divergence, str):
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence={divergence!r}: known divergences are {', '.join(sorted(DIVERGENCES))}")
        fn = DIVERGENCES[divergence]
    elif callable(divergence):
        fn = divergence
    else:
        raise ValueError(f"divergence={divergence!r}: must be a name or a function")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r}: must be a positive int")
    if student_hidden.dim() != 2 or teacher_hidden.dim() != 2:
        raise ValueError(f"hidden states must be [N, H]; got student {tuple(student_hidden.shape)}, "
                         f"teacher {tuple(teacher_hidden.shape)}")
    if student_hidden.shape[0] != teacher_hidden.shape[0]:
        raise ValueError(f"student and teacher positions differ: {student_hidden.shape[0]} vs "
                         f"{teacher_hidden.shape[0]}")
    for side, hidden, weight in (("student", student_hidden, student_head_weight),
                                 ("teacher", teacher_hidden, teacher_head_weight)):
        if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
            raise ValueError(f"{side}_head_weight {tuple(weight.shape)} does not match {side}_hidden "
                             f"{tuple(hidden.shape)}: expected [V, {hidden.shape[1]}]")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not (
            1 <= vocab_size <= min(student_head_weight.shape[0], teacher_head_weight.shape[0])):
        raise ValueError(f"vocab_size={vocab_size!r}: must be an int in [1, min(V_s, V_t)] = "
                         f"[1, {min(student_head_weight.shape[0], teacher_head_weight.shape[0])}]")
    if targets is not None and tuple(targets.shape) != (student_hidden.shape[0],):
        raise ValueError(f"targets {tuple(targets.shape)}: expected [{student_hidden.shape[0]}]")
    # Hyperparameters and temperature are checked up front, even when N == 0 (the function raises on bad ones).
    fn(torch.zeros(1, 2), torch.zeros(1, 2), temperature=temperature, **hp)

    teacher = [None if t is None else t.detach() for t in (teacher_hidden, teacher_head_weight, teacher_head_bias)]
    div, ce = _ChunkedDivergence.apply(student_hidden, student_head_weight, student_head_bias, *teacher, targets,
                                       fn, vocab_size, temperature, chunk_size, dict(hp))
    return (div, ce) if targets is not None else div
