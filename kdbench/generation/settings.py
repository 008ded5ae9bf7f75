"""The settings one generation call runs with, flat, built from a config's nested `decoding` block
(kdbench.schema.common.Decoding) by `generation_settings`: the one place a config turns into engine settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GenerationSettings:
    # Field order is part of the generation cache's key (kdbench.generation.cache hashes asdict of it).
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    batch_size: int = 64
    seed: int = 0


def generation_settings(decoding, *, do_sample: bool, batch_size: int, seed: int,
                        max_new_tokens: int | None = None) -> GenerationSettings:
    """`decoding` (temperature, top_p, top_k, max_new_tokens) with the call's own sampling switch, batch size and
    seed; max_new_tokens, when given, replaces the block's (an evaluation profile's cap)."""
    return GenerationSettings(do_sample=do_sample, temperature=decoding.temperature, top_p=decoding.top_p,
                              top_k=decoding.top_k,
                              max_new_tokens=max_new_tokens if max_new_tokens is not None else decoding.max_new_tokens,
                              batch_size=batch_size, seed=seed)
