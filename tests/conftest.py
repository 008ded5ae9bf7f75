"""Shared test setup: offline, quiet, and small."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Before anything imports transformers / wandb: no hub traffic, no W&B network, no progress bars.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]

# Overrides that make a whole run take seconds: a small embedded benchmark, a one-layer teacher trained for a
# few steps, a handful of training steps and test items.
TINY_RUN = [
    "teacher=smoke", "trainer=smoke", "eval=smoke",
    "data.embedded.train_size=400", "data.embedded.validation_size=40", "data.embedded.test_size=60",
]


def compose_train(overrides=()):
    """The `train` config with these overrides, composed as the CLI composes it (the typed schema registered)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from kdbench.paths import conf_dir
    from kdbench.schema import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return compose(config_name="train", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


# ----------------------------------------------------------------- interrupting a training (resume tests)

import lightning as L  # noqa: E402 - after the environment above is set


class Crash(RuntimeError):
    pass


class CrashAt(L.Callback):
    """Raise once `global_step` reaches `step`: a training killed at that point (callbacks placed after the
    resume checkpoint's run after its save of that step, those placed before it run before)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args, **kwargs):
        if trainer.global_step >= self.step:
            raise Crash(f"interrupted at step {trainer.global_step}")


class CountSteps(L.Callback):
    """How many training steps this trainer ran (a resumed one runs only those left)."""

    def __init__(self):
        self.n = 0

    def on_train_batch_end(self, *args, **kwargs):
        self.n += 1


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread, and the suite may share the machine with other work."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rand_logits(*shape, seed: int, scale: float = 3.0, dtype=None):
    """Seeded random logits (drawn in float64, then cast; float32 by default) shared by the loss tests."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


# ----------------------------------------------------------------- tiny models for the method tests
# A small embedded benchmark, its tokenizer, one-layer LLaMA-style models and a teacher that has learned something
# (a random one is near-uniform: nothing to distill), shared by the tests of the methods that train on it.

def small_splits():
    # Benchmark v4 by name (the default is v5): its short deterministic answers are what the method tests' budgets
    # and thresholds were set on (a 120-step teacher that has learned something, 300 rows).
    from kdbench.data.embedded import SplitSizes, generate_splits

    return generate_splits(version=4, sizes=SplitSizes(train=300, validation=32, test=8))


def tiny_tokenizer(rows: list[dict]):
    from kdbench.data.template import render_prompt
    from kdbench.models.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer([render_prompt(r["instruction"], r["input"]) + r["output"] for r in rows],
                               vocab_size=400)


def tiny_model(tok, seed: int, hidden: int = 32):
    from kdbench.models.loading import build_from_arch
    from kdbench.schema import ArchConfig

    return build_from_arch(ArchConfig(hidden_size=hidden, num_layers=1, num_heads=2, intermediate_size=64), tok, seed)


def trainer_cfg(steps: int, lr: float = 1e-2, val_every: int | None = None):
    from omegaconf import OmegaConf

    from kdbench.schema import TrainerConfig

    cfg = OmegaConf.structured(TrainerConfig(max_steps=steps, batch_size=16, val_every=val_every or steps,
                                             val_batches=1, progress=False))
    cfg.optim.lr = lr
    cfg.optim.warmup_steps = 5
    return cfg


def sft(model, tok, rows: dict, steps: int, seed: int = 0):
    """`steps` sft steps on rows["train"] (validation on rows["validation"]); returns the model."""
    from omegaconf import OmegaConf

    from kdbench.data.datamodule import InstructionDataModule
    from kdbench.methods.offline import OfflineDistillation
    from kdbench.schema import MethodConfig
    from kdbench.training.fit import fit, make_trainer

    dm = InstructionDataModule(rows["train"], rows["validation"], tok, 16, seed=seed)
    fit(OfflineDistillation(model, None, OmegaConf.structured(MethodConfig(name="sft")), trainer_cfg(steps).optim,
                            steps, len(tok)), dm, make_trainer(trainer_cfg(steps), steps))
    return model


@pytest.fixture(scope="session")
def small_tokenizer():
    """The tokenizer of small_splits()'s train rows, shared by the method tests."""
    return tiny_tokenizer(small_splits()["train"])


@pytest.fixture(scope="session")
def small_teacher(small_tokenizer):
    """A frozen teacher that has learned something: 120 sft steps (fewer leave one that repeats a letter), 48 wide.
    Shared read-only by every method test; a random teacher is near-uniform, nothing to distill."""
    from kdbench.models.loading import freeze

    return freeze(sft(tiny_model(small_tokenizer, seed=1, hidden=48), small_tokenizer, small_splits(), 120, seed=1))


# ----------------------------------------------------------------- the real evaluation sets
# The tests read the sets bundled with the package (kdbench/assets/evalsets, PROVENANCE.md there), never a folder
# beside the checkout: a fresh clone has everything a test reads.

def bundled_records(name: str, n: int | None = None) -> list[dict]:
    """The first `n` (all: None) JSON objects of the bundled evaluation set `name` (e.g. "sst2_dev")."""
    from kdbench.data.bundled import bundled_path, iter_bundled

    records = []
    for raw, _ in iter_bundled(bundled_path(name)):
        if n is not None and len(records) >= n:
            break
        records.append(raw)
    return records


@pytest.fixture(scope="session")
def bundled_file(tmp_path_factory):
    """name -> an uncompressed JSONL copy of the bundled evaluation set `name`, for what reads a local file
    (source.path overrides, read_jsonl, lm-eval's task_data); each is written once per session."""
    import gzip
    import shutil

    from kdbench.data.bundled import bundled_path

    folder = tmp_path_factory.mktemp("evalsets")

    def path(name: str) -> Path:
        out = folder / f"{name}.jsonl"
        if not out.is_file():
            with gzip.open(bundled_path(name), "rb") as src, out.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        return out

    return path


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory) -> Path:
    """A plain (non-editable) wheel of this checkout, built once for the packaging tests."""
    import shutil
    import subprocess
    import sys

    # Built from a copy without build outputs: setuptools' build/lib keeps files deleted since (a module that
    # became a package, a removed method), and a wheel built in place would ship them.
    source = tmp_path_factory.mktemp("source") / "kdbench"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "outputs",
                                                                ".ci-cache", "*.egg-info", "__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(dist), str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    return next(dist.glob("kdbench-*.whl"))
