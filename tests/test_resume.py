"""Resuming: a training interrupted after a resume checkpoint continues from it and ends with the same weights as
an uninterrupted one, for each kind of method state (offline; GKD's coin; DistiLLM's buffer and threshold;
MiniLLM's rollout in the middle of its PPO epochs; the selection's best weights); the file is written atomically
and a run continues only from a file of its own training config."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO, CountSteps, Crash, CrashAt, small_splits, tiny_model, trainer_cfg
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from kdbench.data.datamodule import InstructionDataModule
from kdbench.methods.registry import TrainingContext, method_of
from kdbench.models.loading import Loaded
from kdbench.schema import register_configs
from kdbench.training.fit import fit, make_trainer
from kdbench.training.resume import RUN_FILE, ResumeCheckpoint, run_resume_file, training_config
from kdbench.training.selection import SelectCheckpoint

ROWS = small_splits()
STEPS, CRASH_AT = 8, 5

# Short samples and settings that make each method's own state matter within 8 steps: DistiLLM draws fresh
# samples and replays them (a one-batch buffer, a threshold above 0), MiniLLM reuses a rollout for 4 steps (the
# crash at step 5 falls inside the second rollout's use), GKD tosses its coin every step.
METHOD_OVERRIDES = {
    "sft": [],
    "kd": [],
    "gkd": ["method.onpolicy.decoding.max_new_tokens=12"],
    "distillm": ["method.distillm.decoding.max_new_tokens=12", "method.distillm.init_threshold=0.6",
                 "method.distillm.capacity=16"],
    "minillm": ["method.minillm.decoding.max_new_tokens=12"],
}


def _method(name: str):
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return compose(config_name="train", overrides=[f"method={name}", *METHOD_OVERRIDES[name]]).method
    finally:
        GlobalHydra.instance().clear()


def _train(name, tok, teacher, resume_path=None, crash_at=None, val_every=None):
    """A fresh student (same init every time) trained STEPS steps with method `name`; (its weights, the
    selection's record, the module, the steps this call ran)."""
    method = _method(name)
    student = Loaded(tiny_model(tok, seed=3), tok, "tiny", 0, "")
    cfg = trainer_cfg(STEPS, val_every=val_every)
    cfg.resume_every_minutes = 0  # after every step
    kind = method_of(method)
    context = TrainingContext(steps=STEPS, batch_size=16, micro_batch_size=None, optim=cfg.optim, vocab_size=len(tok),
                              seed=0, max_prompt_length=256, cache_dir=None, show_progress=False)
    module = kind.build(student, Loaded(teacher, tok, "teacher", 0, "") if kind.needs_teacher else None, context)
    dm = InstructionDataModule(ROWS["train"], ROWS["validation"], tok, 16, seed=0)
    select = SelectCheckpoint(ROWS["validation"][:8], tok, "best_rouge_l", 8, 256)
    trainer = make_trainer(cfg, STEPS, callbacks=[select], resume_path=resume_path)
    count = CountSteps()
    trainer.callbacks.append(count)
    if crash_at is not None:
        trainer.callbacks.append(CrashAt(crash_at))
    torch.manual_seed(0)
    fit(module, dm, trainer)
    return {k: v.clone() for k, v in student.model.state_dict().items()}, select.record(), module, count.n


@pytest.mark.parametrize("name,crash_at", [*[(m, CRASH_AT) for m in METHOD_OVERRIDES], ("sft", 3)])
def test_an_interrupted_training_resumes_to_the_same_weights(name, crash_at, small_tokenizer, small_teacher,
                                                             tmp_path):
    """crash_at 3: a step followed by a validation; its checkpoint waits for the validation, so a crash between
    the two resumes from step 2's and redoes step 3 and its validation (a checkpoint taken before the validation
    would resume past it, and the selection would never see step 3)."""
    tok = small_tokenizer
    straight, straight_sel, straight_module, _ = _train(name, tok, small_teacher, val_every=3)

    path = tmp_path / f"k{name}.resume.ckpt"
    with pytest.raises(Crash):
        _train(name, tok, small_teacher, resume_path=path, crash_at=crash_at, val_every=3)
    assert path.is_file()
    resumed, resumed_sel, resumed_module, ran = _train(name, tok, small_teacher, resume_path=path, val_every=3)
    last_checkpoint = crash_at - 1 if crash_at % 3 == 0 else crash_at
    assert ran == STEPS - last_checkpoint  # it continued from the checkpoint, not from step 0

    for k in straight:
        assert torch.equal(straight[k], resumed[k]), f"{name}: {k} differs after resuming"
    # The selection saw the validations before the crash (step 3) and after it (step 6), as the straight run did.
    assert resumed_sel["history"] == straight_sel["history"] and len(straight_sel["history"]) >= 2
    assert resumed_module.tokens_seen == straight_module.tokens_seen
    # Its tokens/s counts the tokens it trained on itself, not those restored from the checkpoint.
    assert straight_module._tokens0 == 0 and 0 < resumed_module._tokens0 < resumed_module.tokens_seen
    # And its training time includes the interrupted process's, up to the checkpoint.
    assert straight_module.seconds_before == 0 and resumed_module.seconds_before > 0
    for attr in ("generated_tokens", "counts", "rollouts", "onpolicy_steps"):
        if hasattr(straight_module, attr):
            assert getattr(resumed_module, attr) == getattr(straight_module, attr), attr
    if name == "distillm":  # the settings above do exercise the buffer
        assert straight_module.counts["fresh"] > 0 and straight_module.counts["replay"] > 0


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path):
    path = tmp_path / "k.resume.ckpt"
    path.write_bytes(b"the previous checkpoint")

    class Dying:
        def save_checkpoint(self, p):
            with open(p, "wb") as f:
                f.write(b"half a chec")
            raise OSError("disk full")

    with pytest.raises(OSError):
        ResumeCheckpoint(path, 0).save(Dying())
    assert path.read_bytes() == b"the previous checkpoint"
    assert list(tmp_path.iterdir()) == [path]  # and no half-written temp file beside it


def test_a_run_resumes_only_from_a_file_of_the_same_training_config(tmp_path):
    base = {"seed": 0, "method": {"name": "kd"}, "trainer": {"max_steps": 100, "progress": True, "num_threads": 1},
            "eval": {"sets": {"a": 1}}, "logger": {"kind": "wandb"}, "paths": {"output_root": "x"}}

    def left_by(resolved):  # the file an interrupted run of `resolved` leaves
        path = tmp_path / RUN_FILE
        torch.save({"kdbench_config": training_config(resolved)}, path)
        return path

    # Evaluation, logging and display settings do not matter, nor a key only one side has (a newer kdbench's
    # field with its default).
    for same in ({**base, "eval": {"sets": {}}, "logger": {"kind": "none"}},
                 {**base, "trainer": {**base["trainer"], "progress": False, "num_threads": 2}},
                 {**base, "trainer": {**base["trainer"], "new_field": 3}}):
        path = left_by(base)
        assert run_resume_file(tmp_path, same)[0] == path and path.is_file()
    # What the training computes does.
    for other in ({**base, "seed": 1}, {**base, "trainer": {**base["trainer"], "max_steps": 200}}):
        path = left_by(base)
        assert run_resume_file(tmp_path, other)[0] == path and not path.exists()
    # An unreadable file, or one of another name (an older kdbench's), is removed.
    (tmp_path / RUN_FILE).write_bytes(b"half a chec")
    stale = tmp_path / "0123456789abcdef.resume.ckpt"
    stale.write_bytes(b"y")
    path, cfg = run_resume_file(tmp_path, base)
    assert not path.exists() and not stale.exists() and cfg == training_config(base)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_resume_checkpoint_is_moved_aside_and_training_starts_over(damage, small_tokenizer,
                                                                            small_teacher, tmp_path, caplog):
    # What a stage's resume file (the teacher stage, the warm start) meets when a disk fault or a copy cut
    # short damaged it: fit() must not fail on it at every later attempt.
    import logging

    path = tmp_path / "ksft.resume.ckpt"
    with pytest.raises(Crash):
        _train("sft", small_tokenizer, small_teacher, resume_path=path, crash_at=CRASH_AT)
    good = path.read_bytes()
    path.write_bytes(good[:len(good) // 2] if damage == "truncated" else b"\x00garbage" * 64)
    with caplog.at_level(logging.WARNING):
        _, _, _, ran = _train("sft", small_tokenizer, small_teacher, resume_path=path)
    assert ran == STEPS  # from step 0
    aside = list(tmp_path.glob("ksft.resume.ckpt.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() != good
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(path) in w and "does not load" in w for w in warned), warned
