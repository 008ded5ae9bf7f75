"""`kdbench-eval`: evaluate one model with the evaluation suite, the teacher as the reference row.

    kdbench-eval model.path=<HF id | local folder | kdbench run folder>     # eval=full by default
    kdbench-eval model=<student option>                                     # built from its config (untrained)

Same configs as `kdbench` (conf/evaluate.yaml extends train.yaml), same records: results.json (resolved config,
metrics, teacher_metrics, versions, hardware, wall time, artifacts, the suite's details), figures next to it and a
W&B run. `model` on the command line is the `student` group under another name (see `model_aliases`).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from kdbench.paths import conf_dir

if TYPE_CHECKING:
    from kdbench.tracking.record import RunRecord

log = logging.getLogger("kdbench")

_MODEL = re.compile(r"^([+~]{0,2})model(?=[.=]|$)")


def model_aliases(argv: list[str]) -> list[str]:
    """`model=X`, `model.key=V` (also with + or ~) -> the `student` group's `student=X`, `student.key=V`. A
    `model.path` without `model.source` also sets student.source=pretrained: a path is always loaded, not built."""
    out = [argv[0], *(_quote_path(_MODEL.sub(r"\1student", a)) for a in argv[1:])]
    keys = [a.lstrip("+~").split("=", 1)[0] for a in out[1:]]
    if "student.path" in keys and "student.source" not in keys:
        out.append("student.source=pretrained")
    return out


def _quote_path(arg: str) -> str:
    """A sweep cell's folder is named by its overrides (`.../method=kd,student=tiny`): '=' and ',' in a path
    break Hydra's override grammar, so an unquoted student.path value is quoted for the user."""
    key, sep, value = arg.partition("=")
    special = any(c in value for c in "=,[]{}()' ")
    if key.lstrip("+") != "student.path" or not sep or value[:1] in ("'", '"') or not special:
        return arg
    return f"{key}='" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def load_evaluated(cfg, cache_dir: Path, teacher_tokenizer=None):
    """(Loaded, the kdbench run record or None): the model `student.path` names (a kdbench run folder's saved
    student, a save_pretrained folder or a hub id), else the student option built from its config."""
    from kdbench.models.loading import Loaded, count_parameters, load_pretrained, resolve_model_path
    from kdbench.stages.models import load_student

    s = cfg.student
    if s.path:
        target, record = resolve_model_path(s.path)
        model, tok = load_pretrained(target, "model.path", s.dtype, s.tokenizer)
        name = (record or {}).get("labels", {}).get("student") or Path(s.path.rstrip("/")).name or s.path
        return Loaded(model, tok, name, count_parameters(model), model.kdbench_fingerprint), record
    log.warning("model=%s is built from its config with random init (untrained); pass model.path=<kdbench run "
                "folder | model folder | HF id> to evaluate a trained model", s.name)
    return load_student(cfg, cache_dir, teacher_tokenizer), None


def run_eval(cfg: DictConfig) -> RunRecord:
    from kdbench.runtime import begin_run
    from kdbench.training.interrupt import handle_signals

    t_start = time.perf_counter()
    with handle_signals(), begin_run(cfg) as start:
        return start.done if start.done is not None else _evaluate(cfg, start, t_start)


def _evaluate(cfg: DictConfig, start, t_start: float) -> RunRecord:
    from kdbench.report.run_table import print_run_table
    from kdbench.stages.models import load_teacher
    from kdbench.tracking.record import RunLabels, build_record

    run_dir, cell, resolved, cache_dir = start.run_dir, start.cell, start.resolved, start.cache_dir
    e = cfg.eval
    needs_teacher = e.teacher or e.agreement.enabled or e.exposure_bias.enabled
    teacher = load_teacher(cfg, cache_dir, cfg.trainer.progress) if needs_teacher else None
    student, origin = load_evaluated(cfg, cache_dir, teacher.tokenizer if teacher else None)
    origin_labels = (origin or {}).get("labels", {})
    method = origin_labels.get("method") or ("pretrained" if cfg.student.path else "untrained")
    log.info("evaluating %s (%s params, %s) against teacher %s with eval=%s", student.name,
             f"{student.parameters:,}", method, teacher.name if teacher else "-", e.name)

    from kdbench.evaluation.suite import Model, run_suite
    from kdbench.runtime import publish, run_logger

    tags = ["kdbench-eval", f"method={method}", f"student={student.name}",
            f"teacher={teacher.name if teacher else 'none'}"]
    with run_logger(cfg, start, run_name=f"eval/{cell}", group=f"eval/{cfg.sweep_name}", tags=tags) as logger:
        t_eval = time.perf_counter()
        reference = Model(teacher.model, teacher.tokenizer, teacher.name, teacher.fingerprint) if teacher else None
        suite = run_suite(Model(student.model, student.tokenizer, student.name), reference, e, cfg.data.embedded,
                          cache_dir=str(cache_dir), out_dir=run_dir, show_progress=cfg.trainer.progress,
                          response_length=cfg.data.max_response_length)
        eval_seconds = time.perf_counter() - t_eval
        record = build_record(
            labels=RunLabels(method=method, student=student.name, teacher=teacher.name if teacher else None,
                             seed=origin_labels.get("seed", cfg.seed), student_params=student.parameters,
                             teacher_params=teacher.parameters if teacher else None, sweep=f"eval/{cfg.sweep_name}",
                             cell=cell, evaluated=cfg.student.path or f"student={cfg.student.name}"),
            metrics=suite.metrics, teacher_metrics=suite.teacher_metrics, train=None,
            cost={"generated_tokens": suite.new_tokens, "eval_seconds": round(eval_seconds, 1)},
            samples=suite.samples, config=resolved, seed=cfg.seed, wall_time_s=time.perf_counter() - t_start,
            artifacts={"run_dir": str(run_dir), "wandb_dir": str(run_dir / "wandb") if logger else None,
                       "model": cfg.student.path, "origin_run": (origin or {}).get("artifacts", {}).get("run_dir"),
                       "plots": suite.plots},
            evaluation=suite.details,
        )
        publish(logger, run_dir, suite, record)
    print_run_table(record)
    return record


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="evaluate")
def _hydra_eval(cfg: DictConfig) -> None:
    from kdbench.runtime import shown_as_message, stop_on_signal
    from kdbench.training.interrupt import RunInterrupted

    try:
        run_eval(cfg)
    except shown_as_message() as e:
        raise SystemExit(f"kdbench-eval: error: {e}") from None
    except RunInterrupted as e:
        raise stop_on_signal(e, "kdbench-eval") from None


def cli() -> None:
    from kdbench.runtime import setup

    setup()
    sys.argv = model_aliases(sys.argv)
    _hydra_eval()


if __name__ == "__main__":
    cli()
