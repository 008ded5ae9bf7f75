"""A plain (non-editable) wheel carries the configs, the sweeps and the shipped assets, and `kdbench` composes
its configs from any folder."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest


@pytest.mark.slow
def test_wheel_carries_configs_and_runs_from_any_folder(tmp_path, built_wheel):
    wheel = built_wheel
    names = zipfile.ZipFile(wheel).namelist()
    for required in ("kdbench/_conf/train.yaml", "kdbench/_conf/method/kd.yaml", "kdbench/_sweeps/first_table.yaml",
                     "kdbench/_conf/hydra/help/kdbench.yaml", "kdbench/_conf/evaluate.yaml",
                     "kdbench/_conf/eval_set/dollyeval.yaml", "kdbench/_conf/eval/full.yaml"):
        assert required in names, required
    shipped = [n for n in names if n.startswith("kdbench/assets/teachers/") and n.endswith("model.safetensors")]
    assert shipped, "the default teacher's weights are not in the wheel"
    assert any(n.startswith("kdbench/assets/tokenizers/") and n.endswith("tokenizer.json") for n in names)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import sys, kdbench; assert kdbench.__file__.startswith(sys.argv[1]), kdbench.__file__; "
            "sys.argv = ['kdbench', '--config-name', 'first_table', '--cfg', 'job']; "
            "from kdbench.train import cli; cli()")
    out = subprocess.run([sys.executable, "-c", code, str(site)], cwd=elsewhere, capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "sweep_name: first_table" in out.stdout
