"""DistiLLM: the adaptive threshold on a scripted validation-loss sequence, the fresh/replay/data choice, the replay
buffer, and a short run whose held-out skew KL to the teacher falls while student outputs come in."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import small_splits, tiny_model, trainer_cfg
from omegaconf import OmegaConf

from kdbench.data.datamodule import InstructionDataModule, collate
from kdbench.losses import skew_forward_kl
from kdbench.methods.distillm import AdaptiveThreshold, DistiLLMDistillation, ReplayBuffer, _items_of, fresh_probability
from kdbench.models.surgery import response_logits
from kdbench.schema import Decoding, DistiLLMConfig, MethodConfig
from kdbench.training.fit import fit, make_trainer

ROWS = small_splits()


def test_threshold_rises_only_when_validation_loss_rises_by_eps():
    t = AdaptiveThreshold(init=0.0, step=0.1, loss_eps=0.1)
    assert t.update(2.00) is False and t.reference == 2.00  # the loss before training is the reference
    assert t.update(1.50) is False and t.value == 0.0        # falling: nothing
    assert t.update(2.05) is False and t.value == 0.0        # above the reference by less than eps
    assert t.update(2.10) is True and t.value == pytest.approx(0.1) and t.reference == 2.10
    assert t.update(2.15) is False                           # the reference moved with the rise
    assert t.update(2.25) is True and t.value == pytest.approx(0.2)
    for loss in (3, 4, 5, 6, 7, 8, 9, 10, 11):
        t.update(loss)
    assert t.value == 1.0                                    # capped


def test_fresh_probability_schedules():
    assert fresh_probability(0.4, 0, 100, "decreasing") == pytest.approx(0.4)
    assert fresh_probability(0.4, 75, 100, "decreasing") == pytest.approx(0.1)
    assert fresh_probability(0.4, 75, 100, "increasing") == pytest.approx(0.3)
    assert fresh_probability(0.4, 75, 100, "constant") == pytest.approx(0.2)


def test_replay_buffer_keeps_the_last_capacity_items_and_samples_without_replacement():
    buf = ReplayBuffer(capacity=5, rng=random.Random(0))
    buf.add([{"prompt_ids": [i], "response_ids": [i, 2]} for i in range(8)])
    assert len(buf) == 5 and buf.full
    assert [it["prompt_ids"][0] for it in buf.items] == [3, 4, 5, 6, 7]
    drawn = buf.sample(4)
    assert len({it["prompt_ids"][0] for it in drawn}) == 4
    assert len(buf.sample(50)) == 5


def test_items_round_trip_through_a_collated_batch():
    items = [{"prompt_ids": [5, 6, 7], "response_ids": [8, 2]}, {"prompt_ids": [9], "response_ids": [10, 11, 2]}]
    assert _items_of(collate(items, pad_id=1)) == items


def _distillm(**kw) -> object:
    return OmegaConf.structured(MethodConfig(name="distillm", kind="distillm", divergence="skew_forward_kl",
                                             divergence_hp={"alpha": 0.1}, alpha=1.0,
                                             distillm=DistiLLMConfig(decoding=Decoding(max_new_tokens=16),
                                                                     capacity=64, **kw)))


def test_choice_follows_the_threshold(small_tokenizer):
    tok = small_tokenizer
    m = DistiLLMDistillation(tiny_model(tok, 0), tiny_model(tok, 1), _distillm(), trainer_cfg(100).optim, 100,
                             len(tok), tok.pad_token_id, tok.eos_token_id, seed=0)
    assert {m.choose(s) for s in range(200)} == {"data"}  # threshold 0: the data only
    m.threshold.value = 1.0
    assert {m.choose(s) for s in range(50)} == {"fresh"}  # buffer not full: every draw under 1 samples afresh
    m.buffer.add([{"prompt_ids": [3], "response_ids": [4]}] * 64)
    picks = [m.choose(90) for _ in range(400)]  # fresh chance 1 x (1 - 90/100) = 0.1, replay the rest
    assert 20 < picks.count("fresh") < 65 and picks.count("data") == 0


def test_distillm_run_brings_in_student_outputs_and_moves_toward_the_teacher(small_tokenizer, small_teacher):
    """init_threshold 0.5 so that student outputs come in within a short run (the default 0 waits for the
    validation loss to rise); the held-out skew KL to the teacher falls."""
    dm = InstructionDataModule(ROWS["train"], ROWS["validation"], small_tokenizer, 16, seed=0)
    torch.manual_seed(0)
    module = DistiLLMDistillation(tiny_model(small_tokenizer, seed=0), small_teacher, _distillm(init_threshold=0.5),
                                  trainer_cfg(40).optim, 40, len(small_tokenizer), small_tokenizer.pad_token_id,
                                  small_tokenizer.eos_token_id, seed=0)

    def held_out() -> float:
        module.student.eval()
        total = n = 0.0
        with torch.no_grad():
            for b in dm.val_dataloader():
                s, targets = response_logits(module.student, b, len(small_tokenizer))
                t, _ = response_logits(small_teacher, b, len(small_tokenizer))
                total += float(skew_forward_kl(s, t, alpha=0.1).sum())
                n += targets.numel()
        return total / n

    before = held_out()
    fit(module, dm, make_trainer(trainer_cfg(40, val_every=10), 40))
    after = held_out()
    assert after < 0.7 * before, (before, after)
    c = module.counts
    assert sum(c.values()) == 40 and c["fresh"] > 0 and c["data"] > 0, c
    assert module.generated_tokens > 0 and len(module.buffer) > 0
    assert module.threshold.reference is not None  # the loss before training was measured
    # Its own validations, evenly inside the phase, whatever the trainer's cadence (val_every=10 here).
    assert module.check_steps == {round(k * 40 / 11) for k in range(1, 11)} and module.threshold_checks == 10


def test_the_threshold_is_checked_often_enough_to_engage():
    from kdbench.methods.registry import method_of
    from kdbench.schema import ConfigError

    with pytest.raises(ConfigError, match=r"^method\.distillm\.threshold_checks=4: .*at least 5"):
        method_of(_distillm(threshold_checks=4)).validate()
