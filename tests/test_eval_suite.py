"""The evaluation suite wired into kdbench: eval-set configs over the real MiniLLM / GLUE files (../shared/data via
path overrides), the full profile, strict validation, the suite in-process (judge through a local HTTP endpoint)
and `kdbench-eval` end to end in a subprocess: results.json, figures and the W&B offline run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import REPO
from kdbench.paths import conf_dir
from kdbench.schema import ConfigError, register_configs, run_dirname, validate

DATA = REPO.parent / "shared" / "data"
SHARED = {  # eval set -> its offline copy (../shared/data/PROVENANCE.md)
    "dollyeval": "dollyeval_minillm_500.jsonl",
    "selfinst": "selfinst_minillm_242.jsonl",
    "vicunaeval": "vicunaeval_minillm_80.jsonl",
    "sni": "sni_minillm_1694.jsonl",
    "unni_short": "unni_dtkd_1050.jsonl",
    "sst2": "sst2_dev.jsonl",
    "boolq": "boolq_dev.jsonl",
}
SMALL_EMBEDDED = ["data.embedded.train_size=400", "data.embedded.validation_size=40", "data.embedded.test_size=60"]


def shared(name: str) -> Path:
    path = DATA / SHARED[name]
    assert path.is_file(), f"{path} is missing: these tests read the real sets in ../shared/data (PROVENANCE.md)"
    return path


def path_overrides(prefix: str = "eval.sets") -> list[str]:
    return [f"{prefix}.{name}.source.path={shared(name)}" for name in SHARED]


@pytest.fixture(autouse=True)
def _hydra():
    register_configs()
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def _compose(overrides=(), config_name="train"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


# ----------------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", sorted(SHARED))
def test_each_real_set_loads_its_shared_copy_through_a_path_override(name):
    from kdbench.evaluation.classification_sets import load_items
    from kdbench.evaluation.generation_sets import load_set_rows

    cfg = _compose([f"+eval_set@eval.sets.{name}={name}", f"eval.sets.{name}.source.path={shared(name)}",
                    f"eval.sets.{name}.limit=5"])
    validate(cfg)
    s = cfg.eval.sets[name]
    assert s.source.kind == "hf" and cfg.eval.sets[name].source.path == str(shared(name))
    if s.kind == "generation":
        rows = load_set_rows(s, cfg.eval, cfg.data.embedded)
        assert len(rows) == 5
        for r in rows:
            assert r["instruction"] and r["output"].strip() and r["references"][0] == r["output"]
            assert r["prompt"].endswith("### Response:\n")  # MiniLLM's exact prompt string travels with the row
        assert "normalized_exact_match" in s.metrics and "exact_match" not in s.metrics
    else:
        items = load_items(name, s, cfg.eval, cfg.data.embedded)
        assert len(items.prompts) == len(items.labels) == 5 and set(items.labels) <= {0, 1}
        raw = [json.loads(line) for line in shared(name).read_text().splitlines()[:5]]
        assert items.labels == [r["label"] for r in raw]  # BoolQ's bool `answer` agrees with its `label`
        first = raw[0]["text"] if name == "sst2" else raw[0]["question"]
        assert first in items.prompts[0] and items.prompts[0].endswith("### Response:\n")


def test_sni_keeps_every_reference():
    from kdbench.evaluation.generation_sets import load_set_rows

    cfg = _compose(["+eval_set@eval.sets.sni=sni", f"eval.sets.sni.source.path={shared('sni')}",
                    "eval.sets.sni.limit=3"])
    rows = load_set_rows(cfg.eval.sets.sni, cfg.eval, cfg.data.embedded)
    assert max(len(r["references"]) for r in rows) >= 2  # row 1 of the file has two references


def test_embedded_sets_and_the_light_profile():
    from kdbench.evaluation.classification_sets import load_items
    from kdbench.evaluation.generation_sets import load_set_rows

    cfg = _compose(SMALL_EMBEDDED)
    validate(cfg)
    e = cfg.eval
    assert e.name == "light" and list(e.sets) == ["embedded_test", "embedded_sentiment"]
    assert e.agreement.enabled and e.agreement.set == "embedded_test"
    assert not (e.sampling.enabled or e.exposure_bias.enabled or e.lm_eval.tasks)
    assert e.sets.embedded_test.metrics == ["rouge_l", "exact_match"]  # strict on the embedded set
    test_rows = load_set_rows(e.sets.embedded_test, e, cfg.data.embedded)
    assert len(test_rows) == 60
    items = load_items("embedded_sentiment", e.sets.embedded_sentiment, e, cfg.data.embedded)
    n_sentiment = sum(r["category"] == "sentiment" for r in test_rows)
    assert items.label_words == ["positive", "negative", "neutral"] and len(items.prompts) == n_sentiment >= 7
    assert set(items.labels) <= {0, 1, 2}


def test_full_profile_is_kdbench_evals_default():
    cfg = _compose(config_name="evaluate")
    validate(cfg)
    e = cfg.eval
    assert e.name == "full"
    assert set(e.sets) == {"dollyeval", "selfinst", "vicunaeval", "sni", "unni", "unni_short", "sst2", "boolq",
                           "embedded_test", "embedded_sentiment"}
    hub = {n: (s.source.path, s.source.data_files) for n, s in e.sets.items() if s.source.kind == "hf"}
    assert hub["dollyeval"] == ("MiniLLM/dolly", "valid.jsonl")
    assert hub["sni"] == ("MiniLLM/sinst", "11_/valid.jsonl") and hub["unni"] == ("MiniLLM/uinst", "11_/valid.jsonl")
    assert e.sets.unni.source.limit == 10000  # MiniLLM's --dev-num 10000
    sp = e.sampling
    assert sp.enabled and list(sp.seeds) == [10, 20, 30, 40, 50]
    assert (sp.temperature, sp.top_p, sp.top_k, sp.max_new_tokens) == (1.0, 1.0, 0, 256)
    assert e.judge.backend == "none" and e.exposure_bias.enabled and e.agreement.enabled
    assert e.sets.sni.length_buckets == ["0-5", "6-10", "11+"]


def test_judge_schema_mirrors_judge_config():
    from kdbench.evaluation.judge import JudgeConfig
    from kdbench.schema import JudgeSchema

    assert [(f.name, f.default) for f in fields(JudgeSchema)] == [(f.name, f.default) for f in fields(JudgeConfig)]


def test_misspelt_eval_set_key_fails_at_compose_naming_it():
    with pytest.raises(Exception, match="lenght_buckets"):
        _compose(["eval.sets.embedded_test.lenght_buckets=[0-5]"])


@pytest.mark.parametrize("override,key", [
    ("eval.sets.embedded_test.metrics=[bleu]", "eval.sets.embedded_test.metrics"),
    ("eval.sets.embedded_test.length_buckets=[0-5,3-10]", "eval.sets.embedded_test.length_buckets"),
    ("eval.sets.embedded_test.length_buckets=[short]", "eval.sets.embedded_test.length_buckets"),
    ("eval.sets.embedded_test.kind=regression", "eval.sets.embedded_test.kind"),
    ("eval.sets.embedded_sentiment.classification.label_words=[positive]",
     "eval.sets.embedded_sentiment.classification.label_words"),
    ("eval.limit=0", "eval.limit"),
    ("eval.sampling.enabled=true eval.sampling.top_p=0", "eval.sampling.top_p"),
    ("eval.sampling.enabled=true eval.sampling.sets=[nope]", "eval.sampling.sets"),
    ("eval.sampling.enabled=true eval.sampling.limit=0", "eval.sampling.limit"),
    ("eval.exposure_bias.enabled=true eval.exposure_bias.set=embedded_sentiment", "eval.exposure_bias.set"),
    ("eval.agreement.set=nope", "eval.agreement.set"),
    ("eval.judge.backend=gpt4", "eval.judge.backend"),
    ("eval.lm_eval.limit=0", "eval.lm_eval.limit"),
])
def test_nonsense_eval_values_fail_when_the_run_starts(override, key):
    cfg = _compose(override.split())
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


def test_model_alias_and_run_folder_names():
    from kdbench.evaluate import model_aliases

    assert model_aliases(["x", "model=gpt2", "model.dtype=bfloat16", "modelx=1"]) == \
        ["x", "student=gpt2", "student.dtype=bfloat16", "modelx=1"]
    assert model_aliases(["x", "model.path=/a/b"]) == ["x", "student.path=/a/b", "student.source=pretrained"]
    # A sweep cell's folder: '=' and ',' would break Hydra's grammar, so the value is quoted.
    quoted = model_aliases(["x", "model.path=/o/method=kd,student=tiny"])
    assert quoted == ["x", "student.path='/o/method=kd,student=tiny'", "student.source=pretrained"]
    from hydra.core.override_parser.overrides_parser import OverridesParser
    parsed = OverridesParser.create().parse_overrides(quoted[1:2])[0]
    assert parsed.value() == "/o/method=kd,student=tiny"
    assert model_aliases(["x", "model.path=/a", "model.source=scratch"])[-1] == "student.source=scratch"
    assert run_dirname("eval.limit=4") == "eval.limit=4"
    assert run_dirname("student.path=/a/b") == "student.path=_a_b"
    long = ",".join(f"eval.sets.s{i}.source.path=/data/some/long/folder/file{i}.jsonl" for i in range(8))
    short = run_dirname(long)
    assert len(short) <= 100 and short == run_dirname(long) and short != run_dirname(long + "x")


# ------------------------------------------------------------------------------------------- suite in-process


class _Judge:
    """A local OpenAI-compatible endpoint that answers every verdict "8 6" and records the auth headers."""

    def __init__(self):
        seen = self.auth = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                seen.append(self.headers.get("Authorization"))
                self.rfile.read(int(self.headers["Content-Length"]))
                body = json.dumps({"choices": [{"message": {"content": "8 6\nfine"}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


def test_suite_in_process_with_a_judge_and_no_key_anywhere(tmp_path, monkeypatch):
    from kdbench.evaluation.suite import Model, run_suite
    from kdbench.models.loading import build_from_arch
    from kdbench.stages.tokenizer import embedded_tokenizer

    secret = "sk-kdbench-test-9f8e7d"
    monkeypatch.setenv("KDBENCH_TEST_JUDGE_KEY", secret)
    judge = _Judge()
    try:
        cfg = _compose(["eval=full", *SMALL_EMBEDDED, *path_overrides(), "~eval.sets.unni", "~eval.sets.sni",
                        "~eval.sets.vicunaeval", "~eval.sets.boolq", "eval.limit=2", "eval.max_new_tokens=4",
                        "eval.sampling.enabled=false", "eval.exposure_bias.enabled=false",
                        "eval.judge.backend=openai", f"eval.judge.base_url={judge.url}", "eval.judge.model=m",
                        "eval.judge.api_key_env=KDBENCH_TEST_JUDGE_KEY", f"eval.judge.cache_dir={tmp_path}/cache",
                        "eval.judge.show_progress=false"])
        validate(cfg)
        tok = embedded_tokenizer(cfg.data.embedded, tmp_path / "cache")
        student = Model(build_from_arch(cfg.student.arch, tok, seed=0), tok, "s")
        teacher = Model(build_from_arch(cfg.student.arch, tok, seed=1), tok, "t", fingerprint="teacher-seed-1")
        res = run_suite(student, teacher, cfg.eval, cfg.data.embedded, cache_dir=str(tmp_path / "cache"),
                        out_dir=tmp_path / "run", show_progress=False)
    finally:
        judge.server.shutdown()
    # MiniLLM's ratio over both orders: candidate 6 vs reference 8 in one order, 8 vs 6 in the other -> 100.
    for metrics in (res.metrics, res.teacher_metrics):
        assert metrics["dollyeval/judge/score_ratio"] == pytest.approx(100.0)
        assert metrics["selfinst/judge/n_parsed"] == 4.0
    assert "judge" not in res.details["skipped"]
    assert set(judge.auth) == {f"Bearer {secret}"}  # the key went to the endpoint, and nowhere else:
    assert secret not in json.dumps([res.metrics, res.teacher_metrics, res.details, res.samples], default=str)
    assert all(secret not in p.read_text() for p in (tmp_path / "cache").rglob("*.json"))
    # the teacher's generations went through the content-keyed cache
    assert list((tmp_path / "cache" / "generations").glob("*.json"))
    assert res.metrics["agreement/n_tokens"] > 0 and 0 <= res.metrics["agreement/top1"] <= 1
    assert {"rouge_l_by_length", "reliability_sst2", "reliability_embedded_sentiment"} <= set(res.plots)


# --------------------------------------------------------------------------------------- kdbench-eval, e2e


def test_kdbench_eval_end_to_end_on_a_saved_student(tmp_path):
    from omegaconf import OmegaConf

    from kdbench.models.loading import build_from_arch, save_model_folder
    from kdbench.stages.tokenizer import embedded_tokenizer
    from kdbench.tracking.wandb_reader import read_offline_run

    cache = tmp_path / "cache"
    cfg = _compose(SMALL_EMBEDDED)
    tok = embedded_tokenizer(cfg.data.embedded, cache)  # the subprocess finds it in the same cache
    saved = save_model_folder(build_from_arch(cfg.student.arch, tok, seed=0), tok, tmp_path / "saved_student")
    # A saved teacher too (the teacher group's pretrained form): no teacher stage, no Lightning in the subprocess.
    teacher = save_model_folder(build_from_arch(cfg.student.arch, tok, seed=1), tok, tmp_path / "ref")
    assert OmegaConf.select(cfg, "student.name") == "tiny"

    secret = "sk-never-logged-1234"
    args = ["teacher.source=pretrained", f"teacher.path={teacher}", "teacher.name=ref", "trainer=smoke",
            *SMALL_EMBEDDED, f"model.path={saved}", *path_overrides(),
            "~eval.sets.unni",  # MiniLLM's UnNI [11+] has no offline copy; unni_short stands in for UnNI
            "eval.limit=3", "eval.max_new_tokens=6", "eval.sampling.seeds=[1,2]", "eval.sampling.limit=2",
            "eval.exposure_bias.num_prompts=2",
            "eval.exposure_bias.report_at=[2,4]", "eval.lm_eval.tasks=[kdbench_embedded]", "eval.lm_eval.limit=4"]
    env = {**os.environ, "KDBENCH_CACHE": str(cache), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "OPENAI_API_KEY": secret}
    out = subprocess.run([sys.executable, "-c", "from kdbench.evaluate import cli; cli()", *args], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    results = list((tmp_path / "outputs" / "eval").rglob("results.json"))
    assert len(results) == 1
    run_dir = results[0].parent
    rec = json.loads(results[0].read_text())
    assert rec["status"] == "complete" and rec["train"] is None
    for key in ("config", "metrics", "teacher_metrics", "versions", "hardware", "wall_time_s", "artifacts", "eval"):
        assert key in rec, key
    assert rec["labels"]["student"] == "saved_student" and rec["labels"]["teacher"] == "ref"
    m, t = rec["metrics"], rec["teacher_metrics"]

    generation = ["dollyeval", "selfinst", "vicunaeval", "sni", "unni_short"]
    for s in generation:
        assert m[f"{s}/n"] == 3 and 0 <= m[f"{s}/rouge_l"] <= 100 and f"{s}/normalized_exact_match" in m
        assert f"{s}/exact_match" not in m
        assert f"{s}/sampled/rouge_l_mean" in m and f"{s}/sampled/rouge_l_std" in m
        assert m[f"{s}/sampled/n_seeds"] == 2 and m[f"{s}/sampled/n"] == 2  # eval.sampling.limit of 3 rows
        assert f"{s}/rouge_l" in t  # the teacher's reference row
    assert "embedded_test/exact_match" in m and "embedded_test/normalized_exact_match" not in m
    for s in ("dollyeval", "sni", "unni_short"):
        assert sum(m[f"{s}/n@{b}"] for b in ("0-5", "6-10", "11+")) == 3
        assert any(f"{s}/rouge_l@{b}" in m for b in ("0-5", "6-10", "11+"))
    for s in ("dollyeval", "selfinst", "vicunaeval"):
        for metric in ("dist4", "repetition", "lm_loss"):
            assert f"{s}/{metric}" in m and f"{s}/{metric}" in t
    for s in ("sst2", "boolq", "embedded_sentiment"):
        for metric in ("accuracy", "ece", "brier"):
            assert f"{s}/{metric}" in m and f"{s}/{metric}" in t
        assert rec["eval"]["reliability"][s]["student"]["n"] == 3
    assert m["boolq/n_truncated_prompts"] > 0  # BoolQ passages are longer than 256 prompt tokens: counted
    for pos in (2, 4, 6):  # report_at that fit, plus the curve's end (eval.max_new_tokens=6)
        assert f"exposure_bias/exaccerr@{pos}" in m or f"exposure_bias/eps@{pos}" in m
    assert len(rec["eval"]["exposure_bias"]["exaccerr"]) == 6
    assert "agreement/forward_kl" in m and "agreement/top1" in m
    assert m["lm_eval/kdbench_embedded/n"] == 4 and "lm_eval/kdbench_embedded/exact_match" in m
    # No judge configured: recorded as skipped with the reason, never as a score.
    assert rec["eval"]["judge"]["skipped"] is True and "no judge configured" in rec["eval"]["judge"]["reason"]
    assert not any("/judge/" in k for k in m)

    for name in ("exaccerr", "rouge_l_by_length", "reliability_sst2", "reliability_boolq",
                 "reliability_embedded_sentiment"):
        png = run_dir / f"{name}.png"
        assert rec["artifacts"]["plots"][name] == str(png)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000

    run = read_offline_run(run_dir)
    for key in ("dollyeval/rouge_l", "sni/rouge_l@11+", "sst2/ece", "boolq/brier", "embedded_test/exact_match",
                "dollyeval/sampled/rouge_l_std", "agreement/top1", "lm_eval/kdbench_embedded/exact_match"):
        assert run.summary[f"eval/{key}"] == pytest.approx(m[key]), key
    assert run.summary["teacher/sst2/accuracy"] == pytest.approx(t["sst2/accuracy"])
    assert run.summary["plots/exaccerr"]["_type"].startswith("image")
    assert run.config["eval"]["name"] == "full" and run.config["student"]["path"] == str(saved)

    # The environment's API key is in no record: results.json, the W&B run, the logs.
    for path in [results[0], *run_dir.rglob("*.wandb"), *run_dir.rglob("*.log")]:
        assert secret not in path.read_text(errors="ignore"), path
    assert secret not in out.stdout + out.stderr


def test_model_path_resolves_a_kdbench_run_folder(tmp_path):
    from kdbench.models.loading import resolve_model_path

    run = tmp_path / "run"
    (run / "student").mkdir(parents=True)
    (run / "student" / "config.json").write_text("{}")
    record = {"status": "complete", "labels": {"method": "kd", "student": "tiny"},
              "artifacts": {"student_dir": str(tmp_path / "moved-away" / "student")}}
    (run / "results.json").write_text(json.dumps(record))
    target, rec = resolve_model_path(str(run))  # the recorded folder is gone: student/ beside results.json
    assert target == str(run / "student") and rec["labels"]["method"] == "kd"
    assert resolve_model_path(str(run / "student")) == (str(run / "student"), None)
    assert resolve_model_path("MiniLLM/MiniLLM-gpt2-120M") == ("MiniLLM/MiniLLM-gpt2-120M", None)
    (run / "student" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="without a saved student"):
        resolve_model_path(str(run))
