"""The teacher stage: a teacher built from a config is fine-tuned on the train split once, then reused.

The trained teacher is cached under a key derived from everything that determines it (architecture, data,
tokenizer, fine-tuning config, seed). Every later run and every sweep cell with the same key loads it; two
workers that need it at once wait on a file lock instead of training it twice. The package ships the default
teacher as an asset under the same key, produced by this same stage (its RECIPE.md says how).
A cached teacher is verified before it is used (its manifest, see kdbench.storage.cache_entry); a damaged one is
moved aside under the lock and trained again.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from kdbench.models.loading import DTYPES, build_from_arch, count_parameters
from kdbench.paths import ASSETS_DIR
from kdbench.schema import MethodConfig
from kdbench.stages.keys import content_key
from kdbench.storage.atomic import atomic_publish_dir, atomic_write_json
from kdbench.storage.cache_entry import folder_or_quarantine, folder_problem, lock_for, verified_folder, write_manifest

log = logging.getLogger(__name__)
TEACHER_STAGE_VERSION = 1
TEACHER_FILES = ("config.json", "model.safetensors")


def teacher_key(teacher_cfg, data_cfg, tokenizer_key: str) -> str:
    # The data enters by content (a digest of the train rows it trains on, and the length limits that cut them),
    # not by its config: a new config field with a default, or a renamed source, must not orphan a cached or
    # shipped teacher, while any change to the rows themselves must.
    return content_key("teacher", stage=TEACHER_STAGE_VERSION, arch=teacher_cfg.arch, dtype=teacher_cfg.dtype,
                       finetune=teacher_cfg.finetune, train_rows=train_rows_digest(data_cfg),
                       max_prompt_length=data_cfg.max_prompt_length,
                       max_response_length=data_cfg.max_response_length, tokenizer=tokenizer_key)


def train_rows_digest(data_cfg) -> str:
    from kdbench.data.sources import load_rows

    rows = load_rows(data_cfg.train, data_cfg.embedded)
    fields = ("instruction", "input", "output", "prompt")
    return content_key("rows", rows=[[r.get(f) for f in fields] for r in rows])


def find_teacher(key: str, cache_dir: str | Path) -> Path | None:
    """The cached teacher's folder, else the shipped one: the first that verifies (nothing is moved here)."""
    for folder in (Path(cache_dir) / "teachers" / key, ASSETS_DIR / "teachers" / key):
        if verified_folder(folder, TEACHER_FILES):
            return folder
    return None


def load_teacher_folder(folder: Path, key: str, dtype: str = "float32"):
    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=DTYPES[dtype])
    model.kdbench_fingerprint = f"teacher-stage-{key}"
    return model


def teacher_stage(cfg, tokenizer, cache_dir: str | Path, show_progress: bool = True):
    """The fine-tuned teacher for cfg.teacher (source=scratch), trained only if no cache or asset has it."""
    key = teacher_key(cfg.teacher, cfg.data, tokenizer.kdbench_key)
    target = Path(cache_dir) / "teachers" / key
    found = find_teacher(key, cache_dir)
    # A cached folder that is there but does not verify is quarantined below, under the lock, not skipped.
    if found is not None and (found == target or not target.exists()):
        log.info("teacher %s: reusing the fine-tuned teacher %s from %s", cfg.teacher.name, key, found)
        return load_teacher_folder(found, key, cfg.teacher.dtype), key
    target.parent.mkdir(parents=True, exist_ok=True)
    with lock_for(target):
        shipped = ASSETS_DIR / "teachers" / key
        if folder_or_quarantine(target, TEACHER_FILES):  # another worker may have finished it while we waited
            log.info("teacher %s: trained meanwhile by another worker; reusing %s", cfg.teacher.name, key)
            found = target
        elif verified_folder(shipped, TEACHER_FILES):
            log.info("teacher %s: reusing the shipped fine-tuned teacher %s from %s", cfg.teacher.name, key, shipped)
            found = shipped
        else:
            if shipped.exists():  # package data: reported, never moved
                log.warning("teacher %s: the shipped teacher %s is damaged (%s); reinstall kdbench. Training it "
                            "into the cache instead", cfg.teacher.name, shipped, folder_problem(shipped, TEACHER_FILES))
            log.info("teacher %s: no fine-tuned teacher %s in the cache; training it (teacher stage)",
                     cfg.teacher.name, key)
            _train(cfg, tokenizer, key, target, show_progress)
            found = target
    return load_teacher_folder(found, key, cfg.teacher.dtype), key


def _train(cfg, tokenizer, key: str, target: Path, show_progress: bool) -> None:
    # Imported here: training pulls in Lightning, which a run that finds its teacher never needs to wait for.
    from kdbench.data.datamodule import InstructionDataModule
    from kdbench.data.sources import load_rows
    from kdbench.methods.offline import OfflineDistillation
    from kdbench.training.fit import fit, make_trainer
    from kdbench.training.resume import resume_file

    ft = cfg.teacher.finetune
    t0 = time.perf_counter()
    model = build_from_arch(cfg.teacher.arch, tokenizer, seed=ft.seed, dtype=cfg.teacher.dtype)
    train_rows = load_rows(cfg.data.train, cfg.data.embedded)
    val_rows = load_rows(cfg.data.validation, cfg.data.embedded)
    dm = InstructionDataModule(train_rows, val_rows, tokenizer, ft.batch_size, ft.seed,
                               cfg.data.max_prompt_length, cfg.data.max_response_length)
    sft = OmegaConf.structured(MethodConfig(name="sft"))
    module = OfflineDistillation(model, None, sft, ft.optim, ft.max_steps, len(tokenizer))
    torch.manual_seed(ft.seed)
    # Under the stage's lock: an interrupted teacher stage continues from its last resume checkpoint.
    resume_path = resume_file(target.parent, key)
    trainer = make_trainer(cfg.trainer, ft.max_steps, progress=show_progress, name=f"teacher stage {key}",
                           resume_path=resume_path)
    fit(module, dm, trainer)
    val = {k: float(v) for k, v in trainer.callback_metrics.items()}
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{key}."))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    atomic_write_json(tmp / "kdbench_recipe.json", {
        "key": key, "stage_version": TEACHER_STAGE_VERSION, "teacher": OmegaConf.to_container(cfg.teacher),
        "data": OmegaConf.to_container(cfg.data, resolve=True), "parameters": count_parameters(model),
        "train_seconds": round(time.perf_counter() - t0, 1), "final_validation": val,
        "reproduce": "kdbench-teacher " + " ".join(_overrides()),
    })
    write_manifest(tmp)  # last: it covers every file above
    atomic_publish_dir(tmp, target)
    resume_path.unlink(missing_ok=True)
    log.info("teacher %s: trained in %.0f s, saved as %s", cfg.teacher.name, time.perf_counter() - t0, target)


def _overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:  # noqa: BLE001 - outside a Hydra app (tests) there are no overrides to record
        return []


def recipe(folder: Path) -> dict:
    return json.loads((folder / "kdbench_recipe.json").read_text())
