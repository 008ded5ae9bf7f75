"""Dataclass schemas for every config group, registered in Hydra's ConfigStore.

conf/train.yaml lists `kdbench_schema` first in its defaults, so every group YAML is merged onto the typed node
below: a misspelt key (`method.temprature`) or a wrong type fails when the config is composed, naming the key.
Range checks that need a value's meaning (temperature > 0, a weight in [0, 1]) live in `validate()`, run when
the run starts, and name the key too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class PathsConfig:
    # Runs and sweeps are written under output_root; a cell's folder is a pure function of the sweep name and
    # the cell's overrides, so re-running a command finds its cells.
    output_root: str = "outputs"
    # Content-keyed caches shared by every run and sweep cell: trained teachers, tokenizers, teacher generations.
    cache_dir: str = "${oc.env:KDBENCH_CACHE,${oc.env:HOME,.}/.cache/kdbench}"


@dataclass
class ArchConfig:
    """A LLaMA-style decoder built from a transformers config with random init."""
    family: str = "llama"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True


@dataclass
class OptimConfig:
    lr: float = 2e-3
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    warmup_steps: int = 100
    # Cosine decay to min_lr_ratio * lr at max_steps.
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0


@dataclass
class FinetuneConfig:
    """The teacher stage: supervised fine-tuning of a teacher built from `arch` on the train split."""
    max_steps: int = 6000
    batch_size: int = 32
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class ModelConfig:
    name: str = MISSING
    # scratch: built from `arch` with random init (a teacher is then fine-tuned by the teacher stage);
    # pretrained: a Hugging Face id or a local folder in `path`.
    source: str = "scratch"
    path: Optional[str] = None
    # Tokenizer id or folder; null means the model folder's own (pretrained) or the data's tokenizer (scratch).
    tokenizer: Optional[str] = None
    arch: ArchConfig = field(default_factory=ArchConfig)
    dtype: str = "float32"
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


@dataclass
class SourceConfig:
    """Where rows {instruction, input, output, category} come from."""
    # embedded: kdbench's generated benchmark; jsonl: a local file; hf: a Hugging Face dataset id.
    kind: str = "embedded"
    path: Optional[str] = None
    split: str = "train"
    # Drop the first `skip` rows, then keep at most `limit`: with one split, train skip=N and validation
    # limit=N are disjoint.
    skip: int = 0
    limit: Optional[int] = None
    # Our field -> the source's column, e.g. {input: context, output: response} for databricks-dolly-15k.
    columns: Dict[str, str] = field(default_factory=dict)


@dataclass
class EmbeddedConfig:
    seed: int = 0
    version: int = 3
    train_size: int = 40000
    validation_size: int = 500
    test_size: int = 2100
    vocab_size: int = 1024


@dataclass
class DataConfig:
    name: str = MISSING
    train: SourceConfig = field(default_factory=SourceConfig)
    validation: SourceConfig = field(default_factory=lambda: SourceConfig(split="validation"))
    embedded: EmbeddedConfig = field(default_factory=EmbeddedConfig)
    # Prompts longer than this are left-truncated (their end, the instruction's tail and "### Response:", is kept).
    max_prompt_length: int = 256
    max_response_length: int = 128


@dataclass
class HiddenConfig:
    """Hidden-state distillation (FitNets / TinyBERT-style): student layer i matches teacher layer layer_map[i]."""
    # Weight of the hidden-state loss added to the method's loss; 0 turns it off.
    weight: float = 0.0
    # mse or cosine (1 - cosine similarity), per response position, averaged over the mapped layers.
    loss: str = "mse"
    # Teacher layer (1..L_teacher; 0 = embeddings) for each student layer 1..L_student; null = uniform:
    # student layer l <- teacher layer round(l * L_teacher / L_student).
    layer_map: Optional[List[int]] = None


@dataclass
class MethodConfig:
    name: str = MISSING
    # offline: a divergence to the teacher on the data's own responses (sft is the case with no divergence).
    kind: str = "offline"
    # A function name in kdbench.losses (forward_kl, ...); null trains on ground truth only.
    divergence: Optional[str] = None
    # loss = (1 - alpha) * CE(ground truth) + alpha * divergence.
    alpha: float = 0.0
    temperature: float = 1.0
    # Hinton-style KD multiplies the soft loss by T^2 to keep gradient scale; off by default (MiniLLM's KD).
    scale_by_t2: bool = False
    # The divergence's own hyperparameters, e.g. {beta: 0.5} for generalized_jsd (see its docstring).
    divergence_hp: Dict[str, float] = field(default_factory=dict)
    # The memory-bounded loss computes logits a chunk of rows at a time: chunk_elements // vocabulary rows (2^22
    # fp32 logits = 16 MiB per model and per temporary: 131 rows at a 32k vocabulary, one chunk for the embedded
    # benchmark's ~900 tokens), or chunk_size rows when set. Peak loss memory ~ rows x vocabulary.
    chunk_size: Optional[int] = None
    chunk_elements: int = 4194304
    hidden: HiddenConfig = field(default_factory=HiddenConfig)


@dataclass
class GenerationConfig:
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    batch_size: int = 64
    seed: int = 0


@dataclass
class EvalSetConfig:
    name: str = MISSING
    source: SourceConfig = field(default_factory=lambda: SourceConfig(split="test"))
    metrics: List[str] = field(default_factory=lambda: ["rouge_l", "exact_match"])
    max_new_tokens: int = 128


@dataclass
class EvalConfig:
    name: str = MISSING
    sets: List[EvalSetConfig] = field(default_factory=list)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    max_prompt_length: int = 256
    # Evaluate the teacher too, as the reference row (its generations are cached by content).
    teacher: bool = True
    # How many sample generations go into the W&B table and results.json.
    num_samples: int = 20


@dataclass
class TrainerConfig:
    max_steps: int = 2000
    batch_size: int = 32
    # A step's batch is split into micro-batches of this size; the loss is reduced by the token count of the
    # whole step, so the split does not change the objective. null: no split.
    micro_batch_size: Optional[int] = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    val_every: int = 500
    val_batches: int = 8
    log_every: int = 50
    accelerator: str = "cpu"
    precision: str = "32-true"
    # Torch threads per process; null: all cores for a single run, one per worker in a parallel sweep.
    num_threads: Optional[int] = None
    progress: bool = True


@dataclass
class LoggerConfig:
    # wandb (offline unless mode=online and the user is logged in) or none.
    kind: str = "wandb"
    project: str = "kdbench"
    entity: Optional[str] = None
    mode: str = "offline"
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)


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


def register_configs() -> None:
    ConfigStore.instance().store(name="kdbench_schema", node=TrainConfig)


class ConfigError(ValueError):
    """A config value that composes but makes no sense; the message names the key."""


def _check(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {why}")


def _check_divergence_hp(fn, hp: dict, name: str) -> None:
    """Call the divergence once on a toy pair: an unknown or out-of-range hyperparameter fails now, naming it,
    rather than at the first training step (and the JSD's near-endpoint warning shows at start)."""
    import torch

    try:
        fn(torch.zeros(1, 3), torch.zeros(1, 3), **hp)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"method.divergence_hp={hp!r}: {name} rejects it: {e}") from None


def validate(cfg: Any) -> None:
    """Range checks that the type system cannot express. Called when a run starts."""
    m = cfg.method
    _check(m.kind in ("offline",), "method.kind", m.kind, "known kinds: offline")
    _check(m.temperature > 0, "method.temperature", m.temperature, "must be > 0")
    _check(0.0 <= m.alpha <= 1.0, "method.alpha", m.alpha, "a mixing weight must lie in [0, 1]")
    if m.divergence is not None:
        from kdbench.losses import DIVERGENCES
        _check(m.divergence in DIVERGENCES, "method.divergence", m.divergence,
               f"known divergences: {', '.join(sorted(DIVERGENCES))}")
        _check_divergence_hp(DIVERGENCES[m.divergence], dict(m.divergence_hp or {}), m.divergence)
    _check(m.chunk_size is None or m.chunk_size > 0, "method.chunk_size", m.chunk_size, "must be > 0 (or null)")
    _check(m.chunk_elements > 0, "method.chunk_elements", m.chunk_elements, "must be > 0")
    _check(m.hidden.weight >= 0, "method.hidden.weight", m.hidden.weight, "must be >= 0")
    _check(m.hidden.loss in ("mse", "cosine"), "method.hidden.loss", m.hidden.loss, "use mse or cosine")
    for role in ("teacher", "student"):
        mc = cfg[role]
        _check(mc.source in ("scratch", "pretrained"), f"{role}.source", mc.source, "use scratch or pretrained")
        if mc.source == "pretrained":
            _check(bool(mc.path), f"{role}.path", mc.path, "a pretrained model needs an HF id or a local folder")
        _check(mc.arch.hidden_size % mc.arch.num_heads == 0, f"{role}.arch.num_heads", mc.arch.num_heads,
               f"must divide {role}.arch.hidden_size={mc.arch.hidden_size}")
    t = cfg.trainer
    _check(t.max_steps > 0, "trainer.max_steps", t.max_steps, "must be > 0")
    _check(t.batch_size > 0, "trainer.batch_size", t.batch_size, "must be > 0")
    if t.micro_batch_size is not None:
        _check(0 < t.micro_batch_size <= t.batch_size, "trainer.micro_batch_size", t.micro_batch_size,
               f"must lie in [1, trainer.batch_size={t.batch_size}]")
    _check(t.optim.lr > 0, "trainer.optim.lr", t.optim.lr, "must be > 0")
    _check(cfg.logger.kind in ("wandb", "none"), "logger.kind", cfg.logger.kind, "use wandb or none")
    _check(cfg.logger.mode in ("offline", "online", "disabled"), "logger.mode", cfg.logger.mode,
           "use offline, online or disabled")
    _check(cfg.data.max_prompt_length > 0, "data.max_prompt_length", cfg.data.max_prompt_length, "must be > 0")
    _check(cfg.eval.max_prompt_length > 0, "eval.max_prompt_length", cfg.eval.max_prompt_length, "must be > 0")
    sources = [("data.train", cfg.data.train), ("data.validation", cfg.data.validation)]
    sources += [(f"eval.sets[{i}].source", s.source) for i, s in enumerate(cfg.eval.sets)]
    for key, src in sources:
        _check(src.kind in ("embedded", "jsonl", "hf"), f"{key}.kind", src.kind, "use embedded, jsonl or hf")
        if src.kind != "embedded":
            _check(bool(src.path), f"{key}.path", src.path,
                   "a jsonl source needs a file path, an hf source a dataset id or folder")
    for i, s in enumerate(cfg.eval.sets):
        for metric in s.metrics:
            _check(metric in ("rouge_l", "exact_match"), f"eval.sets[{i}].metrics", metric,
                   "known metrics: rouge_l, exact_match")
