"""Divergences between teacher and student next-token distributions, on one contract.

    name(student_logits, teacher_logits, mask=None, *, temperature=1.0) -> per-token values [...]

Logits are [..., V]; the result has the leading shape, is zero where `mask` is False, and is computed in fp32
whatever the input dtype. Both distributions are softmax(logits / temperature). There is no T^2 factor inside:
a method scales by T^2 behind a config switch. The caller reduces by token count (sum / number of tokens in the
optimizer step), never by a mean of micro-batch means, so gradient accumulation leaves the objective unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: must be > 0")
    return F.log_softmax(logits.float() / temperature, dim=-1)


def _clean(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None):
    """Zero the logits at masked positions before any arithmetic: masking only the output would still send NaN
    gradients back through log_softmax of a masked row (all -inf padding logits, say)."""
    if mask is None:
        return student_logits, teacher_logits
    keep = mask.bool().unsqueeze(-1)
    return (torch.where(keep, student_logits, torch.zeros_like(student_logits)),
            torch.where(keep, teacher_logits, torch.zeros_like(teacher_logits)))


def _masked(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # torch.where, not multiplication: a NaN/inf at a masked position (e.g. -inf logits of padding) must not leak.
    if mask is None:
        return values
    return torch.where(mask.bool(), values, torch.zeros_like(values))


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None, *,
               temperature: float = 1.0) -> torch.Tensor:
    """KL(p_teacher || q_student) = sum_v p log(p / q): mode-covering, the divergence of word-level KD.

    Hinton et al. 2015; Kim & Rush 2016 (word-level KD). Config: `method=kd` (method.divergence: forward_kl).
    """
    student_logits, teacher_logits = _clean(student_logits, teacher_logits, mask)
    log_q = _log_probs(student_logits, temperature)
    log_p = _log_probs(teacher_logits, temperature)
    p = log_p.exp()
    # xlogy-style guard: where p == 0 the term is 0 even if log_p is -inf.
    values = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)
    return _masked(values, mask)
