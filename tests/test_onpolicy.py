"""On-policy distillation (GKD): prompts recovered from a training batch, the student's samples turned into a
training batch, the lambda coin, and a short run in which the held-out divergence to the teacher falls."""

from __future__ import annotations

import copy

import torch
from conftest import sft, small_splits, tiny_model, trainer_cfg
from omegaconf import OmegaConf

from kdbench.data.datamodule import IGNORE, InstructionDataModule, collate
from kdbench.data.template import render_prompt
from kdbench.generation.settings import generation_settings
from kdbench.losses import generalized_jsd
from kdbench.methods.onpolicy import OnPolicyDistillation, prompts_of_batch, student_batch
from kdbench.models.surgery import response_logits
from kdbench.schema import Decoding, MethodConfig, OnPolicyConfig
from kdbench.training.fit import fit, make_trainer

ROWS = small_splits()


def _gkd(lmbda: float) -> object:
    return OmegaConf.structured(MethodConfig(name="gkd", kind="onpolicy", divergence="generalized_jsd",
                                             divergence_hp={"beta": 0.5}, alpha=1.0,
                                             onpolicy=OnPolicyConfig(lmbda=lmbda,
                                                                     decoding=Decoding(max_new_tokens=24))))


def test_prompts_of_batch_recovers_each_rows_prompt():
    items = [{"prompt_ids": [5, 6, 7], "response_ids": [8, 2]}, {"prompt_ids": [9], "response_ids": [10, 11, 2]}]
    batch = collate(items, pad_id=1)
    assert prompts_of_batch(batch) == [[5, 6, 7], [9]]


def test_student_batch_puts_the_samples_after_the_prompts(small_tokenizer):
    tok = small_tokenizer
    student = tiny_model(tok, seed=0)
    prompts = [tok(render_prompt(r["instruction"], r["input"]))["input_ids"] for r in ROWS["validation"][:6]]
    settings = generation_settings(Decoding(max_new_tokens=12), do_sample=True, batch_size=4, seed=3)
    batch, n_new = student_batch(student, prompts, settings, tok.pad_token_id, tok.eos_token_id)
    assert n_new > 0
    assert prompts_of_batch(batch) == prompts  # the prompts are untouched, the responses are the labels
    for j, p in enumerate(prompts):
        labels = batch["labels"][j]
        assert (labels[:len(p)] == IGNORE).all()
        n_resp = int((labels != IGNORE).sum())
        assert 1 <= n_resp <= 12
    # Seeded: the same settings give the same samples.
    again, _ = student_batch(student, prompts, settings, tok.pad_token_id, tok.eos_token_id)
    assert torch.equal(again["input_ids"], batch["input_ids"])


def _jsd_on_own_samples(student, teacher, tok) -> float:
    """GKD's objective, held out: the generalized JSD to the teacher at the positions of the student's own samples
    (fixed seed) for the validation prompts."""
    prompts = [tok(render_prompt(r["instruction"], r["input"]))["input_ids"] for r in ROWS["validation"]]
    settings = generation_settings(Decoding(max_new_tokens=24), do_sample=True, batch_size=32, seed=5)
    batch, _ = student_batch(student, prompts, settings, tok.pad_token_id, tok.eos_token_id)
    with torch.no_grad():
        s, _ = response_logits(student, batch, len(tok))
        t, _ = response_logits(teacher, batch, len(tok))
    return float(generalized_jsd(s, t, beta=0.5).mean())


def test_gkd_moves_the_student_toward_the_teacher_on_its_own_samples(small_tokenizer, small_teacher):
    """Warm-started with a few sft steps, as GKD starts (a random student's samples are noise the teacher can say
    little about), then 30 steps with lambda = 1 (every step on the student's own samples) and lambda = 0 (every
    step on the data, no sampling). Both lower the held-out JSD on the student's own samples; on-policy more."""
    torch.manual_seed(0)
    dm = InstructionDataModule(ROWS["train"], ROWS["validation"], small_tokenizer, 16, seed=0)
    warm = sft(tiny_model(small_tokenizer, seed=0), small_tokenizer, ROWS, 20)
    before = _jsd_on_own_samples(warm, small_teacher, small_tokenizer)
    after = {}
    for lmbda in (0.0, 1.0):
        student = copy.deepcopy(warm)
        tok = small_tokenizer
        module = OnPolicyDistillation(student, small_teacher, _gkd(lmbda), trainer_cfg(30).optim, 30, len(tok),
                                      tok.pad_token_id, tok.eos_token_id, seed=0)
        fit(module, dm, make_trainer(trainer_cfg(30), 30))
        after[lmbda] = _jsd_on_own_samples(student, small_teacher, small_tokenizer)
        if lmbda == 1.0:
            assert module.onpolicy_steps == 30 and module.generated_tokens > 0
        else:
            assert module.onpolicy_steps == 0 and module.generated_tokens == 0
    assert after[0.0] < 0.9 * before and after[1.0] < 0.8 * before, (before, after)
    assert after[1.0] < after[0.0], after  # on-policy steps target exactly these prefixes
    assert all(not p.requires_grad for p in small_teacher.parameters())


def test_the_lambda_coin_is_seeded_and_fair(small_tokenizer, small_teacher):
    def coins(seed):
        tok = small_tokenizer
        m = OnPolicyDistillation(tiny_model(tok, seed=0), small_teacher, _gkd(0.5), trainer_cfg(1).optim, 1, len(tok),
                                 tok.pad_token_id, tok.eos_token_id, seed=seed)
        return [m._coin.random() < 0.5 for _ in range(400)]

    assert coins(0) == coins(0) and coins(0) != coins(1)
    assert 160 < sum(coins(0)) < 240
