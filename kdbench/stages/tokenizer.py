"""The embedded benchmark's tokenizer: trained locally with `tokenizers`, cached by what determines it.

Looked up in the cache, then among the assets shipped in the package (the shipped teacher's tokenizer), and
trained (well under a second) only when neither has it. Students built from scratch for the embedded benchmark
use it, so they share the teacher's vocabulary exactly.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from filelock import FileLock
from transformers import AutoTokenizer

from kdbench.data.sources import embedded_splits
from kdbench.data.template import render_prompt
from kdbench.models.loading import prepare_tokenizer
from kdbench.models.tokenizer import train_bpe_tokenizer
from kdbench.paths import ASSETS_DIR
from kdbench.stages.keys import content_key
from kdbench.tracking.atomic import atomic_publish_dir

log = logging.getLogger(__name__)
TOKENIZER_STAGE_VERSION = 1
# Enough text to see every word of the benchmark's closed vocabulary many times.
_TRAIN_ROWS = 3000


def tokenizer_key(embedded_cfg) -> str:
    return content_key("tokenizer", stage=TOKENIZER_STAGE_VERSION, embedded=embedded_cfg)


def embedded_tokenizer(embedded_cfg, cache_dir: str | Path):
    key = tokenizer_key(embedded_cfg)
    cached = Path(cache_dir) / "tokenizers" / key
    for folder in (cached, ASSETS_DIR / "tokenizers" / key):
        if (folder / "tokenizer.json").is_file():
            return _load(folder, key)
    cached.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cached) + ".lock"):
        if not (cached / "tokenizer.json").is_file():
            rows = embedded_splits(embedded_cfg)["train"][:_TRAIN_ROWS]
            tok = train_bpe_tokenizer((render_prompt(r["instruction"], r["input"]) + r["output"] for r in rows),
                                      vocab_size=embedded_cfg.vocab_size)
            tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=f".{key}."))
            tok.save_pretrained(tmp)
            atomic_publish_dir(tmp, cached)
            log.info("trained the embedded tokenizer %s (%d tokens)", key, len(tok))
    return _load(cached, key)


def _load(folder: Path, key: str):
    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(str(folder)))
    tok.kdbench_key = key
    return tok
