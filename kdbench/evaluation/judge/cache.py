"""The verdict cache: one checksummed JSON file per verdict, keyed by content, so a rerun asks nothing twice."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdbench.evaluation.judge.prompt import Messages

log = logging.getLogger(__name__)

# Bump when the cache record or the meaning of a key changes, so old verdicts are not reused.
CACHE_VERSION = 1


def verdict_key(identity: str, messages: Messages, settings: Mapping[str, Any]) -> str:
    """Content key of one verdict: judge identity, the full rendered messages and the generation settings."""
    payload = {"version": CACHE_VERSION, "judge": identity, "messages": messages, "settings": dict(settings)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:32]


class VerdictCache:
    """One JSON file per verdict under `<cache_dir>/judge/`, written atomically (temp file + os.replace) with a
    checksum, so concurrent runs at worst write the same content twice. Only answers are stored, never failures.
    A corrupt entry is moved aside with a warning and reads as a miss, so the judge is asked again
    (kdbench.storage.cache_entry; entries written before checksums are read when their fields are right)."""

    def __init__(self, cache_dir: str | Path):
        self.dir = Path(cache_dir) / "judge"

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def get(self, key: str) -> str | None:
        from kdbench.storage.cache_entry import CorruptEntry, lock_for, read_entry, read_or_quarantine, require

        path, fields = self.path(key), require(key=str, text=str)

        def check(data: dict) -> str | None:
            return fields(data) or (f"holds the verdict of key {data['key']}" if data["key"] != key else None)

        try:
            data = read_entry(path, check)
        except CorruptEntry:
            # Moved aside under the entry's lock, after reading it again: another run may have rewritten it.
            with lock_for(path):
                data = read_or_quarantine(path, check)
        except OSError as e:  # unreadable but maybe sound (permissions): left in place, the judge is asked again
            log.warning("judge cache entry %s unreadable (%s): asking again", path, e)
            return None
        return None if data is None else data["text"]

    def put(self, key: str, identity: str, settings: Mapping[str, Any], messages: Messages, text: str) -> None:
        from kdbench.storage.cache_entry import write_entry

        record = {"version": CACHE_VERSION, "key": key, "judge": identity, "settings": dict(settings),
                  "messages": messages, "text": text}
        try:
            write_entry(self.path(key), record)
        except OSError as e:  # a full disk must not cost the run its verdicts
            log.warning("judge cache: could not write %s (%s)", key, e)
