"""Find and load the `results.json` of every finished run under a directory."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from kdbench.tracking.results import RESULTS_FILE

logger = logging.getLogger(__name__)


def collect_results(root: str | os.PathLike) -> list[dict]:
    """Load every complete `results.json` under `root`, recursively, in sorted path order.

    Files that are not valid JSON, not a JSON object, or whose "status" is not "complete" are skipped with a
    warning rather than raising: one crashed or still-running run must not stop a report over a whole sweep.
    Each returned dict gets "_path" (the file it came from) so later stages can name the offending file.
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
        if not isinstance(data, dict):
            logger.warning("skipping %s: expected a JSON object, got %s", path, type(data).__name__)
            continue
        status = data.get("status")
        if status != "complete":
            logger.warning("skipping %s: status is %r, not 'complete'", path, status)
            continue
        data["_path"] = str(path)
        results.append(data)
    return results
