"""Atomic writes: a reader sees the old file or the new one, never half of one (temp file + fsync + rename)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write_by(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Let `write` fill a temp file beside `path` (given its name: a library's own save function will do), then
    fsync it and rename it into place; on any failure the temp file goes and the old `path` stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results and reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_by(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_publish_dir(tmp_dir: Path, final_dir: Path) -> Path:
    """Move a fully written folder into place; if another worker won the race, keep theirs."""
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    # mkdtemp makes a 0700 folder and some writers 0600 files: a shared cache must be readable by its users.
    tmp_dir.chmod(0o755)
    for f in tmp_dir.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)
    try:
        os.replace(tmp_dir, final_dir)
    except OSError:
        if final_dir.is_dir():
            shutil.rmtree(tmp_dir, ignore_errors=True)
        else:
            raise
    return final_dir
