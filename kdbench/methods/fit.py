"""Build the Lightning Trainer and fit a method: shared by the teacher stage and every distillation run."""

from __future__ import annotations

import os
import warnings

import lightning as L


def quiet_lightning() -> None:
    # Lightning resets its loggers to INFO on import and torch 2.13 raises a pytree deprecation inside it.
    import logging
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`isinstance.*treespec.*")


def make_trainer(trainer_cfg, max_steps: int, logger=None, default_root_dir: str | None = None,
                 progress: bool | None = None) -> L.Trainer:
    quiet_lightning()
    t = trainer_cfg
    show = t.progress if progress is None else progress
    return L.Trainer(
        accelerator=t.accelerator, devices=1, precision=t.precision, max_steps=max_steps,
        val_check_interval=min(t.val_every, max_steps), check_val_every_n_epoch=None,
        limit_val_batches=t.val_batches, num_sanity_val_steps=0, log_every_n_steps=t.log_every,
        logger=logger if logger is not None else False, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=show, default_root_dir=default_root_dir,
    )


def fit(module: L.LightningModule, datamodule: L.LightningDataModule, trainer: L.Trainer) -> L.Trainer:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    trainer.fit(module, datamodule=datamodule)
    return trainer
