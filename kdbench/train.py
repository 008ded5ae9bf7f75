"""`kdbench`: compose the config -> load teacher and student -> distill -> evaluate -> record.

This file orchestrates and computes nothing itself; follow a run down the stages it calls: runtime (the run
folder, checks, outcome), stages/ (tokenizer, teacher, warm start), data/, methods/ (the method's class from its
registry), training/ (Trainer, resume, selection), evaluation/, tracking/, report/.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from kdbench.paths import conf_dir, sweeps_dir
from kdbench.runtime import (
    FAILED_FILE,
    RunStart,
    begin_run,
    failure_summary,
    publish,
    record_outcome,
    run_logger,
    setup,
    shown_as_message,
    stop_on_signal,
    threads,
)

if TYPE_CHECKING:
    from kdbench.tracking.record import RunRecord

log = logging.getLogger("kdbench")


def run(cfg: DictConfig) -> RunRecord:
    """One distillation run in its locked folder; SIGTERM and SIGINT stop it as RunInterrupted (saved to continue
    from, recorded in interrupted.json)."""
    from kdbench.training.interrupt import RunInterrupted, handle_signals

    t_start = time.perf_counter()
    with handle_signals(), begin_run(cfg) as start:
        if start.done is not None:
            return start.done
        try:
            record = _distill(cfg, start, t_start)
        except RunInterrupted as e:
            record_outcome(start.run_dir, e)
            raise
        record_outcome(start.run_dir)
        return record


def _distill(cfg: DictConfig, start: RunStart, t_start: float) -> RunRecord:
    from kdbench.methods.registry import TrainingContext, method_of
    from kdbench.models.compat import check_distillable
    from kdbench.report.run_table import print_run_table
    from kdbench.stages.models import load_student, load_teacher
    from kdbench.tracking.record import RunLabels, build_record
    from kdbench.training.resume import run_resume_file

    run_dir, cell, resolved, cache_dir = start.run_dir, start.cell, start.resolved, start.cache_dir
    method = method_of(cfg.method)
    whitebox = method.reads_teacher_logits
    # A scratch teacher is trained here, once (the teacher stage, cached by content) when the run needs it.
    teacher = load_teacher(cfg, cache_dir, cfg.trainer.progress) if method.needs_teacher or cfg.eval.teacher \
        else None
    student = load_student(cfg, cache_dir, teacher.tokenizer if teacher else None)
    vocab_size = len(student.tokenizer)
    if whitebox:
        vocab_size = check_distillable(teacher.tokenizer, student.tokenizer, whitebox, cfg.method.name)
    log.info("teacher %s (%s params), student %s (%s params), method %s",
             teacher.name if teacher else "-", f"{teacher.parameters:,}" if teacher else "-",
             student.name, f"{student.parameters:,}", cfg.method.name)

    # Imported after the models load: a missing model or a bad key fails before Lightning's import cost.
    from kdbench.data.datamodule import InstructionDataModule
    from kdbench.data.sources import load_rows
    from kdbench.evaluation.suite import Model, run_suite
    from kdbench.models.loading import save_model_folder
    from kdbench.models.surgery import check_head_path
    from kdbench.tracking.loggers import run_wandb_id
    from kdbench.training.fit import fit, make_trainer
    from kdbench.training.selection import SelectCheckpoint

    # Known before the logger starts: a run that continues its training continues its W&B run (same id).
    resume_path, training_cfg = run_resume_file(run_dir, resolved)
    tags = [f"method={cfg.method.name}", f"student={student.name}", f"teacher={teacher.name if teacher else 'none'}"]
    with run_logger(cfg, start, run_name=f"{cfg.sweep_name}/{cell}", group=cfg.sweep_name, tags=tags,
                    run_id=run_wandb_id(run_dir, resuming=resume_path.is_file())) as logger:
        # The budget is trainer.max_steps optimizer steps in all; a warm start takes its share first.
        steps, warm = cfg.trainer.max_steps, None
        if cfg.method.warm_start:
            from kdbench.stages.warm_start import warm_started

            student.model, warm = warm_started(cfg, student, cache_dir, cfg.trainer.progress)
            steps -= warm["steps"]
        context = TrainingContext(steps=steps, batch_size=cfg.trainer.batch_size,
                                  micro_batch_size=cfg.trainer.micro_batch_size, optim=cfg.trainer.optim,
                                  vocab_size=vocab_size, seed=cfg.seed, max_prompt_length=cfg.data.max_prompt_length,
                                  cache_dir=str(cache_dir), show_progress=cfg.trainer.progress)
        # The method's training rows: the data's, or its own (seqkd: the teacher's answers; validation keeps
        # the ground truth either way).
        train_rows, data_cost = method.training_rows(load_rows(cfg.data.train, cfg.data.embedded), teacher, context)
        val_rows = load_rows(cfg.data.validation, cfg.data.embedded)
        dm = InstructionDataModule(train_rows, val_rows, student.tokenizer, cfg.trainer.batch_size, cfg.seed,
                                   cfg.data.max_prompt_length, cfg.data.max_response_length)
        module = method.build(student, teacher, context)
        probe = dm.probe_batch()
        check_head_path(student.model, probe)
        if whitebox:
            check_head_path(teacher.model, probe)
        t_train = time.perf_counter()
        select = SelectCheckpoint(val_rows[:cfg.trainer.select_rows], student.tokenizer, cfg.trainer.select,
                                  cfg.trainer.select_max_new_tokens, cfg.data.max_prompt_length,
                                  **selection_candidates(cfg.trainer, warm))
        trainer = make_trainer(cfg.trainer, steps, logger, str(run_dir), callbacks=[select],
                               resume_path=resume_path, resume_config=training_cfg)
        fit(module, dm, trainer)
        train_seconds = time.perf_counter() - t_train

        # The trained student, loadable by kdbench-eval (model.path=<this run folder>) or any HF code.
        student_dir = save_model_folder(student.model, student.tokenizer, run_dir / "student") \
            if cfg.trainer.save_student else None

        t_eval = time.perf_counter()
        reference = Model(teacher.model, teacher.tokenizer, teacher.name, teacher.fingerprint) if teacher else None
        suite = run_suite(Model(student.model, student.tokenizer, student.name), reference, cfg.eval,
                          cfg.data.embedded, cache_dir=str(cache_dir), out_dir=run_dir,
                          show_progress=cfg.trainer.progress, response_length=cfg.data.max_response_length)
        eval_seconds = time.perf_counter() - t_eval

        record = build_record(
            labels=RunLabels(method=cfg.method.name, student=student.name, teacher=teacher.name if teacher else None,
                             seed=cfg.seed, student_params=student.parameters,
                             teacher_params=teacher.parameters if teacher else None, sweep=cfg.sweep_name,
                             cell=cell, start=f"sft-warm-start-{warm['steps']}" if warm else "scratch"),
            metrics=suite.metrics, teacher_metrics=suite.teacher_metrics,
            train={"steps": int(trainer.global_step) + (warm["steps"] if warm else 0),
                   "method_steps": int(trainer.global_step), "warm_start": warm, "selection": select.record(),
                   "tokens": module.tokens_seen,
                   "seconds": round(train_seconds + module.seconds_before, 1),
                   "resumed_after_seconds": round(module.seconds_before, 1) if module.resumed else None,
                   "final": {k: float(v) for k, v in trainer.callback_metrics.items()},
                   "truncated_prompts": dm.train_set.n_truncated},
            cost={"train_tokens": module.tokens_seen,
                  "teacher_forward_tokens": module.tokens_seen if whitebox else 0,
                  "generated_tokens": suite.new_tokens, "eval_seconds": round(eval_seconds, 1),
                  **data_cost, **method.cost(module)},
            samples=suite.samples, config=resolved, seed=cfg.seed,
            wall_time_s=time.perf_counter() - t_start + module.seconds_before,
            artifacts={"run_dir": str(run_dir), "wandb_dir": str(run_dir / "wandb") if logger else None,
                       "student_dir": str(student_dir) if student_dir else None, "plots": suite.plots},
            evaluation=suite.details,
        )
        publish(logger, run_dir, suite, record)
        resume_path.unlink(missing_ok=True)  # the result is written: nothing left to resume
    print_run_table(record)
    return record


def selection_candidates(trainer_cfg, warm: dict | None) -> dict:
    """Every method chooses among the same global steps: the validations from the warm-start length W on
    (trainer.select_after_warm_start), W itself being sft's validation there and a warm-started method's starting
    weights, which are scored only where sft validates at W too (W a multiple of trainer.val_every)."""
    from kdbench.stages.warm_start import warm_start_steps

    w = warm_start_steps(trainer_cfg)
    first = w if trainer_cfg.select_after_warm_start else 0
    offset = warm["steps"] if warm else 0
    if trainer_cfg.select_after_warm_start and w % trainer_cfg.val_every:
        log.warning("trainer.val_every=%d does not divide the warm-start length %d: warm-started and other methods "
                    "validate at different steps, so their selection candidates differ", trainer_cfg.val_every, w)
    return {"step_offset": offset, "first_candidate": first,
            "score_start": offset > 0 and offset == first and w % trainer_cfg.val_every == 0}


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    from kdbench.training.interrupt import RunInterrupted

    if HydraConfig.get().mode != RunMode.MULTIRUN:
        try:
            run(cfg)
        except shown_as_message() as e:
            # SystemExit passes through Hydra's handler: the message, not a traceback, and exit status 1.
            raise SystemExit(f"kdbench: error: {e}") from None
        except RunInterrupted as e:
            raise stop_on_signal(e) from None
        return
    # In a sweep one failed cell must not sink the others: record the error in the cell's folder (the report
    # lists it and the sweep exits non-zero at its end) and let the launcher go on. A signal stops the worker.
    from kdbench.storage.atomic import atomic_write_text
    from kdbench.training.interrupt import exit_with_parent

    exit_with_parent()  # a killed sweep (even kill -9) leaves no worker running on
    failed = Path(HydraConfig.get().runtime.output_dir) / FAILED_FILE
    try:
        run(cfg)
    except RunInterrupted as e:
        raise stop_on_signal(e) from None
    except Exception as e:  # noqa: BLE001 - reported in the cell's folder and at the sweep's end
        import traceback

        log.error("cell %s failed: %s", HydraConfig.get().job.override_dirname, failure_summary(e))
        atomic_write_text(failed, traceback.format_exc() + failure_summary(e) + "\n")


def with_sweeps_on_searchpath(argv: list[str]) -> list[str]:
    """Make `--config-name <sweep>` find the files in sweeps/ from any folder: they are primary configs, and
    Hydra looks for a primary config in --config-dir (a hydra.searchpath override is consulted too late)."""
    if any(a == "--config-dir" or a.startswith("--config-dir=") or a == "-cd" for a in argv):
        return argv
    return [argv[0], "--config-dir", str(sweeps_dir()), *argv[1:]]


def cli() -> None:
    setup()
    sys.argv = with_sweeps_on_searchpath(sys.argv)
    _hydra_main()


def teacher_only(cfg: DictConfig) -> None:
    """`kdbench-teacher`: run the teacher stage alone (train or find the cached teacher) and print its folder."""
    import torch

    from kdbench.runtime import validate
    from kdbench.stages.teacher import find_teacher, teacher_stage
    from kdbench.stages.tokenizer import embedded_tokenizer

    validate(cfg)
    if cfg.teacher.source != "scratch":
        raise SystemExit(f"teacher={cfg.teacher.name} is pretrained: the teacher stage only fine-tunes teachers "
                         "built from a config (teacher.source=scratch)")
    torch.set_num_threads(threads(cfg))
    cache_dir = Path(os.path.expanduser(cfg.paths.cache_dir))
    tok = embedded_tokenizer(cfg.data.embedded, cache_dir)
    _, key = teacher_stage(cfg, tok, cache_dir, cfg.trainer.progress)
    print(find_teacher(key, cache_dir))


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def _hydra_teacher(cfg: DictConfig) -> None:
    from kdbench.training.interrupt import RunInterrupted, handle_signals

    try:
        with handle_signals():
            teacher_only(cfg)
    except RunInterrupted as e:
        raise stop_on_signal(e, "kdbench-teacher") from None


def teacher_cli() -> None:
    setup()
    _hydra_teacher()


if __name__ == "__main__":
    cli()
