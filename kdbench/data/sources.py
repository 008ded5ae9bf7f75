"""Rows {instruction, input, output, category} from the embedded benchmark, a local JSONL file or a Hugging Face
dataset. Bad input fails naming the file and line (JSONL) or the dataset and row (HF)."""

from __future__ import annotations

import codecs
import json
from functools import lru_cache
from pathlib import Path

from kdbench.data.embedded import SplitSizes, generate_splits


class DataError(ValueError):
    pass


@lru_cache(maxsize=4)
def _embedded(seed: int, version: int, train: int, validation: int, test: int) -> dict[str, list[dict]]:
    return generate_splits(seed=seed, version=version, sizes=SplitSizes(train, validation, test))


def embedded_splits(emb) -> dict[str, list[dict]]:
    return _embedded(emb.seed, emb.version, emb.train_size, emb.validation_size, emb.test_size)


def _normalize(raw: dict, columns: dict, where: str) -> dict:
    """Map a source row onto our schema; a row without a response is an error."""
    def get(field: str, required: bool):
        col = columns.get(field, field)
        value = raw.get(col)
        if value is None and required and col in raw:  # present but null: saying "no field" would mislead
            raise DataError(f"{where}: the row's {col!r} field is null (needed as {field!r}); give it a value "
                            f"or drop the row")
        if value is None and required:
            raise DataError(f"{where}: the row has no {col!r} field (needed as {field!r}); it has "
                            f"{sorted(raw)}. Map columns with source.columns, e.g. {{{field}: <column>}}")
        return value
    instruction = get("instruction", True)
    output = get("output", True)
    if isinstance(output, list):  # several references (S-NI): keep all, the first is the training target
        refs = [str(o) for o in output]
    else:
        refs = [str(output)]
    if not refs or not refs[0].strip():
        raise DataError(f"{where}: the row has an empty response ({columns.get('output', 'output')!r})")
    row = {"instruction": str(instruction), "input": str(get("input", False) or ""), "output": refs[0],
           "category": str(get("category", False) or "")}
    extra_refs = raw.get("outputs")
    row["references"] = [str(o) for o in extra_refs] if isinstance(extra_refs, list) and extra_refs else refs
    if isinstance(raw.get("prompt"), str):  # MiniLLM's files carry their exact prompt string
        row["prompt"] = raw["prompt"]
    return row


def iter_jsonl(path: str | Path):
    """(object, "file:line") for each non-blank line of a JSONL file; a bad line is a DataError naming it."""
    path = Path(path).expanduser()
    if not path.is_file():  # checked at the call, not at the first line read
        raise FileNotFoundError(f"{path}: no such JSONL file")
    return _jsonl_lines(path)


def _jsonl_lines(path: Path):
    with path.open("rb") as f:
        yield from jsonl_records(f, path)


def jsonl_records(f, path: Path):
    """(object, "file:line") for each non-blank line of a binary file object `f` holding JSON Lines (a plain file
    or a gzip stream) named `path` in errors."""
    # Read as bytes and decode a line at a time: a text-mode file fails on a non-UTF-8 byte somewhere in an 8 KiB
    # read, with no line to name. Splitting on b"\n" keeps a CRLF line's "\r", which JSON reads as whitespace.
    for lineno, data in enumerate(f, start=1):
        where = f"{path}:{lineno}"
        if lineno == 1 and data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise DataError(f"{where}: the file is UTF-16 (it starts with a UTF-16 byte-order mark); "
                            f"save it as UTF-8")
        try:
            # A UTF-8 byte-order mark (Excel, Notepad) carries no data; `cat`-joined files have one mid-file.
            line = data.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError as e:
            raise DataError(f"{where}: not UTF-8 (byte {data[e.start]:#04x} at byte {e.start + 1} of the line; "
                            f"a Latin-1 or Windows-1252 file?); save the file as UTF-8") from None
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({_json_error(e, line)}){_not_jsonl_hint(line)}") from None
        if isinstance(raw, list):
            raise DataError(f"{where}: a JSON array, not a JSON object: this is not JSON Lines, which holds one "
                            f"{{...}} object a line. A file holding one JSON array of rows converts with "
                            f"`jq -c '.[]' in.json > out.jsonl`")
        if not isinstance(raw, dict):
            raise DataError(f"{where}: expected a JSON object ({{...}}) a line, got {_JSON_KINDS[type(raw)]}")
        yield raw, where


_JSON_KINDS = {str: "a string", int: "a number", float: "a number", bool: "true/false", type(None): "null"}


def _json_error(e: json.JSONDecodeError, line: str) -> str:
    if e.msg == "Invalid control character at":  # json's wording expects its own " line 1 column n" after "at"
        return (f"a raw control character U+{ord(line[e.pos]):04X} inside a string at column {e.colno}; "
                f"write a tab as \\t and a line break as \\n")
    return f"{e.msg} at column {e.colno}"


def _not_jsonl_hint(line: str) -> str:
    """Why a line is not JSON, where the file's shape says it: a pretty-printed document or a UTF-16 file."""
    if line.strip() in ("[", "{"):
        return ("; the file looks like one JSON document spread over several lines, not JSON Lines "
                "(one {...} object a line)")
    if "\x00" in line:
        return "; the line holds NUL characters: is the file UTF-16? Save it as UTF-8"
    return ""


def read_jsonl(path: str | Path, columns: dict | None = None, limit: int | None = None) -> list[dict]:
    rows = []
    for raw, where in iter_jsonl(path):
        rows.append(_normalize(raw, columns or {}, where))
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise DataError(f"{Path(path).expanduser()}: the file holds no rows")
    return rows


def _hf_dataset(name: str, split: str, data_files: str | None):
    import datasets  # imported here: it is slow to import and only real-data runs need it

    what = f"{name!r} (split {split!r}{f', data_files {data_files!r}' if data_files else ''})"
    try:
        return datasets.load_dataset(name, split=split, data_files=data_files)
    except Exception as e:  # noqa: BLE001 - re-raised with the config key and the remedy
        raise DataError(f"data source {what} could not be loaded: {e}. Offline, point source.path at a local "
                        f"JSONL copy (source.kind=jsonl).") from e


def _hf_records(name: str, split: str, data_files: str | None, bundled: str | None):
    """(object, where) for each row of a hub set, or of its bundled copy (kdbench.data.bundled) when the hub is off
    or cannot be reached."""
    from kdbench.data.bundled import bundled_instead, iter_bundled

    copy = bundled_instead(name, data_files, split, bundled)
    if copy is not None:
        return iter_bundled(copy)
    return ((dict(raw), f"{name}[{split}] row {i}") for i, raw in enumerate(_hf_dataset(name, split, data_files)))


def read_hf(name: str, split: str, columns: dict | None = None, limit: int | None = None,
            data_files: str | None = None, bundled: str | None = None) -> list[dict]:
    """Rows of a hub set; `bundled` names its copy bundled with kdbench, read instead when the hub is unavailable."""
    rows = []
    for raw, where in _hf_records(name, split, data_files, bundled):
        rows.append(_normalize(raw, columns or {}, where))
        if limit is not None and len(rows) >= limit:
            break
    return rows


def load_records(source) -> list[dict]:
    """Raw JSON objects (no mapping onto instruction rows) from a jsonl or hf source, after `skip`, at most `limit`:
    what a classification set reads ({text, label}, {passage, question, answer, label}, ...). Columns in
    source.columns are renamed (our name -> the source's column)."""
    if source.skip < 0:
        raise DataError(f"source.skip={source.skip}: must be >= 0")
    n = None if source.limit is None else source.skip + source.limit
    if source.kind == "jsonl" or is_local_file(source):
        if not source.path:
            raise DataError("source.path is required for source.kind=jsonl")
        raws, wheres = [], []
        lines = iter_jsonl(source.path)
        while n is None or len(raws) < n:  # stop before reading (and judging) a line past the limit
            raw, where = next(lines, (None, None))
            if raw is None:
                break
            raws.append(raw)
            wheres.append(where)
    elif source.kind == "hf":
        if not source.path:
            raise DataError("source.path (a Hugging Face dataset id) is required for source.kind=hf")
        raws, wheres = [], []
        for raw, where in _hf_records(source.path, source.split, source.data_files, source.bundled):
            if n is not None and len(raws) >= n:
                break
            raws.append(raw)
            wheres.append(where)
    else:
        raise DataError(f"source.kind={source.kind!r}: raw records come from jsonl or hf")
    if not raws:
        raise DataError(f"{source.path}: the source holds no rows")
    columns = dict(source.columns)
    out = []
    for raw, where in list(zip(raws, wheres))[source.skip:]:
        for ours, theirs in columns.items():
            if ours in raw and theirs not in raw:  # a local copy already in our naming
                continue
            if theirs not in raw:
                raise DataError(f"{where}: the row has no {theirs!r} field (mapped to {ours!r} by source.columns); "
                                f"it has {sorted(raw)}")
            raw[ours] = raw[theirs]
        out.append({**raw, "_where": where})
    return out


def load_rows(source, embedded_cfg) -> list[dict]:
    """Rows for one SourceConfig: the rows after the first `skip`, at most `limit` of them (skip + limit on
    one split gives disjoint train and validation sets for a data set that ships only one split)."""
    if source.skip < 0:
        raise DataError(f"source.skip={source.skip}: must be >= 0")
    n = None if source.limit is None else source.skip + source.limit
    return _read(source, embedded_cfg, n)[source.skip:]


def is_local_file(source) -> bool:
    """An hf source whose path is a local file is read as JSONL: `source.path=<file>` alone switches a set that
    names a hub id (conf/eval_set/*.yaml) to a local copy."""
    return source.kind in ("jsonl", "hf") and bool(source.path) and Path(source.path).expanduser().is_file()


def _read(source, embedded_cfg, n: int | None) -> list[dict]:
    if source.kind == "embedded":
        splits = embedded_splits(embedded_cfg)
        if source.split not in splits:
            raise DataError(f"source.split={source.split!r}: the embedded benchmark has {sorted(splits)}")
        rows = [dict(r, references=[r["output"]]) for r in splits[source.split]]
        return rows[:n] if n is not None else rows
    if source.kind == "jsonl" or is_local_file(source):
        if not source.path:
            raise DataError("source.path is required for source.kind=jsonl")
        return read_jsonl(source.path, dict(source.columns), n)
    if source.kind == "hf":
        if not source.path:
            raise DataError("source.path (a Hugging Face dataset id) is required for source.kind=hf")
        return read_hf(source.path, source.split, dict(source.columns), n, getattr(source, "data_files", None),
                       getattr(source, "bundled", None))
    raise DataError(f"source.kind={source.kind!r}: use embedded, jsonl or hf")
