"""Resuming an interrupted training where it stopped, not from step 0.

Every `trainer.resume_every_minutes` of training, ResumeCheckpoint writes the whole training state to one file
(temp file + rename, so a kill mid-write leaves the previous one intact): the student's weights, the optimizer and
the LR schedule, the step, the data position (InstructionDataModule.state_dict), the method's own state (the
DistiLLM replay buffer and threshold, MiniLLM's current rollout, GKD's coin; OfflineDistillation.RESUME_ATTRS),
the selection's best weights so far, and the RNG states. A run that starts and finds the file for its own
configuration continues from it; the file is deleted once the run's result is safely written. Tests check that
an interrupted and resumed run ends with the same weights as an uninterrupted one.

The file name carries a key of everything that determines the training (not evaluation or logging settings), so
a run with a changed configuration never continues another's training; stale files of other keys are removed.
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path

import lightning as L
import torch

from kdbench.stages.keys import content_key

log = logging.getLogger(__name__)
SUFFIX = ".resume.ckpt"
# The parts of a run's resolved config that do not change what training computes.
NOT_TRAINING = ("eval", "logger", "paths", "force", "sweep_name")
TRAINER_NOT_TRAINING = ("progress", "num_threads", "resume_every_minutes", "save_student")


def run_resume_key(resolved: dict) -> str:
    """The key of a distillation run's training: its resolved config less what only evaluation or logs read."""
    cfg = {k: v for k, v in resolved.items() if k not in NOT_TRAINING}
    cfg["trainer"] = {k: v for k, v in cfg.get("trainer", {}).items() if k not in TRAINER_NOT_TRAINING}
    return content_key("run_training", config=cfg)


def resume_file(folder: str | Path, key: str) -> Path:
    return Path(folder) / f"{key}{SUFFIX}"


def drop_stale(folder: str | Path, keep: Path) -> None:
    """Remove resume files of other configurations in this folder: nothing can continue from them any more."""
    for p in Path(folder).glob(f"*{SUFFIX}"):
        if p != keep:
            log.info("removing %s: it resumes a different configuration", p.name)
            p.unlink(missing_ok=True)


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
    """Save the training state to `path` every `every_minutes` of training (0: after every step; tests)."""

    def __init__(self, path: str | Path, every_minutes: float):
        self.path, self.every_s = Path(path), every_minutes * 60.0
        self._last = None
        self._rng_to_restore = None
        self._after_validation = False

    def on_train_start(self, trainer, pl_module):
        self._last = time.monotonic()
        # Restored here, not at load time: Lightning's own setup between the two must not shift the streams.
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= trainer.max_steps:
            return  # finished: the caller writes the result and then deletes the file
        if time.monotonic() - self._last < self.every_s:
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
        self.save(trainer)
        self._last = time.monotonic()

    def save(self, trainer) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        trainer.save_checkpoint(str(tmp))
        os.replace(tmp, self.path)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint["kdbench_rng"] = rng_states()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        self._rng_to_restore = checkpoint.get("kdbench_rng")
