"""The divergence zoo on one contract, and its memory-bounded (chunked) form.

Every registered divergence: zero when p = q, non-negative, masked tokens contribute nothing (value or gradient,
whatever their logits), fp32 inside, temperature = the T = 1 formula on logits / T, correct gradients. Golden
values come from the formulas written here in plain Python floats (double precision) on probabilities, never
from the code under test. The chunked form must give the plain path's values and gradients for any weighting
of its per-position outputs.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import rand_logits

from kdbench.losses import (
    DIVERGENCES,
    adaptive_kl,
    akl_weights,
    check_jsd_beta,
    chunked_divergence,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    total_variation,
)

NAMES = sorted(DIVERGENCES)
HP_NAMES = {"generalized_jsd": "beta", "skew_forward_kl": "alpha", "skew_reverse_kl": "alpha", "adaptive_kl": "mu"}
# Every divergence at its default, plus non-default hyperparameters where it has one.
CASES = [(n, {}) for n in NAMES] + [
    ("generalized_jsd", {"beta": 0.1}), ("generalized_jsd", {"beta": 0.9}),
    ("skew_forward_kl", {"alpha": 0.4}), ("skew_reverse_kl", {"alpha": 0.4}),
    ("adaptive_kl", {"mu": 0.2}), ("adaptive_kl", {"mu": 0.9}),
]
CASE_IDS = [n + "".join(f"-{k}={v}" for k, v in hp.items()) for n, hp in CASES]


# ----------------------------------------------------------------------------------------------------------------
# Independent references: plain Python on probability lists
# ----------------------------------------------------------------------------------------------------------------

def softmax_py(logits, temperature=1.0):
    x = [v / temperature for v in logits]
    m = max(x)
    e = [math.exp(v - m) for v in x]
    z = sum(e)
    return [v / z for v in e]


def kl_py(a, b):
    return sum(ai * math.log(ai / bi) for ai, bi in zip(a, b) if ai > 0)


def akl_weights_py(p, q, mu):
    order = sorted(range(len(p)), key=lambda i: -p[i])
    head, cum = set(), 0.0
    for rank, i in enumerate(order):
        cum += p[i]
        if rank == 0 or cum <= mu:
            head.add(i)
        else:
            break
    g_head = sum(abs(p[i] - q[i]) for i in head)
    g_tail = sum(abs(p[i] - q[i]) for i in range(len(p)) if i not in head)
    total = g_head + g_tail
    return (g_head / total, g_tail / total) if total > 0 else (0.0, 0.0)


def reference_py(name, q, p, **hp):
    """The formula of `name`, with q the student's and p the teacher's probabilities."""
    if name == "forward_kl":
        return kl_py(p, q)
    if name == "reverse_kl":
        return kl_py(q, p)
    if name == "generalized_jsd":
        beta = hp.get("beta", 0.5)
        if beta in (0.0, 1.0):  # GKD's (TRL's) endpoint convention: the full forward / reverse KL, not 0
            return kl_py(p, q) if beta == 0.0 else kl_py(q, p)
        m = [beta * pi + (1 - beta) * qi for pi, qi in zip(p, q)]
        return beta * kl_py(p, m) + (1 - beta) * kl_py(q, m)
    if name == "total_variation":
        return 0.5 * sum(abs(pi - qi) for pi, qi in zip(p, q))
    if name == "skew_forward_kl":
        a = hp.get("alpha", 0.1)
        return kl_py(p, [a * pi + (1 - a) * qi for pi, qi in zip(p, q)])
    if name == "skew_reverse_kl":
        a = hp.get("alpha", 0.1)
        return kl_py(q, [(1 - a) * pi + a * qi for pi, qi in zip(p, q)])
    if name == "adaptive_kl":
        w_head, w_tail = akl_weights_py(p, q, hp.get("mu", 0.5))
        return w_head * kl_py(p, q) + w_tail * kl_py(q, p)
    raise KeyError(name)


def kl_ref(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) from float64 log-probabilities, with explicit tensor ops (differentiable)."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)


# Three positions, V = 5: ordinary, peaked teacher vs flat student, and student-peaked-elsewhere.
GOLDEN_STUDENT = [[1.0, 2.0, 0.5, -1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0], [-2.0, 3.5, 0.3, 0.3, 1.0]]
GOLDEN_TEACHER = [[0.0, 1.0, 3.0, -2.0, 0.5], [4.0, -1.0, 0.5, 0.0, -3.0], [2.5, 0.0, -1.0, 1.5, 0.7]]
GOLDEN_CASES = CASES + [("generalized_jsd", {"beta": 0.0}), ("generalized_jsd", {"beta": 1.0}),
                        ("skew_forward_kl", {"alpha": 0.0}), ("skew_reverse_kl", {"alpha": 0.0}),
                        ("adaptive_kl", {"mu": 0.0})]


# ----------------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------------

def test_registry_holds_the_zoo():
    assert DIVERGENCES == {
        "forward_kl": forward_kl, "reverse_kl": reverse_kl, "generalized_jsd": generalized_jsd,
        "total_variation": total_variation, "skew_forward_kl": skew_forward_kl,
        "skew_reverse_kl": skew_reverse_kl, "adaptive_kl": adaptive_kl,
    }
    for name, fn in DIVERGENCES.items():
        assert fn.__name__ == name
        doc = fn.__doc__ or ""
        if name != "forward_kl":  # the config snippet of conf/method/<x>.yaml
            assert f"divergence: {name}" in doc, name
        if name in HP_NAMES:
            assert f"divergence_hp: {{{HP_NAMES[name]}:" in doc, name


# ----------------------------------------------------------------------------------------------------------------
# Golden values
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,hp", GOLDEN_CASES,
                         ids=[n + "".join(f"-{k}={v}" for k, v in hp.items()) for n, hp in GOLDEN_CASES])
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_golden_values(name, hp, T):
    expected = [reference_py(name, softmax_py(s, T), softmax_py(t, T), **hp)
                for s, t in zip(GOLDEN_STUDENT, GOLDEN_TEACHER)]
    assert min(expected) > 1e-3  # a non-trivial example
    fn = DIVERGENCES[name]
    got64 = fn(torch.tensor(GOLDEN_STUDENT, dtype=torch.float64), torch.tensor(GOLDEN_TEACHER, dtype=torch.float64),
               temperature=T, **hp)
    assert got64.dtype == torch.float64
    assert got64.tolist() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    got32 = fn(torch.tensor(GOLDEN_STUDENT), torch.tensor(GOLDEN_TEACHER), temperature=T, **hp)
    assert got32.dtype == torch.float32
    assert got32.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_golden_akl_weights_match_the_reference_split():
    s, t = torch.tensor(GOLDEN_STUDENT, dtype=torch.float64), torch.tensor(GOLDEN_TEACHER, dtype=torch.float64)
    for mu in (0.0, 0.2, 0.5, 0.9):
        w_head, w_tail = akl_weights(F.softmax(t, -1), F.softmax(s, -1), mu)
        for row in range(3):
            ref = akl_weights_py(softmax_py(GOLDEN_TEACHER[row]), softmax_py(GOLDEN_STUDENT[row]), mu)
            assert (w_head[row].item(), w_tail[row].item()) == pytest.approx(ref, rel=1e-10)


# ----------------------------------------------------------------------------------------------------------------
# Properties of every divergence
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,hp", CASES, ids=CASE_IDS)
def test_zero_when_distributions_are_equal(name, hp):
    fn = DIVERGENCES[name]
    x = rand_logits(4, 7, 11, seed=0)
    assert fn(x, x.clone(), **hp).abs().max().item() < 1e-6
    assert fn(x, x + 5.0, **hp).abs().max().item() < 1e-5  # softmax is shift-invariant
    assert fn(x.double(), x.double(), **hp).abs().max().item() < 1e-14
    assert fn(x, x, **hp).shape == (4, 7)


@pytest.mark.parametrize("name,hp", CASES, ids=CASE_IDS)
def test_non_negative_and_positive_on_random_logits(name, hp):
    fn = DIVERGENCES[name]
    for seed in range(4):
        s, t = rand_logits(6, 13, seed=2 * seed), rand_logits(6, 13, seed=2 * seed + 1)
        v = fn(s, t, **hp)
        assert (v > 1e-4).all(), v


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(9,), (5, 9), (2, 3, 9)])
def test_output_shape_is_the_leading_dims(name, shape):
    s, t = rand_logits(*shape, seed=1), rand_logits(*shape, seed=2)
    assert DIVERGENCES[name](s, t).shape == shape[:-1]
    assert DIVERGENCES[name](s, t, torch.ones(shape[:-1], dtype=torch.bool)).shape == shape[:-1]


@pytest.mark.parametrize("name,hp", CASES, ids=CASE_IDS)
def test_masked_tokens_contribute_nothing_even_with_nan_or_inf_logits(name, hp):
    fn = DIVERGENCES[name]
    s, t = rand_logits(2, 4, 9, seed=9), rand_logits(2, 4, 9, seed=10)
    mask = torch.tensor([[True, False, True, False], [False, True, True, False]])
    unmasked = fn(s, t, **hp)
    s_bad, t_bad = s.clone(), t.clone()
    s_bad[0, 1] = float("nan")
    t_bad[0, 1] = float("-inf")
    s_bad[1, 0] = float("-inf")
    t_bad[1, 0] = float("nan")
    s_bad[1, 3, :4] = float("inf")
    t_bad[0, 3] = float("-inf")
    s_bad.requires_grad_(True)
    v = fn(s_bad, t_bad, mask, **hp)
    assert torch.equal(v[~mask], torch.zeros(int((~mask).sum())))
    assert torch.equal(v[mask], unmasked[mask])
    assert torch.equal(fn(s_bad, t_bad, mask.long(), **hp), v)  # a 0/1 mask is a mask too
    v.sum().backward()
    assert torch.isfinite(s_bad.grad).all(), "masked rows leaked NaN/inf into the student's gradient"
    assert torch.equal(s_bad.grad[~mask], torch.zeros(int((~mask).sum()), 9))
    # the unmasked rows' gradient is that of the clean computation
    s_clean = s.clone().requires_grad_(True)
    fn(s_clean, t, mask, **hp).sum().backward()
    torch.testing.assert_close(s_bad.grad[mask], s_clean.grad[mask], rtol=0, atol=0)


@pytest.mark.parametrize("name,hp", CASES, ids=CASE_IDS)
def test_all_masked_gives_zero_not_nan(name, hp):
    fn = DIVERGENCES[name]
    s = rand_logits(3, 5, 17, seed=11)
    t = rand_logits(3, 5, 17, seed=12)
    s[0, 0] = float("nan")
    t[1, 2] = float("-inf")
    s.requires_grad_(True)
    v = fn(s, t, torch.zeros(3, 5, dtype=torch.bool), **hp)
    assert torch.equal(v, torch.zeros(3, 5))
    v.sum().backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


@pytest.mark.parametrize("name,hp", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp32_inside_whatever_the_input_dtype(name, hp, dtype):
    fn = DIVERGENCES[name]
    s, t = rand_logits(3, 4, 50, seed=3, dtype=dtype), rand_logits(3, 4, 50, seed=4, dtype=dtype)
    v = fn(s, t, **hp)
    assert v.dtype == torch.float32
    # the (exactly representable) low-precision inputs computed at fp32 accuracy
    torch.testing.assert_close(v, fn(s.float(), t.float(), **hp), rtol=1e-6, atol=1e-7)
    assert fn(s, t.float(), **hp).dtype == torch.float32  # mixed dtypes too
    s.requires_grad_(True)
    fn(s, t, **hp).sum().backward()
    assert s.grad.dtype == dtype and torch.isfinite(s.grad.float()).all()


@pytest.mark.parametrize("name,hp", CASES, ids=CASE_IDS)
def test_temperature_is_the_formula_at_logits_over_t(name, hp):
    fn = DIVERGENCES[name]
    s, t = rand_logits(5, 13, seed=5, dtype=torch.float64), rand_logits(5, 13, seed=6, dtype=torch.float64)
    for T in (0.5, 2.0, 4.0):
        # no T^2 factor inside: exactly the T = 1 formula on scaled logits
        torch.testing.assert_close(fn(s, t, temperature=T, **hp), fn(s / T, t / T, **hp), rtol=1e-12, atol=1e-14)
    assert (fn(s, t, temperature=2.0, **hp) - fn(s, t, **hp)).abs().max() > 1e-3


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("T", [0.0, -1.0, float("nan")])
def test_non_positive_temperature_raises(name, T):
    s, t = rand_logits(2, 5, seed=0), rand_logits(2, 5, seed=1)
    with pytest.raises(ValueError, match="temperature"):
        DIVERGENCES[name](s, t, temperature=T)


@pytest.mark.parametrize("name,hp", [c for c in CASES if c[0] != "adaptive_kl"],
                         ids=[i for c, i in zip(CASES, CASE_IDS) if c[0] != "adaptive_kl"])
def test_gradients_match_finite_differences(name, hp):
    """Autograd through the log-space mixtures and NaN guards is the true derivative (AKL's detached weights are
    not, by design: tested below)."""
    s = rand_logits(2, 6, seed=20, dtype=torch.float64).requires_grad_(True)
    t = rand_logits(2, 6, seed=21, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: DIVERGENCES[name](x, t, temperature=1.3, **hp), (s,))


@pytest.mark.parametrize("name,hp", CASES, ids=CASE_IDS)
def test_a_token_neither_side_can_emit_changes_nothing(name, hp):
    """A vocabulary column that is -inf for both (e.g. a banned token) drops out: same values, finite gradient."""
    fn = DIVERGENCES[name]
    s, t = rand_logits(3, 8, seed=30, dtype=torch.float64), rand_logits(3, 8, seed=31, dtype=torch.float64)
    inf = torch.full((3, 1), float("-inf"), dtype=torch.float64)
    s_ext = torch.cat([s[:, :4], inf, s[:, 4:]], -1).requires_grad_(True)
    t_ext = torch.cat([t[:, :4], inf, t[:, 4:]], -1)
    v = fn(s_ext, t_ext, **hp)
    torch.testing.assert_close(v, fn(s, t, **hp), rtol=1e-12, atol=1e-14)
    v.sum().backward()
    assert torch.isfinite(s_ext.grad).all()


@pytest.mark.parametrize("name,hp", [c for c in CASES if c[0] not in ("reverse_kl", "adaptive_kl")],
                         ids=[i for c, i in zip(CASES, CASE_IDS) if c[0] not in ("reverse_kl", "adaptive_kl")])
def test_teacher_zero_probabilities_give_finite_values_and_gradients(name, hp):
    s = rand_logits(3, 6, seed=7).requires_grad_(True)
    t = rand_logits(3, 6, seed=8)
    t[:, 0] = float("-inf")
    t[1, 2:5] = float("-inf")
    v = DIVERGENCES[name](s, t, **hp)
    assert torch.isfinite(v).all(), v
    expected = [reference_py(name, softmax_py(sr), softmax_py(tr), **hp) for sr, tr in zip(s.tolist(), t.tolist())]
    assert v.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    v.sum().backward()
    assert torch.isfinite(s.grad).all()
    # reverse KL is infinite there (the student puts mass where the teacher has none): the skew is what bounds it
    assert torch.isinf(reverse_kl(s.detach(), t)).all()


@pytest.mark.parametrize("name,kw,bad", [
    ("generalized_jsd", "beta", [-0.1, 1.5, float("nan"), "x"]),
    ("skew_forward_kl", "alpha", [-0.01, 1.01, float("nan")]),
    ("skew_reverse_kl", "alpha", [-0.01, 1.01]),
    ("adaptive_kl", "mu", [-0.5, 2.0]),
])
def test_hyperparameters_are_validated(name, kw, bad):
    s, t = rand_logits(2, 5, seed=0), rand_logits(2, 5, seed=1)
    for value in bad:
        with pytest.raises(ValueError, match=kw):
            DIVERGENCES[name](s, t, **{kw: value})
    with pytest.raises(TypeError):  # a hyperparameter of another divergence is an error, not silently ignored
        DIVERGENCES[name](s, t, not_a_hyperparameter=1.0)
    with pytest.raises(TypeError):
        forward_kl(s, t, **{kw: 0.5})


# ----------------------------------------------------------------------------------------------------------------
# Generalized JSD
# ----------------------------------------------------------------------------------------------------------------

def test_jsd_endpoints_are_exactly_forward_and_reverse_kl():
    s, t = rand_logits(4, 6, 19, seed=40), rand_logits(4, 6, 19, seed=41)
    mask = torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) > 0.3
    for T in (1.0, 2.0):
        assert torch.equal(generalized_jsd(s, t, mask, beta=0.0, temperature=T), forward_kl(s, t, mask, temperature=T))
        assert torch.equal(generalized_jsd(s, t, mask, beta=1.0, temperature=T), reverse_kl(s, t, mask, temperature=T))
        assert torch.equal(generalized_jsd(s, t, mask, beta=0, temperature=T), forward_kl(s, t, mask, temperature=T))


def test_jsd_goes_to_zero_next_to_the_endpoints():
    """Documented behaviour: JSD_beta ~ beta * FKL near 0 and (1 - beta) * RKL near 1, i.e. ~1000x smaller at
    beta = 0.001 than at beta = 0; the warning exists for this."""
    s, t = rand_logits(8, 23, seed=42, dtype=torch.float64), rand_logits(8, 23, seed=43, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        near0 = generalized_jsd(s, t, beta=0.001) / forward_kl(s, t)
        near1 = generalized_jsd(s, t, beta=0.999) / reverse_kl(s, t)
    # ~1000x smaller (the O(beta^2) correction is visible on these far-apart distributions)
    assert ((near0 > 0.0007) & (near0 < 0.0012)).all(), near0
    assert ((near1 > 0.0007) & (near1 < 0.0012)).all(), near1
    sym = generalized_jsd(s, t)  # beta = 0.5: the symmetric JSD, bounded by log 2
    assert (sym <= math.log(2) + 1e-12).all()
    torch.testing.assert_close(sym, generalized_jsd(t, s), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("beta", [0.001, 0.005, 0.995, 0.9999])
def test_jsd_warns_next_to_the_endpoints(beta):
    with pytest.warns(UserWarning, match=r"method\.beta"):
        msg = check_jsd_beta(beta)
    assert msg and "method.beta" in msg and "rescales" in msg
    s, t = rand_logits(2, 5, seed=0), rand_logits(2, 5, seed=1)
    with pytest.warns(UserWarning, match=r"method\.beta"):
        generalized_jsd(s, t, beta=beta)


@pytest.mark.parametrize("beta", [0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0])
def test_jsd_does_not_warn_elsewhere(beta):
    s, t = rand_logits(2, 5, seed=0), rand_logits(2, 5, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_jsd_beta(beta) is None
        generalized_jsd(s, t, beta=beta)


@pytest.mark.parametrize("beta", [-0.1, 1.1, float("nan")])
def test_jsd_beta_outside_the_unit_interval_raises(beta):
    with pytest.raises(ValueError, match="beta"):
        check_jsd_beta(beta)


# ----------------------------------------------------------------------------------------------------------------
# Skew KL (DistiLLM)
# ----------------------------------------------------------------------------------------------------------------

def test_skew_kl_endpoints():
    s, t = rand_logits(3, 5, 13, seed=50), rand_logits(3, 5, 13, seed=51)
    assert torch.equal(skew_forward_kl(s, t, alpha=0.0), forward_kl(s, t))
    assert torch.equal(skew_reverse_kl(s, t, alpha=0.0), reverse_kl(s, t))
    assert skew_forward_kl(s, t, alpha=1.0).abs().max().item() < 1e-6
    assert skew_reverse_kl(s, t, alpha=1.0).abs().max().item() < 1e-6


def test_skew_direction_bounds_the_loss_by_log_one_over_alpha():
    """DistiLLM's alpha is the share of the distribution in the *first* argument: SKL = KL(p || alpha p + ...)
    and SRKL = KL(q || alpha q + ...), so both are at most log(1 / alpha) however far apart p and q are."""
    s, t = rand_logits(4, 10, seed=52, dtype=torch.float64), rand_logits(4, 10, seed=53, dtype=torch.float64)
    s_far = s.clone()
    s_far[torch.arange(4), t.argmax(-1)] = -1e4  # the student gives ~0 to the teacher's top token
    t_far = t.clone()
    t_far[:, :5] = float("-inf")  # the teacher gives 0 to tokens the student likes
    for alpha in (0.1, 0.3):
        assert forward_kl(s_far, t).max() > 10 and torch.isinf(reverse_kl(s, t_far)).all()
        assert (skew_forward_kl(s_far, t, alpha=alpha) <= math.log(1 / alpha) + 1e-12).all()
        assert (skew_reverse_kl(s, t_far, alpha=alpha) <= math.log(1 / alpha) + 1e-12).all()


# ----------------------------------------------------------------------------------------------------------------
# Adaptive KL
# ----------------------------------------------------------------------------------------------------------------

def probs_to_logits(rows):
    return torch.tensor([[math.log(x) for x in r] for r in rows], dtype=torch.float64)


@pytest.mark.parametrize("teacher,student,mu,w_head", [
    # sorted teacher; 0.4 <= 0.5 < 0.7: head = {0}; gaps 0.3 | 0.1 + 0.1 + 0.3
    ([0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4], 0.5, 0.3 / 0.8),
    # unsorted teacher (order 1, 3, 0, 2); gaps by token: 0.1, 0.2, 0.2, 0.1
    ([0.2, 0.4, 0.1, 0.3], [0.1, 0.2, 0.3, 0.4], 0.5, 0.2 / 0.6),   # head = {1}
    ([0.2, 0.4, 0.1, 0.3], [0.1, 0.2, 0.3, 0.4], 0.1, 0.2 / 0.6),   # the top token is always in the head
    ([0.2, 0.4, 0.1, 0.3], [0.1, 0.2, 0.3, 0.4], 0.75, 0.3 / 0.6),  # 0.7 <= 0.75: head = {1, 3}
    ([0.2, 0.4, 0.1, 0.3], [0.1, 0.2, 0.3, 0.4], 0.95, 0.4 / 0.6),  # head = {1, 3, 0}
    ([0.7, 0.1, 0.1, 0.1], [0.5, 0.3, 0.1, 0.1], 0.5, 0.5),         # top token alone is > mu: head = {0}
])
def test_akl_hand_built_head_tail_split(teacher, student, mu, w_head):
    t, s = probs_to_logits([teacher]), probs_to_logits([student])
    wh, wt = akl_weights(F.softmax(t, -1), F.softmax(s, -1), mu)
    assert wh.item() == pytest.approx(w_head, rel=1e-9)
    assert wt.item() == pytest.approx(1 - w_head, rel=1e-9)
    expected = w_head * kl_py(teacher, student) + (1 - w_head) * kl_py(student, teacher)
    assert adaptive_kl(s, t, mu=mu).item() == pytest.approx(expected, rel=1e-9)
    assert adaptive_kl(s.float(), t.float(), mu=mu).item() == pytest.approx(expected, rel=1e-5)


def test_akl_equal_distributions_give_zero_weights_and_no_nan():
    x = rand_logits(3, 9, seed=60, dtype=torch.float64).requires_grad_(True)
    wh, wt = akl_weights(F.softmax(x, -1), F.softmax(x, -1))
    assert torch.equal(wh, torch.zeros(3, dtype=torch.float64)) and torch.equal(wt, wh)
    v = adaptive_kl(x, x.detach())
    assert torch.equal(v, torch.zeros(3, dtype=torch.float64))
    v.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() == 0


def test_akl_gradient_does_not_flow_through_the_weights():
    t = rand_logits(5, 12, seed=61, dtype=torch.float64)
    s = rand_logits(5, 12, seed=62, dtype=torch.float64).requires_grad_(True)
    adaptive_kl(s, t, mu=0.5).sum().backward()
    got = s.grad.clone()

    # manual, with weights from the pure-Python reference (constants): w_head * FKL + w_tail * RKL
    s2 = s.detach().clone().requires_grad_(True)
    w = [akl_weights_py(softmax_py(tr), softmax_py(sr), 0.5) for sr, tr in zip(s.tolist(), t.tolist())]
    w_head = torch.tensor([a for a, _ in w], dtype=torch.float64)
    w_tail = torch.tensor([b for _, b in w], dtype=torch.float64)
    log_q, log_p = F.log_softmax(s2, -1), F.log_softmax(t, -1)
    (w_head * kl_ref(log_p, log_q) + w_tail * kl_ref(log_q, log_p)).sum().backward()
    torch.testing.assert_close(got, s2.grad, rtol=1e-10, atol=1e-12)

    # the same loss with differentiable weights has a different gradient (so the check above can fail)
    s3 = s.detach().clone().requires_grad_(True)
    log_q = F.log_softmax(s3, -1)
    q = log_q.exp()
    p = log_p.exp()
    p_sorted, order = p.sort(-1, descending=True)
    gap = (p_sorted - q.gather(-1, order)).abs()
    head = p_sorted.cumsum(-1) <= 0.5
    head[:, 0] = True
    g_head, g_tail = (gap * head).sum(-1), (gap * ~head).sum(-1)
    ((g_head * kl_ref(log_p, log_q) + g_tail * kl_ref(log_q, log_p)) / (g_head + g_tail)).sum().backward()
    assert (s3.grad - got).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------------------------
# Chunked form
# ----------------------------------------------------------------------------------------------------------------

N, HS, HT, V, VS_PADDED, VT_PADDED = 13, 6, 8, 11, 14, 16


def chunk_inputs(seed=0, dtype=torch.float64, bias=True):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    inp = {
        "hs": r(N, HS).requires_grad_(True), "ws": r(VS_PADDED, HS).requires_grad_(True),
        "bs": r(VS_PADDED, scale=0.5).requires_grad_(True) if bias else None,
        "ht": r(N, HT), "wt": r(VT_PADDED, HT), "bt": r(VT_PADDED, scale=0.5) if bias else None,
        "targets": torch.randint(0, V, (N,), generator=g),
        "w_div": r(N).abs() + 0.1, "w_ce": r(N),
    }
    inp["w_div"][2] = 0.0  # a position whose divergence is ignored entirely
    inp["w_div"][5] = -1.5  # arbitrary (even negative) weights must work: the gradient is linear in them
    inp["targets"][3] = -100  # an ignored target
    return inp


def plain_path(inp, fn, T, **hp):
    s_logits = (inp["hs"] @ inp["ws"].T + (0 if inp["bs"] is None else inp["bs"]))[:, :V]
    with torch.no_grad():
        t_logits = (inp["ht"] @ inp["wt"].T + (0 if inp["bt"] is None else inp["bt"]))[:, :V]
    div = fn(s_logits, t_logits, temperature=T, **hp)
    ce = F.cross_entropy(s_logits.float() if s_logits.dtype != torch.float64 else s_logits, inp["targets"],
                         reduction="none")
    return div, ce


def params(inp):
    return [inp[k] for k in ("hs", "ws", "bs") if inp[k] is not None]


@pytest.mark.parametrize("name,hp", CASES, ids=CASE_IDS)
def test_chunked_equals_the_plain_path(name, hp):
    inp = chunk_inputs()
    div, ce = plain_path(inp, DIVERGENCES[name], 1.5, **hp)
    expected_grads = torch.autograd.grad(((div * inp["w_div"]).sum() + (ce * inp["w_ce"]).sum()), params(inp))
    for chunk_size in (5, 1, 100):  # N = 13: not a multiple of 5; one row per chunk; a single chunk
        got_div, got_ce = chunked_divergence(inp["hs"], inp["ws"], inp["ht"], inp["wt"], name, vocab_size=V,
                                             temperature=1.5, chunk_size=chunk_size, student_head_bias=inp["bs"],
                                             teacher_head_bias=inp["bt"], targets=inp["targets"], **hp)
        assert got_div.shape == (N,) and got_ce.shape == (N,) and got_div.dtype == torch.float64
        torch.testing.assert_close(got_div, div, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got_ce, ce, rtol=1e-10, atol=1e-12)
        assert got_ce[3].item() == 0.0
        grads = torch.autograd.grad(((got_div * inp["w_div"]).sum() + (got_ce * inp["w_ce"]).sum()), params(inp))
        for g, e in zip(grads, expected_grads):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
        assert grads[1][V:].abs().max() == 0 and grads[2][V:].abs().max() == 0  # padded head rows: no gradient


def test_chunked_without_targets_returns_the_values_and_accepts_a_callable():
    inp = chunk_inputs(seed=1, bias=False)
    div, _ = plain_path(inp, generalized_jsd, 1.0, beta=0.2)
    expected = torch.autograd.grad((div * inp["w_div"]).sum(), params(inp))
    for divergence in ("generalized_jsd", generalized_jsd):
        got = chunked_divergence(inp["hs"], inp["ws"], inp["ht"], inp["wt"], divergence, vocab_size=V,
                                 chunk_size=4, beta=0.2)
        assert isinstance(got, torch.Tensor)
        torch.testing.assert_close(got, div, rtol=1e-10, atol=1e-12)
        grads = torch.autograd.grad((got * inp["w_div"]).sum(), params(inp))
        for g, e in zip(grads, expected):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    # hyperparameters reach the divergence: another beta gives other values
    other = chunked_divergence(inp["hs"], inp["ws"], inp["ht"], inp["wt"], "generalized_jsd", vocab_size=V, beta=0.7)
    assert (other - div).abs().max() > 1e-4


def test_chunked_teacher_gets_no_gradient_and_only_wanted_grads_are_computed():
    inp = chunk_inputs(seed=2)
    ht, wt = inp["ht"].clone().requires_grad_(True), inp["wt"].clone().requires_grad_(True)
    ws = inp["ws"].detach()  # a frozen head: only the hidden states get a gradient
    out = chunked_divergence(inp["hs"], ws, ht, wt, "forward_kl", vocab_size=V, chunk_size=4)
    out.sum().backward()
    assert ht.grad is None and wt.grad is None
    assert inp["hs"].grad is not None and torch.isfinite(inp["hs"].grad).all()


def test_chunked_never_saves_logits_for_backward():
    """The memory bound: nothing [*, V]-shaped is kept between forward and backward (the plain path keeps several,
    which shows the hook sees them)."""
    inp = chunk_inputs(seed=3)
    vocab_dims = {V, VS_PADDED, VT_PADDED}

    def saved_shapes(run):
        shapes = []

        def pack(x):
            shapes.append(tuple(x.shape))
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            run()
        return shapes

    plain = saved_shapes(lambda: plain_path(inp, forward_kl, 1.0))
    assert any(sh and sh[-1] in vocab_dims and len(sh) == 2 and sh[0] == N for sh in plain)
    chunked = saved_shapes(lambda: chunked_divergence(inp["hs"], inp["ws"], inp["ht"], inp["wt"], "forward_kl",
                                                      vocab_size=V, chunk_size=4, student_head_bias=inp["bs"],
                                                      targets=inp["targets"]))
    assert chunked, "the hook saw nothing: the test would pass vacuously"
    assert not [sh for sh in chunked if len(sh) == 2 and sh[0] == N and sh[1] in vocab_dims], chunked


def test_chunked_low_precision_inputs():
    inp = chunk_inputs(seed=4, dtype=torch.bfloat16)
    div, ce = plain_path(inp, reverse_kl, 1.0)
    expected = torch.autograd.grad((div * inp["w_div"]).sum() + (ce * inp["w_ce"]).sum(), params(inp))
    got_div, got_ce = chunked_divergence(inp["hs"], inp["ws"], inp["ht"], inp["wt"], "reverse_kl", vocab_size=V,
                                         chunk_size=5, student_head_bias=inp["bs"], teacher_head_bias=inp["bt"],
                                         targets=inp["targets"])
    assert got_div.dtype == torch.float32 and got_ce.dtype == torch.float32
    torch.testing.assert_close(got_div, div, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got_ce, ce, rtol=2e-2, atol=2e-2)
    grads = torch.autograd.grad((got_div * inp["w_div"]).sum() + (got_ce * inp["w_ce"]).sum(), params(inp))
    for g, e in zip(grads, expected):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), e.float(), rtol=5e-2, atol=5e-2)


def test_chunked_empty_input_and_validation():
    inp = chunk_inputs(seed=5)
    hs0 = inp["hs"][:0]
    out = chunked_divergence(hs0, inp["ws"], inp["ht"][:0], inp["wt"], "forward_kl", vocab_size=V)
    assert out.shape == (0,)
    args = (inp["hs"], inp["ws"], inp["ht"], inp["wt"])
    with pytest.raises(ValueError, match="vocab_size"):
        chunked_divergence(*args, "forward_kl", vocab_size=VS_PADDED + 1)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_divergence(*args, "forward_kl", vocab_size=V, chunk_size=0)
    with pytest.raises(ValueError, match="divergence"):
        chunked_divergence(*args, "no_such_divergence", vocab_size=V)
    with pytest.raises(ValueError, match="beta"):
        chunked_divergence(hs0, inp["ws"], inp["ht"][:0], inp["wt"], "generalized_jsd", vocab_size=V, beta=2.0)
    with pytest.raises(ValueError, match="temperature"):
        chunked_divergence(*args, "forward_kl", vocab_size=V, temperature=0.0)
    with pytest.raises(ValueError, match="positions"):
        chunked_divergence(inp["hs"], inp["ws"], inp["ht"][:5], inp["wt"], "forward_kl", vocab_size=V)
    with pytest.raises(ValueError, match="teacher_head_weight"):
        chunked_divergence(inp["hs"], inp["ws"], inp["ht"], inp["ws"], "forward_kl", vocab_size=V)
