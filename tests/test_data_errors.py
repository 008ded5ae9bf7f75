"""Bad JSONL files fail naming the file and line, through read_jsonl and through the `kdbench` CLI (one clean
line, no traceback); files from Windows tools (byte-order mark, CRLF) are read; a huge field is cut before the
tokenizer sees it, without changing the ids kept."""

from __future__ import annotations

import codecs
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from kdbench.data.datamodule import encode_row, prompt_of
from kdbench.data.embedded import SplitSizes, generate_splits
from kdbench.data.sources import DataError, iter_jsonl, read_jsonl
from kdbench.data.template import CHARS_PER_TOKEN_BOUND, CUT_MARGIN_TOKENS, render_prompt, tokenize_truncated
from kdbench.models.tokenizer import train_bpe_tokenizer

ROW = {"instruction": "Say hi.", "input": "", "output": "hi", "category": "greet"}
GOOD = json.dumps(ROW)
# A Latin-1 "é" (0xe9) where UTF-8 needs two bytes: what a file saved as Windows-1252 holds.
LATIN1_LINE = '{"instruction": "Caf\xe9?", "output": "yes"}'.encode("latin-1")


def write_bytes(path: Path, lines: list[bytes], end: bytes = b"\n", prefix: bytes = b"") -> Path:
    path.write_bytes(prefix + b"".join(line + end for line in lines))
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    return write_bytes(path, [line.encode("utf-8") for line in lines])


def read_error(path: Path) -> str:
    with pytest.raises(DataError) as e:
        read_jsonl(path)
    return str(e.value)


# --------------------------------------------------------------------------------------------------- encodings

def test_non_utf8_line_is_named_not_a_traceback(tmp_path):
    path = write_bytes(tmp_path / "latin1.jsonl", [GOOD.encode(), GOOD.encode(), LATIN1_LINE])
    msg = read_error(path)
    assert msg.startswith(f"{path}:3: not UTF-8")
    assert "0xe9" in msg and "save the file as UTF-8" in msg


def test_non_utf8_line_past_the_first_read_buffer_is_named(tmp_path):
    # A text-mode reader decodes 8 KiB at a time: the bad byte must still be placed on its own line.
    lines = [GOOD.encode()] * 2000
    lines[1500] = LATIN1_LINE
    assert sum(len(line) + 1 for line in lines[:1500]) > 8192
    msg = read_error(write_bytes(tmp_path / "late.jsonl", lines))
    assert ":1501: not UTF-8" in msg


def test_utf16_file_is_named_as_such(tmp_path):
    path = tmp_path / "utf16.jsonl"
    path.write_bytes((GOOD + "\n").encode("utf-16"))  # Python writes the BOM, as Notepad's "Unicode" does
    msg = read_error(path)
    assert msg.startswith(f"{path}:1: the file is UTF-16")


def test_bom_and_crlf_file_is_read(tmp_path):
    rows = [dict(ROW, instruction=f"Say hi {i}.", output=f"hi {i}") for i in range(3)]
    path = write_bytes(tmp_path / "excel.jsonl", [json.dumps(r).encode() for r in rows], end=b"\r\n",
                       prefix=codecs.BOM_UTF8)
    got = read_jsonl(path)
    assert [(r["instruction"], r["output"], r["category"]) for r in got] == \
        [(r["instruction"], r["output"], r["category"]) for r in rows]
    assert not any("\r" in v or "\ufeff" in v for r in got for v in (r["instruction"], r["output"]))


def test_crlf_file_names_the_bad_line_and_column(tmp_path):
    path = write_bytes(tmp_path / "crlf.jsonl", [GOOD.encode(), b"", b'{"instruction": x}'], end=b"\r\n",
                       prefix=codecs.BOM_UTF8)
    msg = read_error(path)
    # The BOM does not shift the column: "x" is the 17th character of line 3.
    assert msg == f"{path}:3: not valid JSON (Expecting value at column 17)"


def test_files_joined_with_cat_keep_their_second_bom(tmp_path):
    one = codecs.BOM_UTF8 + GOOD.encode() + b"\r\n"
    path = tmp_path / "joined.jsonl"
    path.write_bytes(one + one)
    assert [where for _, where in iter_jsonl(path)] == [f"{path}:1", f"{path}:2"]


# -------------------------------------------------------------------------------------------------- JSON shape

@pytest.mark.parametrize("field", ["output", "instruction"])
def test_null_field_is_reported_as_null(tmp_path, field):
    path = write_lines(tmp_path / "null.jsonl", [GOOD, json.dumps(dict(ROW, **{field: None}))])
    msg = read_error(path)
    assert msg.startswith(f"{path}:2: the row's {field!r} field is null")
    assert "has no" not in msg


def test_null_mapped_column_names_the_column(tmp_path):
    path = write_lines(tmp_path / "dolly.jsonl", [json.dumps({"instruction": "q", "response": None})])
    with pytest.raises(DataError) as e:
        read_jsonl(path, columns={"output": "response"})
    assert str(e.value).startswith(f"{path}:1: the row's 'response' field is null (needed as 'output')")


def test_json_array_file_is_said_to_be_not_json_lines(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([ROW, ROW]), encoding="utf-8")
    msg = read_error(path)
    assert msg.startswith(f"{path}:1: a JSON array, not a JSON object: this is not JSON Lines")
    assert "got list" not in msg


def test_pretty_printed_json_is_said_to_be_not_json_lines(tmp_path):
    path = tmp_path / "pretty.json"
    path.write_text(json.dumps([ROW], indent=2), encoding="utf-8")
    msg = read_error(path)
    assert msg.startswith(f"{path}:1: not valid JSON (")
    assert "one JSON document spread over several lines, not JSON Lines" in msg


@pytest.mark.parametrize(("line", "kind"), [('"just text"', "a string"), ("42", "a number"), ("null", "null")])
def test_scalar_line_names_its_json_kind(tmp_path, line, kind):
    msg = read_error(write_lines(tmp_path / "scalar.jsonl", [GOOD, line]))
    assert msg.endswith(f":2: expected a JSON object ({{...}}) a line, got {kind}")


def test_raw_control_character_is_named_once(tmp_path):
    path = write_lines(tmp_path / "tab.jsonl", [GOOD, '{"instruction": "a\tb", "output": "c"}'])
    msg = read_error(path)
    assert msg.startswith(f"{path}:2: not valid JSON (a raw control character U+0009 inside a string at column 19")
    assert "at at" not in msg


# ------------------------------------------------------------------------------------------ through the kdbench CLI

def kdbench_cli(tmp_path: Path, train: Path, validation: Path) -> subprocess.CompletedProcess:
    """A real run (sft: no teacher to train) on data=jsonl with the given files, in a fresh process."""
    tokenizer_dir = tmp_path / "tokenizer"
    if not tokenizer_dir.is_dir():  # a scratch student on non-embedded data needs a tokenizer
        train_bpe_tokenizer(["Say hi.", "Reply yes or no."] * 20, vocab_size=300).save_pretrained(tokenizer_dir)
    env = {**os.environ, "KDBENCH_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    args = ["data=jsonl", f"data.train.path={train}", f"data.validation.path={validation}", "trainer=smoke",
            "method=sft", "eval=smoke", "eval.teacher=false", "logger=none", f"student.tokenizer={tokenizer_dir}"]
    return subprocess.run([sys.executable, "-c", "from kdbench.train import cli; cli()", *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("which", "bad_lines", "expected"), [
    ("validation", [GOOD.encode(), LATIN1_LINE], ":2: not UTF-8 (byte 0xe9"),
    ("train", [json.dumps([ROW, ROW]).encode()], ":1: a JSON array, not a JSON object: this is not JSON Lines"),
])
@pytest.mark.slow
def test_cli_reports_a_bad_file_in_one_line(tmp_path, which, bad_lines, expected):
    good = write_lines(tmp_path / "good.jsonl", [GOOD] * 8)
    bad = write_bytes(tmp_path / "bad.jsonl", bad_lines)
    out = kdbench_cli(tmp_path, bad if which == "train" else good, bad if which == "validation" else good)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("kdbench: error:")]
    assert len(errors) == 1, out.stderr[-3000:]
    assert errors[0].startswith(f"kdbench: error: {bad}{expected}")
    assert not list(tmp_path.rglob("results.json"))  # nothing recorded for a run that never started


# ------------------------------------------------------------------------------------------ huge fields, cut early

@pytest.fixture(scope="module")
def splits():
    return generate_splits(seed=0, sizes=SplitSizes(train=300, validation=10, test=60))


@pytest.fixture(scope="module")
def tok(splits):
    return train_bpe_tokenizer([render_prompt(r["instruction"], r["input"]) + r["output"] for r in splits["train"]],
                               vocab_size=400)


@pytest.fixture(scope="module")
def long_token_tok():
    # Tokens of up to 256 "=": far more characters a token than CHARS_PER_TOKEN_BOUND, so cutting at the bound
    # leaves too few ids and the window must grow.
    return train_bpe_tokenizer(["=" * 256 + " end", "hello world"] * 50, vocab_size=300)


def words(n: int) -> str:
    rng = random.Random(0)
    vocab = ["the", "largest", "number", "is", "42", "café", "naïve", "日本語。", "\t", "!!", "a" * 30, "1234567"]
    return " ".join(rng.choice(vocab) for _ in range(n // 4))[:n]


def spaced_texts(n: int) -> dict[str, str]:
    """Long texts with spaces between words, as every natural text has: the ids kept must be exactly those of the
    whole text."""
    rng = random.Random(0)
    return {
        "words": words(n),
        "whitespace runs": "".join(rng.choice(["x", " " * rng.randint(1, 200), "\n\n", "\t"])
                                   for _ in range(n // 40))[:n],
        "digits": " ".join(str(rng.randrange(10 ** rng.randint(1, 12))) for _ in range(n // 7))[:n],
        "code": "def f(x):\n    return [x + 1 for _ in range(10)]  # done\n" * (n // 50),
        # 256-character tokens: far more characters a token than CHARS_PER_TOKEN_BOUND, so the first cut yields
        # too few ids and the window must grow
        "long tokens": ("=" * 256 + " ") * (2 * n // 257),
    }


def giant_words(n: int) -> dict[str, str]:
    """No space for a whole window: cut at the window itself."""
    rng = random.Random(0)
    return {"one letter": "a" * n, "no spaces": "".join(rng.choice("abcdefghij") for _ in range(n)),
            "digits": "".join(rng.choice("0123456789") for _ in range(n)), "long tokens": "=" * n}


@pytest.mark.parametrize("max_tokens", [0, 1, 7, 64, 300])
def test_cut_text_keeps_the_ids_of_the_whole_text(tok, long_token_tok, max_tokens):
    for name, text in spaced_texts(60_000).items():
        for tokenizer in (tok, long_token_tok):
            full = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert len(full) > max_tokens + CUT_MARGIN_TOKENS, name  # the text is long: it is cut
            head, cut = tokenize_truncated(tokenizer, text, max_tokens, keep_end=False)
            tail, cut_tail = tokenize_truncated(tokenizer, text, max_tokens, keep_end=True)
            assert head == full[:max_tokens], name
            assert tail == (full[-max_tokens:] if max_tokens else []), name
            assert cut and cut_tail


@pytest.mark.parametrize("keep_end", [False, True])
def test_a_giant_word_is_cut_to_a_bounded_size(tok, long_token_tok, keep_end):
    seen: list[int] = []
    for name, text in giant_words(1_000_000).items():
        for tokenizer in (tok, long_token_tok):
            def spy(piece, tokenizer=tokenizer, **kwargs):  # the real tokenizer, recording how much it is given
                seen.append(len(piece))
                return tokenizer(piece, **kwargs)

            ids, truncated = tokenize_truncated(spy, text, 64, keep_end=keep_end)
            assert len(ids) == 64 and truncated, name
    # The long-token tokenizer needs a wider window for "=" runs; no text goes whole into the tokenizer.
    assert max(seen) < 1_000_000 // 10


def test_the_tokenizer_never_sees_a_whole_huge_field(tok):
    seen: list[int] = []

    class Spy:  # the real tokenizer, recording the length of each text it is given
        eos_token_id = tok.eos_token_id

        def __call__(self, text, **kwargs):
            seen.append(len(text))
            return tok(text, **kwargs)

    huge = words(1_000_000)
    row = {"instruction": "Summarize.", "input": huge, "output": huge}
    item = encode_row(row, Spy(), max_prompt_length=256, max_response_length=128)
    # At most two windows: the window, then up to the next word boundary.
    assert max(seen) <= 2 * (256 + CUT_MARGIN_TOKENS) * CHARS_PER_TOKEN_BOUND
    assert item["truncated"] is True
    full_prompt = tok(prompt_of(row), add_special_tokens=False)["input_ids"]
    full_response = tok(huge, add_special_tokens=False)["input_ids"]
    assert item["prompt_ids"] == full_prompt[-256:]
    assert item["response_ids"] == full_response[:128] + [tok.eos_token_id]


def test_generation_prompts_are_cut_before_the_tokenizer_too(tok):
    # The generation engine (teacher answers for seqkd, evaluation) encodes prompts in one batched call; a huge
    # prompt goes through tokenize_truncated instead, with the same kept ids and the truncation counted.
    from kdbench.generation.engine import encode_prompts

    seen: list[int] = []

    class Spy:
        def __call__(self, text, **kwargs):
            seen.append(max(map(len, text)) if isinstance(text, list) else len(text))
            return tok(text, **kwargs)

    huge = prompt_of({"instruction": "Summarize.", "input": words(1_000_000), "output": ""})
    short = prompt_of({"instruction": "Say hi.", "input": "", "output": ""})
    ids, n_truncated = encode_prompts(Spy(), [short, huge, short], 256)
    assert max(seen) <= 2 * (256 + CUT_MARGIN_TOKENS) * CHARS_PER_TOKEN_BOUND
    assert n_truncated == 1
    assert ids[0] == ids[2] == tok(short, add_special_tokens=False)["input_ids"]
    assert ids[1] == tok(huge, add_special_tokens=False)["input_ids"][-256:]


@pytest.mark.parametrize(("max_prompt", "max_response"), [(12, 5), (64, 32), (256, 256)])
def test_normal_rows_encode_as_the_whole_text_does(tok, splits, max_prompt, max_response):
    # Small limits cut the long rows' prompts (a 12-token limit cuts past 448 characters): still the same ids.
    for row in splits["test"]:
        prompt = tok(prompt_of(row), add_special_tokens=False)["input_ids"]
        response = tok(row["output"], add_special_tokens=False)["input_ids"]
        item = encode_row(row, tok, max_prompt, max_response)
        assert item["prompt_ids"] == prompt[-max_prompt:]
        assert item["response_ids"] == response[:max_response] + [tok.eos_token_id]
        assert item["truncated"] == (len(prompt) > max_prompt)


PEAK_MEMORY_SCRIPT = """
import json, resource, sys
from kdbench.data.datamodule import EncodedDataset
from kdbench.data.sources import read_jsonl
from kdbench.models.tokenizer import train_bpe_tokenizer
tok = train_bpe_tokenizer(["the largest number is 42"] * 50, vocab_size=300)
rows = read_jsonl(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
EncodedDataset(rows, tok, 256, 256)
print(json.dumps({"grew_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))
"""


@pytest.mark.slow
def test_a_one_million_character_line_does_not_raise_peak_memory(tmp_path):
    # Tokenizing the whole 1M-character fields raised the peak by ~300 MB; cut first, it barely moves.
    huge = words(1_000_000)
    path = write_lines(tmp_path / "huge.jsonl", [GOOD, json.dumps({"instruction": "Sum up.", "input": huge,
                                                                   "output": huge})])
    out = subprocess.run([sys.executable, "-c", PEAK_MEMORY_SCRIPT, str(path)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert out.returncode == 0, out.stderr[-3000:]
    grew_mb = json.loads(out.stdout.strip().splitlines()[-1])["grew_kb"] / 1024
    assert grew_mb < 50, f"encoding the 1M-character row raised peak memory by {grew_mb:.0f} MB"
