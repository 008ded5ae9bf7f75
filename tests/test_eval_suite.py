"""The evaluation suite wired into kdbench: eval-set configs over the real MiniLLM / GLUE files (the copies bundled
with the package: read by default offline, or through path overrides), the full profile, strict validation, the
suite in-process (judge through a local HTTP endpoint) and `kdbench-eval` end to end in a subprocess: results.json,
figures and the W&B offline run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import REPO, bundled_records
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from kdbench.paths import conf_dir
from kdbench.runtime import validate
from kdbench.schema import ConfigError, register_configs, run_dirname

BUNDLED = {  # eval set -> its copy bundled with kdbench (kdbench/assets/evalsets/PROVENANCE.md), and its rows
    "dollyeval": ("dollyeval_minillm_500", 500),
    "selfinst": ("selfinst_minillm_242", 242),
    "vicunaeval": ("vicunaeval_minillm_80", 80),
    "sni": ("sni_minillm_1694", 1694),
    "unni_short": ("unni_dtkd_1050", 1050),
    "sst2": ("sst2_dev", 872),
    "boolq": ("boolq_dev", 3270),
}
SMALL_EMBEDDED = ["data.embedded.train_size=400", "data.embedded.validation_size=40", "data.embedded.test_size=60"]


@pytest.fixture
def local_copy(bundled_file):
    """eval set -> an uncompressed JSONL copy of its bundled file, for source.path overrides."""
    return lambda name: bundled_file(BUNDLED[name][0])


def path_overrides(local_copy, prefix: str = "eval.sets") -> list[str]:
    return [f"{prefix}.{name}.source.path={local_copy(name)}" for name in BUNDLED]


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


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_each_real_set_loads_a_local_copy_through_a_path_override(name, local_copy):
    from kdbench.evaluation.classification_sets import load_items
    from kdbench.evaluation.generation_sets import load_set_rows

    cfg = _compose([f"+eval_set@eval.sets.{name}={name}", f"eval.sets.{name}.source.path={local_copy(name)}",
                    f"eval.sets.{name}.limit=5"])
    validate(cfg)
    s = cfg.eval.sets[name]
    assert s.source.kind == "hf" and cfg.eval.sets[name].source.path == str(local_copy(name))
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
        raw = [json.loads(line) for line in local_copy(name).read_text().splitlines()[:5]]
        assert items.labels == [r["label"] for r in raw]  # BoolQ's bool `answer` agrees with its `label`
        first = raw[0]["text"] if name == "sst2" else raw[0]["question"]
        assert first in items.prompts[0] and items.prompts[0].endswith("### Response:\n")


def test_sni_keeps_every_reference(local_copy):
    from kdbench.evaluation.generation_sets import load_set_rows

    cfg = _compose(["+eval_set@eval.sets.sni=sni", f"eval.sets.sni.source.path={local_copy('sni')}",
                    "eval.sets.sni.limit=3"])
    rows = load_set_rows(cfg.eval.sets.sni, cfg.eval, cfg.data.embedded)
    assert max(len(r["references"]) for r in rows) >= 2  # row 1 of the file has two references


# ------------------------------------------------------------------------------------- bundled copies, offline


def test_a_hub_set_without_a_bundled_copy_is_skipped_offline_with_its_reason(monkeypatch, caplog, tmp_path):
    # UnNI [11+] (MiniLLM's 10k set) is not bundled: offline, the full profile evaluates the other sets and records
    # why this one is missing, instead of failing the whole evaluation; a local copy or the hub still reads it.
    from kdbench.evaluation.suite import _unreachable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = _compose([], config_name="evaluate")
    assert "unni" in cfg.eval.sets and cfg.eval.sets.unni.source.bundled is None
    skipped: dict = {}
    with caplog.at_level("WARNING", logger="kdbench.evaluation.suite"):
        gone = [n for n, s in cfg.eval.sets.items() if _unreachable(n, s, skipped)]
    assert gone == ["unni"]
    assert "HF_HUB_OFFLINE is set" in skipped["unni"] and "eval.sets.unni.source.path=" in skipped["unni"]
    assert any("eval set unni not evaluated" in r.getMessage() for r in caplog.records)
    local = tmp_path / "unni.jsonl"
    local.write_text(json.dumps({"instruction": "Say yes.", "input": "", "output": "yes"}) + "\n")
    cfg.eval.sets.unni.source.path = str(local)
    assert not _unreachable("unni", cfg.eval.sets.unni, {})
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    import kdbench.data.bundled as bundled

    monkeypatch.setattr(bundled, "_probe", lambda endpoint: None)  # the hub answers: read by name as before
    cfg.eval.sets.unni.source.path = "MiniLLM/uinst"
    assert not _unreachable("unni", cfg.eval.sets.unni, {})


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_each_real_set_loads_offline_from_its_bundled_copy_with_no_override(name, monkeypatch, caplog):
    from kdbench.evaluation.classification_sets import load_items
    from kdbench.evaluation.generation_sets import load_set_rows

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bundled, n_rows = BUNDLED[name]
    cfg = _compose([f"+eval_set@eval.sets.{name}={name}"])
    validate(cfg)
    s = cfg.eval.sets[name]
    assert s.source.kind == "hf" and "/" in s.source.path and s.source.bundled == bundled  # a hub id, and its copy
    raw = bundled_records(bundled)
    with caplog.at_level("WARNING", logger="kdbench.data.bundled"):
        if s.kind == "generation":
            rows = load_set_rows(s, cfg.eval, cfg.data.embedded)
            assert len(rows) == len(raw) == n_rows
            assert [r["output"] for r in rows] == [x["output"] for x in raw]
            assert all(r["prompt"].endswith("### Response:\n") for r in rows)
        else:  # through the config's own columns (SST-2's {text: sentence} meets a copy already named `text`)
            items = load_items(name, s, cfg.eval, cfg.data.embedded)
            assert len(items.prompts) == len(raw) == n_rows
            assert items.labels == [x["label"] for x in raw]
            first = raw[0]["text"] if name == "sst2" else raw[0]["question"]
            assert first in items.prompts[0]
    said = [r.getMessage() for r in caplog.records if r.name == "kdbench.data.bundled"]
    assert len(said) == 1 and "HF_HUB_OFFLINE is set" in said[0] and f"{bundled}.jsonl.gz" in said[0], said
    assert s.source.path in said[0]  # the hub set it stands in for is named


def test_bundled_files_match_their_provenance_and_the_configs_naming_them():
    """Every bundled file is named by an eval-set config whose hub set is the one it copies, and its content is
    the one PROVENANCE.md records (rows, sha256 of the uncompressed JSONL)."""
    import gzip
    import hashlib

    from omegaconf import OmegaConf

    from kdbench.data.bundled import EVALSETS_DIR, HUB_SETS, bundled_names, bundled_path

    assert bundled_names() == sorted(HUB_SETS) == sorted(b for b, _ in BUNDLED.values())
    named = {}
    for path in sorted((REPO / "conf" / "eval_set").glob("*.yaml")):
        src = OmegaConf.load(path).source
        if src.get("bundled"):
            named[src.bundled] = path.stem
            assert HUB_SETS[src.bundled] == (src.path, src.get("data_files"), src.split), path
    assert named == {b: name for name, (b, _) in BUNDLED.items()}
    provenance = (EVALSETS_DIR / "PROVENANCE.md").read_text()
    assert "CC BY-SA 3.0" in provenance and "share-alike" in provenance and "OpenAI" in provenance
    rows = ([c.strip() for c in line.strip("|").split("|")] for line in provenance.splitlines()
            if line.startswith("| ") and ".jsonl.gz" in line)
    table = {cells[0]: cells for cells in rows}
    for name, (bundled, n_rows) in BUNDLED.items():
        content = gzip.decompress(bundled_path(bundled).read_bytes())
        cells = table[f"{bundled}.jsonl.gz"]
        assert cells[1] == name and int(cells[3]) == n_rows == content.count(b"\n"), cells
        assert cells[-1] == hashlib.sha256(content).hexdigest(), f"{bundled}: content differs from PROVENANCE.md"


def test_an_unknown_bundled_name_fails_naming_the_key(monkeypatch):
    from kdbench.data.sources import DataError
    from kdbench.evaluation.generation_sets import load_set_rows

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = _compose(["+eval_set@eval.sets.dollyeval=dollyeval", "eval.sets.dollyeval.source.bundled=dolly_500"])
    with pytest.raises(DataError, match=r"source\.bundled='dolly_500'.*dollyeval_minillm_500"):
        load_set_rows(cfg.eval.sets.dollyeval, cfg.eval, cfg.data.embedded)


def test_a_path_pointed_at_another_hub_set_is_not_served_from_the_wrong_copy(monkeypatch):
    from kdbench.data.sources import DataError
    from kdbench.evaluation.generation_sets import load_set_rows

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = _compose(["+eval_set@eval.sets.dollyeval=dollyeval",
                    "eval.sets.dollyeval.source.path=databricks/databricks-dolly-15k"])
    with pytest.raises(DataError, match=r"databricks/databricks-dolly-15k.*HF_HUB_OFFLINE is set.*"
                                        r"source\.bundled='dollyeval_minillm_500' is a copy of \('MiniLLM/dolly'"):
        load_set_rows(cfg.eval.sets.dollyeval, cfg.eval, cfg.data.embedded)


# Run in a fresh interpreter (the probe's answer is kept for the life of a process): the hub switched on, its
# endpoint pointed at a local one, two sets read through their eval-set configs.
_READ_TWO_SETS = """
import json, logging, sys, time
from omegaconf import OmegaConf
from kdbench.data.sources import DataError, load_records, load_rows
from kdbench.schema import SourceConfig
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
def source(name):
    return SourceConfig(**OmegaConf.to_container(OmegaConf.load(f"{sys.argv[1]}/{name}.yaml").source))
t0, out = time.perf_counter(), {}
try:
    out["dollyeval"] = len(load_rows(source("dollyeval"), None))
    out["sst2"] = [r["text"] for r in load_records(source("sst2"))]
except DataError as e:
    out["error"] = str(e)
out["seconds"] = time.perf_counter() - t0
print(json.dumps(out))
"""


class _Endpoint:
    """A local stand-in for the hub's endpoint: `refused` (nothing listens), `silent` (accepts connections and
    never answers), or an HTTP server answering every request with `status`. Records what reached it."""

    def __init__(self, behaviour: str, status: int = 404):
        import socket

        self.connections, self.requests = [], []
        if behaviour == "refused":
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
            probe.close()  # the port was free a moment ago and nothing listens on it now
            self.close = lambda: None
        elif behaviour == "silent":
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            self.port = listener.getsockname()[1]

            def accept():
                while True:
                    try:
                        self.connections.append(listener.accept()[0])  # held open, never answered
                    except OSError:
                        return
            threading.Thread(target=accept, daemon=True).start()
            self.close = listener.close
        else:
            requests = self.requests

            class Handler(BaseHTTPRequestHandler):
                def answer(self):
                    requests.append(f"{self.command} {self.path}")
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

                do_GET = do_HEAD = answer

                def log_message(self, *a):
                    pass

            server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self.port = server.server_address[1]
            self.close = server.shutdown
        self.url = f"http://127.0.0.1:{self.port}"


def _read_two_sets_with_the_hub_at(endpoint: _Endpoint, tmp_path) -> tuple[dict, list[str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(HF_ENDPOINT=endpoint.url, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
    try:
        out = subprocess.run([sys.executable, "-c", _READ_TWO_SETS, str(REPO / "conf" / "eval_set")], env=env,
                             capture_output=True, text=True, timeout=120)
    finally:
        endpoint.close()
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1]), [line for line in out.stderr.splitlines() if "bundled" in line]


@pytest.mark.parametrize("behaviour,status,why", [
    ("refused", 0, "cannot be reached (ConnectError"),
    ("silent", 0, "cannot be reached (ReadTimeout"),
    ("http", 503, "answered HTTP 503"),
])
def test_an_unreachable_hub_falls_back_to_the_bundled_copies_quickly(behaviour, status, why, tmp_path):
    """No offline variable set, the hub unreachable: the probe (one short request per process, not datasets' ~23 s
    of retries per set) sends both sets to their bundled copies, with one warning line each."""
    endpoint = _Endpoint(behaviour, status)
    got, warnings = _read_two_sets_with_the_hub_at(endpoint, tmp_path)
    assert got.get("error") is None and got["dollyeval"] == 500
    assert got["sst2"] == [x["text"] for x in bundled_records("sst2_dev")]
    assert got["seconds"] < 10, got["seconds"]  # one probe of at most 3 s in all
    assert len(warnings) == 2, warnings
    for warning, file in zip(warnings, ("dollyeval_minillm_500.jsonl.gz", "sst2_dev.jsonl.gz")):
        assert warning.startswith("WARNING kdbench.data.bundled") and endpoint.url in warning and why in warning
        assert file in warning
    if behaviour == "silent":
        assert len(endpoint.connections) == 1  # probed once for the two sets
    if behaviour == "http":
        assert endpoint.requests == ["HEAD /"]


def test_a_reachable_hub_is_read_by_name_not_from_the_bundled_copy(tmp_path):
    """The endpoint answers (404 to everything): the hub is up, so the set is asked of it by name; its error (no
    such set there) is the hub's, and no bundled copy is read."""
    endpoint = _Endpoint("http", 404)
    got, warnings = _read_two_sets_with_the_hub_at(endpoint, tmp_path)
    assert warnings == [] and "dollyeval" not in got
    assert "data source 'MiniLLM/dolly'" in got["error"] and "could not be loaded" in got["error"]
    assert endpoint.requests[0] == "HEAD /"  # the probe
    assert any("/datasets/MiniLLM/dolly/" in r for r in endpoint.requests[1:]), endpoint.requests


# An installed wheel, away from any checkout, with the hub off: each eval set's config (from the wheel's _conf)
# reads its bundled copy from the wheel's own files.
_READ_EVERY_SET = """
import json, sys
from omegaconf import OmegaConf
import kdbench
from kdbench.data.sources import load_records, load_rows
from kdbench.paths import conf_dir
from kdbench.schema import SourceConfig
assert kdbench.__file__.startswith(sys.argv[1]), kdbench.__file__
counts = {}
for name in sys.argv[2:]:
    node = OmegaConf.load(conf_dir() / "eval_set" / f"{name}.yaml")
    source = SourceConfig(**OmegaConf.to_container(node.source))
    read = load_rows(source, None) if node.kind == "generation" else load_records(source)
    counts[name] = [len(read), str(conf_dir()), read[0].get("_where", "")]
print(json.dumps(counts))
"""


@pytest.mark.slow
def test_the_wheel_carries_the_bundled_sets_and_reads_them_offline(tmp_path, built_wheel):
    import zipfile

    wheel = built_wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "kdbench/assets/evalsets/PROVENANCE.md" in names
    assert {f"kdbench/assets/evalsets/{b}.jsonl.gz" for b, _ in BUNDLED.values()} <= names
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", _READ_EVERY_SET, str(site), *BUNDLED], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    counts = json.loads(out.stdout.splitlines()[-1])
    for name, (bundled, n_rows) in BUNDLED.items():
        assert counts[name][0] == n_rows, name
        assert counts[name][1].startswith(str(site))  # the wheel's configs, not the checkout's
        if counts[name][2]:  # classification records name the file they came from: the wheel's copy
            assert counts[name][2].startswith(str(site / "kdbench" / "assets" / "evalsets" / bundled)), counts[name]
    assert out.stderr.count("reading the copy bundled with kdbench") == len(BUNDLED)


def test_embedded_sets_and_the_light_profile():
    from kdbench.evaluation.classification_sets import load_items
    from kdbench.evaluation.generation_sets import load_set_rows

    cfg = _compose(SMALL_EMBEDDED)
    validate(cfg)
    e = cfg.eval
    assert e.name == "light" and list(e.sets) == ["embedded_v5_test", "embedded_v5_mood"]
    assert e.agreement.enabled and e.agreement.set == "embedded_v5_test"
    assert not (e.sampling.enabled or e.exposure_bias.enabled or e.lm_eval.tasks)
    assert e.sets.embedded_v5_test.metrics == ["rouge_l", "exact_match"]  # strict on the embedded set
    assert e.sets.embedded_v5_test.truth.enabled and e.sets.embedded_v5_mood.truth.enabled
    test_rows = load_set_rows(e.sets.embedded_v5_test, e, cfg.data.embedded)
    assert len(test_rows) == 60
    items = load_items("embedded_v5_mood", e.sets.embedded_v5_mood, e, cfg.data.embedded)
    n_mood = sum(r["category"] == "mood" for r in test_rows)
    assert items.label_words == ["positive", "negative"] and len(items.prompts) == n_mood == 12  # 2 in each 10
    assert set(items.labels) == {0, 1}


def test_v4_sets_and_the_light_v4_profile():
    from kdbench.evaluation.classification_sets import load_items
    from kdbench.evaluation.generation_sets import load_set_rows

    cfg = _compose(["data=embedded_v4", "eval=light_v4", *SMALL_EMBEDDED])
    validate(cfg)
    e = cfg.eval
    assert e.name == "light_v4" and list(e.sets) == ["embedded_test", "embedded_sentiment"]
    assert e.agreement.enabled and e.agreement.set == "embedded_test"
    assert not any(s.truth.enabled for s in e.sets.values())
    test_rows = load_set_rows(e.sets.embedded_test, e, cfg.data.embedded)
    assert len(test_rows) == 60
    items = load_items("embedded_sentiment", e.sets.embedded_sentiment, e, cfg.data.embedded)
    n_sentiment = sum(r["category"] == "sentiment" for r in test_rows)
    assert items.label_words == ["positive", "negative", "neutral"] and len(items.prompts) == n_sentiment >= 7
    assert set(items.labels) <= {0, 1, 2}
    # v4's sentiment set on the default (v5) data has no row to score: named, before any model runs.
    from kdbench.data.sources import DataError

    GlobalHydra.instance().clear()
    on_v5 = _compose(["eval=light_v4", *SMALL_EMBEDDED])
    with pytest.raises(DataError, match=r"eval\.sets\.embedded_sentiment\.classification\.category='sentiment': no "
                                        r"row of the embedded test split"):
        load_items("embedded_sentiment", on_v5.eval.sets.embedded_sentiment, on_v5.eval, on_v5.data.embedded)


def test_full_profile_is_kdbench_evals_default():
    cfg = _compose(config_name="evaluate")
    validate(cfg)
    e = cfg.eval
    assert e.name == "full"
    assert set(e.sets) == {"dollyeval", "selfinst", "vicunaeval", "sni", "unni", "unni_short", "sst2", "boolq",
                           "embedded_v5_test", "embedded_v5_mood"}
    assert cfg.data.embedded.version == 5  # the default benchmark, whose sets these are
    hub = {n: (s.source.path, s.source.data_files) for n, s in e.sets.items() if s.source.kind == "hf"}
    assert hub["dollyeval"] == ("MiniLLM/dolly", "valid.jsonl")
    assert hub["sni"] == ("MiniLLM/sinst", "11_/valid.jsonl") and hub["unni"] == ("MiniLLM/uinst", "11_/valid.jsonl")
    assert e.sets.unni.source.limit == 10000  # MiniLLM's --dev-num 10000
    sp = e.sampling
    assert sp.enabled and list(sp.seeds) == [10, 20, 30, 40, 50]
    d = sp.decoding
    assert (d.temperature, d.top_p, d.top_k, d.max_new_tokens) == (1.0, 1.0, 0, 256)
    assert e.judge.backend == "none" and e.exposure_bias.enabled and e.agreement.enabled
    assert e.sets.sni.length_buckets == ["0-5", "6-10", "11+"]


def test_the_judge_config_is_defined_once():
    from kdbench.evaluation.judge import JudgeConfig
    from kdbench.schema import JudgeConfig as SchemaJudgeConfig

    assert JudgeConfig is SchemaJudgeConfig  # eval.judge's node is the judge's own settings, not a copy


def test_misspelt_eval_set_key_fails_at_compose_naming_it():
    with pytest.raises(Exception, match="lenght_buckets"):
        _compose(["eval.sets.embedded_v5_test.lenght_buckets=[0-5]"])


@pytest.mark.parametrize("override,key", [
    ("eval.sets.embedded_v5_test.length_buckets=[0-5,3-10]", "eval.sets.embedded_v5_test.length_buckets"),
    ("eval.sets.embedded_v5_test.length_buckets=[short]", "eval.sets.embedded_v5_test.length_buckets"),
    ("eval.sets.embedded_v5_mood.classification.label_words=[positive]",
     "eval.sets.embedded_v5_mood.classification.label_words"),
    ("eval.limit=0", "eval.limit"),
    ("eval.sampling.enabled=true eval.sampling.decoding.top_p=0", "eval.sampling.decoding.top_p"),
    ("eval.sampling.enabled=true eval.sampling.sets=[nope]", "eval.sampling.sets"),
    ("eval.sampling.enabled=true eval.sampling.limit=0", "eval.sampling.limit"),
    ("eval.exposure_bias.enabled=true eval.exposure_bias.set=embedded_v5_mood", "eval.exposure_bias.set"),
    ("eval.agreement.set=nope", "eval.agreement.set"),
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


def test_suite_in_process_with_a_judge_and_no_key_anywhere(tmp_path, monkeypatch, local_copy):
    from kdbench.evaluation.suite import Model, run_suite
    from kdbench.models.loading import build_from_arch
    from kdbench.stages.tokenizer import embedded_tokenizer

    secret = "sk-kdbench-test-9f8e7d"
    monkeypatch.setenv("KDBENCH_TEST_JUDGE_KEY", secret)
    judge = _Judge()
    try:
        cfg = _compose(["eval=full", *SMALL_EMBEDDED, *path_overrides(local_copy), "~eval.sets.unni",
                        "~eval.sets.sni", "~eval.sets.vicunaeval", "~eval.sets.boolq", "eval.limit=2",
                        "eval.max_new_tokens=4",
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
    assert {"rouge_l_by_length", "reliability_sst2", "reliability_embedded_v5_mood"} <= set(res.plots)


# --------------------------------------------------------------------------------------- kdbench-eval, e2e


@pytest.mark.slow
def test_kdbench_eval_end_to_end_on_a_saved_student(tmp_path):
    from omegaconf import OmegaConf
    from wandb_reader import read_offline_run

    from kdbench.models.loading import build_from_arch, save_model_folder
    from kdbench.stages.tokenizer import embedded_tokenizer

    cache = tmp_path / "cache"
    cfg = _compose(SMALL_EMBEDDED)
    tok = embedded_tokenizer(cfg.data.embedded, cache)  # the subprocess finds it in the same cache
    saved = save_model_folder(build_from_arch(cfg.student.arch, tok, seed=0), tok, tmp_path / "saved_student")
    # A saved teacher too (the teacher group's pretrained form): no teacher stage, no Lightning in the subprocess.
    teacher = save_model_folder(build_from_arch(cfg.student.arch, tok, seed=1), tok, tmp_path / "ref")
    assert OmegaConf.select(cfg, "student.name") == "tiny"

    secret = "sk-never-logged-1234"
    args = ["teacher.source=pretrained", f"teacher.path={teacher}", "teacher.name=ref", "trainer=smoke",
            *SMALL_EMBEDDED, f"model.path={saved}",  # no source.path: offline, the bundled copies are read
            "~eval.sets.unni",  # MiniLLM's UnNI [11+] has no offline copy; unni_short stands in for UnNI
            "eval.limit=3", "eval.max_new_tokens=6", "eval.sampling.seeds=[1,2]", "eval.sampling.limit=2",
            "eval.exposure_bias.num_prompts=2",
            "eval.exposure_bias.report_at=[2,4]", "eval.lm_eval.tasks=[kdbench_embedded]", "eval.lm_eval.limit=4"]
    env = {**os.environ, "KDBENCH_CACHE": str(cache), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "OPENAI_API_KEY": secret}
    out = subprocess.run([sys.executable, "-c", "from kdbench.evaluate import cli; cli()", *args], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for name, (bundled, _) in BUNDLED.items():  # one warning line per set says the bundled copy was read, and why
        said = [line for line in (out.stdout + out.stderr).splitlines() if f"{bundled}.jsonl.gz" in line]
        assert len(said) == 1 and "HF_HUB_OFFLINE is set" in said[0], (name, said)
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
    assert "embedded_v5_test/exact_match" in m and "embedded_v5_test/normalized_exact_match" not in m
    # The default benchmark's sets are scored against p* too (3 rows: 2 choice and 1 pairs, as the split begins).
    assert m["embedded_v5_test/truth/n"] == 3 and "embedded_v5_test/truth/forward_kl" in t
    assert "embedded_v5_mood/truth/calibration_mae" in m
    for s in ("dollyeval", "sni", "unni_short"):
        assert sum(m[f"{s}/n@{b}"] for b in ("0-5", "6-10", "11+")) == 3
        assert any(f"{s}/rouge_l@{b}" in m for b in ("0-5", "6-10", "11+"))
    for s in ("dollyeval", "selfinst", "vicunaeval"):
        for metric in ("dist4", "repetition", "lm_loss"):
            assert f"{s}/{metric}" in m and f"{s}/{metric}" in t
    for s in ("sst2", "boolq", "embedded_v5_mood"):
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
                 "reliability_embedded_v5_mood"):
        png = run_dir / f"{name}.png"
        assert rec["artifacts"]["plots"][name] == str(png)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000

    run = read_offline_run(run_dir)
    for key in ("dollyeval/rouge_l", "sni/rouge_l@11+", "sst2/ece", "boolq/brier", "embedded_v5_test/exact_match",
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


def test_exposure_bias_is_reported_within_the_teachers_answer_length():
    from kdbench.evaluation.suite import reported_positions

    # The teacher's samples run 12.6 tokens on average: positions past 12 measure length, not accumulated error.
    assert reported_positions((5, 10, 20, 40, 80), 12.6, True) == [5, 10, 12]
    assert reported_positions((5, 10, 20, 40, 80), 12.6, False) == [5, 10, 20, 40, 80]
    assert reported_positions((5, 10), 0.4, True) == [1]  # at least the first position
    assert reported_positions((2, 4, 6), 6.0, True) == [2, 4, 6]
