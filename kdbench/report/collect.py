"""Find and load the `results.json` of every finished run under a directory, as typed run records."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from kdbench.tracking.record import RecordError, RunRecord
from kdbench.tracking.results import RESULTS_FILE

logger = logging.getLogger(__name__)


def collect_results(root: str | os.PathLike) -> list[RunRecord]:
    """Load every complete `results.json` under `root`, recursively, in sorted path order.

    Files that are not valid JSON, not a run record (kdbench.tracking.record), or whose "status" is not
    "complete" are skipped with a warning rather than raising: one crashed or still-running run must not stop a
    report over a whole sweep. Each record's `path` is the file it came from, so later stages can name it.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"results directory does not exist: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"results path is not a directory: {root}")

    results = []
    # Sorted so the first-seen order (metric columns, tie-breaks) is the same on every machine.
    for path in sorted(root.rglob(RESULTS_FILE)):
        if not path.is_file():
            continue
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            logger.warning("skipping %s: cannot read it as JSON (%s)", path, e)
            continue
        if isinstance(data, dict) and data.get("status") != "complete":
            logger.warning("skipping %s: status is %r, not 'complete'", path, data.get("status"))
            continue
        try:
            results.append(RunRecord.from_dict(data, str(path)))
        except RecordError as e:
            logger.warning("skipping %s", e)
    return results
