"""End to end through the real entry points, in subprocesses: compose -> teacher stage -> train -> evaluate ->
results.json + W&B offline run -> report; a sweep that resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_RUN
from wandb_reader import read_offline_run


def kdbench(args, cwd: Path, cache: Path, timeout=600):
    env = {**os.environ, "KDBENCH_CACHE": str(cache), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    code = "from kdbench.train import cli; cli()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def report(args, cwd: Path):
    return subprocess.run([sys.executable, "-m", "kdbench.report.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_single_run_writes_results_and_wandb(tmp_path):
    cache = tmp_path / "cache"
    # A resume checkpoint after every step (kdbench.training.resume): none is left once the result is written.
    args = [*TINY_RUN, "trainer.resume_every_minutes=0"]
    out = kdbench(args, tmp_path, cache)
    assert out.returncode == 0, out.stderr[-3000:]
    results = list((tmp_path / "outputs" / "runs").rglob("results.json"))
    assert len(results) == 1
    assert not list(results[0].parent.glob("*.resume.ckpt"))
    rec = json.loads(results[0].read_text())
    assert rec["status"] == "complete"
    assert rec["labels"]["method"] == "kd" and rec["labels"]["student"] == "tiny"
    for key in ("config", "metrics", "teacher_metrics", "seed", "versions", "git", "hardware", "wall_time_s",
                "artifacts"):
        assert key in rec, key
    assert rec["config"]["method"]["divergence"] == "forward_kl"
    assert rec["config"]["data"]["embedded"]["version"] == 5  # the default benchmark
    assert 0 <= rec["metrics"]["embedded_v5_test/rouge_l"] <= 100
    assert rec["metrics"]["embedded_v5_test/n"] == 16
    assert rec["train"]["steps"] == 6
    # The light profile's extras: agreement on the test split's gold responses, the metrics against p* (for the
    # student and the teacher), calibration of the mood family (with its reliability diagram), and the trained
    # student saved for kdbench-eval.
    assert 0 <= rec["metrics"]["agreement/top1"] <= 1 and rec["metrics"]["agreement/forward_kl"] >= 0
    for metrics in (rec["metrics"], rec["teacher_metrics"]):
        assert metrics["embedded_v5_test/truth/forward_kl"] >= 0 and 0 <= metrics["embedded_v5_test/truth/recall"] <= 1
        assert 0 <= metrics["embedded_v5_mood/truth/calibration_mae"] <= 1
    assert 0 <= rec["metrics"]["embedded_v5_mood/ece"] <= 1 and "embedded_v5_mood/brier" in rec["teacher_metrics"]
    assert Path(rec["artifacts"]["plots"]["reliability_embedded_v5_mood"]).is_file()
    assert (Path(rec["artifacts"]["student_dir"]) / "config.json").is_file()
    # The row is printed beside the teacher's.
    assert "| kd | tiny |" in out.stdout and "| teacher |" in out.stdout

    # The W&B offline run file holds the same metrics, the config and the training curve.
    run = read_offline_run(results[0].parent)
    assert run.summary["eval/embedded_v5_test/rouge_l"] == pytest.approx(rec["metrics"]["embedded_v5_test/rouge_l"])
    assert run.summary["teacher/embedded_v5_test/exact_match"] == pytest.approx(
        rec["teacher_metrics"]["embedded_v5_test/exact_match"])
    assert run.config["method"]["name"] == "kd"
    assert run.group == "default" and "method=kd" in run.tags and "student=tiny" in run.tags
    assert len(run.metric("train/loss")) >= 3
    assert run.metric("val/ce"), "validation was not logged"

    # Re-running the same command finds the finished run and skips it.
    again = kdbench(args, tmp_path, cache)
    assert again.returncode == 0
    assert "skipping" in again.stderr + again.stdout
    assert json.loads(results[0].read_text())["wall_time_s"] == rec["wall_time_s"]
    # The teacher stage ran once and is reused: its cache entry exists.
    assert len(list((cache / "teachers").glob("*/model.safetensors"))) == 1

    # A record made by a different config in the same folder (say, an older benchmark version) is not reused:
    # the run is redone and the old record kept beside the new one.
    stale = json.loads(results[0].read_text())
    stale["config"]["data"]["embedded"]["version"] = -1
    stale["config"]["trainer"]["num_threads"] = 99  # volatile keys never count
    results[0].write_text(json.dumps(stale))
    redo = kdbench(args, tmp_path, cache)
    assert redo.returncode == 0, redo.stderr[-3000:]
    assert "different config (data.embedded.version)" in redo.stderr + redo.stdout
    kept = results[0].with_name("results.superseded-1.json")
    assert json.loads(kept.read_text())["config"]["data"]["embedded"]["version"] == -1
    assert json.loads(results[0].read_text())["config"]["data"]["embedded"]["version"] != -1


@pytest.mark.slow
def test_four_cell_sweep_resumes_and_reports(tmp_path):
    cache = tmp_path / "cache"
    grid = ["-m", "method=sft,kd", "student=tiny,small", "sweep_name=t4", "logger=none", *TINY_RUN]
    t0 = time.time()
    out = kdbench(grid, tmp_path, cache)
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = tmp_path / "outputs" / "multirun" / "t4"
    cells = sorted(p.parent.name for p in sweep.rglob("results.json"))
    assert len(cells) == 4, cells
    assert all("method=" in c and "student=" in c for c in cells)
    first = time.time() - t0

    # An unfinished cell (results.json gone, as after a crash) is redone; the finished ones are skipped.
    victim = sweep / cells[0] / "results.json"
    victim.unlink()
    out2 = kdbench(grid, tmp_path, cache)
    assert out2.returncode == 0, out2.stderr[-3000:]
    assert victim.is_file()
    assert (out2.stderr + out2.stdout).count("skipping") == 3
    assert first > 0

    rep = report([str(sweep)], tmp_path)
    assert rep.returncode == 0, rep.stderr
    for method in ("sft", "kd"):
        for student in ("tiny", "small"):
            assert f"| {method} | {student} |" in rep.stdout
    assert "| teacher |" in rep.stdout


def test_sweep_file_runs_from_any_folder(tmp_path):
    # `--config-name first_table` resolves from sweeps/ wherever kdbench is started; here only composed.
    out = kdbench(["--config-name", "first_table", "--cfg", "hydra"], tmp_path, tmp_path / "cache", timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "MULTIRUN" in out.stdout and "method: sft,kd" in out.stdout


@pytest.mark.slow
def test_a_failed_cell_does_not_sink_the_sweep(tmp_path):
    cache = tmp_path / "cache"
    grid = ["-m", "method=kd", "method.alpha=0.5,1.5", "sweep_name=bad", "logger=none", *TINY_RUN]
    out = kdbench(grid, tmp_path, cache)
    assert out.returncode != 0  # the sweep says it is incomplete
    sweep = tmp_path / "outputs" / "multirun" / "bad"
    done = [p.parent.name for p in sweep.rglob("results.json")]
    failed = [p.parent.name for p in sweep.rglob("failed.txt")]
    assert len(done) == 1 and "method.alpha=0.5" in done[0], done
    assert len(failed) == 1 and "method.alpha=1.5" in failed[0], failed
    assert "method.alpha=1.5" in (sweep / failed[0] / "failed.txt").read_text()
    assert f"FAILED {failed[0]}" in out.stdout
    # It says that rerunning cannot help a config error (a bad value), not "re-run to redo them".
    last = (sweep / failed[0] / "failed.txt").read_text().strip().splitlines()[-1]
    assert last.startswith("ConfigError: ") and "[a rerun fails the same way: fix the config or data" in last
    assert "1 need a fix to their config or data first (a rerun fails the same way)" in out.stderr


@pytest.mark.slow
def test_missing_real_weights_fail_cleanly_naming_the_key(tmp_path):
    env_home = tmp_path / "hf"
    out = subprocess.run([sys.executable, "-c", "from kdbench.train import cli; cli()", "teacher=gpt2-xl",
                          "logger=none"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(env_home),
                              "KDBENCH_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 1
    assert "kdbench: error: teacher.path='openai-community/gpt2-xl': the weights are not on disk" in out.stderr
    assert "hf download" in out.stderr and "teacher.path=/path/to/that/folder" in out.stderr
    assert "Traceback" not in out.stderr
