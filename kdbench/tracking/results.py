"""results.json: the one record of a run that reports and resumption read (never logs).

It holds the resolved config, the metrics of the student and the teacher, the seed, package versions, git
revision, hardware and wall time, and the paths of artifacts. Written atomically; `status: complete` is only
set by the final write, so a file from an interrupted run is never mistaken for a finished one. The record's
type is kdbench.tracking.record.RunRecord; this module has the file's name, the environment facts it carries and
the rule that decides whether a finished run is skipped or redone.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kdbench.tracking.record import RunRecord

RESULTS_FILE = "results.json"
# Beside it when a run did not finish: stopped on a signal (and how to continue), or failed in a sweep (the
# traceback and whether a rerun can help). kdbench.runtime writes them, the sweep-end report reads them.
INTERRUPTED_FILE = "interrupted.json"
FAILED_FILE = "failed.txt"
_PACKAGES = ("kdbench", "torch", "transformers", "lightning", "hydra-core", "wandb", "lm_eval", "rouge-score",
             "tokenizers", "datasets")


def package_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_revision() -> dict:
    repo = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True,
                               timeout=5)
        if rev.returncode == 0:
            return {"revision": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    return {"revision": None, "dirty": None}  # an installed wheel has no repository


def hardware() -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def results_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / RESULTS_FILE


def supersede_results(run_dir: str | Path) -> Path:
    """Move a finished results.json aside (results.superseded-<n>.json, never overwriting one) and return it."""
    old = results_path(run_dir)
    n = 1
    while (target := old.with_name(f"results.superseded-{n}.json")).exists():
        n += 1
    os.replace(old, target)
    return target


def read_results(run_dir: str | Path) -> RunRecord | None:
    """The run's record if it finished, else None (missing, partial, unreadable or not a record)."""
    from kdbench.tracking.record import RecordError, RunRecord

    path = results_path(run_dir)
    try:
        data = json.loads(path.read_text())
        record = RunRecord.from_dict(data, str(path))
    except (OSError, json.JSONDecodeError, RecordError):
        return None
    return record if record.status == "complete" else None


# Keys that never change what a run computes: where files go, threads, progress display, logging.
_VOLATILE = ("paths.", "logger.", "trainer.num_threads", "trainer.progress", "trainer.resume_every_minutes", "force",
             "sweep_name")


def config_changes(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between a finished run's config and the current one. Keys present on
    one side only are not counted: a newer kdbench adds fields with defaults that keep old behaviour."""
    def flat(d, prefix=""):
        out = {}
        for k, v in (d or {}).items():
            if isinstance(v, dict) and v:
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    a, b = flat(old), flat(new)
    return sorted(k for k in a.keys() & b.keys()
                  if a[k] != b[k] and not any(k == v or k.startswith(v) for v in _VOLATILE))


def finished_run(run_dir: str | Path, resolved: dict, force: bool, log) -> RunRecord | None:
    """The record of a run already finished in `run_dir` with the same config (to skip it), else None; a record
    made with a different config is moved aside (kept as results.superseded-<n>.json) and the run is redone."""
    done = read_results(run_dir)
    if done is None or force:
        return None
    changed = config_changes(done.config, resolved)
    if not changed:
        log.info("%s: finished earlier (results.json exists); skipping. Pass force=true to redo it.", run_dir)
        return done
    superseded = supersede_results(run_dir)
    log.warning("%s: results.json was made with a different config (%s); redoing the run (the old record "
                "is kept as %s)", run_dir, ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else ""),
                superseded.name)
    return None
