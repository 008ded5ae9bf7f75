"""`kdbench`: compose the config -> load teacher and student -> distill -> evaluate -> record.

This file orchestrates and computes nothing itself; follow a run down the stages it calls:
models/ (loading, the teacher stage), data/, methods/, evaluation/, tracking/, report/.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from kdbench.paths import conf_dir, sweeps_dir
from kdbench.schema import register_configs

log = logging.getLogger("kdbench")


def _threads(cfg) -> int:
    """One torch thread per worker in a parallel sweep (small models: two 1-thread processes beat one 2-thread
    process by a wide margin on 2 cores), all cores for a single run."""
    if cfg.trainer.num_threads:
        return cfg.trainer.num_threads
    hc = HydraConfig.get()
    cores = os.cpu_count() or 1
    if hc.mode == RunMode.MULTIRUN:
        n_jobs = OmegaConf.select(hc, "launcher.n_jobs", default=1) or 1
        return max(1, cores // max(1, n_jobs if n_jobs > 0 else cores))
    return cores


@dataclass
class RunStart:
    run_dir: Path
    cell: str
    resolved: dict
    cache_dir: Path
    done: dict | None  # the finished run's record when this cell is already complete (printed, not redone)


LOCK_FILE = "run.lock"
INTERRUPTED_FILE = "interrupted.json"
FAILED_FILE = "failed.txt"


class RunFolderBusy(RuntimeError):
    """Another process holds this run folder's lock (the same run started twice)."""


@contextlib.contextmanager
def begin_run(cfg: DictConfig) -> Iterator[RunStart]:
    """What every run (kdbench, kdbench-eval) does first: find its cell's folder and lock it (two identical runs
    never write one folder), skip the cell if its results.json is complete for the same config, else validate the
    config, set threads and seed. The lock is held until the run ends."""
    import torch
    from filelock import FileLock, Timeout

    from kdbench.report.run_table import print_run_table
    from kdbench.schema import validate
    from kdbench.tracking.results import finished_run

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # fcntl-based: released by the kernel when the process dies, so a killed run leaves no stale lock.
    lock = FileLock(str(run_dir / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunFolderBusy(f"{run_dir} is in use by another kdbench process running the same configuration "
                            f"(it holds {run_dir / LOCK_FILE}); wait for it to finish (then this command finds "
                            f"its result) or stop it (then this command continues its training)") from None
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        start = RunStart(run_dir, hc.job.override_dirname or "default", resolved,
                         Path(os.path.expanduser(cfg.paths.cache_dir)),
                         finished_run(run_dir, resolved, cfg.force, log))
        if start.done is not None:
            print_run_table(start.done)
        else:
            validate(cfg)
            torch.set_num_threads(_threads(cfg))
            torch.manual_seed(cfg.seed)
        yield start
    finally:
        lock.release()


def record_outcome(run_dir: Path, interrupted: BaseException | None = None) -> None:
    """interrupted.json says a run stopped on a signal (and how to continue); a finished run removes it and any
    failed.txt of an earlier attempt."""
    from kdbench.tracking.atomic import atomic_write_json

    path = run_dir / INTERRUPTED_FILE
    if interrupted is None:
        path.unlink(missing_ok=True)
        (run_dir / FAILED_FILE).unlink(missing_ok=True)
        return
    atomic_write_json(path, {"status": "interrupted", "signal": interrupted.signal_name,
                             "step": interrupted.step, "max_steps": interrupted.max_steps,
                             "resume_file": interrupted.resume_file,
                             "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                             "message": f"{interrupted.describe()}; run the same command again to continue"})


def run(cfg: DictConfig) -> dict:
    """One distillation run in its locked folder; SIGTERM and SIGINT stop it as RunInterrupted (saved to continue
    from, recorded in interrupted.json)."""
    from kdbench.methods.interrupt import RunInterrupted, handle_signals

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


def _distill(cfg: DictConfig, start: RunStart, t_start: float) -> dict:
    from kdbench.methods.resume import run_resume_file
    from kdbench.models.compat import check_distillable
    from kdbench.models.resolve import load_student, load_teacher
    from kdbench.report.run_table import print_run_table
    from kdbench.tracking.results import build_record, write_results

    run_dir, cell, resolved, cache_dir = start.run_dir, start.cell, start.resolved, start.cache_dir
    method = cfg.method
    from kdbench.methods.build import SAMPLING_KINDS

    # White-box: the method reads the teacher's distributions (every method that samples from the student does).
    whitebox = ((method.divergence is not None and method.alpha > 0) or method.hidden.weight > 0
                or method.kind in SAMPLING_KINDS)

    seqkd = method.kind == "seqkd"
    needs_teacher = whitebox or seqkd or cfg.eval.teacher
    teacher = load_teacher(cfg, cache_dir, cfg.trainer.progress) if needs_teacher else None
    student = load_student(cfg, cache_dir, teacher.tokenizer if teacher else None)
    vocab_size = len(student.tokenizer)
    if whitebox:
        vocab_size = check_distillable(teacher.tokenizer, student.tokenizer, whitebox, method.name)
    log.info("teacher %s (%s params), student %s (%s params), method %s",
             teacher.name if teacher else "-", f"{teacher.parameters:,}" if teacher else "-",
             student.name, f"{student.parameters:,}", method.name)

    # Imported after the models load: a missing model or a bad key fails before Lightning's import cost.
    from kdbench.data.datamodule import InstructionDataModule
    from kdbench.data.sources import load_rows
    from kdbench.evaluation.suite import Model, run_suite
    from kdbench.methods.build import make_module, sampling_cost
    from kdbench.methods.fit import fit, make_trainer
    from kdbench.methods.selection import SelectCheckpoint
    from kdbench.models.loading import save_model_folder
    from kdbench.models.surgery import check_head_path
    from kdbench.tracking.loggers import finish, log_final, log_images, make_logger, run_wandb_id

    # Known before the logger starts: a run that continues its training continues its W&B run (same id).
    resume_path, training_cfg = run_resume_file(run_dir, resolved)
    logger = make_logger(cfg.logger, run_dir, run_name=f"{cfg.sweep_name}/{cell}", group=cfg.sweep_name,
                         config=resolved, tags=[f"method={method.name}", f"student={student.name}",
                                                f"teacher={teacher.name if teacher else 'none'}"],
                         run_id=run_wandb_id(run_dir, resuming=resume_path.is_file()))
    failed = True
    try:
        # The budget is trainer.max_steps optimizer steps in all; a warm start takes its share first.
        steps, warm = cfg.trainer.max_steps, None
        if method.warm_start:
            from kdbench.stages.warm_start import warm_started

            student.model, warm = warm_started(cfg, student, cache_dir, cfg.trainer.progress)
            steps -= warm["steps"]
        train_rows = load_rows(cfg.data.train, cfg.data.embedded)
        val_rows = load_rows(cfg.data.validation, cfg.data.embedded)
        seqkd_data = None
        if seqkd:  # the student learns the teacher's answers instead of the ground truth (validation keeps it)
            from kdbench.methods.seqkd import prompts_needed, teacher_answers

            n = prompts_needed(method.seqkd, steps, cfg.trainer.batch_size, len(train_rows))
            seqkd_data = teacher_answers(train_rows[:n], teacher, method.seqkd, cfg.data.max_prompt_length,
                                         str(cache_dir), cfg.trainer.progress)
            train_rows = seqkd_data.rows
        dm = InstructionDataModule(train_rows, val_rows, student.tokenizer, cfg.trainer.batch_size, cfg.seed,
                                   cfg.data.max_prompt_length, cfg.data.max_response_length)
        module = make_module(method, student, teacher, cfg.trainer.optim, steps, vocab_size, cfg.seed, whitebox,
                             cfg.trainer.micro_batch_size)
        probe = dm.probe_batch()
        check_head_path(student.model, probe)
        if whitebox:
            check_head_path(teacher.model, probe)
        t_train = time.perf_counter()
        select = SelectCheckpoint(val_rows[:cfg.trainer.select_rows], student.tokenizer, cfg.trainer.select,
                                  cfg.trainer.select_max_new_tokens, cfg.data.max_prompt_length)
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
                          show_progress=cfg.trainer.progress)
        eval_seconds = time.perf_counter() - t_eval

        log_final(logger, {**{f"eval/{k}": v for k, v in suite.metrics.items()},
                           **{f"teacher/{k}": v for k, v in suite.teacher_metrics.items()}}, suite.samples)
        log_images(logger, suite.plots)
        record = build_record(
            labels={"method": method.name, "student": student.name, "teacher": teacher.name if teacher else None,
                    "seed": cfg.seed, "student_params": student.parameters,
                    "teacher_params": teacher.parameters if teacher else None, "sweep": cfg.sweep_name,
                    "cell": cell, "start": f"sft-warm-start-{warm['steps']}" if warm else "scratch"},
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
                  **(seqkd_data.cost() if seqkd_data else {}),
                  **sampling_cost(module)},
            samples=suite.samples, config=resolved, seed=cfg.seed,
            wall_time_s=time.perf_counter() - t_start + module.seconds_before,
            artifacts={"run_dir": str(run_dir), "wandb_dir": str(run_dir / "wandb") if logger else None,
                       "student_dir": str(student_dir) if student_dir else None, "plots": suite.plots},
            evaluation=suite.details,
        )
        write_results(run_dir, record)
        resume_path.unlink(missing_ok=True)  # the result is written: nothing left to resume
        failed = False
    finally:
        # In a finally: one failed cell must not leave a W&B run open and sink the rest of a multirun.
        finish(logger, failed)
    print_run_table(record)
    return record


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the input's fault: shown as their message alone (it names the key, file or line); a rerun
    of the same command fails the same way."""
    from kdbench.data.sources import DataError
    from kdbench.models.compat import IncompatibleModelsError
    from kdbench.models.loading import WeightsNotFoundError
    from kdbench.schema import ConfigError

    return ConfigError, DataError, IncompatibleModelsError, WeightsNotFoundError, FileNotFoundError


def stop_on_signal(e, program: str = "kdbench") -> SystemExit:
    """One line on stderr, then the shell's exit status for the signal (143 SIGTERM, 130 SIGINT)."""
    print(f"{program}: {e.describe()}; run the same command again to continue", file=sys.stderr, flush=True)
    return SystemExit(e.exit_code)


def failure_summary(e: BaseException) -> str:
    """The last line of a failed cell's failed.txt: what failed and whether rerunning the sweep can help."""
    if isinstance(e, _user_errors()):
        return f"{type(e).__name__}: {e} [a rerun fails the same way: fix the config or data it names]"
    if isinstance(e, RunFolderBusy):
        return f"{type(e).__name__}: {e} [a rerun helps once the other process has finished]"
    return f"{type(e).__name__}: {e} [not an input error: a rerun may pass; see the traceback above]"


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    from kdbench.evaluation.judge import JudgeFailedError
    from kdbench.methods.interrupt import RunInterrupted

    if HydraConfig.get().mode != RunMode.MULTIRUN:
        try:
            run(cfg)
        except (*_user_errors(), RunFolderBusy, JudgeFailedError) as e:
            # SystemExit passes through Hydra's handler: the message, not a traceback, and exit status 1.
            raise SystemExit(f"kdbench: error: {e}") from None
        except RunInterrupted as e:
            raise stop_on_signal(e) from None
        return
    # In a sweep one failed cell must not sink the others: record the error in the cell's folder (the report
    # lists it and the sweep exits non-zero at its end) and let the launcher go on. A signal stops the worker.
    from kdbench.methods.interrupt import exit_with_parent
    from kdbench.tracking.atomic import atomic_write_text

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
    _setup()
    sys.argv = with_sweeps_on_searchpath(sys.argv)
    _hydra_main()


def teacher_only(cfg: DictConfig) -> None:
    """`kdbench-teacher`: run the teacher stage alone (train or find the cached teacher) and print its folder."""
    import torch

    from kdbench.schema import validate
    from kdbench.stages.teacher import find_teacher, teacher_stage
    from kdbench.stages.tokenizer import embedded_tokenizer

    validate(cfg)
    if cfg.teacher.source != "scratch":
        raise SystemExit(f"teacher={cfg.teacher.name} is pretrained: the teacher stage only fine-tunes teachers "
                         "built from a config (teacher.source=scratch)")
    torch.set_num_threads(_threads(cfg))
    cache_dir = Path(os.path.expanduser(cfg.paths.cache_dir))
    tok = embedded_tokenizer(cfg.data.embedded, cache_dir)
    _, key = teacher_stage(cfg, tok, cache_dir, cfg.trainer.progress)
    print(find_teacher(key, cache_dir))


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def _hydra_teacher(cfg: DictConfig) -> None:
    from kdbench.methods.interrupt import RunInterrupted, handle_signals

    try:
        with handle_signals():
            teacher_only(cfg)
    except RunInterrupted as e:
        raise stop_on_signal(e, "kdbench-teacher") from None


def _setup() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    register_configs()


def teacher_cli() -> None:
    _setup()
    _hydra_teacher()


if __name__ == "__main__":
    cli()
