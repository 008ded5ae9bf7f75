"""Every YAML under conf/ and sweeps/ composes against the schema; bad keys and values fail naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from kdbench.paths import conf_dir, sweeps_dir
from kdbench.runtime import validate
from kdbench.schema import ConfigError, register_configs

CONF = conf_dir()
SWEEPS = sweeps_dir()
GROUP_OPTIONS = sorted(
    (p.parent.relative_to(CONF).as_posix(), p.stem)
    for p in CONF.rglob("*.yaml")
    if p.parent != CONF and not p.relative_to(CONF).parts[0] == "hydra"
)
SWEEP_FILES = sorted(p.stem for p in SWEEPS.rglob("*.yaml"))
# Benchmark v4's data and profiles go together (v5's sets have no rows on v4, v4's none on v5): each composes with
# its partner; the default data and profiles are v5's.
V4_PARTNER = {("data", "embedded_v4"): ["eval=light_v4"], ("eval", "light_v4"): ["data=embedded_v4"],
              ("eval", "study_v4"): ["data=embedded_v4"]}


@pytest.fixture(autouse=True)
def _hydra():
    register_configs()
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def _compose(overrides=(), config_name="train", return_hydra=False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=return_hydra)


def test_groups_were_found():
    groups = {g for g, _ in GROUP_OPTIONS}
    assert {"teacher", "student", "data", "method", "eval", "trainer", "logger", "experiment", "paths"} <= groups
    assert len(SWEEP_FILES) >= 1


@pytest.mark.parametrize("group,option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_group_option_composes(group, option):
    # An evaluation set is composed into a profile's dict of sets (conf/eval/full.yaml), not at the root.
    override = f"+eval_set@eval.sets.extra={option}" if group == "eval_set" else f"{group}={option}"
    cfg = _compose([override, *V4_PARTNER.get((group, option), [])])
    # Everything resolves (no dangling interpolations); data=jsonl needs paths the user must give.
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert container["method"]["name"]
    if group == "data" and option == "jsonl":
        with pytest.raises(ConfigError, match=r"data\.train\.path"):
            validate(cfg)
    elif group not in ("experiment",):
        validate(cfg)


@pytest.mark.parametrize("name", SWEEP_FILES)
def test_every_sweep_composes_with_its_grid(name):
    # A sweep is a primary config in sweeps/ whose defaults name conf/'s `train`.
    with initialize_config_dir(config_dir=str(SWEEPS), version_base="1.3"):
        cfg = compose(config_name=name, overrides=[f"hydra.searchpath=[file://{CONF}]"],
                      return_hydra_config=True)
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.sweeper.params, f"sweeps/{name}.yaml has no grid"
    assert cfg.sweep_name != "default"
    for key, values in cfg.hydra.sweeper.params.items():
        for value in str(values).split(","):  # each cell's choice must itself compose
            GlobalHydra.instance().clear()
            validate(_compose([f"{key}={value}"]))


def test_the_v5_profiles_read_whole_cycles_of_the_test_families():
    # The v5 test split cycles through its families (EVAL_WEIGHTS_V5): a prefix of whole cycles keeps every family's
    # share exact, so the study's and light's row counts are multiples of the cycle.
    from kdbench.data.embedded import EVAL_WEIGHTS_V5

    cycle = sum(EVAL_WEIGHTS_V5.values())
    light = _compose().eval
    GlobalHydra.instance().clear()
    cfg = _compose(["eval=study"])
    validate(cfg)
    e = cfg.eval
    assert list(e.sets) == ["embedded_v5_test", "embedded_v5_mood"] and e.name == "study"
    assert e.sets.embedded_v5_test.truth.enabled and e.sets.embedded_v5_mood.truth.enabled
    assert list(e.sampling.sets) == ["embedded_v5_test"] == [e.exposure_bias.set] == [e.agreement.set]
    for n in (e.sampling.limit, e.exposure_bias.num_prompts, e.agreement.num_items, light.agreement.num_items):
        assert n % cycle == 0, n
    # Stories run to 132 tokens: every length the study reads or generates has room for them.
    assert e.max_response_length == cfg.data.max_response_length == e.sampling.decoding.max_new_tokens == \
        e.exposure_bias.max_new_tokens == e.sets.embedded_v5_test.max_new_tokens == 160


def test_misspelt_key_fails_naming_it():
    with pytest.raises(Exception, match="temprature"):
        _compose(["method.temprature=2"])


def test_wrong_type_fails_naming_key():
    with pytest.raises(Exception, match="max_steps"):
        _compose(["trainer.max_steps=lots"])


@pytest.mark.parametrize("override,key", [
    ("method.temperature=0", "method.temperature"),
    ("method.alpha=1.5", "method.alpha"),
    ("method.divergence=nonsense", "method.divergence"),
    ("trainer.micro_batch_size=64", "trainer.micro_batch_size"),
    ("student.arch.num_heads=5", "student.arch.num_heads"),
    ("method=jsd method.divergence_hp.beta=1.5", "method.divergence_hp"),
    ("method=skl +method.divergence_hp.skew=0.1", "method.divergence_hp"),
    ("method=akl method.divergence_hp.mu=-1", "method.divergence_hp"),
    ("method.chunk_size=0", "method.chunk_size"),
    ("method.chunk_elements=0", "method.chunk_elements"),
])
def test_nonsense_values_fail_when_the_run_starts(override, key):
    cfg = _compose(override.split())
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


@pytest.mark.parametrize("override,key,allowed", [
    ("logger.kind=tensorboard", "logger.kind", "wandb, none"),
    ("logger.mode=sometimes", "logger.mode", "offline, online, disabled"),
    ("data.train.kind=csv", "data.train.kind", "embedded, jsonl, hf"),
    ("student.source=downloaded", "student.source", "scratch, pretrained"),
    ("teacher.dtype=float8", "teacher.dtype", "float32, bfloat16, float16"),
    ("trainer.select=best_bleu", "trainer.select", "best_rouge_l, last"),
    ("method.hidden.loss=l1", "method.hidden.loss", "mse, cosine"),
    ("method=distillm method.distillm.replay_ratio=random", "method.distillm.replay_ratio", "decreasing"),
    ("eval.judge.backend=gpt4", "eval.judge.backend", "openai, hf, none"),
    ("eval.exposure_bias.average=mean", "eval.exposure_bias.average", "sequence, alive"),
    ("eval.sets.embedded_v5_test.metrics=[bleu]", "eval.sets.embedded_v5_test.metrics", "rouge_l"),
    ("eval.sets.embedded_v5_test.kind=regression", "eval.sets.embedded_v5_test.kind", "generation, classification"),
])
def test_a_value_outside_its_fixed_set_fails_at_compose_naming_the_key(override, key, allowed):
    # Enums in the schema: the bad value never reaches a run (moved here from the checks at run start).
    with pytest.raises(Exception) as e:
        _compose(override.split())
    message = str(e.value) + str(e.value.__cause__ or "")
    assert key in message and allowed in message, message


def test_run_folder_is_a_pure_function_of_overrides():
    a = _compose(["method=sft", "student=small"], return_hydra=True)
    GlobalHydra.instance().clear()
    b = _compose(["method=sft", "student=small"], return_hydra=True)
    dirs = [OmegaConf.to_container(c.hydra, resolve=False) for c in (a, b)]
    assert dirs[0]["run"] == dirs[1]["run"] and dirs[0]["sweep"] == dirs[1]["sweep"]
    for d in (dirs[0]["run"]["dir"], dirs[0]["sweep"]["dir"], dirs[0]["sweep"]["subdir"]):
        assert "now:" not in d  # no timestamps: a re-run finds its folder
    assert "override_dirname" in dirs[0]["run"]["dir"] and "override_dirname" in dirs[0]["sweep"]["subdir"]


def test_jsd_near_an_endpoint_warns_at_start():
    with pytest.warns(UserWarning, match="beta"):
        validate(_compose(["method=jsd", "method.divergence_hp.beta=0.005"]))


def test_help_lists_groups_and_options():
    out = subprocess.run([sys.executable, "-m", "kdbench.train", "--help"], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).parent)
    assert out.returncode == 0, out.stderr
    for group in ("method", "student", "teacher", "data", "eval", "trainer", "logger"):
        assert f"{group}:" in out.stdout
    methods = "akl, distillm, gkd, hidden, jsd, kd, minillm, minillm_paper, rkl, seqkd, sft, skl, srkl, tvd"
    assert methods in out.stdout and "tiny" in out.stdout
