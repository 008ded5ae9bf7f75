"""Resuming an interrupted training where it stopped, not from step 0.

Every `trainer.resume_every_minutes` of training, ResumeCheckpoint writes the whole training state to one file
(temp file + rename, so a kill mid-write leaves the previous one intact): the student's weights, the optimizer and
the LR schedule, the step, the data position (InstructionDataModule.state_dict), the method's own state (the
DistiLLM replay buffer and threshold, MiniLLM's current rollout, GKD's coin; OfflineDistillation.RESUME_ATTRS),
the selection's best weights so far, and the RNG states. A run that starts and finds the file for its own
configuration continues from it; the file is deleted once the run's result is safely written. Tests check that
an interrupted and resumed run ends with the same weights as an uninterrupted one.

A run's file records its training config (not evaluation or logging settings); a restarted run continues from
it only if that config matches its own (run_resume_file), so a changed configuration never continues another's
training. The teacher stage and the warm start name theirs by their content keys.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import lightning as L
import torch

from kdbench.storage.atomic import atomic_write_by
from kdbench.training import interrupt

log = logging.getLogger(__name__)
SUFFIX = ".resume.ckpt"


def training_config(resolved: dict) -> dict:
    """A distillation run's resolved config less what only its evaluation and its saved copy read. Paths, logging,
    threads and display need no stripping: config_changes ignores them everywhere (tracking.results._VOLATILE)."""
    cfg = {k: v for k, v in resolved.items() if k != "eval"}
    cfg["trainer"] = {k: v for k, v in cfg.get("trainer", {}).items() if k != "save_student"}
    return cfg


RUN_FILE = f"training{SUFFIX}"


def resume_file(folder: str | Path, key: str) -> Path:
    """A stage's resume file, named by the stage's content key."""
    return Path(folder) / f"{key}{SUFFIX}"


def drop_stale(folder: str | Path, keep: Path) -> None:
    """Remove other resume files in a run's folder (an older kdbench's names): nothing continues from them."""
    for p in Path(folder).glob(f"*{SUFFIX}"):
        if p != keep:
            log.info("removing %s: this run's resume file is %s", p.name, keep.name)
            p.unlink(missing_ok=True)


def run_resume_file(run_dir: str | Path, resolved: dict) -> tuple[Path, dict]:
    """(A run's resume file, the training config to record in it). A file left by an interrupted run is kept only
    if the training config it recorded matches this one; keys only one side has do not count, as for
    results.json (a newer kdbench adds fields whose defaults keep the old behaviour), so upgrading kdbench in the
    middle of a long run does not throw its progress away. Any other file is removed, saying why."""
    from kdbench.tracking.results import config_changes

    cfg = training_config(resolved)
    path = Path(run_dir) / RUN_FILE
    drop_stale(run_dir, keep=path)
    if path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("kdbench_config")
        except Exception as e:  # noqa: BLE001 - an unreadable file can only be started over
            saved, why = None, f"unreadable ({type(e).__name__})"
        else:
            why = "no training config recorded" if saved is None else None
        changed = config_changes(saved, cfg) if saved is not None else []
        if why or changed:
            log.warning("%s: not resuming from it: %s; training starts over", path,
                        why or "made with a different training config (" + ", ".join(changed[:5]) + ")")
            path.unlink()
    return path, cfg


def rng_states() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])


def _validates_now(trainer) -> bool:
    """Whether Lightning validates right after the step that just ended (kdbench validates every
    `val_check_interval` optimizer steps, one batch per step, check_val_every_n_epoch=None)."""
    every = trainer.val_check_batch
    return bool(trainer.limit_val_batches) and isinstance(every, int) and trainer.global_step % every == 0


class ResumeCheckpoint(L.Callback):
    """Save the training state to `path` every `every_minutes` of training (0: after every step; tests; None:
    only when a SIGTERM or SIGINT stops the training, kdbench.training.interrupt)."""

    def __init__(self, path: str | Path, every_minutes: float | None, config: dict | None = None):
        # config: recorded in the file, so that a later start can tell whether it may continue from it.
        self.path, self.config = Path(path), config
        self.every_s = float("inf") if every_minutes is None else every_minutes * 60.0
        self._last = None
        self._rng_to_restore = None
        self._after_validation = False

    def on_train_start(self, trainer, pl_module):
        self._last = time.monotonic()
        # Restored here, not at load time: Lightning's own setup between the two must not shift the streams.
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
        interrupt.take_over_in_training()

    def on_train_end(self, trainer, pl_module):
        interrupt.training_ended()

    def on_exception(self, trainer, pl_module, exception):
        interrupt.training_ended()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        stop = interrupt.pending_signal() is not None
        if trainer.global_step >= trainer.max_steps:
            if stop:  # the last step: nothing is saved here (the caller deletes the file once results exist)
                raise interrupt.RunInterrupted(interrupt.pending_signal(), int(trainer.global_step),
                                               int(trainer.max_steps))
            return  # finished: the caller writes the result and then deletes the file
        if not stop and time.monotonic() - self._last < self.every_s:
            return
        if _validates_now(trainer):
            # Saved after this step's validation instead: a checkpoint from before it would resume past it, and
            # the selection and DistiLLM's schedule would miss what it measured.
            self._after_validation = True
        else:
            self._save_now(trainer)

    def on_validation_end(self, trainer, pl_module):
        if self._after_validation and not trainer.sanity_checking:
            self._after_validation = False
            self._save_now(trainer)

    def _save_now(self, trainer) -> None:
        signum = interrupt.pending_signal()
        self.save(trainer)
        self._last = time.monotonic()
        if signum is not None:
            raise interrupt.RunInterrupted(signum, int(trainer.global_step), int(trainer.max_steps), str(self.path))

    def save(self, trainer) -> None:
        atomic_write_by(self.path, lambda tmp: trainer.save_checkpoint(str(tmp)))

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint["kdbench_rng"] = rng_states()
        checkpoint["kdbench_config"] = self.config

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        self._rng_to_restore = checkpoint.get("kdbench_rng")
