"""Build the Lightning Trainer and fit a method: shared by the teacher stage and every distillation run."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import lightning as L


def quiet_lightning() -> None:
    # Lightning resets its loggers to INFO on import and torch 2.13 raises a pytree deprecation inside it.
    import logging
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`isinstance.*treespec.*")


class ProgressLog(L.Callback):
    """A log line every ~5% of training (step, loss, tokens/s, time left): progress that survives a log file or
    a sweep worker, where a progress bar does not show."""

    def __init__(self, max_steps: int, name: str = "train"):
        self.max_steps, self.name = max_steps, name
        self.every = max(1, max_steps // 20)
        self._t0, self._step0 = None, 0

    def on_train_start(self, trainer, pl_module):
        import time

        # A resumed run starts at its checkpoint's step: time left is estimated from the steps done since.
        self._t0, self._step0 = time.perf_counter(), int(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import logging
        import time

        if self._t0 is None:
            self._t0 = time.perf_counter()
        step = trainer.global_step
        if step % self.every and step != self.max_steps:
            return
        elapsed = time.perf_counter() - self._t0
        m = trainer.callback_metrics
        loss = float(m["train/loss"]) if "train/loss" in m else float("nan")
        tps = float(m["train/tokens_per_s"]) if "train/tokens_per_s" in m else float("nan")
        left = elapsed / max(step - self._step0, 1) * (self.max_steps - step)
        logging.getLogger("kdbench.train").info("%s step %d/%d loss %.4f %.0f tok/s, %.0f s elapsed, ~%.0f s left",
                                                self.name, step, self.max_steps, loss, tps, elapsed, left)


def _progress_bar():
    from lightning.pytorch.callbacks import RichProgressBar

    class StepProgressBar(RichProgressBar):
        """kdbench trains for max_steps, not epochs: Lightning's "Epoch 0/-2" (max_epochs=-1) would mislead."""

        def _get_train_description(self, current_epoch: int) -> str:
            return "train"

    return StepProgressBar()


def make_trainer(trainer_cfg, max_steps: int, logger=None, default_root_dir: str | None = None,
                 progress: bool | None = None, name: str = "train", callbacks: list | None = None,
                 resume_path: str | Path | None = None, resume_config: dict | None = None) -> L.Trainer:
    """resume_path: where this training keeps its resume checkpoint (kdbench.training.resume; None: none), recording
    resume_config in it."""
    from kdbench.training.resume import ResumeCheckpoint

    quiet_lightning()
    t = trainer_cfg
    show = t.progress if progress is None else progress
    callbacks = list(callbacks or [])
    if resume_path is not None:  # also with resume_every_minutes=None: a SIGTERM or SIGINT still saves
        callbacks.append(ResumeCheckpoint(resume_path, t.resume_every_minutes, resume_config))
    return L.Trainer(
        accelerator=t.accelerator, devices=1, precision=t.precision, max_steps=max_steps,
        val_check_interval=min(t.val_every, max_steps), check_val_every_n_epoch=None,
        limit_val_batches=t.val_batches, num_sanity_val_steps=0, log_every_n_steps=t.log_every,
        logger=logger if logger is not None else False, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=show, default_root_dir=default_root_dir,
        callbacks=[ProgressLog(max_steps, name), *([_progress_bar()] if show else []), *callbacks],
    )


def resume_checkpoint_of(trainer: L.Trainer) -> Path | None:
    from kdbench.training.resume import ResumeCheckpoint

    return next((c.path for c in trainer.callbacks if isinstance(c, ResumeCheckpoint)), None)


def fit(module: L.LightningModule, datamodule: L.LightningDataModule, trainer: L.Trainer) -> L.Trainer:
    """Train; continue from the trainer's resume checkpoint when an interrupted run left one."""
    import logging

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    path = resume_checkpoint_of(trainer)
    ckpt = str(path) if path is not None and path.is_file() and _readable(path) else None
    if ckpt:
        logging.getLogger("kdbench.train").info("resuming the interrupted training from %s", path)
    # weights_only=False: the file is this run's own, written by ResumeCheckpoint, with pickled method state.
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=False if ckpt else None)
    return trainer


def _readable(path: Path) -> bool:
    """Whether a resume checkpoint loads; a damaged one (a disk fault, a copy cut short) is moved aside with a
    warning and the training starts over, instead of failing every later attempt on it."""
    import torch

    from kdbench.storage.cache_entry import quarantine

    try:
        torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as e:  # noqa: BLE001 - any failure to load means the same: it cannot be continued from
        quarantine(path, f"the resume checkpoint does not load: {type(e).__name__}: {e}"[:300])
        return False
    return True
