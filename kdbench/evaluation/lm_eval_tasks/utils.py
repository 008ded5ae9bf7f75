"""Helpers for kdbench's shipped lm-eval tasks (referenced from the YAMLs next to this file with `!function`).

lm-eval imports this file by path, not as part of the kdbench package; it imports kdbench itself, so the prompt
is rendered by the same function training uses and cannot drift from it.
"""

from __future__ import annotations

from kdbench.data.template import render_prompt


def embedded_doc_to_text(doc: dict) -> str:
    """MiniLLM's Alpaca prompt, exactly as kdbench.data.template.render_prompt renders it for training."""
    return render_prompt(doc["instruction"], doc.get("input") or "")


def strict_exact_match(prediction: str, reference: str) -> float:
    """1.0 when the answer equals the reference after stripping surrounding whitespace; case and punctuation
    count (kdbench.evaluation.metrics.exact_match, on the [0, 1] scale lm-eval uses)."""
    return float(prediction.strip() == reference.strip())


def embedded_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    # `results` holds the filtered generations for this document; the default filter keeps the first.
    return {"exact_match": strict_exact_match(results[0], doc["output"])}
