"""Tests for the W&B offline run-file reader (tests/wandb_reader.py) against real wandb offline runs."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import pytest

wandb = pytest.importorskip("wandb")

from wandb_reader import (  # noqa: E402
    BLOCK_SIZE,
    FILE_HEADER,
    OfflineRun,
    find_offline_runs,
    iter_records,
    read_offline_run,
)

LOSSES = [1.0, 0.5, 0.25, 0.125]
ROUGE = [0.1, 0.2, 0.3, 0.4]


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    """Offline, silent W&B writing only under tmp_path; fresh wandb singleton per test."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / ".config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / ".cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / ".data"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield tmp_path
    wandb.teardown()


def _finish(run) -> None:
    """Finish a run and wait until its .wandb file is complete.

    In offline mode ``run.finish()`` can return before wandb-core has flushed
    the transaction log (seen under pytest: the file still held only its 7-byte
    header).  ``wandb.teardown()`` shuts the wandb-core service down, which
    closes the file.
    """
    run.finish()
    wandb.teardown()


def _make_run(root: Path, rows: list[dict], **init_kwargs) -> Path:
    kwargs = dict(
        project="p",
        group="g",
        tags=["a", "b"],
        config={"lr": 0.1, "nested": {"x": 1}},
        dir=str(root),
    )
    kwargs.update(init_kwargs)
    run = wandb.init(**kwargs)
    for row in rows:
        run.log(row)
    run.summary["final"] = 3
    _finish(run)
    files = find_offline_runs(root)
    assert len(files) >= 1
    return files[-1]


def _user_keys(d: dict) -> dict:
    return {k: v for k, v in d.items() if not k.startswith("_")}


def test_reads_config_history_summary_tags(offline_env):
    rows = [{"train/loss": loss, "eval/set/rouge_l": r} for loss, r in zip(LOSSES, ROUGE)]
    run_file = _make_run(offline_env, rows)
    assert run_file.name.startswith("run-") and run_file.parent.name.startswith("offline-run-")

    run = read_offline_run(run_file)
    assert isinstance(run, OfflineRun)
    assert run.run_id == run_file.stem[len("run-"):]
    assert run.project == "p"
    assert run.group == "g"
    assert run.tags == ["a", "b"]
    assert run.config == {"lr": 0.1, "nested": {"x": 1}}
    assert run.finished and not run.truncated
    assert run.path == run_file

    assert [_user_keys(row) for row in run.history] == rows
    assert [row["_step"] for row in run.history] == [0, 1, 2, 3]
    assert all("_timestamp" in row and "_runtime" in row for row in run.history)
    assert run.metric("train/loss") == LOSSES
    assert run.metric("eval/set/rouge_l") == ROUGE
    assert run.metric("_step") == [0, 1, 2, 3]
    assert run.metric("missing") == []

    assert _user_keys(run.summary) == {
        "train/loss": LOSSES[-1],
        "eval/set/rouge_l": ROUGE[-1],
        "final": 3,
    }
    assert run.summary["_step"] == 3

    # The three accepted path forms all find the same run.
    for form in (run_file, run_file.parent, offline_env, offline_env / "wandb"):
        again = read_offline_run(form)
        assert again.run_id == run.run_id
        assert again.history == run.history


def test_updates_nested_keys_and_large_records(offline_env):
    big = "z" * (2 * BLOCK_SIZE + 123)  # one record spanning FIRST/MIDDLE/LAST chunks
    run = wandb.init(project="p", config={"lr": 0.1}, dir=str(offline_env), name="first")
    run.log({"x": 1, "nest": {"a": 1}})
    run.log({"big": big})
    run.log({"x": 2, "nan": float("nan")})
    run.tags = ("c",)
    run.name = "second"
    run.config.update({"lr": 0.2, "late": True}, allow_val_change=True)
    run.summary["best"] = 7
    del run.summary["best"]
    _finish(run)

    r = read_offline_run(offline_env)
    assert r.tags == ["c"]
    assert r.name == "second"
    assert r.group is None
    assert r.config == {"lr": 0.2, "late": True}
    assert r.history[0]["nest"] == {"a": 1}
    assert r.metric("nest.a") == [1]
    assert r.history[1]["big"] == big
    assert r.metric("x") == [1, 2]
    assert math.isnan(r.history[2]["nan"])
    assert "best" not in r.summary
    assert r.summary["big"] == big
    assert not r.truncated


def test_newest_run_is_chosen(offline_env):
    first = _make_run(offline_env, [{"v": 1}])
    second = _make_run(offline_env, [{"v": 2}])
    assert find_offline_runs(offline_env) == [first, second]
    assert read_offline_run(offline_env).metric("v") == [2]


def test_lightning_wandb_logger(offline_env):
    pl_loggers = pytest.importorskip("lightning.pytorch.loggers")
    logger = pl_loggers.WandbLogger(offline=True, save_dir=str(offline_env), project="pl")
    logger.log_hyperparams({"lr": 0.01, "optimizer": {"name": "adam", "betas": [0.9, 0.99]}})
    for i, (loss, rouge) in enumerate(zip(LOSSES, ROUGE)):
        logger.log_metrics({"train/loss": loss, "eval/set/rouge_l": rouge}, step=10 * i)
    _finish(logger.experiment)

    run = read_offline_run(offline_env)
    assert run.project == "pl"
    assert run.config == {"lr": 0.01, "optimizer": {"name": "adam", "betas": [0.9, 0.99]}}
    assert run.metric("train/loss") == LOSSES
    assert run.metric("eval/set/rouge_l") == ROUGE
    assert run.metric("trainer/global_step") == [0, 10, 20, 30]
    assert run.summary["train/loss"] == LOSSES[-1]
    assert run.finished


def test_truncated_file_returns_complete_rows(offline_env):
    # ~1.6 KB per row: the file spans several 32 KiB blocks, and rows cross block edges.
    rows = [{"train/loss": float(i), "pad": "p" * 1500} for i in range(60)]
    run_file = _make_run(offline_env, rows)
    full = read_offline_run(run_file)
    assert len(full.history) == len(rows)
    data = run_file.read_bytes()
    assert len(data) > 2 * BLOCK_SIZE

    cut_file = offline_env / "cut" / run_file.name
    cut_file.parent.mkdir()
    truncated_flags = []
    for cut in (len(data) // 2, len(data) // 2 + 1, BLOCK_SIZE + 3, 20):
        cut_file.write_bytes(data[:cut])
        part = read_offline_run(cut_file)
        n = len(part.history)
        assert part.history == full.history[:n]
        if cut > BLOCK_SIZE:
            assert 0 < n < len(rows)
            assert part.config == full.config
            assert part.tags == ["a", "b"]
            assert part.run_id == full.run_id
        assert not part.finished
        truncated_flags.append(part.truncated)
    assert any(truncated_flags)

    # Cut inside the file header: no records, still no exception.
    cut_file.write_bytes(data[:3])
    empty = read_offline_run(cut_file)
    assert empty.history == [] and empty.run_id == full.run_id


def _chunk(ctype: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(bytes((ctype,)))) & 0xFFFFFFFF
    return struct.pack("<IHB", crc, len(payload), ctype) + payload


def test_corrupt_block_is_skipped(tmp_path):
    from wandb.proto import wandb_internal_pb2 as pb

    def history(step: int) -> bytes:
        rec = pb.Record()
        item = rec.history.item.add()
        item.nested_key.append("m")
        item.value_json = str(step)
        rec.history.step.num = step
        return rec.SerializeToString()

    good = _chunk(1, history(0))
    bad = bytearray(_chunk(1, history(1)))
    bad[-1] ^= 0xFF  # payload no longer matches its CRC
    data = FILE_HEADER + good + bytes(bad)
    data += b"\0" * (BLOCK_SIZE - len(data))  # pad to the next block
    data += _chunk(1, history(2))
    path = tmp_path / "run-abc.wandb"
    path.write_bytes(data)

    run = read_offline_run(path)
    assert run.metric("m") == [0, 2]
    assert run.metric("_step") == [0, 2]
    assert run.run_id == "abc"
    assert run.truncated  # corrupt data was seen
    assert len(list(iter_records(path))) == 2


def test_not_a_wandb_file(tmp_path):
    path = tmp_path / "run-x.wandb"
    path.write_bytes(b"hello world, not a run")
    with pytest.raises(ValueError, match="not a W&B run file"):
        read_offline_run(path)


def test_folder_without_runs_raises(tmp_path):
    empty = tmp_path / "nothing here"
    (empty / "wandb").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="nothing here"):
        read_offline_run(empty)
    with pytest.raises(FileNotFoundError, match="missing"):
        read_offline_run(tmp_path / "missing")
    assert find_offline_runs(empty) == []
