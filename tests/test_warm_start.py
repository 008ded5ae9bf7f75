"""The sft warm start: trained once per student and budget, shared by every method that starts from it (a cache
hit for the second), counted in the step budget, and said in the record and the report row."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import TINY_RUN


def _run(tmp_path, *args):
    env = {**os.environ, "KDBENCH_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", "from kdbench.train import cli; cli()", "logger=none",
                           "method.onpolicy.decoding.max_new_tokens=8", *TINY_RUN, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def _record(tmp_path, method):
    found = [p for p in (tmp_path / "outputs").rglob("results.json") if f"method={method}" in str(p)]
    assert len(found) == 1, found
    return json.loads(found[0].read_text())


@pytest.mark.slow
def test_sampling_methods_share_one_warm_start_within_the_step_budget(tmp_path):
    first = _run(tmp_path, "method=gkd")
    assert first.returncode == 0, first.stderr[-3000:]
    gkd = _record(tmp_path, "gkd")
    # trainer=smoke: 6 steps in all, half of them the warm start.
    assert gkd["train"]["steps"] == 6 and gkd["train"]["method_steps"] == 3
    assert gkd["train"]["warm_start"]["steps"] == 3 and gkd["train"]["warm_start"]["cached"] is False
    assert gkd["labels"]["start"] == "sft-warm-start-3"

    second = _run(tmp_path, "method=kd", "method.warm_start=true")
    assert second.returncode == 0, second.stderr[-3000:]
    kd = _record(tmp_path, "kd")
    assert kd["train"]["warm_start"]["cached"] is True
    assert kd["train"]["warm_start"]["key"] == gkd["train"]["warm_start"]["key"]
    assert len(list((tmp_path / "cache" / "warm_starts").glob("*/model.safetensors"))) == 1

    from kdbench.report import build_table, collect_results
    table = build_table(collect_results(tmp_path / "outputs"))
    assert {(r.method, r.student) for r in table.rows} >= {("gkd+ws", "tiny"), ("kd+ws", "tiny")}


@pytest.mark.slow
def test_a_warm_start_as_long_as_the_budget_is_refused(tmp_path):
    out = _run(tmp_path, "method=gkd", "trainer.warm_start_steps=6")
    assert out.returncode != 0
    assert "trainer.warm_start_steps=6" in out.stderr + out.stdout
