"""A run's teacher and student from their configs, as (model, tokenizer) pairs: the stages a run needs first.

A model is pretrained (HF id or local folder; kdbench.models.loading) or built from `arch`. A scratch model's
tokenizer is, in order: its own `tokenizer` setting, the embedded benchmark's tokenizer (the tokenizer stage) when
the data is embedded, else the teacher's. A scratch teacher goes through the teacher stage (fine-tuned once,
cached): this module sits above kdbench.models, which only loads and builds and never trains.
"""

from __future__ import annotations

from transformers import AutoTokenizer

from kdbench.models.loading import (
    Loaded,
    build_from_arch,
    count_parameters,
    freeze,
    load_pretrained,
    prepare_tokenizer,
)
from kdbench.stages.teacher import teacher_stage
from kdbench.stages.tokenizer import embedded_tokenizer


def _scratch_tokenizer(model_cfg, cfg, cache_dir, fallback=None):
    if model_cfg.tokenizer:
        return prepare_tokenizer(AutoTokenizer.from_pretrained(model_cfg.tokenizer))
    if cfg.data.train.kind == "embedded":
        return embedded_tokenizer(cfg.data.embedded, cache_dir)
    if fallback is not None:
        return fallback
    from kdbench.schema import ConfigError

    raise ConfigError("student.tokenizer: a scratch model on non-embedded data needs a tokenizer "
                     "(set student.tokenizer, or use a pretrained teacher whose tokenizer it then shares)")


def load_teacher(cfg, cache_dir, show_progress: bool = True) -> Loaded:
    t = cfg.teacher
    if t.source == "pretrained":
        model, tok = load_pretrained(t.path, "teacher.path", t.dtype, t.tokenizer)
    else:
        tok = _scratch_tokenizer(t, cfg, cache_dir)
        model, _ = teacher_stage(cfg, tok, cache_dir, show_progress)
    return Loaded(freeze(model), tok, t.name, count_parameters(model), model.kdbench_fingerprint)


def load_student(cfg, cache_dir, teacher_tokenizer=None) -> Loaded:
    s = cfg.student
    if s.source == "pretrained":
        model, tok = load_pretrained(s.path, "student.path", s.dtype, s.tokenizer)
    else:
        tok = _scratch_tokenizer(s, cfg, cache_dir, fallback=teacher_tokenizer)
        model = build_from_arch(s.arch, tok, seed=cfg.seed, dtype=s.dtype)
    return Loaded(model, tok, s.name, count_parameters(model), "")
