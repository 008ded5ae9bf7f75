"""W&B through Lightning's logger, offline by default (no login, no network). `logger.kind=none` logs nothing.

Secrets never reach W&B: only the resolved kdbench config is logged, and it holds the *names* of environment
variables that carry API keys, never their values.
"""

from __future__ import annotations

import os
from pathlib import Path

WANDB_ID_FILE = "wandb_id.txt"


def run_wandb_id(run_dir: Path, resuming: bool) -> str:
    """The W&B run id of a run folder: the one its interrupted attempt used when the run continues from a resume
    checkpoint (so it continues the same W&B run: `wandb sync` uploads the attempts' offline folders, which share
    the id, into one run in order of start), else a new one."""
    from kdbench.storage.atomic import atomic_write_text

    path = Path(run_dir) / WANDB_ID_FILE
    if resuming and path.is_file():
        run_id = path.read_text().strip()
        if run_id.isalnum():
            return run_id
    import secrets

    run_id = secrets.token_hex(4)
    atomic_write_text(path, run_id + "\n")
    return run_id


def make_logger(logger_cfg, run_dir: Path, run_name: str, group: str, config: dict, tags: list[str] = (),
                run_id: str | None = None):
    if logger_cfg.kind == "none" or logger_cfg.mode == "disabled":
        return None
    from lightning.pytorch.loggers import WandbLogger

    mode = logger_cfg.mode
    if mode == "online" and not _logged_in():
        raise RuntimeError("logger.mode=online but W&B has no API key (run `wandb login` or set WANDB_API_KEY); "
                           "use logger.mode=offline to log locally and `wandb sync` later")
    os.environ.setdefault("WANDB_SILENT", "true")
    logger = WandbLogger(
        project=logger_cfg.project, entity=logger_cfg.entity, name=run_name, group=logger_cfg.group or group,
        tags=list(dict.fromkeys([*logger_cfg.tags, *tags])), save_dir=str(run_dir), offline=(mode == "offline"),
        config=config, **({"id": run_id, "resume": "allow"} if run_id else {}),
    )
    # Lightning always passes anonymous=None to wandb.init, and wandb >= 0.19 warns that the `anonymous`
    # setting is deprecated whenever the argument is present at all; leaving it out means the same thing.
    if getattr(logger, "_wandb_init", {}).get("anonymous", "set") is None:
        del logger._wandb_init["anonymous"]
    return logger


def _logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def log_final(logger, metrics: dict, samples: list[dict]) -> None:
    """Evaluation metrics as `eval/<set>/<metric>` (+ teacher) and a table of sample generations."""
    if logger is None:
        return
    logger.log_metrics(metrics)
    if samples:
        cols = ["model", "set", "category", "prompt", "reference", "generation"]
        logger.log_table(key="eval/samples", columns=cols, data=[[s[c] for c in cols] for s in samples])


def log_images(logger, images: dict[str, str]) -> None:
    """PNG files as W&B images, keyed `plots/<name>` (copied into the run's media folder)."""
    if logger is None or not images:
        return
    for name, path in images.items():
        logger.log_image(key=f"plots/{name}", images=[str(path)])


def finish(logger, failed: bool = False) -> None:
    if logger is None:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)
    # finish() can return before the offline writer has flushed the .wandb file; teardown waits for it, so a
    # reader in this process (or the next cell in this sweep worker) sees the whole run.
    wandb.teardown()
