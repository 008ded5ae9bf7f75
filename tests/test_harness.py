"""kdbench.evaluation.harness: lm-eval on an in-memory model, offline, with kdbench's shipped local tasks."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sst2(bundled_file) -> Path:
    """SST-2 dev (872 rows) as JSONL, from the copy bundled with kdbench: lm-eval's task_data reads a file."""
    return bundled_file("sst2_dev")


@pytest.fixture(scope="module")
def boolq(bundled_file) -> Path:
    """BoolQ dev (3,270 rows) as JSONL, from the bundled copy."""
    return bundled_file("boolq_dev")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network: offline flags for the hub and datasets, a fresh datasets cache, and any socket connect
    recorded and refused (checked after the test)."""
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")
    attempts = []

    def refuse(sock, address, *a, **k):
        attempts.append(address)
        raise OSError(f"network access attempted in an offline test: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield
    assert not attempts, f"the test tried to reach the network: {attempts}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, sst2, boolq):
    """A BPE tokenizer trained here, two differently seeded one-layer LLaMAs (hidden 32), and the embedded
    benchmark's test split as JSONL."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kdbench.data.embedded import SplitSizes, generate_splits
    from kdbench.evaluation.harness import write_jsonl
    from kdbench.models.tokenizer import train_bpe_tokenizer

    torch.set_num_threads(1)
    splits = generate_splits(0, sizes=SplitSizes(train=300, validation=0, test=24))
    texts = [f"{r['instruction']} {r['input']} {r['output']}" for r in splits["train"]]
    for path in (sst2, boolq):
        with path.open() as f:
            texts += [next(f) for _ in range(100)]
    tok = train_bpe_tokenizer(texts, vocab_size=512)
    assert tok.eos_token_id is not None and tok.pad_token_id is not None and tok.eos_token_id != tok.pad_token_id

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(LlamaForCausalLM(cfg).eval())
    embedded = write_jsonl(splits["test"], tmp_path_factory.mktemp("embedded") / "test.jsonl")
    return {"tok": tok, "models": models, "embedded": embedded, "test_rows": splits["test"]}


def test_datasets_json_builder_works_offline(tmp_path):
    import datasets

    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n')
    ds = datasets.load_dataset("json", data_files={"validation": str(path)}, split="validation")
    assert ds["label"] == [1, 0]


def test_embedded_exact_match_and_prompt(setup):
    from kdbench.data.template import render_prompt
    from kdbench.evaluation.harness import run_lm_eval

    out = run_lm_eval(setup["models"][0], setup["tok"], ["kdbench_embedded"], limit=8,
                      task_data={"kdbench_embedded": str(setup["embedded"])}, log_samples=True)
    json.dumps(out, allow_nan=False)  # JSON-serialisable as it is
    # Strict exact match as a fraction in [0, 1] (lm-eval's scale, not x 100).
    assert 0.0 <= out["kdbench_embedded/exact_match"] <= 1.0
    assert out["kdbench_embedded/n"] == 8
    meta = out["_meta"]
    assert meta["lm_eval_version"].startswith("0.4.")
    task = meta["tasks"]["kdbench_embedded"]
    assert task["n_available"] == len(setup["test_rows"])
    assert task["data_file"] == str(setup["embedded"].resolve()) and len(task["data_sha256"]) == 64
    assert len(task["config_sha256"]) == 64 and task["version"] == 1.0

    # The prompt lm-eval fed the model is byte-identical to training's template; generation was greedy with EOS
    # added to the stop strings by lm-eval.
    samples = out["_samples"]["kdbench_embedded"]
    assert len(samples) == 8
    for s in samples:
        row = setup["test_rows"][s["doc_id"]]
        prompt, gen_kwargs = s["arguments"][0]
        assert prompt == render_prompt(row["instruction"], row["input"])
        assert gen_kwargs["do_sample"] is False and "\n\n" in gen_kwargs["until"]
        assert s["target"] == row["output"]
        assert s["exact_match"] == float(s["filtered_resps"][0].strip() == row["output"])


def test_embedded_metric_is_strict_exact_match():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "kdbench_lm_eval_utils", REPO / "kdbench" / "evaluation" / "lm_eval_tasks" / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    doc = {"instruction": "i", "input": "", "output": "red, blue", "category": "reverse"}
    assert utils.embedded_process_results(doc, [" red, blue\n"]) == {"exact_match": 1.0}
    assert utils.embedded_process_results(doc, ["Red, blue"]) == {"exact_match": 0.0}
    assert utils.embedded_process_results(doc, ["red blue"]) == {"exact_match": 0.0}


def test_sst2_and_boolq_accuracy(setup, sst2, boolq):
    from kdbench.evaluation.harness import run_lm_eval

    out = run_lm_eval(setup["models"][0], setup["tok"], ["kdbench_sst2", "kdbench_boolq"], limit=8,
                      task_data={"kdbench_sst2": str(sst2), "kdbench_boolq": str(boolq)})
    json.dumps(out, allow_nan=False)
    for task in ("kdbench_sst2", "kdbench_boolq"):
        assert 0.0 <= out[f"{task}/acc"] <= 1.0
        assert out[f"{task}/n"] == 8
        assert not any("," in k for k in out if k != "_meta")
    assert 0.0 <= out["kdbench_sst2/acc_norm"] <= 1.0
    assert out["_meta"]["tasks"]["kdbench_sst2"]["n_available"] == 872
    assert out["_meta"]["tasks"]["kdbench_boolq"]["n_available"] == 3270


def _loglikelihood(model, tok, context: str, continuation: str) -> float:
    """log p(continuation | context), tokenised as lm-eval does (whole string, context prefix split off)."""
    import torch

    whole = tok(context + continuation, add_special_tokens=False).input_ids
    ctx = tok(context, add_special_tokens=False).input_ids
    cont = whole[len(ctx):]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
    return float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont)))


def test_the_in_memory_model_is_what_gets_scored(setup, sst2):
    """lm-eval's SST-2 log-likelihoods equal the passed model's own (and differ between two initialisations);
    the caller's training mode survives the call."""

    from kdbench.evaluation.harness import run_lm_eval

    tok = setup["tok"]
    scores = []
    for model in setup["models"]:
        model.train()
        out = run_lm_eval(model, tok, ["kdbench_sst2"], limit=2, task_data={"kdbench_sst2": str(sst2)},
                          log_samples=True, seed=7)
        assert model.training, "run_lm_eval must restore the model's training mode"
        model.eval()
        sample = out["_samples"]["kdbench_sst2"][0]
        got = [r[0][0] for r in sample["resps"]]  # one (loglikelihood, is_greedy) per choice
        context = sample["arguments"][0][0]
        want = [_loglikelihood(model, tok, context, " negative"), _loglikelihood(model, tok, context, " positive")]
        assert got == pytest.approx(want, abs=1e-4)
        scores.append(got)
    assert not all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(*scores))


def test_caller_rng_state_is_restored(setup, sst2):
    import torch

    from kdbench.evaluation.harness import run_lm_eval

    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    run_lm_eval(setup["models"][0], setup["tok"], ["kdbench_sst2"], limit=1, task_data={"kdbench_sst2": str(sst2)})
    assert torch.equal(torch.rand(3), expected)


class _Untouchable:
    """Stands in for a model: any use of it fails, so errors raised with it prove no model work happened."""

    def __getattr__(self, name):
        raise AssertionError(f"the model was touched (.{name}) before the task checks failed")


@pytest.mark.slow
def test_unknown_task_is_named_before_model_work(sst2):
    from kdbench.evaluation.harness import UnknownTaskError, run_lm_eval

    with pytest.raises(UnknownTaskError, match="kdbench_no_such_task"):
        run_lm_eval(_Untouchable(), None, ["kdbench_sst2", "kdbench_no_such_task"],
                    task_data={"kdbench_sst2": str(sst2)})


def test_missing_data_file_is_named(tmp_path):
    from kdbench.evaluation.harness import TaskDataError, run_lm_eval

    missing = tmp_path / "no_such_sst2.jsonl"
    with pytest.raises(FileNotFoundError, match="no_such_sst2.jsonl") as e:
        run_lm_eval(_Untouchable(), None, ["kdbench_sst2"], task_data={"kdbench_sst2": str(missing)})
    assert "kdbench_sst2" in str(e.value)
    with pytest.raises(TaskDataError, match="kdbench_boolq.*task_data"):
        run_lm_eval(_Untouchable(), None, ["kdbench_boolq"])


def test_user_include_path_task(setup, tmp_path, sst2):
    """A user's task folder is searched too, and its JSONL comes through task_data like the shipped ones."""
    from kdbench.evaluation.harness import run_lm_eval

    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "my_sst2.yaml").write_text(
        "task: my_sst2\ndataset_path: json\noutput_type: multiple_choice\ntest_split: validation\n"
        "doc_to_text: \"{{text}}\\nThe review is\"\ndoc_to_choice: [bad, good]\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    out = run_lm_eval(setup["models"][0], setup["tok"], ["my_sst2"], limit=3, include_path=folder,
                      task_data={"my_sst2": str(sst2)})
    assert 0.0 <= out["my_sst2/acc"] <= 1.0 and out["my_sst2/n"] == 3


def test_flatten_results_names_filters():
    from kdbench.evaluation.harness import flatten_results

    flat = flatten_results({
        "results": {"gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.25,
                              "exact_match_stderr,strict-match": 0.1, "exact_match,flexible-extract": 0.5,
                              "exact_match_stderr,flexible-extract": "N/A"},
                    "t": {"acc,none": 1, "acc_stderr,none": float("nan")}},
        "n-samples": {"gsm8k": {"original": 1319, "effective": 4}, "t": {"original": 2, "effective": 2}},
    })
    assert flat == {"gsm8k/exact_match@strict-match": 0.25, "gsm8k/exact_match_stderr@strict-match": 0.1,
                    "gsm8k/exact_match@flexible-extract": 0.5, "gsm8k/n": 4, "t/acc": 1.0, "t/n": 2}
