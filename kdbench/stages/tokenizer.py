"""The embedded benchmark's tokenizer: trained locally with `tokenizers`, cached by what determines it.

Looked up in the cache, then among the assets shipped in the package (the shipped teacher's tokenizer), and
trained (well under a second) only when neither has it, or when the cached one is damaged (verified by its
manifest, see kdbench.storage.cache_entry: moved aside under the lock and trained again). Students built from
scratch for the embedded benchmark use it, so they share the teacher's vocabulary exactly.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from transformers import AutoTokenizer

from kdbench.data.sources import embedded_splits
from kdbench.data.template import render_prompt
from kdbench.models.loading import prepare_tokenizer
from kdbench.models.tokenizer import train_bpe_tokenizer
from kdbench.paths import ASSETS_DIR
from kdbench.stages.keys import content_key
from kdbench.storage.atomic import atomic_publish_dir
from kdbench.storage.cache_entry import folder_or_quarantine, folder_problem, lock_for, verified_folder, write_manifest

log = logging.getLogger(__name__)
TOKENIZER_STAGE_VERSION = 1
# Enough text to see every word of the benchmark's closed vocabulary many times.
_TRAIN_ROWS = 3000
TOKENIZER_FILES = ("tokenizer.json",)


def tokenizer_key(embedded_cfg) -> str:
    return content_key("tokenizer", stage=TOKENIZER_STAGE_VERSION, embedded=embedded_cfg)


def embedded_tokenizer(embedded_cfg, cache_dir: str | Path):
    key = tokenizer_key(embedded_cfg)
    cached = Path(cache_dir) / "tokenizers" / key
    shipped = ASSETS_DIR / "tokenizers" / key
    if verified_folder(cached, TOKENIZER_FILES):
        return _load(cached, key)
    if not cached.exists() and verified_folder(shipped, TOKENIZER_FILES):
        return _load(shipped, key)
    # Missing, or a cached folder that does not verify: quarantined under the lock, then the shipped one or a new one.
    cached.parent.mkdir(parents=True, exist_ok=True)
    with lock_for(cached):
        if folder_or_quarantine(cached, TOKENIZER_FILES):
            return _load(cached, key)
        if verified_folder(shipped, TOKENIZER_FILES):
            return _load(shipped, key)
        if shipped.exists():  # package data: reported, never moved
            log.warning("the shipped embedded tokenizer %s is damaged (%s); reinstall kdbench. Training it into the "
                        "cache instead", shipped, folder_problem(shipped, TOKENIZER_FILES))
        rows = embedded_splits(embedded_cfg)["train"][:_TRAIN_ROWS]
        tok = train_bpe_tokenizer((render_prompt(r["instruction"], r["input"]) + r["output"] for r in rows),
                                  vocab_size=embedded_cfg.vocab_size)
        tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=f".{key}."))
        tok.save_pretrained(tmp)
        write_manifest(tmp)  # last: it covers every file above
        atomic_publish_dir(tmp, cached)
        log.info("trained the embedded tokenizer %s (%d tokens)", key, len(tok))
    return _load(cached, key)


def _load(folder: Path, key: str):
    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(str(folder)))
    tok.kdbench_key = key
    return tok
