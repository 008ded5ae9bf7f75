"""What both run CLIs (`kdbench`, `kdbench-eval`) share: process setup, a run folder's lock and skip rule, the config
checks, how a run's outcome is recorded, and how an error or a signal ends the process.

Imported by the CLIs only; it imports nothing above it.
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

from omegaconf import DictConfig, OmegaConf

from kdbench.tracking.results import FAILED_FILE, INTERRUPTED_FILE

log = logging.getLogger("kdbench")

LOCK_FILE = "run.lock"


def setup() -> None:
    """Process-wide defaults of every CLI: offline W&B unless asked, quiet hub and tokenizers, the typed schema."""
    from kdbench.schema import register_configs

    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    register_configs()


def threads(cfg) -> int:
    """One torch thread per worker in a parallel sweep (small models: two 1-thread processes beat one 2-thread
    process by a wide margin on 2 cores), all cores for a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if cfg.trainer.num_threads:
        return cfg.trainer.num_threads
    hc = HydraConfig.get()
    cores = os.cpu_count() or 1
    if hc.mode == RunMode.MULTIRUN:
        n_jobs = OmegaConf.select(hc, "launcher.n_jobs", default=1) or 1
        return max(1, cores // max(1, n_jobs if n_jobs > 0 else cores))
    return cores


def validate(cfg) -> None:
    """Every check a composed config gets before a run starts: the schema's range checks, then the method's own
    (its kind's class in kdbench.methods validates its config block)."""
    from kdbench.methods.registry import method_of
    from kdbench.schema import validate as validate_schema

    validate_schema(cfg)
    method_of(cfg.method).validate()


@dataclass
class RunStart:
    run_dir: Path
    cell: str
    resolved: dict
    cache_dir: Path
    done: dict | None  # the finished run's record when this cell is already complete (printed, not redone)


class RunFolderBusy(RuntimeError):
    """Another process holds this run folder's lock (the same run started twice)."""


@contextlib.contextmanager
def begin_run(cfg: DictConfig) -> Iterator[RunStart]:
    """What every run (kdbench, kdbench-eval) does first: find its cell's folder and lock it (two identical runs
    never write one folder), skip the cell if its results.json is complete for the same config, else validate the
    config, set threads and seed. The lock is held until the run ends."""
    import torch
    from filelock import FileLock, Timeout
    from hydra.core.hydra_config import HydraConfig

    from kdbench.report.run_table import print_run_table
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
        # enum_to_str: the record holds plain values (the schema's fixed-set fields are enums).
        resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        start = RunStart(run_dir, hc.job.override_dirname or "default", resolved,
                         Path(os.path.expanduser(cfg.paths.cache_dir)),
                         finished_run(run_dir, resolved, cfg.force, log))
        if start.done is not None:
            print_run_table(start.done)
        else:
            validate(cfg)
            torch.set_num_threads(threads(cfg))
            torch.manual_seed(cfg.seed)
        yield start
    finally:
        lock.release()


def record_outcome(run_dir: Path, interrupted: BaseException | None = None) -> None:
    """interrupted.json says a run stopped on a signal (and how to continue); a finished run removes it and any
    failed.txt of an earlier attempt."""
    from kdbench.storage.atomic import atomic_write_json

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


@contextlib.contextmanager
def run_logger(cfg, start: RunStart, *, run_name: str, group: str, tags: list[str], run_id: str | None = None):
    """The run's W&B logger (None with logger=none), finished however the run ends: one failed cell must not leave
    a W&B run open and sink the rest of a multirun."""
    from kdbench.tracking.loggers import finish, make_logger

    logger = make_logger(cfg.logger, start.run_dir, run_name=run_name, group=group, config=start.resolved,
                         tags=tags, run_id=run_id)
    failed = True
    try:
        yield logger
        failed = False
    finally:
        finish(logger, failed)


def publish(logger, run_dir: Path, suite, record) -> None:
    """How both CLIs end a run: the suite's final metrics, samples and figures to the logger, then results.json
    (atomic; its `status: complete` is what makes the run count as done)."""
    from kdbench.tracking.loggers import log_final, log_images

    log_final(logger, {**{f"eval/{k}": v for k, v in suite.metrics.items()},
                       **{f"teacher/{k}": v for k, v in suite.teacher_metrics.items()}}, suite.samples)
    log_images(logger, suite.plots)
    record.save(run_dir)


def user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the input's fault: shown as their message alone (it names the key, file or line); a rerun
    of the same command fails the same way."""
    from kdbench.data.sources import DataError
    from kdbench.models.compat import IncompatibleModelsError
    from kdbench.models.loading import WeightsNotFoundError
    from kdbench.schema import ConfigError

    return ConfigError, DataError, IncompatibleModelsError, WeightsNotFoundError, FileNotFoundError


def shown_as_message() -> tuple[type[Exception], ...]:
    """Errors a single run prints as one line (`<program>: error: <message>`, exit status 1), not a traceback."""
    from kdbench.evaluation.judge import JudgeFailedError

    return (*user_errors(), RunFolderBusy, JudgeFailedError)


def stop_on_signal(e, program: str = "kdbench") -> SystemExit:
    """One line on stderr, then the shell's exit status for the signal (143 SIGTERM, 130 SIGINT)."""
    print(f"{program}: {e.describe()}; run the same command again to continue", file=sys.stderr, flush=True)
    return SystemExit(e.exit_code)


def failure_summary(e: BaseException) -> str:
    """The last line of a failed cell's failed.txt: what failed and whether rerunning the sweep can help."""
    if isinstance(e, user_errors()):
        return f"{type(e).__name__}: {e} [a rerun fails the same way: fix the config or data it names]"
    if isinstance(e, RunFolderBusy):
        return f"{type(e).__name__}: {e} [a rerun helps once the other process has finished]"
    return f"{type(e).__name__}: {e} [not an input error: a rerun may pass; see the traceback above]"
