"""SIGTERM (a scheduler's time limit or preemption) and SIGINT (Ctrl-C) sent to a real `kdbench` process: the run
saves where to continue from, records itself as interrupted (no results.json), says so in one line and exits
143 / 130; the same command then continues and finishes. Also: a killed sweep leaves no worker behind, two
identical runs never share a folder, and run folders are named as the README says."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_RUN

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# The first progress line comes at step 2 of 40 (every 5%): interrupted early, whatever the machine's speed,
# and short enough for the rerun to finish.
STEPS = 40
LONG = [*TINY_RUN, f"trainer.max_steps={STEPS}", "trainer.val_every=20", "logger=none"]
STEP_LINE = re.compile(r"\btrain step (\d+)/(\d+)")


def _env(cache: Path) -> dict:
    return {**os.environ, "KDBENCH_CACHE": str(cache), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1"}


def start_kdbench(args, cwd: Path, cache: Path) -> subprocess.Popen:
    code = "from kdbench.train import cli; cli()"
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=cwd, env=_env(cache), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for(proc: subprocess.Popen, pattern: re.Pattern, timeout: float = 300) -> tuple[re.Match, str]:
    """Read the process's output until a line matches (the output read so far is returned with it)."""
    seen, t0 = [], time.monotonic()
    for line in proc.stdout:
        seen.append(line)
        m = pattern.search(line)
        if m:
            return m, "".join(seen)
        if time.monotonic() - t0 > timeout:
            break
    proc.kill()
    raise AssertionError("never printed " + pattern.pattern + ":\n" + "".join(seen)[-3000:])


def kdbench(args, cwd: Path, cache: Path, timeout=600) -> subprocess.CompletedProcess:
    code = "from kdbench.train import cli; cli()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=_env(cache), capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_training_saves_records_and_the_rerun_continues(tmp_path, sig, code):
    cache = tmp_path / "cache"
    # With the W&B logger (offline) for SIGTERM: the rerun must continue the same W&B run.
    args = [*LONG, "logger=wandb"] if sig == signal.SIGTERM else LONG
    proc = start_kdbench(args, tmp_path, cache)
    m, _ = wait_for(proc, STEP_LINE)
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=300)
    assert proc.returncode == code, rest[-3000:]
    name = signal.Signals(sig).name
    run_dirs = [p.parent for p in (tmp_path / "outputs").rglob("interrupted.json")]
    assert len(run_dirs) == 1, rest[-3000:]
    run_dir = run_dirs[0]
    assert f"trainer.max_steps={STEPS}" in run_dir.name
    # One line says what happened and how to continue; no traceback.
    line = [ln for ln in rest.splitlines() if ln.startswith("kdbench: interrupted")]
    assert len(line) == 1, rest[-3000:]
    assert f"interrupted by {name} at step" in line[0] and "run the same command again to continue" in line[0]
    assert "Traceback" not in rest
    record = json.loads((run_dir / "interrupted.json").read_text())
    assert record["status"] == "interrupted" and record["signal"] == name
    stopped_at = record["step"]
    assert int(m.group(1)) <= stopped_at < STEPS and record["max_steps"] == STEPS
    assert Path(record["resume_file"]) == run_dir / "training.resume.ckpt" and Path(record["resume_file"]).is_file()
    assert not (run_dir / "results.json").exists()  # never a record that claims success

    again = kdbench(args, tmp_path, cache)
    assert again.returncode == 0, again.stderr[-3000:]
    out = again.stdout + again.stderr
    assert "resuming the interrupted training" in out
    result = json.loads((run_dir / "results.json").read_text())
    assert result["status"] == "complete" and result["train"]["steps"] == STEPS
    assert result["train"]["resumed_after_seconds"] is not None
    assert not (run_dir / "interrupted.json").exists() and not (run_dir / "training.resume.ckpt").exists()
    if sig == signal.SIGTERM:
        # Two offline attempts under one id, which `wandb sync` uploads into one run in order of start.
        run_id = (run_dir / "wandb_id.txt").read_text().strip()
        attempts = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
        assert len(attempts) == 2 and all(a.endswith(f"-{run_id}") for a in attempts), attempts


@pytest.mark.slow
def test_a_signal_before_training_exits_with_its_code_and_writes_no_result(tmp_path):
    # Stopped while the teacher stage trains (before the run's own training): nothing to claim, rc 143.
    cache = tmp_path / "cache"
    # The teacher stage's first progress line comes at step 10 of 200; the signal stops it long before its end.
    proc = start_kdbench([*LONG, "teacher.finetune.max_steps=200"], tmp_path, cache)
    wait_for(proc, re.compile(r"teacher stage \w+ step \d+/"))
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, rest[-3000:]
    assert "kdbench: interrupted by SIGTERM" in rest and "Traceback" not in rest
    assert not list((tmp_path / "outputs").rglob("results.json"))
    # The teacher stage saved its own state under its content key: a rerun continues it.
    assert list((cache / "teachers").rglob("*.resume.ckpt")) or list(cache.rglob("*.resume.ckpt"))


@pytest.mark.slow
def test_two_identical_runs_do_not_share_a_folder(tmp_path):
    from filelock import FileLock

    # The lock is what a running kdbench holds on its folder (an fcntl lock: per process, released by the kernel
    # when the holder dies); here this test process holds it, deterministically, while kdbench starts.
    run_dir = tmp_path / _run_dirs(LONG)[0]
    run_dir.mkdir(parents=True)
    with FileLock(str(run_dir / "run.lock")):
        second = kdbench(LONG, tmp_path, tmp_path / "cache", timeout=300)
    assert second.returncode == 1, second.stderr[-3000:]
    assert f"kdbench: error: {run_dir} is in use by another kdbench process running the " \
           "same configuration" in second.stderr
    assert "Traceback" not in second.stderr
    # It wrote nothing of its own there (Hydra's .hydra/ and log file are written before kdbench starts).
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "run.lock", "train.log"]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().split()[2] == "Z")


@pytest.mark.slow
def test_killing_a_sweep_ends_its_workers_and_they_save(tmp_path):
    cache = tmp_path / "cache"
    grid = ["-m", "method=sft,kd", "sweep_name=killed", *LONG]
    proc = start_kdbench(grid, tmp_path, cache)
    wait_for(proc, STEP_LINE)
    workers = [p for p in _children(proc.pid)]
    assert workers, "the sweep started no worker process"
    proc.kill()  # kill -9: the parent gets no chance to clean up
    proc.wait(timeout=60)
    deadline = time.monotonic() + 120
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(_alive(p) for p in workers), "orphaned sweep workers still running"
    sweep = tmp_path / "outputs" / "multirun" / "killed"
    # A worker that was training saved its state and said so (interrupted.json), so the rerun continues it.
    assert list(sweep.rglob("interrupted.json")) and list(sweep.rglob("training.resume.ckpt"))
    assert not list(sweep.rglob("results.json"))


def _run_dirs(overrides: list[str]) -> tuple[str, str]:
    """(run dir, sweep subdir) that Hydra would give these overrides, resolved as at run time."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from kdbench.paths import conf_dir
    from kdbench.schema import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    # compose() leaves job.override_dirname empty: fill it as Hydra's run does (sorted key=value, joined by ",",
    # without the excluded keys).
    excluded = set(cfg.hydra.job.config.override_dirname.exclude_keys)
    kept = sorted(o for o in overrides if o.split("=", 1)[0] not in excluded)
    OmegaConf.update(cfg, "hydra.job.override_dirname", ",".join(kept), force_add=True)
    HydraConfig.instance().set_config(cfg)
    return cfg.hydra.run.dir, cfg.hydra.sweep.subdir


def test_run_folders_are_siblings_and_path_values_are_shortened():
    from kdbench.schema import run_dirname

    # The no-argument run is a sibling of the other default runs, not their parent folder (README's path).
    assert _run_dirs([])[0] == "outputs/runs/default/default"
    assert _run_dirs(["method=sft"])[0] == "outputs/runs/default/method=sft"
    # An absolute data path does not nest folders; a long value is shortened with a hash of the whole.
    deep = "data.train.path=/very/deep/folder/with/many/levels/of/nesting/that/goes/on/and/on/train.jsonl"
    run, sub = _run_dirs([deep])
    assert run.count("/") == 3 and "/" not in sub and sub.endswith("_on_and_on_train.jsonl")
    long_run, long_sub = _run_dirs([deep.replace("train.jsonl", "x" * 150 + ".jsonl")])
    assert long_run.count("/") == 3 and len(long_sub) == 200
    assert run_dirname(deep + "x" * 200, 200) != run_dirname(deep + "y" * 200, 200)  # shortened, still distinct


def test_only_a_continued_training_reuses_its_wandb_run_id(tmp_path):
    from kdbench.tracking.loggers import run_wandb_id

    first = run_wandb_id(tmp_path, resuming=False)
    assert run_wandb_id(tmp_path, resuming=True) == first  # continues the interrupted attempt's run
    fresh = run_wandb_id(tmp_path, resuming=False)  # started over (no resume file, force, a changed config)
    assert fresh != first and run_wandb_id(tmp_path, resuming=True) == fresh
    (tmp_path / "wandb_id.txt").write_text("../../etc\n")  # a damaged file is never used as an id
    assert run_wandb_id(tmp_path, resuming=True).isalnum()
