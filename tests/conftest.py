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
SHARED_DATA = REPO.parent / "shared" / "data"

# Overrides that make a whole run take seconds: a small embedded benchmark, a one-layer teacher trained for a
# few steps, a handful of training steps and test items.
TINY_RUN = [
    "teacher=smoke", "trainer=smoke", "eval=smoke",
    "data.embedded.train_size=400", "data.embedded.validation_size=40", "data.embedded.test_size=60",
]


@pytest.fixture
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"{SHARED_DATA} is missing: tests read the real evaluation sets from ../shared/data"
    return SHARED_DATA
