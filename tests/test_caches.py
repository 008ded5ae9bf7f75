"""Caches that heal (issue 15): every kind of cache entry is corrupted on disk (truncated to half, garbage bytes,
content that no longer matches its checksum) and then read through the code that uses it. Each time the bad entry
is named in a warning, moved aside beside itself (`<name>.corrupt-<timestamp>`, bytes kept for inspection),
recomputed once to what a fresh computation gives, and the next read is a clean hit."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from kdbench.paths import conf_dir
from kdbench.schema import register_configs
from kdbench.storage.atomic import atomic_write_json
from kdbench.storage.cache_entry import CHECKSUM_FIELD, MANIFEST_FILE, write_entry

MODES = ("truncated", "garbage", "wrong-checksum")


def _cfg(extra=()):
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=[*TINY_RUN, *extra])


# ------------------------------------------------------------------------------------------- corrupting entries


def corrupt_json(path: Path, mode: str) -> bytes:
    """Damage a JSON entry the way a crash, a bad disk or a hand edit would; returns the bytes left on disk."""
    raw = path.read_bytes()
    if mode == "truncated":
        bad = raw[:len(raw) // 2]
    elif mode == "garbage":
        mid = len(raw) // 2
        bad = raw[:mid] + b"\x00\xff\xfe garbage \x81\x00" + raw[mid + 16:]
    else:  # still valid JSON, but one value changed after the checksum was taken
        data = json.loads(raw)
        assert CHECKSUM_FIELD in data
        field = "texts" if "texts" in data else "text"
        data[field] = data[field][:-1] + ["tampered"] if field == "texts" else data[field] + " tampered"
        bad = json.dumps(data, indent=2).encode()
    path.write_bytes(bad)
    return bad


def corrupt_weights(folder: Path, mode: str, name: str = "model.safetensors") -> bytes:
    """Damage one file of a published folder. Garbage keeps the size and the header (only the manifest's sha256
    can tell); wrong-checksum rewrites the manifest (with a valid checksum of its own) to expect other content."""
    f = folder / name
    raw = f.read_bytes()
    if mode == "truncated":
        bad = raw[:len(raw) // 2]
    elif mode == "garbage":
        mid = len(raw) // 2
        bad = raw[:mid] + bytes(range(256))[:64] + raw[mid + 64:]
        assert len(bad) == len(raw)
    else:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        manifest.pop(CHECKSUM_FIELD)
        manifest["files"][name]["sha256"] = hashlib.sha256(b"something else").hexdigest()
        write_entry(folder / MANIFEST_FILE, manifest)
        bad = raw
    f.write_bytes(bad)
    return bad


def quarantined(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.corrupt-*"))


def cache_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "is corrupt" in r.getMessage()]


def assert_healed(caplog, entry: Path, bad_bytes: bytes | None = None, bad_file: str | None = None) -> Path:
    """One warning naming the entry, and the bad entry kept beside it under a .corrupt-<timestamp> name."""
    warned = cache_warnings(caplog)
    assert len(warned) == 1, warned
    assert str(entry) in warned[0] and "moved aside" in warned[0], warned[0]
    aside = quarantined(entry)
    assert len(aside) == 1, aside
    assert aside[0].name in warned[0]
    if bad_bytes is not None:
        assert (aside[0] / bad_file if bad_file else aside[0]).read_bytes() == bad_bytes
    return aside[0]


def same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


# ------------------------------------------------------------------------------------------- generation cache


@pytest.fixture(scope="module")
def generator():
    """A tiny model and tokenizer whose greedy generations are the computation the cache stores."""
    from conftest import small_splits, tiny_model, tiny_tokenizer

    rows = small_splits()
    tok = tiny_tokenizer(rows["train"])
    prompts = [r["instruction"] for r in rows["test"][:4]]
    return tiny_model(tok, seed=3).eval(), tok, prompts


def _generate_counting(generator, calls: list):
    from omegaconf import OmegaConf

    from kdbench.generation.engine import generate
    from kdbench.generation.settings import GenerationSettings

    model, tok, prompts = generator

    def compute():
        calls.append(1)
        return generate(model, tok, prompts, OmegaConf.structured(GenerationSettings(max_new_tokens=6)),
                        max_prompt_length=64, show_progress=False)
    return compute


SETTINGS = {"do_sample": False, "max_new_tokens": 6, "max_prompt_length": 64}


@pytest.mark.parametrize("mode", MODES)
def test_a_corrupt_generation_entry_is_moved_aside_and_generated_again(generator, tmp_path, mode, caplog):
    from kdbench.generation.cache import cached_generate, generation_key

    prompts = generator[2]
    calls: list = []
    compute = _generate_counting(generator, calls)
    fresh, hit = cached_generate(tmp_path, "fp", prompts, SETTINGS, compute)
    assert not hit and len(calls) == 1
    entry = tmp_path / "generations" / f"{generation_key('fp', prompts, SETTINGS)}.json"
    bad = corrupt_json(entry, mode)

    again, hit = cached_generate(tmp_path, "fp", prompts, SETTINGS, compute)
    assert not hit and len(calls) == 2  # recomputed once
    assert_healed(caplog, entry, bad)
    assert (again.texts, again.n_truncated, again.new_tokens) == (fresh.texts, fresh.n_truncated, fresh.new_tokens)

    caplog.clear()
    third, hit = cached_generate(tmp_path, "fp", prompts, SETTINGS, compute)
    assert hit and len(calls) == 2 and third.texts == fresh.texts
    assert cache_warnings(caplog) == [] and len(quarantined(entry)) == 1


def test_an_entry_without_checksum_from_the_previous_version_is_still_a_hit(tmp_path, caplog):
    from kdbench.generation.cache import cached_generate, generation_key

    prompts, key = ["a", "b"], generation_key("fp", ["a", "b"], SETTINGS)
    entry = tmp_path / "generations" / f"{key}.json"
    # Exactly what kdbench wrote before checksums: no `checksum` field.
    atomic_write_json(entry, {"key": key, "model": "fp", "settings": SETTINGS, "n_prompts": 2, "texts": ["x", "y"],
                              "n_truncated": 0, "new_tokens": 4, "seconds": 1.0})
    before = entry.read_bytes()
    result, hit = cached_generate(tmp_path, "fp", prompts, SETTINGS, lambda: pytest.fail("recomputed"))
    assert hit and result.texts == ["x", "y"] and result.new_tokens == 4
    assert entry.read_bytes() == before and cache_warnings(caplog) == []

    # An old entry is checked by its fields: one text short of the prompts is corrupt, not a hit.
    atomic_write_json(entry, {"key": key, "texts": ["x"], "n_truncated": 0, "new_tokens": 4})
    from kdbench.generation.engine import GenerationResult

    result, hit = cached_generate(tmp_path, "fp", prompts, SETTINGS,
                                  lambda: GenerationResult(texts=["p", "q"], n_truncated=0, new_tokens=2, seconds=0))
    assert not hit and result.texts == ["p", "q"]
    assert_healed(caplog, entry)
    assert "1 texts for 2 prompts" in cache_warnings(caplog)[0]


def test_two_workers_on_a_corrupt_entry_recompute_it_once(tmp_path, caplog):
    import time

    from kdbench.generation.cache import cached_generate, generation_key
    from kdbench.generation.engine import GenerationResult

    prompts = ["one", "two"]
    calls: list = []

    def compute():
        calls.append(1)
        time.sleep(0.3)
        return GenerationResult(texts=["1", "2"], n_truncated=0, new_tokens=2, seconds=0.3)

    cached_generate(tmp_path, "fp", prompts, SETTINGS, compute)
    entry = tmp_path / "generations" / f"{generation_key('fp', prompts, SETTINGS)}.json"
    corrupt_json(entry, "truncated")
    start, outcomes = threading.Barrier(2), []

    def worker():
        start.wait()
        outcomes.append(cached_generate(tmp_path, "fp", prompts, SETTINGS, compute))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(calls) == 2  # the first write and one recomputation, not two
    assert sorted(hit for _, hit in outcomes) == [False, True]
    assert len(quarantined(entry)) == 1 and len(cache_warnings(caplog)) == 1


# ------------------------------------------------------------------------------------------- judge verdicts


class CountingJudge:
    """A judge whose verdict is a function of what it is asked, so a fresh computation is known."""

    identity = "test-judge|v1"
    settings = {"temperature": 0}

    def __init__(self):
        self.calls = 0
        self.lock = threading.Lock()

    def complete(self, messages):
        with self.lock:
            self.calls += 1
        digest = hashlib.sha256(json.dumps(messages).encode()).digest()
        return f"{digest[0] % 10 + 1} {digest[1] % 10 + 1}\nscores from the digest"


@pytest.mark.parametrize("mode", MODES)
def test_a_corrupt_verdict_is_moved_aside_and_asked_again(tmp_path, mode, caplog):
    from kdbench.evaluation.judge import JudgeConfig, judge_pairwise

    questions = ["What is 2+2?", "Name a colour."]
    references, candidates = ["4", "red"], ["four", "blue"]
    cfg = JudgeConfig(cache_dir=str(tmp_path / "cache"), show_progress=False)
    judge = CountingJudge()
    fresh = judge_pairwise(questions, references, candidates, cfg, backend=judge)
    assert judge.calls == 4
    entries = sorted((tmp_path / "cache" / "judge").glob("*.json"))
    assert len(entries) == 4
    bad = corrupt_json(entries[0], mode)

    healed = judge_pairwise(questions, references, candidates, cfg, backend=judge)
    assert judge.calls == 5  # only the bad verdict is asked again
    assert_healed(caplog, entries[0], bad)
    assert [v.text for v in healed.verdicts] == [v.text for v in fresh.verdicts]
    assert healed.score_ratio == fresh.score_ratio

    caplog.clear()
    judge_pairwise(questions, references, candidates, cfg, backend=judge)
    assert judge.calls == 5 and cache_warnings(caplog) == [] and len(quarantined(entries[0])) == 1


def test_a_verdict_without_checksum_from_the_previous_version_is_still_a_hit(tmp_path, caplog):
    from kdbench.evaluation.judge import VerdictCache

    cache = VerdictCache(tmp_path)
    atomic_write_json(cache.path("k1"), {"version": 1, "key": "k1", "judge": "j", "settings": {}, "messages": [],
                                         "text": "7 8\nold"})
    assert cache.get("k1") == "7 8\nold" and cache_warnings(caplog) == []
    # An entry under the wrong name (another key's verdict) is not a hit for this key.
    shutil.copy(cache.path("k1"), cache.path("k2"))
    assert cache.get("k2") is None
    assert_healed(caplog, cache.path("k2"))
    assert "holds the verdict of key k1" in cache_warnings(caplog)[0]


# ------------------------------------------------------------------------------------------- folders of weights


@pytest.fixture(scope="module")
def stage_cfg():
    return _cfg()


@pytest.fixture(scope="module")
def pristine(stage_cfg, tmp_path_factory):
    """A cache filled once by the real stages (tokenizer, teacher, warm start): the fresh computations."""
    from kdbench.stages.models import load_student
    from kdbench.stages.teacher import teacher_stage
    from kdbench.stages.tokenizer import embedded_tokenizer
    from kdbench.stages.warm_start import warm_started

    cache = tmp_path_factory.mktemp("pristine")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests that recompute run (conftest's _one_thread): bitwise equal results
    try:
        tok = embedded_tokenizer(stage_cfg.data.embedded, cache)
        teacher, teacher_key = teacher_stage(stage_cfg, tok, cache, show_progress=False)
        warm, record = warm_started(stage_cfg, load_student(stage_cfg, cache), cache, show_progress=False)
    finally:
        torch.set_num_threads(threads)
    assert not record["cached"]
    return {"cache": cache, "tokenizer": tok, "teacher": teacher, "teacher_key": teacher_key, "warm": warm,
            "warm_key": record["key"]}


def _copy_cache(pristine, tmp_path) -> Path:
    cache = tmp_path / "cache"
    shutil.copytree(pristine["cache"], cache)
    return cache


@pytest.mark.parametrize("mode", MODES)
def test_a_corrupt_teacher_folder_is_moved_aside_and_trained_again(stage_cfg, pristine, tmp_path, mode, caplog,
                                                                   monkeypatch):
    from kdbench.stages import teacher as stage

    cache, key = _copy_cache(pristine, tmp_path), pristine["teacher_key"]
    folder = cache / "teachers" / key
    assert (folder / MANIFEST_FILE).is_file()
    bad = corrupt_weights(folder, mode)
    trained = []
    real_train = stage._train
    monkeypatch.setattr(stage, "_train", lambda *a, **k: (trained.append(1), real_train(*a, **k))[1])

    model, key2 = stage.teacher_stage(stage_cfg, pristine["tokenizer"], cache, show_progress=False)
    assert key2 == key and trained == [1]
    assert_healed(caplog, folder, bad, "model.safetensors")
    same_weights(model, pristine["teacher"])
    assert stage.find_teacher(key, cache) == folder

    caplog.clear()
    again, _ = stage.teacher_stage(stage_cfg, pristine["tokenizer"], cache, show_progress=False)
    assert trained == [1] and cache_warnings(caplog) == [] and len(quarantined(folder)) == 1
    same_weights(again, pristine["teacher"])


def test_a_teacher_folder_from_the_previous_version_is_reused_until_it_is_damaged(stage_cfg, pristine, tmp_path,
                                                                                   caplog, monkeypatch):
    from kdbench.stages import teacher as stage

    cache, key = _copy_cache(pristine, tmp_path), pristine["teacher_key"]
    folder = cache / "teachers" / key
    (folder / MANIFEST_FILE).unlink()  # written before manifests existed
    monkeypatch.setattr(stage, "_train", lambda *a, **k: pytest.fail("retrained a sound old teacher"))
    model, _ = stage.teacher_stage(stage_cfg, pristine["tokenizer"], cache, show_progress=False)
    same_weights(model, pristine["teacher"])
    assert cache_warnings(caplog) == [] and not (folder / MANIFEST_FILE).exists()

    # Without a manifest the safetensors header and size are what is checked: a truncated file fails them.
    bad = corrupt_weights(folder, "truncated")
    monkeypatch.undo()
    model, _ = stage.teacher_stage(stage_cfg, pristine["tokenizer"], cache, show_progress=False)
    aside = assert_healed(caplog, folder, bad, "model.safetensors")
    assert "safetensors" in cache_warnings(caplog)[0] and not (aside / MANIFEST_FILE).exists()
    assert (folder / MANIFEST_FILE).is_file()  # the retrained one has one
    same_weights(model, pristine["teacher"])


@pytest.mark.parametrize("mode", MODES)
def test_a_corrupt_warm_start_is_moved_aside_and_trained_again(stage_cfg, pristine, tmp_path, mode, caplog):
    from kdbench.stages.models import load_student
    from kdbench.stages.warm_start import warm_started

    cache = _copy_cache(pristine, tmp_path)
    folder = cache / "warm_starts" / pristine["warm_key"]
    bad = corrupt_weights(folder, mode)

    model, record = warm_started(stage_cfg, load_student(stage_cfg, cache), cache, show_progress=False)
    assert record["key"] == pristine["warm_key"] and record["cached"] is False
    assert_healed(caplog, folder, bad, "model.safetensors")
    same_weights(model, pristine["warm"])

    caplog.clear()
    again, record = warm_started(stage_cfg, load_student(stage_cfg, cache), cache, show_progress=False)
    assert record["cached"] is True and cache_warnings(caplog) == [] and len(quarantined(folder)) == 1
    same_weights(again, pristine["warm"])


@pytest.mark.parametrize("mode", MODES)
def test_a_corrupt_tokenizer_is_moved_aside_and_trained_again(stage_cfg, pristine, tmp_path, mode, caplog,
                                                              monkeypatch):
    from kdbench.stages import tokenizer as stage

    cache = _copy_cache(pristine, tmp_path)
    folder = cache / "tokenizers" / pristine["tokenizer"].kdbench_key
    bad = corrupt_weights(folder, mode, name="tokenizer.json")
    trained = []
    real_train = stage.train_bpe_tokenizer
    monkeypatch.setattr(stage, "train_bpe_tokenizer", lambda *a, **k: (trained.append(1), real_train(*a, **k))[1])

    tok = stage.embedded_tokenizer(stage_cfg.data.embedded, cache)
    assert trained == [1]
    assert_healed(caplog, folder, bad, "tokenizer.json")
    assert tok.get_vocab() == pristine["tokenizer"].get_vocab()
    assert (folder / "tokenizer.json").read_bytes() == (pristine["cache"] / folder.relative_to(cache)
                                                        / "tokenizer.json").read_bytes()

    caplog.clear()
    stage.embedded_tokenizer(stage_cfg.data.embedded, cache)
    assert trained == [1] and cache_warnings(caplog) == [] and len(quarantined(folder)) == 1


# ------------------------------------------------------------------------------------------- a run's results.json


def test_a_damaged_results_json_is_named_and_left_in_place(tmp_path, caplog):
    from conftest import small_splits, tiny_model, tiny_tokenizer

    from kdbench.models.loading import resolve_model_path, save_model_folder

    tok = tiny_tokenizer(small_splits()["train"])
    run = tmp_path / "run"
    save_model_folder(tiny_model(tok, seed=0), tok, run / "student")
    atomic_write_json(run / "results.json", {"status": "complete", "artifacts": {"student_dir": str(run / "student")}})
    corrupt = (run / "results.json").read_bytes()[:40]
    (run / "results.json").write_bytes(corrupt)

    target, record = resolve_model_path(str(run))
    assert (target, record) == (str(run / "student"), None)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and str(run / "results.json") in warned[0]
    assert "not valid JSON (" in warned[0] and ": line " in warned[0] and "column" in warned[0]
    assert "at at" not in warned[0]
    # The run's own record is not a cache entry: nothing can recompute it, so it stays where it is.
    assert (run / "results.json").read_bytes() == corrupt and quarantined(run / "results.json") == []


# ------------------------------------------------------------------------------------------- a real CLI run


@pytest.mark.slow
def test_the_cli_heals_a_truncated_cache_and_says_so_on_the_console(tmp_path):
    env = {**os.environ, "KDBENCH_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}

    def run(*extra):
        return subprocess.run([sys.executable, "-c", "from kdbench.train import cli; cli()", "logger=none",
                               *TINY_RUN, *extra], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)

    first = run()
    assert first.returncode == 0, first.stderr[-3000:]
    cache = tmp_path / "cache"
    entries = list((cache / "generations").glob("*.json"))
    teachers = [p for p in (cache / "teachers").iterdir() if p.is_dir()]
    assert len(entries) == 1 and len(teachers) == 1
    # The case: a generation entry truncated to half; and the teacher's weights with it.
    corrupt_json(entries[0], "truncated")
    corrupt_weights(teachers[0], "truncated")

    second = run("force=true")
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-3000:]
    assert "JSONDecodeError" not in out and "Traceback" not in out
    for entry in (entries[0], teachers[0]):
        aside = quarantined(entry)
        assert len(aside) == 1
        assert f"cache entry {entry} is corrupt" in out and aside[0].name in out
    assert "[WARNING]" in out  # through Hydra's console handler, as a user sees it
    assert json.loads(entries[0].read_text())[CHECKSUM_FIELD].startswith("sha256:")
