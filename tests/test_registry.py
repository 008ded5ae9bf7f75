"""The method registry (kdbench.methods.registry): every conf/method YAML maps to its kind's class, each class says
what it needs and checks its own block, an unknown kind fails naming method.kind, a new kind plugs in by
registering itself, and each kind reports the cost keys results.json has always had."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from kdbench.methods.distillm import DistiLLM
from kdbench.methods.minillm import MiniLLM
from kdbench.methods.offline import Offline
from kdbench.methods.onpolicy import OnPolicy
from kdbench.methods.registry import _KINDS, Method, kinds, method_of, register
from kdbench.methods.seqkd import SeqKD
from kdbench.paths import conf_dir
from kdbench.runtime import validate
from kdbench.schema import ConfigError, MethodConfig, check, register_configs
from kdbench.schema import validate as validate_schema

CONF = conf_dir()
METHOD_YAMLS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))
OFFLINE = ("sft", "kd", "rkl", "jsd", "tvd", "skl", "srkl", "akl", "hidden")
EXPECTED_CLASS = {**dict.fromkeys(OFFLINE, Offline), "seqkd": SeqKD, "gkd": OnPolicy, "distillm": DistiLLM,
                  "minillm": MiniLLM, "minillm_paper": MiniLLM}
SAMPLING = ("gkd", "distillm", "minillm", "minillm_paper")


@pytest.fixture(autouse=True)
def _hydra():
    register_configs()
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def _method(option: str, *overrides: str) -> Method:
    return method_of(_compose(f"method={option}", *overrides).method)


def _config_error(cfg) -> str:
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    return str(e.value)


# ------------------------------------------------------------------------------------------ YAML -> class

def test_the_five_kinds_are_discovered():
    found = kinds()
    assert {"offline": Offline, "seqkd": SeqKD, "onpolicy": OnPolicy, "distillm": DistiLLM,
            "minillm": MiniLLM}.items() <= found.items()
    assert all(cls.__module__.startswith("kdbench.methods.") for cls in found.values())


@pytest.mark.parametrize("option", METHOD_YAMLS)
def test_every_method_yaml_maps_to_its_class(option):
    assert option in EXPECTED_CLASS, f"conf/method/{option}.yaml: add the Method class it should map to"
    cfg = _compose(f"method={option}")
    assert cfg.method.kind in kinds(), f"conf/method/{option}.yaml: method.kind={cfg.method.kind!r} is unknown"
    method = method_of(cfg.method)
    assert type(method) is EXPECTED_CLASS[option]
    assert method.cfg is cfg.method
    validate(cfg)  # every shipped method passes its own checks


def test_every_expected_method_has_its_yaml():
    assert sorted(EXPECTED_CLASS) == METHOD_YAMLS


# ------------------------------------------------------------------------------------------------ needs

def test_sft_needs_no_teacher():
    sft = _method("sft")
    assert (sft.reads_teacher_logits, sft.needs_teacher, sft.samples_student) == (False, False, False)


def test_kd_reads_the_teachers_logits():
    kd = _method("kd")
    assert (kd.reads_teacher_logits, kd.needs_teacher, kd.samples_student) == (True, True, False)
    # ... through its divergence weight: alpha 0 is sft again.
    assert not _method("kd", "method.alpha=0").needs_teacher


def test_seqkd_needs_the_teacher_but_not_its_logits():
    seqkd = _method("seqkd")
    assert (seqkd.reads_teacher_logits, seqkd.needs_teacher, seqkd.samples_student) == (False, True, False)


@pytest.mark.parametrize("option", SAMPLING)
def test_sampling_methods_sample_the_student_and_read_the_teacher(option):
    method = _method(option)
    assert (method.samples_student, method.reads_teacher_logits, method.needs_teacher) == (True, True, True)


def test_hidden_reads_the_teacher_through_its_weight():
    hidden = _method("hidden")
    assert (hidden.cfg.divergence, hidden.cfg.alpha) == (None, 0.0)  # no divergence term to read logits for
    assert hidden.reads_teacher_logits and hidden.needs_teacher
    off = _method("hidden", "method.hidden.weight=0")
    assert not off.reads_teacher_logits and not off.needs_teacher


# ------------------------------------------------------------------------------------------------ checks

def test_an_unknown_kind_fails_naming_method_kind_and_the_known_kinds():
    cfg = _compose("method.kind=nope")
    message = _config_error(cfg)
    match = re.fullmatch(r"method\.kind='nope': known kinds: (.*)", message)
    assert match, message
    assert match.group(1).split(", ") == sorted(kinds())


@pytest.mark.parametrize("overrides,key", [
    (("method=gkd", "method.onpolicy.lmbda=2"), "method.onpolicy.lmbda"),
    (("method=minillm", "method.minillm.decoding.top_p=0.9"), "method.minillm.decoding"),
    (("method=seqkd", "method.alpha=0.5"), "method.kind"),
    (("method=distillm", "method.divergence=null"), "method.kind"),
], ids=["gkd-lmbda", "minillm-top_p", "seqkd-alpha", "distillm-no-divergence"])
def test_a_kinds_own_checks_run_through_the_registry(overrides, key):
    cfg = _compose(*overrides)
    validate_schema(cfg)  # not the schema's range checks: the kind's class makes this one
    message = _config_error(cfg)
    assert message.startswith(f"{key}="), message
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}="):
        method_of(cfg.method).validate()


def test_another_kinds_block_is_not_checked():
    # The kind's class checks its own block: sft ignores an on-policy block it never reads.
    validate(_compose("method=sft", "method.onpolicy.lmbda=2"))


# ----------------------------------------------------------------------------------------- a new kind

class Toy(Method):
    """A kind defined outside kdbench/methods: only its class and `register`, no other edit."""

    kind = "toy_registry_test"

    def validate_block(self) -> None:
        check(self.cfg.alpha == 0, "method.alpha", self.cfg.alpha, "toy trains on the ground truth only")


@pytest.fixture
def toy():
    kinds()  # discover the real kinds first, so that removing the toy leaves the registry as a run sees it
    assert Toy.kind not in _KINDS
    register(Toy)
    try:
        yield Toy
    finally:
        _KINDS.pop(Toy.kind, None)


def test_a_registered_kind_is_found_and_validated(toy):
    cfg = OmegaConf.structured(MethodConfig(name="toy", kind=toy.kind))
    method = method_of(cfg)
    assert type(method) is toy and toy.kind in kinds()
    method.validate()
    cfg.alpha = 0.5
    with pytest.raises(ConfigError, match=r"^method\.alpha=0\.5: toy trains on the ground truth only"):
        method_of(cfg).validate()
    # The whole run's validation reaches it too, from a composed config.
    validate(_compose(f"method.kind={toy.kind}", "method.alpha=0"))
    assert _config_error(_compose(f"method.kind={toy.kind}", "method.alpha=0.5")).startswith("method.alpha=0.5")


def test_registering_a_kind_twice_fails_and_keeps_the_first(toy):
    register(toy)  # the same class again (a module imported once more) is no conflict

    class Impostor(Method):
        kind = "offline"

    with pytest.raises(RuntimeError, match="'offline' is registered twice"):
        register(Impostor)
    assert kinds()["offline"] is Offline

    class ToyAgain(Method):
        kind = toy.kind

    with pytest.raises(RuntimeError, match=f"'{toy.kind}' is registered twice"):
        register(ToyAgain)
    assert kinds()[toy.kind] is toy


# -------------------------------------------------------------------------------------------------- cost

def test_cost_reports_what_results_json_holds():
    sampled = dict(generated_tokens=1234, onpolicy_steps=3, rollouts=5,
                   counts={"fresh": 2, "replay": 4, "data": 6}, threshold=SimpleNamespace(value=0.25),
                   threshold_checks=10)
    module = SimpleNamespace(**sampled)
    assert _method("gkd").cost(module) == {"student_generated_tokens": 1234, "onpolicy_steps": 3}
    assert _method("minillm").cost(module) == {"student_generated_tokens": 1234, "rollouts": 5}
    assert _method("distillm").cost(module) == {"student_generated_tokens": 1234, "fresh_steps": 2,
                                                "replay_steps": 4, "data_steps": 6, "student_output_steps": 6,
                                                "threshold_checks": 10, "final_student_data_probability": 0.25}
    # Offline and seqkd sample nothing from the student: no cost keys, whatever the module carries.
    assert _method("kd").cost(module) == {}
    assert _method("seqkd").cost(module) == {}
