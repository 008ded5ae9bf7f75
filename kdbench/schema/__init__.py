"""Dataclass schemas for every config group, registered in Hydra's ConfigStore.

conf/train.yaml lists `kdbench_schema` first in its defaults, so every group YAML is merged onto the typed node
below: a misspelt key (`method.temprature`), a wrong type or a value outside a fixed set (an enum: `logger.kind`,
`data.train.kind`, `eval.judge.backend`, ...) fails when the config is composed, naming the key. Range checks that
need a value's meaning live in kdbench.schema.checks and name the key too.

This package imports no runtime code: the methods, the evaluation and the CLIs import it, never the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from kdbench.schema.checks import ConfigError, check, check_decoding, parse_length_buckets, validate, validate_eval
from kdbench.schema.common import (
    ArchConfig,
    DataConfig,
    Decoding,
    DType,
    EmbeddedConfig,
    FinetuneConfig,
    GenerationConfig,
    LoggerConfig,
    LoggerKind,
    LoggerMode,
    ModelConfig,
    ModelSource,
    OptimConfig,
    PathsConfig,
    Selection,
    SourceConfig,
    SourceKind,
    TrainerConfig,
)
from kdbench.schema.evaluation import (
    AgreementConfig,
    ClassificationConfig,
    EvalConfig,
    EvalSetConfig,
    EvalSetKind,
    ExposureAverage,
    ExposureBiasConfig,
    JudgeBackend,
    JudgeConfig,
    LmEvalConfig,
    SamplingConfig,
    TextMetric,
)
from kdbench.schema.methods import (
    DistiLLMConfig,
    HiddenConfig,
    HiddenLoss,
    MethodConfig,
    MiniLLMConfig,
    OnPolicyConfig,
    ReplaySchedule,
    SeqKDConfig,
)


@dataclass
class TrainConfig:
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: ModelConfig = field(default_factory=ModelConfig)
    student: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0
    # The name of the sweep a run belongs to: its folder under outputs/multirun/.
    sweep_name: str = "default"
    # Redo a run whose results.json exists (otherwise it is reported and skipped).
    force: bool = False


def run_dirname(override_dirname: str, max_length: int = 100) -> str:
    """A folder name for a run from its overrides (kdbench-eval's run folders): slashes of paths in values become
    '_' (no nested folders), and a name longer than max_length keeps its start plus a hash of the whole, so that it
    stays a pure function of the overrides (a re-run finds its folder) within the file system's name limit."""
    import hashlib

    name = (override_dirname or "default").replace("/", "_")
    if len(name) <= max_length:
        return name
    digest = hashlib.sha256(override_dirname.encode()).hexdigest()[:12]
    return f"{name[:max_length - 13].rstrip(',')}-{digest}"


def register_configs() -> None:
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="kdbench_schema", node=TrainConfig)
    OmegaConf.register_new_resolver("kdbench_dirname", run_dirname, replace=True)


__all__ = [
    "AgreementConfig", "ArchConfig", "ClassificationConfig", "ConfigError", "DataConfig", "Decoding",
    "DistiLLMConfig", "DType", "EmbeddedConfig", "EvalConfig", "EvalSetConfig", "EvalSetKind", "ExposureAverage",
    "ExposureBiasConfig", "FinetuneConfig", "GenerationConfig", "HiddenConfig", "HiddenLoss", "JudgeBackend",
    "JudgeConfig", "LmEvalConfig", "LoggerConfig", "LoggerKind", "LoggerMode", "MethodConfig", "MiniLLMConfig",
    "ModelConfig", "ModelSource", "OnPolicyConfig", "OptimConfig", "PathsConfig", "ReplaySchedule",
    "SamplingConfig", "SeqKDConfig", "Selection", "SourceConfig", "SourceKind", "TextMetric", "TrainConfig",
    "TrainerConfig", "check", "check_decoding", "parse_length_buckets", "register_configs", "run_dirname", "validate",
    "validate_eval",
]
