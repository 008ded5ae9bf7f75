"""The table one `kdbench` run prints at its end: its student row beside the teacher's."""

from __future__ import annotations

from kdbench.report.compare import build_table
from kdbench.report.render import render_markdown
from kdbench.tracking.record import RunRecord


def headline_metrics(record: RunRecord) -> list[str]:
    """Each evaluation set's overall ROUGE-L and exact match (not the per-category breakdown), and its LLM judge
    score ratio where a judge ran (MiniLLM's headline figure)."""
    keys = []
    for key in record.metrics:
        parts = key.split("/")
        if (len(parts) == 2 and parts[1] in ("rouge_l", "exact_match")) or parts[1:] == ["judge", "score_ratio"]:
            keys.append(key)
    return keys


def print_run_table(record: RunRecord) -> None:
    table = build_table([record], metrics=headline_metrics(record))
    print()
    print(render_markdown(table))
    print(f"\nresults: {record.artifacts.get('run_dir', '')}/results.json", flush=True)
