"""The table one `kdbench` run prints at its end: its student row beside the teacher's."""

from __future__ import annotations

from kdbench.report.compare import build_table
from kdbench.report.render import render_markdown
from kdbench.tracking.record import RunRecord

TRUTH_HEADLINE = ("forward_kl", "precision", "recall", "calibration_mae")


def headline_metrics(record: RunRecord) -> list[str]:
    """Each evaluation set's overall ROUGE-L and exact match (not the per-category breakdown), its LLM judge score
    ratio where a judge ran (MiniLLM's headline figure), and where it was scored against the true answer
    distribution (benchmark v5) its forward KL to p*, precision and recall."""
    keys = []
    for key in record.metrics:
        parts = key.split("/")
        if (len(parts) == 2 and parts[1] in ("rouge_l", "exact_match")) or parts[1:] == ["judge", "score_ratio"] \
                or (len(parts) == 3 and parts[1] == "truth" and parts[2] in TRUTH_HEADLINE):
            keys.append(key)
    return keys


def print_run_table(record: RunRecord) -> None:
    table = build_table([record], metrics=headline_metrics(record))
    print()
    print(render_markdown(table))
    print(f"\nresults: {record.artifacts.get('run_dir', '')}/results.json", flush=True)
