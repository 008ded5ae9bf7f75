"""Cache entries that heal: every entry is verified when it is read, and a bad one is moved aside and recomputed.

A JSON entry carries a `checksum` field: the sha256 of its canonical payload (every other field, as sorted,
compact JSON). A folder of weights or tokenizer files carries a manifest (`kdbench_manifest.json`: each file's
size and sha256, itself checksummed), written last into the temp folder before the folder is published.

Entries written by earlier kdbench versions have neither. They are not forced to be recomputed: an old JSON entry
is accepted when it parses and passes the cache's own check of its fields; an old folder when every JSON file in it
parses and every safetensors file's header parses and accounts for the file's exact size (the safetensors library
checks both). That catches truncation and garbage in any header, though not garbage inside tensor data of the
same length, which only a manifest can catch; such old entries are read as they are and never rewritten.

A bad entry is quarantined: renamed to `<name>.corrupt-<timestamp>` beside it (kept for inspection, never
deleted) with a warning naming both paths, so the next lookup is a miss and the entry is recomputed once. Callers
quarantine under the entry's file lock, after checking again, so that two workers never both recompute it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from filelock import FileLock

from kdbench.storage.atomic import atomic_write_json

log = logging.getLogger(__name__)

CHECKSUM_FIELD = "checksum"
MANIFEST_FILE = "kdbench_manifest.json"
# A field check: the reason the payload is unusable, or None when it is fine.
FieldCheck = Callable[[dict], "str | None"]


class CorruptEntry(Exception):
    """A cache entry that exists but cannot be used; the message names the file and says what is wrong."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path}: {why}")
        self.path, self.why = Path(path), why


def canonical_checksum(payload: dict) -> str:
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(blob.encode("utf-8")).hexdigest()


def write_entry(path: str | Path, payload: dict) -> Path:
    """Write `payload` with its checksum, atomically. The payload goes through JSON first (as atomic_write_json
    would, non-JSON values as str) so that the checksum is the one a reader will compute from the file."""
    plain = json.loads(json.dumps(payload, default=str))
    plain.pop(CHECKSUM_FIELD, None)
    return atomic_write_json(path, {**plain, CHECKSUM_FIELD: canonical_checksum(plain)})


def read_entry(path: str | Path, check: FieldCheck | None = None) -> dict | None:
    """The verified payload (without its checksum) of the entry at `path`; None when there is none.
    Raises CorruptEntry when the file is not valid UTF-8 JSON, not an object, fails its checksum or `check`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CorruptEntry(path, f"not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise CorruptEntry(path, f"not valid JSON ({e.msg.removesuffix(' at')}: line {e.lineno} column "
                                 f"{e.colno}; the file has {len(raw)} bytes)") from None
    if not isinstance(data, dict):
        raise CorruptEntry(path, f"a JSON {type(data).__name__}, not an object")
    stored = data.pop(CHECKSUM_FIELD, None)
    # No checksum: an entry written before checksums existed; it is trusted when `check` accepts its fields.
    if stored is not None and stored != canonical_checksum(data):
        raise CorruptEntry(path, "checksum mismatch (the content is not what was written)")
    why = check(data) if check else None
    if why:
        raise CorruptEntry(path, why)
    return data


def require(**types: type | tuple[type, ...]) -> FieldCheck:
    """A field check: each named field is present with one of the given types."""
    def check(data: dict) -> str | None:
        for name, kind in types.items():
            if name not in data:
                return f"field {name!r} is missing"
            if not isinstance(data[name], kind) or (kind is int and isinstance(data[name], bool)):
                return f"field {name!r} is a {type(data[name]).__name__}"
        return None
    return check


def quarantine(path: str | Path, why: str) -> Path | None:
    """Move a bad cache file or folder aside to `<name>.corrupt-<timestamp>` (never overwriting an earlier one),
    with a warning naming both. Returns where it went; None when it was already gone (moved by someone else)."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = path.with_name(f"{path.name}.corrupt-{stamp}"), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    try:
        os.replace(path, target)
    except FileNotFoundError:
        return None
    log.warning("cache entry %s is corrupt (%s): moved aside to %s; recomputing it", path, why, target.name)
    return target


def lock_for(path: str | Path) -> FileLock:
    """The lock every writer of the entry at `path` holds (the caches' existing `<entry>.lock` convention)."""
    return FileLock(str(path) + ".lock")


def read_or_quarantine(path: str | Path, check: FieldCheck | None = None) -> dict | None:
    """read_entry, but a corrupt entry is quarantined and reads as a miss. Call it holding lock_for(path)."""
    try:
        return read_entry(path, check)
    except CorruptEntry as e:
        quarantine(e.path, e.why)
        return None


def cached_entry(path: str | Path, check: FieldCheck | None, compute: Callable[[], dict]) -> tuple[dict, bool]:
    """(payload, hit): the sound entry at `path`, else compute()'s payload written there. The entry's lock is held
    throughout, so two workers never compute one entry twice; a corrupt entry is quarantined and computed again."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with lock_for(path):
        data = read_or_quarantine(path, check)
        if data is not None:
            return data, True
        data = compute()
        write_entry(path, data)
        return data, False


# ------------------------------------------------------------------------------------------- folders of files


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)


def write_manifest(folder: str | Path) -> Path:
    """Record every file's size and sha256 in the folder's manifest. Call it last, on the temp folder, just
    before publishing it: a folder published with a manifest is verified in full on every read."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256_file(p)}
             for p in _files(folder)}
    return write_entry(folder / MANIFEST_FILE, {"files": files})


def folder_problem(folder: str | Path, required: Iterable[str] = ()) -> str | None:
    """Why the cached folder is unusable, or None when it verifies (see the module docstring for folders written
    before manifests existed). Hashing every file costs about a second per GB, far less than loading it."""
    folder = Path(folder)
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        return f"{', '.join(missing)} missing"
    try:
        manifest = read_entry(folder / MANIFEST_FILE, require(files=dict))
    except CorruptEntry as e:
        return f"its manifest {MANIFEST_FILE} is bad: {e.why}"
    if manifest is not None:
        for name, want in manifest["files"].items():
            f = folder / name
            if not isinstance(want, dict):
                return f"its manifest {MANIFEST_FILE} lists {name} without a size and sha256"
            if not f.is_file():
                return f"{name} missing (listed in {MANIFEST_FILE})"
            if f.stat().st_size != want.get("size"):
                return f"{name} is {f.stat().st_size} bytes, {want.get('size')} when written"
            if _sha256_file(f) != want.get("sha256"):
                return f"{name} does not match its sha256 in {MANIFEST_FILE}"
        return None
    return _legacy_folder_problem(folder)


def _legacy_folder_problem(folder: Path) -> str | None:
    from safetensors import SafetensorError, safe_open

    for f in _files(folder):
        if f.suffix == ".json":
            try:
                json.loads(f.read_bytes().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                return f"{f.name} is not valid JSON ({e})"
        elif f.suffix == ".safetensors":
            try:
                with safe_open(str(f), framework="pt"):
                    pass
            except (SafetensorError, OSError) as e:
                return f"{f.name} is not a complete safetensors file ({e})"
    return None


def verified_folder(folder: str | Path, required: Iterable[str] = ()) -> bool:
    """True when the folder exists and verifies; False when it is absent or bad (nothing is moved)."""
    return Path(folder).is_dir() and folder_problem(folder, required) is None


def folder_or_quarantine(folder: str | Path, required: Iterable[str] = ()) -> bool:
    """True when the cached folder exists and verifies; a bad one is quarantined (False: recompute it).
    Call it holding lock_for(folder)."""
    folder = Path(folder)
    if not folder.exists():
        return False
    why = folder_problem(folder, required) if folder.is_dir() else "not a folder"
    if why is None:
        return True
    quarantine(folder, why)
    return False
