"""The warm-start stage: the student of a size fine-tuned with `sft` for a number of steps, once, then reused.

The methods that sample from the student (gkd, distillm, minillm) start from it, as GKD and MiniLLM do: a random
student's samples are noise the teacher can say little about. Offline methods may start from it too
(method.warm_start=true), so a comparison can hold the start fixed. The warm-start steps count toward the run's
budget (trainer.max_steps is the total), so every method still takes the same number of optimizer steps.

Cached under a key derived from everything that determines it (the student, the tokenizer, the train rows, the
steps, the optimizer, batch size and seed); every method and sweep cell with that key shares it, and two workers
wait on a file lock rather than train it twice. A cached warm start is verified before it is used (its manifest,
see kdbench.storage.cache_entry); a damaged one is moved aside under the lock and trained again.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from kdbench.models.loading import DTYPES
from kdbench.schema import MethodConfig
from kdbench.stages.keys import content_key
from kdbench.stages.teacher import train_rows_digest
from kdbench.storage.atomic import atomic_publish_dir, atomic_write_json
from kdbench.storage.cache_entry import folder_or_quarantine, lock_for, write_manifest

log = logging.getLogger(__name__)
WARM_START_STAGE_VERSION = 1
WARM_START_FILES = ("config.json", "model.safetensors")


def warm_start_steps(trainer_cfg) -> int:
    """The sft steps of the warm start: trainer.warm_start_steps, else half the run's budget."""
    return trainer_cfg.warm_start_steps if trainer_cfg.warm_start_steps is not None else trainer_cfg.max_steps // 2


def warm_start_key(cfg, student, tokenizer, steps: int) -> str:
    s = cfg.student
    model = {"arch": s.arch} if s.source == "scratch" else {"path": s.path, "fingerprint": student.fingerprint}
    t = cfg.trainer
    return content_key("warm_start", stage=WARM_START_STAGE_VERSION, model=model, dtype=s.dtype,
                       tokenizer=getattr(tokenizer, "kdbench_key", None) or tokenizer.name_or_path,
                       vocab=len(tokenizer), train_rows=train_rows_digest(cfg.data),
                       max_prompt_length=cfg.data.max_prompt_length,
                       max_response_length=cfg.data.max_response_length, steps=steps, optim=t.optim,
                       batch_size=t.batch_size, seed=cfg.seed)


def warm_started(cfg, student, cache_dir: str | Path, show_progress: bool = True) -> tuple[object, dict]:
    """(The student after the warm start, a record of it for results.json). Trains only on a cache miss."""
    steps = warm_start_steps(cfg.trainer)
    key = warm_start_key(cfg, student, student.tokenizer, steps)
    target = Path(cache_dir) / "warm_starts" / key
    target.parent.mkdir(parents=True, exist_ok=True)
    record = {"key": key, "steps": steps, "cached": True, "seconds": 0.0}
    with lock_for(target):
        if folder_or_quarantine(target, WARM_START_FILES):
            log.info("student %s: reusing the sft warm start %s (%d steps) from %s", student.name, key, steps, target)
        else:
            log.info("student %s: no sft warm start %s in the cache; training it (%d steps)", student.name, key,
                     steps)
            record.update(cached=False, seconds=_train(cfg, student, key, steps, target, show_progress))
    model = AutoModelForCausalLM.from_pretrained(str(target), local_files_only=True, dtype=DTYPES[cfg.student.dtype])
    return model, record


def _train(cfg, student, key: str, steps: int, target: Path, show_progress: bool) -> float:
    from kdbench.data.datamodule import InstructionDataModule
    from kdbench.data.sources import load_rows
    from kdbench.methods.offline import OfflineDistillation
    from kdbench.training.fit import fit, make_trainer
    from kdbench.training.resume import resume_file

    t0 = time.perf_counter()
    t = cfg.trainer
    dm = InstructionDataModule(load_rows(cfg.data.train, cfg.data.embedded),
                               load_rows(cfg.data.validation, cfg.data.embedded), student.tokenizer, t.batch_size,
                               cfg.seed, cfg.data.max_prompt_length, cfg.data.max_response_length)
    module = OfflineDistillation(student.model, None, OmegaConf.structured(MethodConfig(name="sft")), t.optim, steps,
                                 len(student.tokenizer), t.micro_batch_size)
    torch.manual_seed(cfg.seed)
    resume_path = resume_file(target.parent, key)  # under the stage's lock, like the result
    trainer = make_trainer(t, steps, progress=show_progress, name=f"sft warm start {key}", resume_path=resume_path)
    fit(module, dm, trainer)
    seconds = time.perf_counter() - t0
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{key}."))
    student.model.save_pretrained(tmp)
    student.tokenizer.save_pretrained(tmp)
    atomic_write_json(tmp / "kdbench_recipe.json", {
        "key": key, "stage_version": WARM_START_STAGE_VERSION, "student": OmegaConf.to_container(cfg.student),
        "steps": steps, "trainer": OmegaConf.to_container(cfg.trainer), "seed": cfg.seed,
        "train_seconds": round(seconds, 1),
        "final_validation": {k: float(v) for k, v in trainer.callback_metrics.items()},
    })
    write_manifest(tmp)  # last: it covers every file above
    atomic_publish_dir(tmp, target)
    resume_path.unlink(missing_ok=True)
    log.info("student %s: sft warm start trained in %.0f s, saved as %s", student.name, seconds, target)
    return round(seconds, 1)
