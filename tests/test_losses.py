"""The loss contract: a divergence maps (student_logits, teacher_logits, mask, temperature) to per-token values in
fp32, masked tokens contribute nothing, and the caller reduces by the token count of the whole optimizer step so
that splitting a step into micro-batches leaves the gradient unchanged.

Golden values come from references written here (plain Python math or explicit float64 torch ops), never from
the code under test.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from conftest import rand_logits
from omegaconf import OmegaConf

from kdbench.data.datamodule import IGNORE, collate, encode_row
from kdbench.losses import DIVERGENCES, forward_kl
from kdbench.methods.offline import OfflineDistillation
from kdbench.models.loading import build_from_arch, freeze
from kdbench.models.surgery import response_logits
from kdbench.models.tokenizer import train_bpe_tokenizer
from kdbench.schema import ArchConfig, MethodConfig, OptimConfig

# ----------------------------------------------------------------------------------------------------------------
# Independent references
# ----------------------------------------------------------------------------------------------------------------

def softmax_py(logits: list[float]) -> list[float]:
    m = max(logits)
    e = [math.exp(x - m) for x in logits]
    z = sum(e)
    return [x / z for x in e]


def kl_py(student: list[float], teacher: list[float], temperature: float = 1.0) -> float:
    """KL(p_teacher || q_student) in plain Python floats (double precision), by the definition."""
    q = softmax_py([x / temperature for x in student])
    p = softmax_py([x / temperature for x in teacher])
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def kl_ref(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The same definition with explicit float64 tensor ops: p = exp(t) / sum exp(t), KL = sum p log p - p log q."""
    s = student.double() / temperature
    t = teacher.double() / temperature
    q = torch.exp(s - s.max(-1, keepdim=True).values)
    q = q / q.sum(-1, keepdim=True)
    p = torch.exp(t - t.max(-1, keepdim=True).values)
    p = p / p.sum(-1, keepdim=True)
    return (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(-1)


# ----------------------------------------------------------------------------------------------------------------
# forward_kl on its own
# ----------------------------------------------------------------------------------------------------------------

def test_registry_names_forward_kl():
    assert DIVERGENCES["forward_kl"] is forward_kl


def test_zero_when_distributions_are_equal():
    x = rand_logits(4, 7, 11, seed=0)
    assert torch.equal(forward_kl(x, x.clone()), torch.zeros(4, 7))
    # softmax is shift-invariant: the same distributions from shifted logits give (numerically) zero too
    shifted = forward_kl(x, x + 5.0)
    assert shifted.abs().max().item() < 1e-5


def test_non_negative_and_positive_on_random_logits():
    for seed in range(5):
        s, t = rand_logits(6, 13, seed=2 * seed), rand_logits(6, 13, seed=2 * seed + 1)
        v = forward_kl(s, t)
        assert (v >= 0).all(), v
        assert (v > 1e-3).all(), "distinct random distributions must have a strictly positive KL"


@pytest.mark.parametrize("shape", [(9,), (5, 9), (2, 3, 9), (2, 1, 3, 9)])
def test_output_shape_is_the_leading_dims(shape):
    s, t = rand_logits(*shape, seed=1), rand_logits(*shape, seed=2)
    assert forward_kl(s, t).shape == shape[:-1]
    mask = torch.ones(shape[:-1], dtype=torch.bool)
    assert forward_kl(s, t, mask).shape == shape[:-1]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp32_inside_whatever_the_input_dtype(dtype):
    s, t = rand_logits(3, 4, 50, seed=3, dtype=dtype), rand_logits(3, 4, 50, seed=4, dtype=dtype)
    v = forward_kl(s, t)
    assert v.dtype == torch.float32
    # the value is that of the (exactly representable) low-precision inputs computed at fp32 accuracy, not the
    # much coarser value a bf16/fp16 softmax would give
    torch.testing.assert_close(v.double(), kl_ref(s, t), atol=1e-5, rtol=1e-5)
    assert forward_kl(s, t.float()).dtype == torch.float32  # mixed dtypes too


def test_golden_value_on_a_hand_written_case():
    student = [[1.0, 2.0, 0.5, -1.0], [0.0, 0.0, 0.0, 0.0]]
    teacher = [[0.0, 1.0, 3.0, -2.0], [2.0, -1.0, 0.5, 0.0]]
    expected = [kl_py(s, t) for s, t in zip(student, teacher)]
    # A second, fully manual check of the first row: KL = sum p log p - sum p log q, with log q = s - logsumexp(s)
    lse_s = math.log(sum(math.exp(x) for x in student[0]))
    lse_t = math.log(sum(math.exp(x) for x in teacher[0]))
    p = [math.exp(x - lse_t) for x in teacher[0]]
    by_hand = sum(pi * ((t - lse_t) - (s - lse_s)) for pi, s, t in zip(p, student[0], teacher[0]))
    assert by_hand == pytest.approx(expected[0], rel=1e-12)
    got = forward_kl(torch.tensor(student), torch.tensor(teacher))
    assert got.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_temperature_is_the_formula_at_logits_over_t():
    student = [1.0, 2.0, 0.5, -1.0]
    teacher = [0.0, 1.0, 3.0, -2.0]
    s, t = torch.tensor([student]), torch.tensor([teacher])
    for T in (0.5, 2.0, 4.0):
        expected = kl_py([x / T for x in student], [x / T for x in teacher])
        assert forward_kl(s, t, temperature=T).item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
        # no T^2 factor inside: exactly the T = 1 formula on scaled logits
        assert forward_kl(s, t, temperature=T).item() == pytest.approx(
            forward_kl(s / T, t / T).item(), rel=1e-5)
    # the temperature changes the value (so the checks above can fail)
    assert abs(forward_kl(s, t, temperature=2.0).item() - forward_kl(s, t).item()) > 1e-2
    # random logits against the float64 reference
    rs, rt = rand_logits(8, 31, seed=5), rand_logits(8, 31, seed=6)
    torch.testing.assert_close(forward_kl(rs, rt, temperature=3.0).double(), kl_ref(rs, rt, 3.0),
                               atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("T", [0.0, -1.0, -1e-9])
def test_non_positive_temperature_raises(T):
    s, t = rand_logits(2, 5, seed=0), rand_logits(2, 5, seed=1)
    with pytest.raises(ValueError):
        forward_kl(s, t, temperature=T)


def test_teacher_zero_probabilities_give_finite_values_and_gradients():
    s = rand_logits(3, 6, seed=7).requires_grad_(True)
    t = rand_logits(3, 6, seed=8)
    t[:, 0] = float("-inf")
    t[1, 2:5] = float("-inf")
    v = forward_kl(s, t)
    assert torch.isfinite(v).all(), v
    expected = [kl_py(srow, trow) for srow, trow in zip(s.detach().tolist(), t.tolist())]
    assert v.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    v.sum().backward()
    assert torch.isfinite(s.grad).all()


def test_all_masked_batch_gives_zero_not_nan_and_zero_gradient():
    s = rand_logits(3, 5, 17, seed=11).requires_grad_(True)
    t = rand_logits(3, 5, 17, seed=12)
    v = forward_kl(s, t, torch.zeros(3, 5, dtype=torch.bool))
    total = v.sum()
    assert not torch.isnan(total)
    assert total.item() == 0.0
    total.backward()
    assert torch.isfinite(s.grad).all()
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_masked_nan_or_inf_logits_do_not_leak_into_the_gradient():
    """Masked tokens contribute nothing, to the gradient too: padding whose teacher logits are -inf (or a student
    row that went NaN) must not turn the student's gradient into NaN, or one optimizer step destroys the model."""
    s = rand_logits(4, 9, seed=13)
    t = rand_logits(4, 9, seed=14)
    s[1] = float("nan")
    t[3] = float("-inf")
    s.requires_grad_(True)
    mask = torch.tensor([True, False, True, False])
    v = forward_kl(s, t, mask)
    assert torch.isfinite(v).all()
    v.sum().backward()
    bad_rows = (~torch.isfinite(s.grad)).any(-1).nonzero().flatten().tolist()
    assert not bad_rows, f"masked rows {bad_rows} leaked NaN/inf into the student's gradient"
    assert torch.equal(s.grad[~mask], torch.zeros(2, 9))
    # and an all-masked batch of such garbage: value 0, gradient zeros
    s2 = s.detach().clone().requires_grad_(True)
    v2 = forward_kl(s2, t, torch.zeros(4, dtype=torch.bool))
    assert v2.sum().item() == 0.0
    v2.sum().backward()
    assert torch.isfinite(s2.grad).all() and torch.equal(s2.grad, torch.zeros_like(s2))


# ----------------------------------------------------------------------------------------------------------------
# Token-count reduction through OfflineDistillation
# ----------------------------------------------------------------------------------------------------------------

WORDS = ("the cat sat on a mat while dogs ran over green hills and birds sang songs in tall trees near rivers "
         "every morning before noon").split()

ROWS = [  # right-padded batch, very different response lengths per row
    {"prompt": "the cat sat on", "output": "a mat"},
    {"prompt": "dogs", "output": "ran over green hills and birds sang songs in tall trees near rivers every morning"},
    {"prompt": "birds sang songs in tall trees near the", "output": "rivers"},
    {"prompt": "a cat and", "output": "dogs ran over the hills"},
]


@pytest.fixture(scope="module")
def tokenizer():
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(50)]
    return train_bpe_tokenizer(texts, vocab_size=300)


@pytest.fixture(scope="module")
def models(tokenizer):
    arch = ArchConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    student = build_from_arch(arch, tokenizer, seed=0)
    teacher = freeze(build_from_arch(arch, tokenizer, seed=1))
    return student, teacher


@pytest.fixture(scope="module")
def batch(tokenizer):
    items = [encode_row(r, tokenizer, max_prompt_length=64, max_response_length=64) for r in ROWS]
    lengths = [len(it["response_ids"]) for it in items]
    assert len(set(lengths)) == len(lengths), lengths  # the invariance test needs unequal rows
    return collate(items, tokenizer.pad_token_id)


def kd_method(**kw):
    return OmegaConf.structured(MethodConfig(name="kd", divergence="forward_kl", alpha=0.5, **kw))


def n_response_tokens(b: dict) -> int:
    return int((b["labels"][:, 1:] != IGNORE).sum())


def split(b: dict, size: int):
    return [{k: v[i:i + size] for k, v in b.items()} for i in range(0, b["input_ids"].shape[0], size)]


def grads_of(student, losses_fn) -> dict[str, torch.Tensor]:
    student.zero_grad(set_to_none=True)
    losses_fn()
    out = {n: p.grad.detach().clone() for n, p in student.named_parameters() if p.grad is not None}
    student.zero_grad(set_to_none=True)
    return out


def test_loss_sums_match_an_independent_computation(models, batch, tokenizer):
    student, teacher = models
    module = OfflineDistillation(student, teacher, kd_method(), optim=None, max_steps=1, vocab_size=len(tokenizer))
    with torch.no_grad():
        sums = module.loss_sums(batch)
        s_full = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        t_full = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    at = targets != IGNORE
    assert sums["tokens"] == int(at.sum()) == sum(len(tokenizer(r["output"])["input_ids"]) + 1 for r in ROWS)
    s_logits, t_logits, y = s_full[at].double(), t_full[at].double(), targets[at]
    log_q = s_logits - torch.logsumexp(s_logits, -1, keepdim=True)
    ce = -log_q.gather(-1, y[:, None]).sum()
    kd = kl_ref(s_logits, t_logits).sum()
    assert sums["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert sums["kd"].item() == pytest.approx(kd.item(), rel=1e-4)
    assert sums["loss"].item() == pytest.approx(0.5 * ce.item() + 0.5 * kd.item(), rel=1e-5)


@pytest.mark.parametrize("micro_size", [1, 2])
def test_gradient_accumulation_leaves_the_gradient_unchanged(models, batch, tokenizer, micro_size):
    student, teacher = models
    module = OfflineDistillation(student, teacher, kd_method(), optim=None, max_steps=1, vocab_size=len(tokenizer))
    total = n_response_tokens(batch)

    def full():
        (module.loss_sums(batch)["loss"] / total).backward()

    def accumulated():  # what training_step does: each micro-batch's sum / the whole step's token count
        for micro in split(batch, micro_size):
            (module.loss_sums(micro)["loss"] / total).backward()

    def mean_of_means():  # what Lightning's own accumulation would do
        micros = split(batch, micro_size)
        for micro in micros:
            sums = module.loss_sums(micro)
            (sums["loss"] / sums["tokens"] / len(micros)).backward()

    g_full, g_acc, g_mom = grads_of(student, full), grads_of(student, accumulated), grads_of(student, mean_of_means)
    assert g_full.keys() == g_acc.keys() and len(g_full) > 0
    for name in g_full:
        torch.testing.assert_close(g_acc[name], g_full[name], atol=1e-6, rtol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")
    # the reduction matters: averaging micro-batch means gives a different gradient (so this test can fail)
    differs = max((g_mom[n] - g_full[n]).abs().max().item() for n in g_full)
    scale = max(g_full[n].abs().max().item() for n in g_full)
    assert differs > 1e-3 * scale, (differs, scale)


def test_training_step_micro_batching_matches_the_full_batch(models, batch, tokenizer):
    """The real training_step (manual optimization) with micro_batch_size=1 vs none: the same clipped update."""
    student, teacher = models
    arch = ArchConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    optim = OmegaConf.structured(OptimConfig(lr=1e-2, warmup_steps=1, weight_decay=0.0, grad_clip=1e9))
    results = []
    for micro in (None, 1):
        s = build_from_arch(arch, tokenizer, seed=0)
        module = OfflineDistillation(s, teacher, kd_method(), optim, max_steps=1, vocab_size=len(tokenizer),
                                     micro_batch_size=micro)
        grads = {}

        def capture(module=module, grads=grads):
            for n, p in module.student.named_parameters():
                grads[n] = p.grad.detach().clone()

        # Drive the real step without a Trainer: stub the optimizer/scheduler plumbing, keep the loss and backward.
        class Opt:
            def step(self):
                capture()

            def zero_grad(self, set_to_none=True):
                module.student.zero_grad(set_to_none=set_to_none)  # noqa: B023 - used within this iteration

        class Sched:
            def step(self):
                pass

            def get_last_lr(self):
                return [0.0]

        module.optimizers = lambda: Opt()
        module.lr_schedulers = lambda: Sched()
        module.manual_backward = lambda loss: loss.backward()
        module.clip_gradients = lambda *a, **k: None
        module.log_dict = lambda *a, **k: None
        module.log = lambda *a, **k: None
        module.training_step(batch, 0)
        results.append(grads)
    full, micro = results
    assert full.keys() == micro.keys() and len(full) > 0
    for name in full:
        torch.testing.assert_close(micro[name], full[name], atol=1e-6, rtol=1e-5)


def test_sft_never_calls_the_teacher(models, batch, tokenizer):
    student, _ = models
    sft = OmegaConf.structured(MethodConfig(name="sft"))
    assert sft.divergence is None and sft.alpha == 0
    module = OfflineDistillation(student, None, sft, optim=None, max_steps=1, vocab_size=len(tokenizer))
    sums = module.loss_sums(batch)
    assert "kd" not in sums
    assert torch.equal(sums["loss"], sums["ce"])
    assert sums["tokens"] == n_response_tokens(batch)
    sums["loss"].backward()  # trains the student on ground truth alone
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    student.zero_grad(set_to_none=True)

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"the teacher was used (.{name}) although alpha = 0")

        def __call__(self, *a, **k):
            raise AssertionError("the teacher was called although alpha = 0")

    # a divergence named with alpha = 0 is sft too: the teacher is never run
    zero_alpha = OmegaConf.structured(MethodConfig(name="kd", divergence="forward_kl", alpha=0.0))
    module = OfflineDistillation(student, Untouchable(), zero_alpha, optim=None, max_steps=1,
                                 vocab_size=len(tokenizer))
    with torch.no_grad():
        sums2 = module.loss_sums(batch)
    assert "kd" not in sums2
    assert sums2["ce"].item() == pytest.approx(sums["ce"].item(), rel=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# response_logits
# ----------------------------------------------------------------------------------------------------------------

def test_response_logits_are_the_full_logits_at_response_positions(models, batch, tokenizer):
    student, _ = models
    V = len(tokenizer)
    with torch.no_grad():
        logits, targets = response_logits(student, batch, V)
        full = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shifted = batch["labels"][:, 1:]
    n = int((shifted != IGNORE).sum())
    # N counts response tokens only (each row's response + EOS), never prompt or padding positions
    assert n == sum(len(tokenizer(r["output"])["input_ids"]) + 1 for r in ROWS)
    assert logits.shape == (n, V) and targets.shape == (n,)
    expected, expected_targets = [], []
    for b in range(shifted.shape[0]):
        for pos in range(shifted.shape[1]):
            if shifted[b, pos] != IGNORE:
                expected.append(full[b, pos])  # the logits at pos predict the token at pos + 1
                expected_targets.append(batch["labels"][b, pos + 1])
    torch.testing.assert_close(logits, torch.stack(expected), atol=1e-5, rtol=0)
    assert torch.equal(targets, torch.stack(expected_targets))
    # vocab_size cuts padded vocabulary columns off
    with torch.no_grad():
        cut, _ = response_logits(student, batch, V - 3)
    assert cut.shape == (n, V - 3)
    torch.testing.assert_close(cut, logits[:, :V - 3], atol=1e-6, rtol=0)
