"""Data: the embedded benchmark, the prompt template, the row readers, encoding/batching, the tokenizer stage."""

from __future__ import annotations

import itertools
import json
import random
import re
import time
from pathlib import Path

import pytest
import torch
from conftest import bundled_records
from omegaconf import OmegaConf

from kdbench.data import embedded
from kdbench.data.datamodule import (
    IGNORE,
    EncodedDataset,
    InstructionDataModule,
    ShuffledBatchSampler,
    collate,
    encode_row,
    split_by_length,
)
from kdbench.data.embedded import (
    BENCHMARK_VERSION,
    EVAL_WEIGHTS,
    FAMILIES,
    NEGATIVE,
    POSITIVE,
    SENTIMENT_LABELS,
    SplitSizes,
    generate_splits,
)
from kdbench.data.sources import DataError, load_rows, read_hf, read_jsonl
from kdbench.data.template import render_prompt
from kdbench.models.tokenizer import train_bpe_tokenizer
from kdbench.schema import EmbeddedConfig

SMALL = SplitSizes(train=700, validation=70, test=140)
# The family rules below are benchmark v4's (largest, sentiment, filter, profile; the default is v5, whose families
# tests/test_embedded_v5.py checks): these tests ask for v4 by name.
V4 = 4


@pytest.fixture(scope="module")
def default_splits():
    return generate_splits(version=V4)


@pytest.fixture(scope="module")
def small_splits():
    return generate_splits(seed=0, version=V4, sizes=SMALL)


@pytest.fixture(scope="module")
def tok(small_splits):
    rows = small_splits["train"][:300]
    return train_bpe_tokenizer([render_prompt(r["instruction"], r["input"]) + r["output"] for r in rows],
                               vocab_size=400)


def by_family(rows: list[dict], family: str) -> list[dict]:
    out = [r for r in rows if r["category"] == family]
    assert out, f"no {family} rows generated"
    return out


# --------------------------------------------------------------------------------------------- embedded benchmark

def test_generate_splits_is_deterministic_in_its_seed(small_splits):
    again = generate_splits(seed=0, version=V4, sizes=SMALL)
    assert again == small_splits
    other = generate_splits(seed=1, version=V4, sizes=SMALL)
    assert other["test"] != small_splits["test"]
    assert other["train"] != small_splits["train"]
    assert {k: len(v) for k, v in small_splits.items()} == {"train": 700, "validation": 70, "test": 140}


def test_v4_benchmark_size_and_families(default_splits):
    assert len(default_splits["test"]) >= 1500
    families = {r["category"] for r in default_splits["test"]}
    assert len(families) >= 6
    assert families == set(FAMILIES)
    # every family holds its EVAL_WEIGHTS share of the test split exactly; the two a one-layer model cannot
    # learn (sort, filter) hold half of it between them
    total = sum(EVAL_WEIGHTS.values())
    for f in FAMILIES:
        count = sum(r["category"] == f for r in default_splits["test"])
        assert count == len(default_splits["test"]) * EVAL_WEIGHTS[f] // total, f
    assert EVAL_WEIGHTS["sort"] + EVAL_WEIGHTS["filter"] == total / 2


def test_splits_share_no_prompt(default_splits):
    keys = {s: {(r["instruction"], r["input"]) for r in rows} for s, rows in default_splits.items()}
    assert keys["train"].isdisjoint(keys["test"])
    assert keys["train"].isdisjoint(keys["validation"])
    assert keys["validation"].isdisjoint(keys["test"])
    # no duplicates inside a split either
    for s, rows in default_splits.items():
        assert len(keys[s]) == len(rows), s


def test_every_row_has_output_and_category(default_splits):
    for split, rows in default_splits.items():
        for r in rows:
            assert set(r) == {"instruction", "input", "output", "category"}
            assert r["output"].strip(), (split, r)
            assert r["category"] in FAMILIES, (split, r)
            assert r["instruction"].strip()


def test_sentiment_has_a_fixed_label_set(default_splits):
    labels = {r["output"] for r in by_family(default_splits["test"], "sentiment")}
    assert labels <= set(SENTIMENT_LABELS)
    assert len(labels) == 3  # all three labels occur on 300 items


def test_response_lengths_span_one_word_to_long(small_splits, tok):
    outputs = [r["output"] for r in small_splits["test"]]
    assert min(len(o.split()) for o in outputs) == 1
    n_tokens = [len(tok(o, add_special_tokens=False)["input_ids"]) for o in outputs]
    assert max(n_tokens) >= 60
    # the long ones are profiles
    long = [r for r, n in zip(small_splits["test"], n_tokens) if n >= 60]
    assert {r["category"] for r in long} == {"profile"}


def test_wrong_version_raises_naming_it():
    from kdbench.data.embedded import VERSIONS

    with pytest.raises(ValueError, match=rf"data\.version={max(VERSIONS) + 1}\b"):
        generate_splits(version=max(VERSIONS) + 1, sizes=SMALL)


def test_rule_sort(small_splits):
    for r in by_family(small_splits["train"], "sort"):
        numbers = [int(x) for x in r["input"].split(", ")]
        assert r["output"] == ", ".join(map(str, sorted(numbers)))
        assert len(set(numbers)) == len(numbers)


def test_rule_reverse(small_splits):
    for r in by_family(small_splits["train"], "reverse"):
        words = r["input"].split(", ")
        assert r["output"].split(", ") == words[::-1]


def test_rule_largest(small_splits):
    rows = by_family(small_splits["train"], "largest")
    assert rows
    for r in rows:
        numbers = [int(x) for x in r["input"].split(", ")]
        assert 4 <= len(numbers) <= 7 and len(set(numbers)) == len(numbers)
        assert r["output"] == str(max(numbers))


def test_rule_filter(small_splits):
    for r in by_family(small_splits["train"], "filter"):
        numbers = [int(x) for x in r["input"].split(", ")]
        kept = [x for x in numbers if x > 50]
        assert 50 not in numbers and 0 < len(kept) < len(numbers)
        assert r["output"] == ", ".join(map(str, kept))


def test_rule_sentiment(small_splits):
    clause = re.compile(r"^the (\w+) (was|was not) (\w+)$")
    for r in by_family(small_splits["train"], "sentiment"):
        text = r["input"]
        assert text.endswith(".")
        score = 0
        for part in (text[0].lower() + text[1:-1]).split(", and "):
            m = clause.match(part)
            assert m, (text, part)
            polarity = 1 if m.group(3) in POSITIVE else -1 if m.group(3) in NEGATIVE else None
            assert polarity is not None, part
            score += -polarity if m.group(2) == "was not" else polarity
        expected = "positive" if score > 0 else "negative" if score < 0 else "neutral"
        assert r["output"] == expected, text


def test_rule_profile(small_splits):
    rows = by_family(small_splits["train"], "profile")
    for r in rows:
        header, *table = r["input"].split("\n")
        assert header == "name | city | job"
        expected = []
        for line in table:
            name, city, job = line.split(" | ")
            expected.append(f"{name} lives in {city} and works as a {job}.")
        assert r["output"] == "\n".join(expected)


def test_profile_names_are_the_same_token_in_table_and_answer(small_splits, tok):
    # v3's teacher copied no first name right: the table had ` Bob` (after `name:`), the answer opened with
    # `Bob`, another token. Now both start a line, so the answer's name tokens occur in the table as they are.
    for r in by_family(small_splits["test"], "profile"):
        table = tok(r["input"], add_special_tokens=False)["input_ids"]
        for line in r["output"].split("\n"):
            name_ids = tok("\n" + line, add_special_tokens=False)["input_ids"][1:2]
            first_ids = tok(line, add_special_tokens=False)["input_ids"][:1]
            assert name_ids == first_ids, line  # the answer's first name tokenizes like the later ones
            assert first_ids[0] in table, (line, r["input"])


def test_profile_is_long_sometimes(small_splits, tok):
    rows = by_family(small_splits["train"], "profile")
    lengths = [len(tok(r["output"], add_special_tokens=False)["input_ids"]) for r in rows]
    assert max(lengths) >= 60
    assert sum(n >= 60 for n in lengths) >= len(lengths) // 10
    assert {len(r["input"].split("\n")) - 1 for r in rows} == set(range(2, 8))  # 2-7 people under the header


def test_generators_share_no_global_state():
    # the generator uses its own Random: the global one must not influence (or be consumed by) it
    random.seed(1)
    a = generate_splits(seed=3, sizes=SplitSizes(50, 10, 10))
    state = random.getstate()
    random.seed(2)
    b = generate_splits(seed=3, sizes=SplitSizes(50, 10, 10))
    assert a == b
    random.seed(1)
    generate_splits(seed=3, sizes=SplitSizes(50, 10, 10))
    assert random.getstate() == state
    assert embedded.BENCHMARK_VERSION == BENCHMARK_VERSION


# ------------------------------------------------------------------------------------------------ prompt template

@pytest.mark.parametrize("name", ["dollyeval_minillm_500", "selfinst_minillm_242"])
def test_render_prompt_matches_minillm_files(name):
    rows = bundled_records(name)
    with_input = [r for r in rows if r["input"]]
    without_input = [r for r in rows if not r["input"]]
    assert with_input and without_input, "the file should exercise both template variants"
    for i, r in enumerate(rows):
        assert render_prompt(r["instruction"], r["input"]) == r["prompt"], f"{name} row {i}"


def test_render_prompt_variants():
    assert "### Input:" not in render_prompt("Do it.")
    assert render_prompt("Do it.", "ctx").endswith("### Input:\nctx\n\n### Response:\n")
    assert render_prompt("Do it.").endswith("### Instruction:\nDo it.\n\n### Response:\n")


# ---------------------------------------------------------------------------------------------------- read_jsonl

def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = json.dumps({"instruction": "Say hi.", "input": "", "output": "hi", "category": "greet"})


def test_read_jsonl_malformed_line_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, "", '{"instruction": "x", "output": '])
    with pytest.raises(DataError) as e:
        read_jsonl(path)
    assert str(path) in str(e.value)
    assert f"{path}:3" in str(e.value)  # line numbers count blank lines


def test_read_jsonl_non_object_line(tmp_path):
    path = write_lines(tmp_path / "list.jsonl", [GOOD, "[1, 2]"])
    with pytest.raises(DataError, match=re.escape(f"{path}:2")):
        read_jsonl(path)


def test_read_jsonl_missing_output_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "noout.jsonl", [GOOD, GOOD, json.dumps({"instruction": "x", "input": "y"})])
    with pytest.raises(DataError) as e:
        read_jsonl(path)
    assert f"{path}:3" in str(e.value)
    assert "'output'" in str(e.value)


@pytest.mark.parametrize("blank", ["", "   \n", []])
def test_read_jsonl_blank_output_names_file_and_line(tmp_path, blank):
    path = write_lines(tmp_path / "blank.jsonl", [GOOD, json.dumps({"instruction": "x", "output": blank})])
    with pytest.raises(DataError) as e:
        read_jsonl(path)
    assert f"{path}:2" in str(e.value)
    assert "empty" in str(e.value)


def test_read_jsonl_columns_mapping(tmp_path):
    path = write_lines(tmp_path / "dolly.jsonl", [
        json.dumps({"instruction": "Q1", "context": "C1", "response": "R1", "category": "qa"}),
        json.dumps({"instruction": "Q2", "context": "", "response": "R2"}),
    ])
    rows = read_jsonl(path, columns={"output": "response", "input": "context"})
    assert rows == [
        {"instruction": "Q1", "input": "C1", "output": "R1", "category": "qa", "references": ["R1"]},
        {"instruction": "Q2", "input": "", "output": "R2", "category": "", "references": ["R2"]},
    ]
    # without the mapping, the missing `output` is named along with the mapping hint
    with pytest.raises(DataError, match="source.columns"):
        read_jsonl(path)


def test_read_jsonl_limit(tmp_path):
    lines = [json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(10)]
    lines[5] = "not json"  # never read: the limit stops before it
    path = write_lines(tmp_path / "many.jsonl", lines)
    rows = read_jsonl(path, limit=3)
    assert [r["instruction"] for r in rows] == ["q0", "q1", "q2"]


def test_skip_and_limit_split_one_file_into_disjoint_sets(tmp_path):
    from kdbench.schema import SourceConfig
    path = write_lines(tmp_path / "one_split.jsonl",
                       [json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(10)])
    validation = load_rows(SourceConfig(kind="jsonl", path=str(path), limit=3), None)
    train = load_rows(SourceConfig(kind="jsonl", path=str(path), skip=3), None)
    assert [r["instruction"] for r in validation] == ["q0", "q1", "q2"]
    assert [r["instruction"] for r in train] == [f"q{i}" for i in range(3, 10)]
    assert [r["instruction"] for r in load_rows(SourceConfig(kind="jsonl", path=str(path), skip=8, limit=5),
                                                None)] == ["q8", "q9"]
    with pytest.raises(DataError, match=r"source\.skip=-1"):
        load_rows(SourceConfig(kind="jsonl", path=str(path), skip=-1), None)


def test_read_jsonl_empty_file(tmp_path):
    path = write_lines(tmp_path / "empty.jsonl", ["", ""])
    with pytest.raises(DataError, match=re.escape(str(path))):
        read_jsonl(path)


def test_read_jsonl_missing_file(tmp_path):
    path = tmp_path / "nope" / "missing.jsonl"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        read_jsonl(path)


def test_read_jsonl_real_file_keeps_prompt(bundled_file):
    rows = read_jsonl(bundled_file("dollyeval_minillm_500"))
    raw = bundled_records("dollyeval_minillm_500")
    assert len(rows) == len(raw) == 500
    for r, x in zip(rows, raw):
        assert r["prompt"] == x["prompt"]
        assert r["output"] == x["output"] and r["references"] == [x["output"]]
        assert r["category"] == x["category"]


def test_read_jsonl_sni_keeps_all_references(bundled_file):
    path = bundled_file("sni_minillm_1694")
    rows = read_jsonl(path)
    raw = bundled_records("sni_minillm_1694")
    assert len(rows) == len(raw)
    assert any(len(r["references"]) > 1 for r in rows)
    for r, x in zip(rows, raw):
        assert r["references"] == x["outputs"]
        assert r["output"] == x["output"]


def test_read_jsonl_output_list_keeps_all_references(tmp_path):
    path = write_lines(tmp_path / "refs.jsonl", [json.dumps({"instruction": "q", "output": ["a", "b", "c"]})])
    (row,) = read_jsonl(path)
    assert row["output"] == "a"
    assert row["references"] == ["a", "b", "c"]


# ------------------------------------------------------------------------------------------------------- read_hf

@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    # the libraries read these at import time: patch the module constants too
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_home" / "datasets")
    return tmp_path


def test_read_hf_local_folder(hf_offline):
    folder = hf_offline / "dsname"
    folder.mkdir()
    lines = [json.dumps({"instruction": f"q{i}", "context": f"c{i}" if i % 2 else "", "response": f"r{i}",
                         "category": "cat"}) for i in range(5)]
    write_lines(folder / "train.jsonl", lines)
    rows = read_hf(str(folder), "train", columns={"output": "response", "input": "context"}, limit=3)
    assert [r["instruction"] for r in rows] == ["q0", "q1", "q2"]
    assert [r["input"] for r in rows] == ["", "c1", ""]
    assert [r["output"] for r in rows] == ["r0", "r1", "r2"]
    assert rows[1]["references"] == ["r1"]


def test_read_hf_bad_row_names_dataset_and_row(hf_offline):
    folder = hf_offline / "dsbad"
    folder.mkdir()
    write_lines(folder / "train.jsonl", [json.dumps({"instruction": "q", "output": "a"}),
                                         json.dumps({"instruction": "q", "output": "  "})])
    with pytest.raises(DataError, match=re.escape(f"{folder}[train] row 1")):
        read_hf(str(folder), "train")


def test_read_hf_unknown_id_fails_fast(hf_offline):
    t0 = time.perf_counter()
    with pytest.raises(DataError) as e:
        read_hf("kdbench-nobody/no-such-dataset-xyz", "train")
    assert time.perf_counter() - t0 < 20  # no retry loop (the hub client retries for ~45 s); budget in BENCHMARKS.md
    assert "kdbench-nobody/no-such-dataset-xyz" in str(e.value)
    assert "source.kind=jsonl" in str(e.value)


# --------------------------------------------------------------------------------------------- encoding, batching

def test_encode_row_masks_prompt_and_labels_response(tok, small_splits):
    row = by_family(small_splits["test"], "largest")[0]
    item = encode_row(row, tok, max_prompt_length=512, max_response_length=128)
    prompt = tok(render_prompt(row["instruction"], row["input"]), add_special_tokens=False)["input_ids"]
    response = tok(row["output"], add_special_tokens=False)["input_ids"]
    assert item["prompt_ids"] == prompt
    assert item["response_ids"] == response + [tok.eos_token_id]
    assert item["truncated"] is False

    batch = collate([item], pad_id=tok.pad_token_id)
    labels = batch["labels"][0].tolist()
    assert labels[:len(prompt)] == [IGNORE] * len(prompt)
    assert labels[len(prompt):] == response + [tok.eos_token_id]
    assert batch["input_ids"][0].tolist() == prompt + response + [tok.eos_token_id]


def test_encode_row_uses_the_files_prompt(tok):
    row = {"instruction": "ignored", "input": "", "output": "ok", "prompt": "Exact prompt:\n"}
    item = encode_row(row, tok, 512, 128)
    assert item["prompt_ids"] == tok("Exact prompt:\n", add_special_tokens=False)["input_ids"]


def test_collate_right_pads_and_masks_padding(tok, small_splits):
    items = [encode_row(r, tok, 512, 128) for r in small_splits["test"][:7]]
    batch = collate(items, pad_id=tok.pad_token_id)
    lengths = [len(it["prompt_ids"]) + len(it["response_ids"]) for it in items]
    B, T = batch["input_ids"].shape
    assert (B, T) == (7, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for j, (it, n) in enumerate(zip(items, lengths)):
        assert batch["input_ids"][j, n:].eq(tok.pad_token_id).all()
        assert batch["labels"][j, n:].eq(IGNORE).all()
        labelled = batch["labels"][j] != IGNORE
        assert int(labelled.sum()) == len(it["response_ids"])
        # the labels are the input ids where labelled (next-token shift happens in the loss)
        assert torch.equal(batch["labels"][j][labelled], batch["input_ids"][j][labelled])
        assert batch["labels"][j, n - 1].item() == tok.eos_token_id


def test_left_truncation_keeps_the_end_of_the_prompt(tok, small_splits):
    row = by_family(small_splits["test"], "profile")[0]
    full = tok(render_prompt(row["instruction"], row["input"]), add_special_tokens=False)["input_ids"]
    assert len(full) > 40
    item = encode_row(row, tok, max_prompt_length=12, max_response_length=5)
    assert item["truncated"] is True
    assert item["prompt_ids"] == full[-12:]
    assert tok.decode(item["prompt_ids"]).endswith("### Response:\n")
    # responses are cut on the right, then EOS is appended
    response = tok(row["output"], add_special_tokens=False)["input_ids"]
    assert item["response_ids"] == response[:5] + [tok.eos_token_id]

    rows = small_splits["test"][:30]
    prompt_lengths = [len(tok(render_prompt(r["instruction"], r["input"]), add_special_tokens=False)["input_ids"])
                      for r in rows]
    limit = sorted(prompt_lengths)[len(rows) // 2]
    ds = EncodedDataset(rows, tok, max_prompt_length=limit, max_response_length=128)
    expected = sum(n > limit for n in prompt_lengths)
    assert 0 < expected < len(rows)
    assert all(len(it["prompt_ids"]) == min(n, limit) for it, n in zip(ds.items, prompt_lengths))
    assert ds.n_truncated == expected
    assert EncodedDataset(rows, tok, 4096, 128).n_truncated == 0


def _padding_fraction(ds: EncodedDataset, batches) -> float:
    pad = total = 0
    for b in batches:
        lengths = [ds.length(i) for i in b]
        pad += max(lengths) * len(lengths) - sum(lengths)
        total += max(lengths) * len(lengths)
    return pad / total


def test_shuffled_sampler_is_uniform_and_deterministic(tok, small_splits):
    sampler = ShuffledBatchSampler(400, batch_size=8, seed=0)
    batches = list(itertools.islice(iter(sampler), 100))
    assert all(len(b) == 8 for b in batches)
    # 100 batches of 8 = two epochs: every item is drawn, each exactly twice
    counts = {}
    for b in batches:
        for i in b:
            counts[i] = counts.get(i, 0) + 1
    assert set(counts) == set(range(400)) and set(counts.values()) == {2}
    assert list(itertools.islice(iter(ShuffledBatchSampler(400, 8, seed=0)), 100)) == batches
    assert list(itertools.islice(iter(ShuffledBatchSampler(400, 8, seed=1)), 100)) != batches


def test_split_by_length_cuts_padding_and_keeps_every_item(tok, small_splits):
    ds = EncodedDataset(small_splits["train"][:400], tok, 256, 128)
    rng = random.Random(0)
    order = list(range(len(ds)))
    rng.shuffle(order)
    batches = [order[k:k + 32] for k in range(0, len(order), 32)]
    split_pad = whole_pad = 0
    for b in batches:
        lengths = [ds.length(i) for i in b]
        parts = split_by_length(lengths, max_parts=3, part_overhead=0)
        assert 1 <= len(parts) <= 3
        assert sorted(i for p in parts for i in p) == list(range(len(b)))  # a partition of the batch
        split_pad += sum(max(lengths[i] for i in p) * len(p) for p in parts) - sum(lengths)
        whole_pad += max(lengths) * len(lengths) - sum(lengths)
    assert split_pad < whole_pad / 2, (split_pad, whole_pad)
    # A big per-part overhead keeps the batch whole.
    assert len(split_by_length([10, 11, 200], part_overhead=10**6)) == 1
    assert split_by_length([5, 100, 6, 101], max_parts=2, part_overhead=0) == [[0, 2], [1, 3]]


def test_instruction_datamodule(tok, small_splits):
    dm = InstructionDataModule(small_splits["train"][:64], small_splits["validation"][:20], tok, batch_size=4,
                               seed=0, max_prompt_length=60, max_response_length=16)
    assert dm.train_set.n_truncated > 0
    step = next(iter(dm.train_dataloader()))
    assert sum(p["input_ids"].shape[0] for p in step["parts"]) == 4
    batch = step["parts"][0]
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].dtype == torch.long
    assert (batch["labels"] != IGNORE).any()

    seen, prev_max = [], 0
    for b in dm.val_dataloader():
        lengths = b["attention_mask"].sum(1).tolist()
        assert min(lengths) >= prev_max  # sorted by length
        prev_max = max(lengths)
        seen.extend(lengths)
    assert len(seen) == 20


# ----------------------------------------------------------------------------------------- embedded tokenizer stage

@pytest.fixture
def emb_cfg():
    return OmegaConf.structured(EmbeddedConfig(train_size=400, validation_size=50, test_size=100, vocab_size=600))


def test_embedded_tokenizer_is_cached(emb_cfg, tmp_path, monkeypatch):
    from kdbench.stages import tokenizer as stage

    tok1 = stage.embedded_tokenizer(emb_cfg, tmp_path)
    folder = tmp_path / "tokenizers" / stage.tokenizer_key(emb_cfg)
    assert (folder / "tokenizer.json").is_file()
    mtime = (folder / "tokenizer.json").stat().st_mtime_ns

    def no_retrain(*a, **k):
        raise AssertionError("the tokenizer was retrained instead of loaded from the cache")

    monkeypatch.setattr(stage, "train_bpe_tokenizer", no_retrain)
    tok2 = stage.embedded_tokenizer(emb_cfg, tmp_path)
    assert (folder / "tokenizer.json").stat().st_mtime_ns == mtime
    assert tok2.get_vocab() == tok1.get_vocab()
    assert tok2.kdbench_key == tok1.kdbench_key == stage.tokenizer_key(emb_cfg)
    assert tok2.padding_side == "left" and tok2.pad_token is not None
    assert 300 < len(tok2) <= 600

    # what determines the tokenizer is in its key
    other = OmegaConf.merge(emb_cfg, {"vocab_size": 500})
    assert stage.tokenizer_key(other) != stage.tokenizer_key(emb_cfg)
    assert stage.tokenizer_key(OmegaConf.merge(emb_cfg, {})) == stage.tokenizer_key(emb_cfg)


def test_embedded_tokenizer_splits_digits_and_round_trips(emb_cfg, tmp_path):
    from transformers import AutoTokenizer

    from kdbench.stages.tokenizer import embedded_tokenizer

    tok = embedded_tokenizer(emb_cfg, tmp_path)
    ids = tok("1234567890", add_special_tokens=False)["input_ids"]
    assert [tok.decode([i]) for i in ids] == list("1234567890")
    ids = tok("Sort 907, 31 and 42.", add_special_tokens=False)["input_ids"]
    pieces = [tok.decode([i]) for i in ids]
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("9073142")

    texts = [render_prompt("Sort the numbers.", "91, 17, 55") + "17, 55, 91",
             "Alice is 42 years old and lives in Paris.", "ünïcödé ☃ text"]
    tok.save_pretrained(tmp_path / "saved")
    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    for t in texts:
        a, b = tok(t)["input_ids"], loaded(t)["input_ids"]
        assert a == b
        assert tok.decode(a) == t  # byte-level: lossless
    assert loaded.eos_token_id == tok.eos_token_id and loaded.pad_token_id == tok.pad_token_id
