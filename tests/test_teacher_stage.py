"""The teacher stage trains a scratch teacher once, caches it under a content key, and reuses it."""

from __future__ import annotations

from conftest import TINY_RUN
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from kdbench.paths import conf_dir
from kdbench.schema import register_configs
from kdbench.stages import teacher as stage
from kdbench.stages.tokenizer import embedded_tokenizer


def _cfg(extra=()):
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=[*TINY_RUN, *extra])


def test_short_stage_run_trains_saves_and_is_reused(tmp_path, monkeypatch):
    cfg = _cfg()
    tok = embedded_tokenizer(cfg.data.embedded, tmp_path)
    model, key = stage.teacher_stage(cfg, tok, tmp_path, show_progress=False)
    folder = tmp_path / "teachers" / key
    assert (folder / "model.safetensors").is_file()
    recipe = stage.recipe(folder)
    assert recipe["key"] == key and recipe["teacher"]["finetune"]["max_steps"] == 4
    assert not any(p.requires_grad is False for p in model.parameters())  # loaded fresh; freezing is the caller's

    # A second call loads the cached teacher without training.
    monkeypatch.setattr(stage, "_train", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    again, key2 = stage.teacher_stage(cfg, tok, tmp_path, show_progress=False)
    assert key2 == key
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert (a == b).all(), n


def test_key_changes_with_anything_that_determines_the_teacher(tmp_path):
    base = _cfg()
    tok_key = "tok"
    k0 = stage.teacher_key(base.teacher, base.data, tok_key)
    assert stage.teacher_key(_cfg().teacher, _cfg().data, tok_key) == k0
    for override in ("teacher.arch.hidden_size=48", "teacher.finetune.max_steps=5", "teacher.finetune.seed=1",
                     "data.embedded.seed=3", "data.max_prompt_length=200"):
        cfg = _cfg([override])
        assert stage.teacher_key(cfg.teacher, cfg.data, tok_key) != k0, override
    assert stage.teacher_key(base.teacher, base.data, "other-tokenizer") != k0
    # The display name does not change what is trained.
    assert stage.teacher_key(_cfg(["teacher.name=renamed"]).teacher, base.data, tok_key) == k0
    # The data enters by content: a config edit that leaves the train rows alone keeps the key (a new schema
    # field with a default must not orphan the shipped teacher), one that changes them does not.
    assert stage.teacher_key(base.teacher, _cfg(["data.name=renamed", "data.validation.limit=7"]).data,
                             tok_key) == k0
    assert stage.teacher_key(base.teacher, _cfg(["data.train.limit=100"]).data, tok_key) != k0


def test_an_interrupted_stage_resumes_to_the_same_teacher(tmp_path, monkeypatch):
    import pytest
    from conftest import CountSteps, Crash, CrashAt

    from kdbench.training import fit as fit_module

    cfg = _cfg(["trainer.resume_every_minutes=0"])  # a resume checkpoint after every step
    tok = embedded_tokenizer(cfg.data.embedded, tmp_path)
    straight, key = stage.teacher_stage(cfg, tok, tmp_path / "straight", show_progress=False)

    make_trainer = fit_module.make_trainer
    monkeypatch.setattr(fit_module, "make_trainer",
                        lambda *a, **k: make_trainer(*a, **{**k, "callbacks": [CrashAt(2)]}))
    with pytest.raises(Crash):
        stage.teacher_stage(cfg, tok, tmp_path / "resumed", show_progress=False)
    left = tmp_path / "resumed" / "teachers" / f"{key}.resume.ckpt"
    assert left.is_file() and stage.find_teacher(key, tmp_path / "resumed") is None
    count = CountSteps()
    monkeypatch.setattr(fit_module, "make_trainer", lambda *a, **k: make_trainer(*a, **{**k, "callbacks": [count]}))
    resumed, _ = stage.teacher_stage(cfg, tok, tmp_path / "resumed", show_progress=False)
    # The crash came before step 2's checkpoint (user callbacks run before ResumeCheckpoint): step 1's is the
    # last, and the stage continued from it, not from step 0.
    assert count.n == cfg.teacher.finetune.max_steps - 1
    assert not left.exists()  # published: nothing left to resume
    for (n, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert (a == b).all(), n
