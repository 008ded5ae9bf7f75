"""`kdbench`: compose the config -> load teacher and student -> distill -> evaluate -> record.

This file orchestrates and computes nothing itself; follow a run down the stages it calls:
models/ (loading, the teacher stage), data/, methods/, evaluation/, tracking/, report/.
"""

from __future__ import annotations

import logging
import os
import sys
import time
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


def begin_run(cfg: DictConfig) -> RunStart:
    """What every run (kdbench, kdbench-eval) does first: find its cell's folder, skip the cell if its results.json
    is complete for the same config, else validate the config, set threads and seed."""
    import torch

    from kdbench.report.run_table import print_run_table
    from kdbench.schema import validate
    from kdbench.tracking.results import finished_run

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    start = RunStart(run_dir, hc.job.override_dirname or "default", resolved,
                     Path(os.path.expanduser(cfg.paths.cache_dir)), finished_run(run_dir, resolved, cfg.force, log))
    if start.done is not None:
        print_run_table(start.done)
        return start
    validate(cfg)
    torch.set_num_threads(_threads(cfg))
    torch.manual_seed(cfg.seed)
    return start


def run(cfg: DictConfig) -> dict:
    from kdbench.models.compat import check_distillable
    from kdbench.models.resolve import load_student, load_teacher
    from kdbench.report.run_table import print_run_table
    from kdbench.tracking.results import build_record, write_results

    t_start = time.perf_counter()
    start = begin_run(cfg)
    if start.done is not None:
        return start.done
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
    from kdbench.methods.fit import fit, make_trainer
    from kdbench.methods.build import make_module, sampling_cost
    from kdbench.methods.offline import check_head_path
    from kdbench.methods.resume import run_resume_file
    from kdbench.methods.selection import SelectCheckpoint
    from kdbench.models.loading import save_model_folder
    from kdbench.tracking.loggers import finish, log_final, log_images, make_logger

    logger = make_logger(cfg.logger, run_dir, run_name=f"{cfg.sweep_name}/{cell}", group=cfg.sweep_name,
                         config=resolved, tags=[f"method={method.name}", f"student={student.name}",
                                                f"teacher={teacher.name if teacher else 'none'}"])
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
        resume_path, training_cfg = run_resume_file(run_dir, resolved)
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
    finally:
        # In a finally: one failed cell must not leave a W&B run open and sink the rest of a multirun.
        finish(logger)
    print_run_table(record)
    return record


FAILED_FILE = "failed.txt"


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the input's fault: shown as their message alone (it names the key, file or line)."""
    from kdbench.data.sources import DataError
    from kdbench.models.compat import IncompatibleModelsError
    from kdbench.models.loading import WeightsNotFoundError
    from kdbench.schema import ConfigError

    return ConfigError, DataError, IncompatibleModelsError, WeightsNotFoundError, FileNotFoundError


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        try:
            run(cfg)
        except _user_errors() as e:
            # SystemExit passes through Hydra's handler: the message, not a traceback, and exit status 1.
            raise SystemExit(f"kdbench: error: {e}") from None
        return
    # In a sweep one failed cell must not sink the others: record the error in the cell's folder (the report
    # lists it and the sweep exits non-zero at its end) and let the launcher go on.
    from kdbench.tracking.atomic import atomic_write_text

    failed = Path(HydraConfig.get().runtime.output_dir) / FAILED_FILE
    try:
        run(cfg)
        failed.unlink(missing_ok=True)
    except Exception:  # noqa: BLE001 - reported in the cell's folder and at the sweep's end
        import traceback

        log.exception("cell %s failed", HydraConfig.get().job.override_dirname)
        atomic_write_text(failed, traceback.format_exc())


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
    teacher_only(cfg)


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
