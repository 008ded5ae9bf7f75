"""Each method trains through Lightning on tiny models and its loss goes down; kd moves the student toward the
teacher on held-out data."""

from __future__ import annotations

import pytest
import torch
from conftest import sft, small_splits, tiny_model, trainer_cfg
from omegaconf import OmegaConf

from kdbench.data.datamodule import InstructionDataModule
from kdbench.losses import forward_kl
from kdbench.methods.offline import OfflineDistillation
from kdbench.models.loading import freeze
from kdbench.schema import MethodConfig
from kdbench.training.fit import fit, make_trainer

ROWS = small_splits()


@pytest.fixture(scope="module")
def tokenizer(small_tokenizer):
    return small_tokenizer


def _held_out(module, dm, teacher=None):
    """(CE, the method's divergence to the teacher (forward KL for sft)) per response token on the validation
    rows."""
    div = module.divergence or forward_kl
    module.student.eval()
    ce = kl = n = 0.0
    with torch.no_grad():
        for batch in dm.val_dataloader():
            from kdbench.models.surgery import response_logits
            s, targets = response_logits(module.student, batch, module.vocab_size)
            ce += float(torch.nn.functional.cross_entropy(s, targets, reduction="sum"))
            if teacher is not None:
                t, _ = response_logits(teacher, batch, module.vocab_size)
                kl += float(div(s, t, **module.divergence_hp).sum())
            n += targets.numel()
    return ce / n, kl / n


@pytest.fixture(scope="module")
def teacher(tokenizer):
    """A teacher that has learned something (a random one is near-uniform: nothing to distill): 40 sft steps, the
    teacher these tests' thresholds were set against (conftest's small_teacher has 120)."""
    return freeze(sft(tiny_model(tokenizer, seed=1, hidden=48), tokenizer, ROWS, 40, seed=1))


def _method_configs() -> list:
    """Every shipped conf/method/*.yaml as Hydra composes it (defaults lists included), plus pure Hinton-style KD."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from kdbench.paths import conf_dir
    from kdbench.schema import register_configs

    register_configs()
    configs = []
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        for p in sorted((conf_dir() / "method").glob("*.yaml")):
            configs.append(compose(config_name="train", overrides=[f"method={p.stem}"]).method)
    GlobalHydra.instance().clear()
    return configs + [OmegaConf.structured(MethodConfig(name="kd-pure", divergence="forward_kl", alpha=1.0,
                                                        temperature=2.0, scale_by_t2=True))]


@pytest.mark.parametrize("method", _method_configs(), ids=lambda m: m.name)
def test_training_lowers_the_loss(tokenizer, teacher, method):
    torch.manual_seed(0)
    teacher = teacher if (method.divergence or method.hidden.weight > 0) else None
    student = tiny_model(tokenizer, seed=0)
    cfg = trainer_cfg(40)
    dm = InstructionDataModule(ROWS["train"], ROWS["validation"], tokenizer, 16, seed=0)
    module = OfflineDistillation(student, teacher, method, cfg.optim, 40, len(tokenizer))
    ce0, kl0 = _held_out(module, dm, teacher)
    fit(module, dm, make_trainer(cfg, 40))
    ce1, kl1 = _held_out(module, dm, teacher)
    if method.alpha < 1:
        assert ce1 < 0.8 * ce0, (ce0, ce1)
    if teacher is not None:
        assert kl1 < 0.7 * kl0, (kl0, kl1)  # the student moved toward the teacher
        # The teacher is untouched: frozen, and not part of the module's parameters.
        assert all(not p.requires_grad for p in teacher.parameters())
        assert not any(p is q for p in module.parameters() for q in teacher.parameters())


def test_hidden_state_distillation_moves_the_students_layers_toward_the_teachers(tokenizer, teacher):
    from kdbench.models.surgery import response_hidden
    from kdbench.paths import conf_dir
    method = OmegaConf.merge(OmegaConf.structured(MethodConfig), OmegaConf.load(conf_dir() / "method/hidden.yaml"))
    torch.manual_seed(0)
    student = tiny_model(tokenizer, seed=0)  # width 32 against the teacher's 48: a learned projection
    cfg = trainer_cfg(40)
    dm = InstructionDataModule(ROWS["train"], ROWS["validation"], tokenizer, 16, seed=0)
    module = OfflineDistillation(student, teacher, method, cfg.optim, 40, len(tokenizer))
    assert module.layer_map == [1] and module.projections is not None

    def held_out_hidden():
        total = n = 0.0
        with torch.no_grad():
            for batch in dm.val_dataloader():
                s = response_hidden(student, batch, all_layers=True)
                t = response_hidden(teacher, batch, all_layers=True)
                total += float(module.hidden_loss_sum(s[2], t[2]))
                n += s[1].numel()
        return total / n

    before = held_out_hidden()
    fit(module, dm, make_trainer(cfg, 40))
    assert held_out_hidden() < 0.5 * before


def test_uniform_layer_map_and_a_map_out_of_range(tokenizer, teacher):
    from kdbench.methods.offline import uniform_layer_map
    from kdbench.schema import ConfigError
    assert uniform_layer_map(2, 4) == [2, 4]
    assert uniform_layer_map(3, 12) == [4, 8, 12]
    assert uniform_layer_map(4, 4) == [1, 2, 3, 4]
    method = OmegaConf.structured(MethodConfig(name="hidden"))
    method.hidden.weight = 1.0
    method.hidden.layer_map = [5]
    with pytest.raises(ConfigError, match=r"method\.hidden\.layer_map"):
        OfflineDistillation(tiny_model(tokenizer, seed=0), teacher, method, trainer_cfg(1).optim, 1, len(tokenizer))


def test_chunk_rows_hold_a_fixed_number_of_logits_unless_rows_are_set():
    from kdbench.methods.offline import chunk_rows
    from kdbench.schema import MethodConfig

    m = MethodConfig(name="kd", divergence="forward_kl", alpha=0.5)
    assert chunk_rows(m, 32000) == 2**22 // 32000 == 131
    assert chunk_rows(m, 128000) == 32
    assert chunk_rows(m, 900) == 4660  # the embedded benchmark: every response row in one chunk
    assert chunk_rows(MethodConfig(name="kd", chunk_elements=10), 32000) == 1  # never zero rows
    assert chunk_rows(MethodConfig(name="kd", chunk_size=7), 32000) == 7


def test_a_student_loaded_in_eval_mode_trains_in_train_mode(tokenizer, teacher):
    """from_pretrained hands back eval mode (dropout off); fitting must switch the student, never the teacher."""
    student = tiny_model(tokenizer, seed=0)
    student.eval()
    seen = []
    student.model.register_forward_pre_hook(lambda mod, args: seen.append(mod.training))  # the decoder stack
    cfg = trainer_cfg(2)
    dm = InstructionDataModule(ROWS["train"], ROWS["validation"], tokenizer, 16, seed=0)
    module = OfflineDistillation(student, teacher, OmegaConf.structured(MethodConfig(name="kd", divergence="forward_kl",
                                                                                      alpha=0.5)),
                                 cfg.optim, 2, len(tokenizer))
    fit(module, dm, make_trainer(cfg, 2))
    assert seen and seen[0] is True
    assert not teacher.training
