"""MiniLLM: returns, length normalization, whitening and PPO clipping on hand-computed rollouts; teacher-mixed
sampling; and a short run in which what the method is for, the reverse KL of the student's own samples to the
teacher, falls (its policy-gradient loss need not)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import sft, small_splits, tiny_model, trainer_cfg
from omegaconf import OmegaConf

from kdbench.data.datamodule import InstructionDataModule
from kdbench.data.template import render_prompt
from kdbench.generation.mixed import mixed_sample
from kdbench.methods.minillm import (
    MiniLLMDistillation,
    advantages,
    collect_rollout,
    from_grid,
    ppo_loss,
    response_grid,
    returns,
    to_grid,
    tokens_left,
)
from kdbench.schema import Decoding, MethodConfig, MiniLLMConfig
from kdbench.training.fit import fit, make_trainer

ROWS = small_splits()


def test_returns_with_and_without_the_current_step():
    r = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    with_current = returns(r, m, gamma=0.5, include_current=True)
    assert with_current.tolist() == [[1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0, 0.0]]
    without = returns(r, m, gamma=0.5, include_current=False)
    assert without.tolist() == [[2 + 0.5 * 3, 3.0, 0.0, 0.0]]
    # Padding never leaks into a return.
    r_pad = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    assert returns(r_pad, m, 0.5, True).tolist() == with_current.tolist()


def test_tokens_left_and_length_normalization():
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert tokens_left(m).tolist() == [[3, 2, 1, 1], [1, 1, 1, 1]]
    r = torch.tensor([[3.0, 3.0, 3.0, 0.0], [6.0, 0.0, 0.0, 0.0]])
    # gamma 1, current step included: the mean reward of the rest of the sequence.
    a = advantages(r, m, gamma=1.0, include_current=True, length_norm=True, whiten=False)
    assert a.tolist() == [[3.0, 3.0, 3.0, 0.0], [6.0, 0.0, 0.0, 0.0]]
    # The paper's R_{t+1} / (T - t - 1): the last token has nothing after it.
    b = advantages(r, m, gamma=1.0, include_current=False, length_norm=True, whiten=False)
    assert b.tolist() == [[3.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]


def test_whitening_uses_response_positions_only():
    r = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    a = advantages(r, m, gamma=0.0, include_current=True, length_norm=False, whiten=True)
    sel = a[m.bool()]
    assert sel.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert sel.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    assert a[0, 3].item() == 0.0


def test_ppo_clipping():
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.5, 0.9, 0.5, 1.1]))
    loss = ppo_loss(new, old, adv, torch.ones(4), cliprange=0.2)
    # A > 0: the ratio's gain is capped at 1.2; A < 0: its drop is floored at 0.8 (the pessimistic bound).
    assert loss.tolist() == pytest.approx([-1.2, -0.9, 0.8, 1.1])
    # The importance weight multiplies the ratio before clipping.
    w = torch.tensor([0.5, 1.0, 1.0, 1.0])
    assert ppo_loss(new, old, adv, w, 0.2)[0].item() == pytest.approx(-0.75)


def test_grid_round_trip():
    from kdbench.data.datamodule import collate
    batch = collate([{"prompt_ids": [5, 6], "response_ids": [7, 8, 2]}, {"prompt_ids": [9], "response_ids": [2]}], 1)
    lengths, mask = response_grid(batch)
    assert lengths.tolist() == [3, 1] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    flat = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert from_grid(to_grid(flat, lengths, 3), lengths).tolist() == flat.tolist()


def _prompts(tok, rows):
    return [tok(render_prompt(r["instruction"], r["input"]))["input_ids"] for r in rows]


def test_teacher_mixed_sampling_with_alpha_one_ignores_the_student(small_tokenizer, small_teacher):
    prompts = _prompts(small_tokenizer, ROWS["validation"][:6])
    tok = small_tokenizer
    kw = dict(alpha=1.0, max_new_tokens=12, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, vocab_size=len(tok),
              seed=4)
    a = mixed_sample(tiny_model(small_tokenizer, 0), small_teacher, prompts, **kw)
    b = mixed_sample(tiny_model(small_tokenizer, 7), small_teacher, prompts, **kw)
    assert a == b and all(1 <= len(x) <= 12 for x in a)
    assert all(x[-1] == small_tokenizer.eos_token_id or len(x) == 12 for x in a)
    assert mixed_sample(tiny_model(small_tokenizer, 0), small_teacher, prompts, **{**kw, "alpha": 0.0}) != a


def test_rollout_weights_are_one_without_mixing(small_tokenizer, small_teacher):
    prompts = _prompts(small_tokenizer, ROWS["validation"][:4])
    cfg = MiniLLMConfig(teacher_mixed_alpha=0.0, decoding=Decoding(max_new_tokens=8))
    tok = small_tokenizer
    ro = collect_rollout(tiny_model(tok, 0), small_teacher, prompts, cfg, len(tok), tok.pad_token_id, tok.eos_token_id,
                         seed=0)
    assert torch.allclose(ro.weights, torch.ones_like(ro.weights))
    assert ro.old_logprobs.shape == ro.advantages.shape == (ro.tokens,)


def _own_sample_reverse_kl(student, teacher, tok) -> float:
    """Held out: the sequence-level reverse KL estimate, mean over the student's own samples (alpha 0) for the
    validation prompts of log q(y_t) - log p(y_t)."""
    cfg = MiniLLMConfig(teacher_mixed_alpha=0.0, decoding=Decoding(max_new_tokens=24))
    ro = collect_rollout(student, teacher, _prompts(tok, ROWS["validation"]), cfg, len(tok), tok.pad_token_id,
                         tok.eos_token_id, seed=11)
    return ro.reverse_kl


def test_minillm_lowers_the_reverse_kl_of_its_own_samples(small_tokenizer, small_teacher):
    torch.manual_seed(0)
    warm = sft(tiny_model(small_tokenizer, seed=0), small_tokenizer, ROWS, 20)
    before = _own_sample_reverse_kl(warm, small_teacher, small_tokenizer)
    student = copy.deepcopy(warm)
    method = OmegaConf.structured(MethodConfig(name="minillm", kind="minillm", divergence="forward_kl", alpha=0.5,
                                               minillm=MiniLLMConfig(decoding=Decoding(max_new_tokens=24))))
    tok = small_tokenizer
    module = MiniLLMDistillation(student, small_teacher, method, trainer_cfg(32, lr=3e-3).optim, 32, len(tok),
                                 tok.pad_token_id, tok.eos_token_id, seed=0)
    dm = InstructionDataModule(ROWS["train"], ROWS["validation"], small_tokenizer, 16, seed=0)
    fit(module, dm, make_trainer(trainer_cfg(32, lr=3e-3), 32))
    after = _own_sample_reverse_kl(student, small_teacher, small_tokenizer)
    assert module.rollouts == 8 and module.generated_tokens > 0  # one rollout per 4 PPO steps
    assert after < 0.8 * before, (before, after)


def test_micro_batches_leave_a_minillm_step_unchanged(small_tokenizer, small_teacher):
    """trainer.micro_batch_size splits the rollout's PPO loss and the pretraining term into pieces (memory on a real
    model); the step's update must be the one of the whole batch."""
    tok = small_tokenizer
    method = OmegaConf.structured(MethodConfig(name="minillm", kind="minillm", divergence="forward_kl", alpha=0.5,
                                               minillm=MiniLLMConfig(decoding=Decoding(max_new_tokens=16))))
    start = tiny_model(tok, seed=0)
    after = {}
    for micro in (None, 3):
        student = copy.deepcopy(start)
        module = MiniLLMDistillation(student, small_teacher, method, trainer_cfg(2).optim, 2, len(tok),
                                     tok.pad_token_id, tok.eos_token_id, seed=0, micro_batch_size=micro)
        dm = InstructionDataModule(ROWS["train"], ROWS["validation"], tok, 16, seed=0)
        fit(module, dm, make_trainer(trainer_cfg(2), 2))
        after[micro] = student.state_dict()
    # The two runs add the same gradient terms in another order (a backward per micro-batch), and float32 addition
    # is not associative: each gradient element is off by a rounding error of about 6e-8 x sqrt(terms summed) of
    # its size. Adam then divides each element by its own running RMS, so where a gradient is near zero that
    # rounding becomes a visible part of the element's step: a fixed tolerance on single weights (atol 1e-6 failed
    # at 2.1e-6 on one element of 2,048) measures neither. What is compared is each tensor's step (after - start),
    # in norm and relative to the step's own norm. Measured with micro-batches of 1, 2 and 3 rows: at most 1.9e-5.
    # A real error moves it by 0.02 to 0.9 in every tensor (each micro-batch's RL loss averaged over its own tokens,
    # or one micro-batch's RL loss lost): 1e-3 keeps a margin of 50 above the one and of 20 below the other.
    moved = 0.0
    for k, v in after[None].items():
        step = v - start.state_dict()[k]
        differs = float((after[3][k] - v).norm())
        assert differs <= 1e-3 * float(step.norm()), f"{k}: the micro-batched step differs by {differs:.3g} " \
                                                     f"(the step's norm is {float(step.norm()):.3g})"
        moved = max(moved, float(step.abs().max()))
    assert moved > 1e-4  # the steps did change the weights


def test_the_policy_gradient_phase_trains_at_the_official_share_of_the_sft_rate(small_tokenizer, small_teacher):
    """The official scripts: SFT at 5e-4 (cosine), MiniLLM at 5e-6 with lr-min 5e-6: 1/100, constant after the
    warmup. Built through the registry, as a run builds it."""
    from kdbench.methods.registry import TrainingContext, method_of
    from kdbench.models.loading import Loaded

    tok = small_tokenizer
    optim = trainer_cfg(100).optim
    context = TrainingContext(steps=100, batch_size=4, micro_batch_size=None, optim=optim, vocab_size=len(tok),
                              seed=0, max_prompt_length=256, cache_dir=None, show_progress=False)
    method = OmegaConf.structured(MethodConfig(name="minillm", kind="minillm", divergence="forward_kl", alpha=0.5))
    module = method_of(method).build(Loaded(tiny_model(tok, 0), tok, "s", 0, ""),
                                     Loaded(small_teacher, tok, "t", 0, ""), context)
    assert module.optim_cfg.lr == pytest.approx(optim.lr * 0.01)
    assert module.optim_cfg.min_lr_ratio == 1.0 and module.optim_cfg.warmup_steps == optim.warmup_steps
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    factors = [scheduler.lr_lambdas[0](s) for s in (optim.warmup_steps, 50, 99)]
    assert factors == [1.0, 1.0, 1.0]  # no decay after the warmup
    assert optim.lr == trainer_cfg(100).optim.lr  # the trainer's own settings untouched
    method.minillm.lr_ratio = 0.5
    method.minillm.constant_lr = False
    module = method_of(method).build(Loaded(tiny_model(tok, 0), tok, "s", 0, ""),
                                     Loaded(small_teacher, tok, "t", 0, ""), context)
    assert module.optim_cfg.lr == pytest.approx(optim.lr * 0.5)
    assert module.optim_cfg.min_lr_ratio == optim.min_lr_ratio
