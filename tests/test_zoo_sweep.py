"""The offline method zoo end to end: `sweeps/methods.yaml`'s grid through the real CLI (Hydra multirun, every
method's training, evaluation and results.json), then one report row per method."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_RUN
from omegaconf import OmegaConf
from test_cli import kdbench, report

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


@pytest.mark.slow
def test_every_method_of_the_zoo_runs_and_gets_a_report_row(tmp_path):
    methods = OmegaConf.load(SWEEPS / "methods.yaml").hydra.sweeper.params.method.split(",")
    def kind(path: Path) -> str:  # a method file that extends another (defaults: [base]) has the base's kind
        y = OmegaConf.load(path)
        if "kind" not in y and "defaults" in y:
            return kind(path.with_name(f"{y.defaults[0]}.yaml"))
        return y.get("kind", "offline")

    conf_methods = sorted(p.stem for p in (SWEEPS.parent / "conf" / "method").glob("*.yaml") if kind(p) == "offline")
    assert sorted(methods) == conf_methods, "sweeps/methods.yaml must hold every offline conf/method option"

    out = kdbench(["--config-name", "methods", "sweep_name=zoo", "logger=none", *TINY_RUN], tmp_path,
                  tmp_path / "cache")
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = tmp_path / "outputs" / "multirun" / "zoo"
    records = {json.loads(p.read_text())["labels"]["method"]: json.loads(p.read_text())
               for p in sweep.rglob("results.json")}
    assert sorted(records) == sorted(methods)
    for name, rec in records.items():
        assert rec["status"] == "complete", name
        assert rec["config"]["method"]["name"] == name
        assert 0 <= rec["metrics"]["embedded_v5_test/rouge_l"] <= 100, name
    # Same footing: every method trained the same steps on the same batch.
    assert len({(r["train"]["steps"], r["config"]["trainer"]["batch_size"]) for r in records.values()}) == 1

    rep = report([str(sweep)], tmp_path)
    assert rep.returncode == 0, rep.stderr
    for name in methods:
        assert f"| {name} | tiny |" in rep.stdout, name
