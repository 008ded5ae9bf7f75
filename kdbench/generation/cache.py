"""A content-keyed cache of generations (teacher outputs): the key is a hash of the model's fingerprint, the
prompts and every generation setting, so a hit is exactly what generating again would give. Entries are written
atomically with a checksum and computed under a file lock, so two sweep workers never compute or write the same
entry twice; a corrupt entry is moved aside under that lock and computed again (kdbench.storage.cache_entry)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

from kdbench.generation.engine import GenerationResult
from kdbench.storage.cache_entry import cached_entry, require

log = logging.getLogger(__name__)


def generation_key(model_fingerprint: str, prompts: list[str], settings: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"model": model_fingerprint, "settings": settings}, sort_keys=True).encode())
    for p in prompts:
        h.update(hashlib.sha256(p.encode()).digest())
    return h.hexdigest()[:24]


def cached_generate(cache_dir: str | Path, model_fingerprint: str, prompts: list[str], settings: dict,
                    compute: Callable[[], GenerationResult]) -> tuple[GenerationResult, bool]:
    """(result, hit). `compute` runs only on a miss, under the entry's lock."""
    key = generation_key(model_fingerprint, prompts, settings)
    computed: list[GenerationResult] = []

    def payload() -> dict:
        computed.append(compute())
        result = computed[0]
        return {"key": key, "model": model_fingerprint, "settings": settings, "n_prompts": len(prompts),
                "texts": result.texts, "n_truncated": result.n_truncated, "new_tokens": result.new_tokens,
                "seconds": result.seconds}

    data, hit = cached_entry(Path(cache_dir) / "generations" / f"{key}.json", _entry_check(len(prompts)), payload)
    if not hit:
        return computed[0], False
    return GenerationResult(texts=data["texts"], n_truncated=data["n_truncated"], new_tokens=data["new_tokens"],
                            seconds=0.0), True


def _entry_check(n_prompts: int):
    """The fields a hit returns, with one text per prompt (the length check for entries without a checksum)."""
    fields = require(texts=list, n_truncated=int, new_tokens=int)

    def check(data: dict) -> str | None:
        why = fields(data)
        if why is None and len(data["texts"]) != n_prompts:
            why = f"{len(data['texts'])} texts for {n_prompts} prompts"
        if why is None and not all(isinstance(t, str) for t in data["texts"]):
            why = "a text that is not a string"
        return why
    return check
