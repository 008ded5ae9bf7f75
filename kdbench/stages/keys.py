"""Cache keys: a hash of everything that determines an artifact, so equal keys mean interchangeable artifacts."""

from __future__ import annotations

import hashlib
import json

from omegaconf import OmegaConf


def plain(cfg) -> object:
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


def content_key(kind: str, **parts) -> str:
    blob = json.dumps({"kind": kind, **{k: plain(v) for k, v in parts.items()}}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
