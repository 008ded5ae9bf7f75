"""Read Weights & Biases *offline* runs straight from their ``.wandb`` file: a test helper (kdbench itself never
reads its runs back), so that tests can assert what a real offline run recorded.

Why this exists
---------------
kdbench logs to W&B in offline mode (``WANDB_MODE=offline`` / Lightning's
``WandbLogger(offline=True)``) so that training needs no network and no login.
With wandb 0.31 such a run leaves exactly one record of what was logged:
``<dir>/wandb/offline-run-<YYYYmmdd_HHMMSS>-<id>/run-<id>.wandb``.  There is no
``wandb-summary.json``, no ``config.yaml`` and no history file any more, and the
old ways to look inside (``wandb.sdk.internal.datastore``, ``wandb sync
--view``) are gone.  Reports and tests still need the config, the metric history
and the summary of a run, so this module decodes the ``.wandb`` file itself,
without network access and without a W&B account.

Dependency on wandb internals
-----------------------------
The file format is private to wandb and may change in any release; the wandb
version is pinned in ``constraints.txt`` (the tests' install) for that reason.  What this module
relies on (checked against wandb 0.31.0, whose writer lives in the Go binary
``wandb-core``, package ``core/pkg/leveldb``):

* A 7-byte file header: ``b":W&B"`` + magic ``0xBEE1`` (uint16, little endian)
  + format version ``0`` (uint8).
* After it, a LevelDB-log-style stream cut into 32 KiB blocks.  Block
  boundaries are absolute file offsets (the file header counts as part of the
  first block).  Each chunk has a 7-byte header: CRC (uint32 LE), payload length
  (uint16 LE), chunk type (uint8: 1 FULL, 2 FIRST, 3 MIDDLE, 4 LAST), then the
  payload.  A block tail shorter than a chunk header is zero padding.
* Unlike LevelDB, the CRC is the *standard* (zlib) CRC-32 of the type byte
  followed by the payload, not a masked CRC-32C.
* Each reassembled record is a serialized ``wandb_internal_pb2.Record``
  protobuf (this module imports the message class from the installed wandb).

Only ``run``, ``config``, ``history``, ``summary`` and ``exit`` records are
interpreted; everything else (stats, telemetry, files, output, ...) is skipped.
A crashed run's file may end in the middle of a chunk or of a multi-chunk
record: whatever is complete is returned and ``OfflineRun.truncated`` is set.
A chunk with a bad CRC makes the reader drop the rest of that block (as
LevelDB does) and carry on with the next block.

Reading a run from the process that wrote it: in offline mode ``run.finish()``
(and so ``WandbLogger.experiment.finish()``) can return before wandb-core has
flushed the file; it was seen to hold only its 7-byte header right after
``finish()``.  Call ``wandb.teardown()`` after ``finish()`` before reading.
``OfflineRun.finished`` tells whether the run's ``exit`` record was read.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "OfflineRun",
    "find_offline_runs",
    "iter_records",
    "read_offline_run",
]

log = logging.getLogger(__name__)

FILE_HEADER_IDENT = b":W&B"
FILE_HEADER_MAGIC = 0xBEE1
FILE_HEADER_VERSION = 0
_FILE_HEADER = struct.Struct("<4sHB")  # ident, magic, version -> 7 bytes
FILE_HEADER = _FILE_HEADER.pack(FILE_HEADER_IDENT, FILE_HEADER_MAGIC, FILE_HEADER_VERSION)

BLOCK_SIZE = 32 * 1024
_CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type -> 7 bytes
CHUNK_HEADER_SIZE = _CHUNK_HEADER.size

CHUNK_ZERO, CHUNK_FULL, CHUNK_FIRST, CHUNK_MIDDLE, CHUNK_LAST = 0, 1, 2, 3, 4

# Config keys that W&B adds for its own bookkeeping.
_INTERNAL_CONFIG_KEYS = frozenset({"_wandb"})

_RUN_DIR_RE = re.compile(r"^(?:offline-)?run-(\d{8}_\d{6})-")

_MISSING = object()


@dataclass
class OfflineRun:
    """What a W&B run file says about one run.

    ``config``, ``history`` rows and ``summary`` hold JSON-decoded values.  Keys
    that W&B stores as a path (e.g. ``run.log({"a": {"b": 1}})``) come back as
    nested dicts (``{"a": {"b": 1}}``); keys with slashes such as
    ``"train/loss"`` are single keys.
    """

    run_id: str
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    group: str | None = None
    project: str | None = None
    name: str | None = None
    path: Path | None = None
    #: True when an ``exit`` record was seen (``run.finish()`` completed).
    finished: bool = False
    #: True when the file ended in the middle of a chunk or record, or had
    #: corrupt chunks that were skipped.
    truncated: bool = False

    def metric(self, key: str) -> list[Any]:
        """Values of ``key`` over the history rows that have it, in order.

        ``key`` is looked up as-is first; if a row lacks it and the key has
        dots, it is also tried as a path into nested dicts (``"a.b"``).
        """
        out = []
        for row in self.history:
            value = _lookup(row, key)
            if value is not _MISSING:
                out.append(value)
        return out


# --------------------------------------------------------------------------
# Locating run files


def _run_sort_key(path: Path) -> tuple[str, float, str]:
    match = _RUN_DIR_RE.match(path.parent.name)
    started = match.group(1) if match else ""
    try:
        mtime = path.stat().st_mtime
    except OSError:
        mtime = 0.0
    return (started, mtime, str(path))


def find_offline_runs(root: str | os.PathLike[str]) -> list[Path]:
    """All W&B run files (``*.wandb``) under ``root``, searched recursively.

    Sorted oldest first: by the start time in the run folder's name
    (``offline-run-YYYYmmdd_HHMMSS-<id>``), then by modification time.
    Raises FileNotFoundError if ``root`` does not exist.
    """
    root_path = Path(root).expanduser()
    if not root_path.exists():
        raise FileNotFoundError(f"W&B run search root does not exist: {root_path}")
    if root_path.is_file():
        return [root_path] if root_path.suffix == ".wandb" else []
    files = [p for p in root_path.rglob("*.wandb") if p.is_file()]
    return sorted(files, key=_run_sort_key)


def _newest(files: Iterable[Path]) -> Path | None:
    files = list(files)
    if not files:
        return None
    offline = [p for p in files if p.parent.name.startswith("offline-run-")]
    return max(offline or files, key=_run_sort_key)


def _resolve_run_file(path: str | os.PathLike[str]) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"No W&B run at {p}: path does not exist")
    if p.is_file():
        return p
    # A run folder: offline-run-*/run-<id>.wandb
    found = _newest(f for f in p.glob("*.wandb") if f.is_file())
    # A folder holding a wandb/ folder (a WandbLogger save_dir, WANDB_DIR, ...)
    if found is None and (p / "wandb").is_dir():
        found = _newest(find_offline_runs(p / "wandb"))
    # The wandb/ folder itself.
    if found is None:
        found = _newest(f for f in p.glob("*/*.wandb") if f.is_file())
    if found is None:
        raise FileNotFoundError(
            f"No W&B offline run found in {p} "
            f"(looked for {p}/wandb/offline-run-*/run-*.wandb)"
        )
    return found


# --------------------------------------------------------------------------
# Low-level log reading


class _LogState:
    def __init__(self) -> None:
        self.truncated = False
        self.corrupt_chunks = 0


def _chunk_crc(chunk_type: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(bytes((chunk_type,)))) & 0xFFFFFFFF


def _iter_payloads(data: bytes, state: _LogState) -> Iterator[bytes]:
    """Reassemble record payloads from the block/chunk stream after the header."""
    n = len(data)
    pos = _FILE_HEADER.size
    pending: bytearray | None = None
    while pos < n:
        block_left = BLOCK_SIZE - pos % BLOCK_SIZE
        if block_left < CHUNK_HEADER_SIZE:
            pos += block_left  # zero padding at the end of a block
            continue
        if pos + CHUNK_HEADER_SIZE > n:
            if any(data[pos:]):
                state.truncated = True
            break
        crc, length, ctype = _CHUNK_HEADER.unpack_from(data, pos)
        if ctype == CHUNK_ZERO and length == 0 and crc == 0:
            # Zero-filled space (padding / preallocation): nothing in this block.
            pos += block_left
            continue
        if length > block_left - CHUNK_HEADER_SIZE or ctype > CHUNK_LAST:
            state.corrupt_chunks += 1
            pending = None
            pos += block_left
            continue
        end = pos + CHUNK_HEADER_SIZE + length
        if end > n:
            state.truncated = True  # crashed mid-write
            pending = None
            break
        payload = data[pos + CHUNK_HEADER_SIZE : end]
        if _chunk_crc(ctype, payload) != crc:
            state.corrupt_chunks += 1
            pending = None
            pos += block_left  # LevelDB: drop the rest of a corrupt block
            continue
        pos = end
        if ctype == CHUNK_FULL:
            if pending is not None:
                state.corrupt_chunks += 1
                pending = None
            yield bytes(payload)
        elif ctype == CHUNK_FIRST:
            if pending is not None:
                state.corrupt_chunks += 1
            pending = bytearray(payload)
        elif ctype == CHUNK_MIDDLE:
            if pending is None:
                state.corrupt_chunks += 1
            else:
                pending += payload
        elif ctype == CHUNK_LAST:
            if pending is None:
                state.corrupt_chunks += 1
            else:
                pending += payload
                yield bytes(pending)
                pending = None
        # ctype == CHUNK_ZERO with data: ignore.
    if pending is not None:
        state.truncated = True


def _check_file_header(data: bytes, path: Path) -> bool:
    """Validate the file header; return False if the file is too short to hold one."""
    if len(data) < _FILE_HEADER.size:
        if FILE_HEADER.startswith(data):
            return False  # empty or cut inside the header: no records yet
        raise ValueError(f"{path} is not a W&B run file (bad header {data!r})")
    ident, magic, version = _FILE_HEADER.unpack_from(data, 0)
    if ident != FILE_HEADER_IDENT or magic != FILE_HEADER_MAGIC:
        raise ValueError(
            f"{path} is not a W&B run file (header {data[:_FILE_HEADER.size]!r}, "
            f"expected {FILE_HEADER!r})"
        )
    if version != FILE_HEADER_VERSION:
        raise ValueError(
            f"{path}: unsupported W&B run file format version {version} "
            f"(this reader knows version {FILE_HEADER_VERSION}; check the wandb "
            "version pinned in pyproject.toml)"
        )
    return True


def _iter_records(path: Path, state: _LogState) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2  # wandb internals, see module doc

    data = path.read_bytes()
    if not _check_file_header(data, path):
        state.truncated = len(data) > 0
        return
    for payload in _iter_payloads(data, state):
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(payload)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError and kin; be lenient with garbage
            state.corrupt_chunks += 1
            continue
        yield record


def iter_records(path: str | os.PathLike[str]) -> Iterator[Any]:
    """Yield every ``wandb_internal_pb2.Record`` in a ``.wandb`` file, in order.

    A debugging aid; ``read_offline_run`` is the interface meant for use.
    """
    yield from _iter_records(Path(path), _LogState())


# --------------------------------------------------------------------------
# Record interpretation


def _decode_json(text: str) -> Any:
    try:
        return json.loads(text)  # also accepts NaN / Infinity / -Infinity
    except ValueError:
        return text


def _item_keys(item: Any) -> list[str]:
    keys = list(item.nested_key)
    if not keys and item.key:
        keys = [item.key]
    return keys


def _history_value(item: Any) -> Any:
    if item.value_json:
        return _decode_json(item.value_json)
    which = item.WhichOneof("value")
    if which is None or which == "none":
        return None
    if which == "json":
        return _decode_json(item.json)
    return getattr(item, which)


def _set_path(target: dict[str, Any], keys: list[str], value: Any) -> None:
    node = target
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[keys[-1]] = value


def _remove_path(target: dict[str, Any], keys: list[str]) -> None:
    node: Any = target
    for key in keys[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(keys[-1], None)


def _deep_merge(target: dict[str, Any], source: Mapping[str, Any]) -> None:
    for key, value in source.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _deep_merge(target[key], value)
        elif isinstance(value, Mapping):
            target[key] = _deep_copy_dict(value)
        else:
            target[key] = value


def _deep_copy_dict(value: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _deep_merge(out, value)
    return out


def _lookup(row: Mapping[str, Any], key: str) -> Any:
    if key in row:
        return row[key]
    if "." not in key:
        return _MISSING
    node: Any = row
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _plain_config_value(value: Any) -> Any:
    """Unwrap the ``{"value": ..., "desc": ...}`` form some wandb versions use."""
    if isinstance(value, dict) and "value" in value and set(value) <= {"value", "desc"}:
        return value["value"]
    return value


def _apply_items(target: dict[str, Any], updates: Iterable[Any], removes: Iterable[Any]) -> None:
    for item in updates:
        keys = _item_keys(item)
        if keys:
            _set_path(target, keys, _decode_json(item.value_json))
    for item in removes:
        keys = _item_keys(item)
        if keys:
            _remove_path(target, keys)


def read_offline_run(path: str | os.PathLike[str]) -> OfflineRun:
    """Read a W&B offline run without network access or login.

    ``path`` may be the ``run-<id>.wandb`` file, its ``offline-run-*`` folder,
    a folder containing a ``wandb/`` folder (e.g. a ``WandbLogger`` save_dir;
    the newest offline run in it is read), or that ``wandb/`` folder itself.

    Raises FileNotFoundError (naming ``path``) if no run file is found, and
    ValueError if the file is not a W&B run file of a known format version.
    A truncated file (crashed run) does not raise: complete records are read
    and ``truncated`` is set on the result.
    """
    run_file = _resolve_run_file(path)
    state = _LogState()

    run_id: str | None = None
    stream_id: str | None = None
    project: str | None = None
    group: str | None = None
    name: str | None = None
    tags: list[str] = []
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    saw_summary = False
    finished = False

    for record in _iter_records(run_file, state):
        kind = record.WhichOneof("record_type")
        if not stream_id and record._info.stream_id:
            stream_id = record._info.stream_id
        if kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                keys = _item_keys(item)
                if keys:
                    _set_path(row, keys, _history_value(item))
            if "_step" not in row and record.history.HasField("step"):
                row["_step"] = record.history.step.num
            history.append(row)
        elif kind == "summary":
            saw_summary = True
            _apply_items(summary, record.summary.update, record.summary.remove)
        elif kind == "config":
            _apply_items(config, record.config.update, record.config.remove)
        elif kind == "run":
            # The first run record is the init; later ones (run.tags = ...,
            # run.name = ...) are full updates of the same run.
            run = record.run
            run_id = run.run_id or run_id
            project = run.project or project
            group = run.run_group or group
            name = run.display_name or name
            tags = list(run.tags)
            _apply_items(config, run.config.update, run.config.remove)
            if run.HasField("summary"):
                saw_summary = saw_summary or bool(run.summary.update or run.summary.remove)
                _apply_items(summary, run.summary.update, run.summary.remove)
        elif kind == "exit":
            finished = True
        # Everything else (stats, telemetry, files, output, metric, ...) is skipped.

    if not saw_summary:
        for row in history:
            _deep_merge(summary, row)

    plain_config = {
        key: _plain_config_value(value)
        for key, value in config.items()
        if key not in _INTERNAL_CONFIG_KEYS
    }

    if not run_id:
        run_id = stream_id
    if not run_id:
        stem = run_file.stem
        run_id = stem[len("run-"):] if stem.startswith("run-") else stem

    if state.corrupt_chunks:
        log.warning("%s: skipped %d corrupt chunk(s)", run_file, state.corrupt_chunks)

    return OfflineRun(
        run_id=run_id,
        config=plain_config,
        history=history,
        summary=summary,
        tags=tags,
        group=group or None,
        project=project or None,
        name=name or None,
        path=run_file,
        finished=finished,
        truncated=state.truncated or state.corrupt_chunks > 0,
    )
