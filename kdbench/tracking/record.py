"""The record of a run: what results.json holds, one type for all three CLIs. `kdbench` and `kdbench-eval` build
and save it (`build_record`, `RunRecord.save`); `kdbench-report` and a rerun's skip rule read it back
(`RunRecord.from_dict`), so a field is named in one place and a malformed file fails naming the file and the key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from kdbench.storage.atomic import atomic_write_json
from kdbench.tracking.results import git_revision, hardware, package_versions, results_path

SCHEMA_VERSION = 1


class RecordError(ValueError):
    """A results.json that is not a run record; the message names the file and the key."""


@dataclass
class RunLabels:
    """Who ran: the table's row (method, student; `start` tells a warm-started run apart) and its seed."""
    method: str
    student: str
    teacher: str | None = None
    seed: Any = None
    student_params: int | None = None
    teacher_params: int | None = None
    sweep: str | None = None
    cell: str | None = None
    # kdbench: `scratch` or `sft-warm-start-<steps>`; absent for kdbench-eval.
    start: str | None = None
    # kdbench-eval: the model evaluated (a path or `student=<option>`); absent for kdbench.
    evaluated: str | None = None

    def to_dict(self) -> dict:
        # The two origin-specific labels appear only on the runs they describe (the file's shape is unchanged).
        return {k: v for k, v in asdict(self).items() if v is not None or k not in ("start", "evaluated")}


@dataclass
class RunRecord:
    labels: RunLabels
    metrics: dict[str, Any]
    teacher_metrics: dict[str, Any]
    # Training facts (steps, warm start, selection, tokens, seconds, final losses); None for kdbench-eval.
    train: dict | None
    cost: dict
    samples: list
    config: dict
    seed: Any
    wall_time_s: float
    artifacts: dict
    # The evaluation suite's details (curves, reliability diagrams, length buckets, the judge, what was skipped).
    eval: dict | None = None
    versions: dict = field(default_factory=dict)
    git: dict = field(default_factory=dict)
    hardware: dict = field(default_factory=dict)
    status: str = "complete"
    # Where the record was read from (never written): reports name the file of a run they warn about.
    path: str | None = None

    def to_dict(self) -> dict:
        out = {"schema_version": SCHEMA_VERSION, "status": self.status, "labels": self.labels.to_dict()}
        for name in ("metrics", "teacher_metrics", "train", "cost", "samples", "config", "seed", "versions", "git",
                     "hardware", "wall_time_s", "artifacts"):
            out[name] = getattr(self, name)
        if self.eval is not None:
            out["eval"] = self.eval
        return out

    def save(self, run_dir: str | Path) -> Path:
        return atomic_write_json(results_path(run_dir), self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, where: str = "<record>") -> RunRecord:
        """A record read from JSON; extra keys (a newer kdbench's) are ignored, a missing required one fails."""
        if not isinstance(data, dict):
            raise RecordError(f"{where}: expected a JSON object, got {type(data).__name__}")
        labels = data.get("labels")
        if not isinstance(labels, dict) or "method" not in labels or "student" not in labels:
            raise RecordError(f"{where}: labels.method / labels.student missing")
        known = {f.name for f in fields(RunLabels)}
        values = {k: data.get(k) for k in ("metrics", "teacher_metrics", "cost", "artifacts", "config")}
        return cls(labels=RunLabels(**{k: v for k, v in labels.items() if k in known}),
                   metrics=_mapping(values["metrics"]), teacher_metrics=_mapping(values["teacher_metrics"]),
                   train=data.get("train"), cost=_mapping(values["cost"]), samples=data.get("samples") or [],
                   config=_mapping(values["config"]), seed=data.get("seed"),
                   wall_time_s=data.get("wall_time_s") or 0.0, artifacts=_mapping(values["artifacts"]),
                   eval=data.get("eval") if isinstance(data.get("eval"), dict) else None,
                   versions=_mapping(data.get("versions")), git=_mapping(data.get("git")),
                   hardware=_mapping(data.get("hardware")), status=str(data.get("status")), path=where)


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def build_record(*, labels: RunLabels, metrics: dict, teacher_metrics: dict, train: dict | None, cost: dict,
                 samples: list, config: dict, seed: int, wall_time_s: float, artifacts: dict,
                 evaluation: dict | None = None) -> RunRecord:
    """A finished run's record; environment facts (versions, git, hardware) are collected here."""
    return RunRecord(labels=labels, metrics=metrics, teacher_metrics=teacher_metrics, train=train, cost=cost,
                     samples=samples, config=config, seed=seed, wall_time_s=round(wall_time_s, 1),
                     artifacts=artifacts, eval=evaluation, versions=package_versions(), git=git_revision(),
                     hardware=hardware())
