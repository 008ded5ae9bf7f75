"""The judge's settings: kdbench.schema.JudgeConfig, the one definition (eval.judge in a config), and the backends
its `backend` may name."""

from __future__ import annotations

from kdbench.schema import JudgeBackend, JudgeConfig
from kdbench.schema.checks import check_max_failed_fraction

BACKENDS = tuple(b.value for b in JudgeBackend)

__all__ = ["BACKENDS", "JudgeConfig", "check_max_failed_fraction"]
