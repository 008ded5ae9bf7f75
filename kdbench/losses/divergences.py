"""Divergences between teacher and student next-token distributions, on one contract.

    name(student_logits, teacher_logits, mask=None, *, temperature=1.0, **hp) -> per-token values [...]

Logits are [..., V]; the result has the leading shape, is zero where `mask` is False, and is computed in fp32
whatever the input dtype (float64 inputs stay float64, which the tests use for tight checks). Both distributions
are softmax(logits / temperature). There is no T^2 factor inside: a method scales by T^2 behind a config switch.
The caller reduces by token count (sum / number of tokens in the optimizer step), never by a mean of micro-batch
means, so gradient accumulation leaves the objective unchanged.

`hp` are the divergence's own hyperparameters (GKD's `beta`, DistiLLM's skew `alpha`, AKL's `mu`), given in a
method config under `method.divergence_hp`, e.g.

    # conf/method/jsd.yaml
    divergence: generalized_jsd
    divergence_hp: {beta: 0.5}

Note that a skew divergence's `divergence_hp.alpha` is not `method.alpha` (the CE / divergence mix).
Each function takes only its own hyperparameters as keywords, so a misspelt one is an error, not a no-op.

Notation: p = teacher distribution, q = student distribution, KL(a || b) = sum_v a log(a / b).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if not temperature > 0:
        raise ValueError(f"temperature={temperature}: must be > 0")
    # At least fp32: bf16/fp16 are upcast, float64 is kept.
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return F.log_softmax(logits.to(dtype) / temperature, dim=-1)


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


def _both_log_probs(student_logits, teacher_logits, mask, temperature):
    student_logits, teacher_logits = _clean(student_logits, teacher_logits, mask)
    return _log_probs(student_logits, temperature), _log_probs(teacher_logits, temperature)


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) = sum_v a (log a - log b) over the last dim, from log-probabilities.

    Terms with a == 0 are 0 (even where log a = -inf), and the log-ratio is zeroed there *before* the product, so
    no 0 * inf = NaN reaches the gradient of log a or log b."""
    a = log_a.exp()
    ratio = torch.where(a > 0, log_a - log_b, torch.zeros_like(log_a))
    return (a * ratio).sum(-1)


def _log_mixture(log_p: torch.Tensor, log_q: torch.Tensor, w_p: float) -> torch.Tensor:
    """log(w_p p + (1 - w_p) q), stably: logsumexp(log w_p + log p, log(1 - w_p) + log q). 0 < w_p < 1."""
    a, b = log_p + math.log(w_p), log_q + math.log1p(-w_p)
    # Where both are -inf (a token neither distribution can emit) logaddexp's gradient is 0 * NaN: route those
    # entries around it; the KL terms there are 0 anyway.
    none = torch.isneginf(a) & torch.isneginf(b)
    zero = torch.zeros_like(a)
    mixed = torch.logaddexp(torch.where(none, zero, a), torch.where(none, zero, b))
    return torch.where(none, torch.full_like(mixed, -math.inf), mixed)


def _check_unit(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if isinstance(value, bool) or not 0.0 <= v <= 1.0:  # also rejects NaN
        raise ValueError(f"{name}={value!r}: must be a number in [0, 1]")
    return v


# ----------------------------------------------------------------------------------------------------------------
# Forward and reverse KL
# ----------------------------------------------------------------------------------------------------------------

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


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None, *,
               temperature: float = 1.0) -> torch.Tensor:
    """KL(q_student || p_teacher) = sum_v q log(q / p): mode-seeking.

    MiniLLM (Gu et al. 2024) optimizes it at the sequence level; here it is the exact token-level form, as in
    DistiLLM's and GKD's RKL baselines. Infinite where the teacher gives 0 probability to a token the student
    does not (a teacher logit of -inf at an unmasked position).

    Config (conf/method/rkl.yaml):

        divergence: reverse_kl
    """
    log_q, log_p = _both_log_probs(student_logits, teacher_logits, mask, temperature)
    return _masked(_kl(log_q, log_p), mask)


# ----------------------------------------------------------------------------------------------------------------
# Generalized Jensen-Shannon (GKD)
# ----------------------------------------------------------------------------------------------------------------

def check_jsd_beta(beta: float) -> str | None:
    """Validate GKD's `beta`; warn (and return the message) when it sits next to an endpoint.

    Raises ValueError outside [0, 1]. For 0 < beta < 0.01 or 0.99 < beta < 1 the mixture formula is about
    beta * FKL (or (1 - beta) * RKL), i.e. ~100x-1000x smaller than the endpoint value, while beta == 0 / 1 are
    special-cased to the full FKL / RKL: a sweep over beta across that gap silently rescales the loss.
    Returns None when beta is unremarkable.
    """
    beta = _check_unit("beta", beta)
    if 0.0 < beta < 0.01 or 0.99 < beta < 1.0:
        end, kl = ("0", "forward") if beta < 0.5 else ("1", "reverse")
        msg = (f"method.beta / method.divergence_hp.beta={beta} is next to {end}: generalized_jsd is then about "
               f"{min(beta, 1 - beta):.3g} x the {kl} KL, while beta={end} exactly gives the full {kl} KL, so a "
               f"sweep over beta silently rescales the loss by ~{1 / min(beta, 1 - beta):.0f}x; use beta={end} "
               "or compensate with method.alpha")
        warnings.warn(msg, UserWarning, stacklevel=3)
        return msg
    return None


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
                    *, temperature: float = 1.0, beta: float = 0.5) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence of GKD (Agarwal et al. 2024, "On-Policy Distillation of Language
    Models: Learning from Self-Generated Mistakes"):

        JSD_beta = beta KL(p || m) + (1 - beta) KL(q || m),   m = beta p + (1 - beta) q

    with log m = logsumexp(log beta + log p, log(1 - beta) + log q) for stability. beta = 0.5 is the symmetric JSD
    (bounded by log 2).

    Endpoints, following GKD's reference implementation (TRL): beta == 0 returns exactly forward_kl and
    beta == 1 exactly reverse_kl. This is *not* the limit of the formula, which goes to 0 at both ends:
    JSD_beta ~ beta * KL(p || q) as beta -> 0 and ~ (1 - beta) * KL(q || p) as beta -> 1, so beta = 0.001 gives a
    loss about 1000x smaller than beta = 0. `check_jsd_beta` warns for 0 < beta < 0.01 and 0.99 < beta < 1.

    Config (conf/method/jsd.yaml):

        divergence: generalized_jsd
        divergence_hp: {beta: 0.5}
    """
    beta = _check_unit("beta", beta)
    check_jsd_beta(beta)
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, mask, temperature=temperature)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, mask, temperature=temperature)
    log_q, log_p = _both_log_probs(student_logits, teacher_logits, mask, temperature)
    log_m = _log_mixture(log_p, log_q, beta)
    values = beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)
    return _masked(values, mask)


# ----------------------------------------------------------------------------------------------------------------
# Total variation
# ----------------------------------------------------------------------------------------------------------------

def total_variation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
                    *, temperature: float = 1.0) -> torch.Tensor:
    """Total variation distance TVD(p, q) = 1/2 sum_v |p - q|, in [0, 1].

    Wen et al. 2023 ("f-Divergence Minimization for Sequence-Level Knowledge Distillation"); a baseline of
    DistiLLM (Ko et al. 2024).

    Config (conf/method/tvd.yaml):

        divergence: total_variation
    """
    log_q, log_p = _both_log_probs(student_logits, teacher_logits, mask, temperature)
    values = 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)
    return _masked(values, mask)


# ----------------------------------------------------------------------------------------------------------------
# Skew KL (DistiLLM)
# ----------------------------------------------------------------------------------------------------------------

def skew_forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
                    *, temperature: float = 1.0, alpha: float = 0.1) -> torch.Tensor:
    """alpha-skew forward KL of DistiLLM (Ko et al. 2024, "DistiLLM: Towards Streamlined Distillation for Large
    Language Models"):

        SKL_alpha = KL(p || alpha p + (1 - alpha) q)

    alpha = 0 is forward KL; alpha = 1 is identically 0. The teacher share alpha keeps the second argument away
    from 0 where the student is, bounding the gradient. Same convention as DistiLLM's code (`skewed_forward_kl`,
    `lam * teacher_probs + (1 - lam) * student_probs`, default 0.1); their value omits the constant teacher
    entropy (a cross-entropy), this is the KL proper: same gradients, value shifted by H(p).

    Config (conf/method/skl.yaml); this alpha is not method.alpha, the CE / divergence mix:

        divergence: skew_forward_kl
        divergence_hp: {alpha: 0.1}
    """
    alpha = _check_unit("alpha", alpha)
    if alpha == 0.0:
        return forward_kl(student_logits, teacher_logits, mask, temperature=temperature)
    log_q, log_p = _both_log_probs(student_logits, teacher_logits, mask, temperature)
    log_m = log_p if alpha == 1.0 else _log_mixture(log_p, log_q, alpha)
    return _masked(_kl(log_p, log_m), mask)


def skew_reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
                    *, temperature: float = 1.0, alpha: float = 0.1) -> torch.Tensor:
    """alpha-skew reverse KL of DistiLLM (Ko et al. 2024):

        SRKL_alpha = KL(q || (1 - alpha) p + alpha q)

    alpha = 0 is reverse KL; alpha = 1 is identically 0. The student share alpha keeps the log finite where the
    teacher gives a token 0 probability. Same convention as DistiLLM's `skewed_reverse_kl`
    (`(1 - lam) * teacher_probs + lam * student_probs`, default 0.1).

    Config (conf/method/srkl.yaml); this alpha is not method.alpha, the CE / divergence mix:

        divergence: skew_reverse_kl
        divergence_hp: {alpha: 0.1}
    """
    alpha = _check_unit("alpha", alpha)
    if alpha == 0.0:
        return reverse_kl(student_logits, teacher_logits, mask, temperature=temperature)
    log_q, log_p = _both_log_probs(student_logits, teacher_logits, mask, temperature)
    log_m = log_q if alpha == 1.0 else _log_mixture(log_p, log_q, 1.0 - alpha)
    return _masked(_kl(log_q, log_m), mask)


# ----------------------------------------------------------------------------------------------------------------
# Adaptive KL (AKL)
# ----------------------------------------------------------------------------------------------------------------

def akl_weights(p: torch.Tensor, q: torch.Tensor, mu: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """AKL's head / tail weights (no gradient): sort the vocabulary by teacher probability, descending; the head
    is the prefix whose cumulative teacher mass is <= mu, plus always the top token; the tail is the rest.
    g_head = sum_head |p - q|, g_tail = sum_tail |p - q|, w = g / (g_head + g_tail); both 0 where p == q."""
    with torch.no_grad():
        p, q = p.detach(), q.detach()
        p_sorted, order = torch.sort(p, dim=-1, descending=True, stable=True)
        gap = (p_sorted - q.gather(-1, order)).abs()
        head = p_sorted.cumsum(-1) <= mu
        head[..., 0] = True
        g_head = torch.where(head, gap, torch.zeros_like(gap)).sum(-1)
        g_tail = torch.where(head, torch.zeros_like(gap), gap).sum(-1)
        total = g_head + g_tail
        safe = torch.where(total > 0, total, torch.ones_like(total))
        zero = torch.zeros_like(total)
        return torch.where(total > 0, g_head / safe, zero), torch.where(total > 0, g_tail / safe, zero)


def adaptive_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None, *,
                temperature: float = 1.0, mu: float = 0.5) -> torch.Tensor:
    """Adaptive KL of Wu et al. 2024 ("Rethinking Kullback-Leibler Divergence in Knowledge Distillation for Large
    Language Models"), per token:

        AKL = w_head * KL(p || q) + w_tail * KL(q || p)

    Sort the vocabulary by teacher probability (descending); the head is the prefix with cumulative teacher mass
    <= mu (the top token always in it), the tail the rest; g_head / g_tail = sum of |p - q| over head / tail;
    w_head = g_head / (g_head + g_tail), w_tail = g_tail / (g_head + g_tail). The weights are computed from
    detached probabilities (no gradient flows through them), as in the paper's code, and are 0 where p == q.
    Both the split and the KLs use the tempered distributions. Infinite, like reverse KL, where the teacher gives
    0 probability to a token the student does not (unless w_tail is 0).

    Config (conf/method/akl.yaml):

        divergence: adaptive_kl
        divergence_hp: {mu: 0.5}
    """
    mu = _check_unit("mu", mu)
    log_q, log_p = _both_log_probs(student_logits, teacher_logits, mask, temperature)
    w_head, w_tail = akl_weights(log_p.exp(), log_q.exp(), mu)
    values = w_head * _kl(log_p, log_q) + w_tail * _kl(log_q, log_p)
    return _masked(values, mask)
