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
