"""The config nodes of paths, models, data, training and logging, and the fixed sets their values come from."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from omegaconf import MISSING


class SourceKind(StrEnum):
    """Where rows come from: kdbench's generated benchmark, a local JSON Lines file, a Hugging Face dataset."""
    embedded = "embedded"
    jsonl = "jsonl"
    hf = "hf"


class ModelSource(StrEnum):
    """scratch: built from `arch` with random init; pretrained: a Hugging Face id or a local folder."""
    scratch = "scratch"
    pretrained = "pretrained"


class DType(StrEnum):
    """The dtype a model's weights are loaded or built in (kdbench.models.loading.DTYPES)."""
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Selection(StrEnum):
    """Which weights a run keeps: the validation with the best ROUGE-L, or the last."""
    best_rouge_l = "best_rouge_l"
    last = "last"


class LoggerKind(StrEnum):
    wandb = "wandb"
    none = "none"


class LoggerMode(StrEnum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


@dataclass
class Decoding:
    """How a model samples: the one definition every method and evaluator that generates nests (method.seqkd,
    .onpolicy, .distillm, .minillm, eval.generation, eval.sampling: each `<block>.decoding`)."""
    temperature: float = 1.0
    top_p: float = 1.0
    # 0: off.
    top_k: int = 0
    max_new_tokens: int = 128


@dataclass
class GenerationConfig:
    """A generation pass: greedy or sampled with `decoding`, `batch_size` prompts at a time, sampling seeded."""
    do_sample: bool = False
    decoding: Decoding = field(default_factory=Decoding)
    batch_size: int = 64
    seed: int = 0


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
    source: ModelSource = ModelSource.scratch
    path: str | None = None
    # Tokenizer id or folder; null means the model folder's own (pretrained) or the data's tokenizer (scratch).
    tokenizer: str | None = None
    arch: ArchConfig = field(default_factory=ArchConfig)
    dtype: DType = DType.float32
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


@dataclass
class SourceConfig:
    """Where rows {instruction, input, output, category} come from."""
    # embedded: kdbench's generated benchmark; jsonl: a local file; hf: a Hugging Face dataset id.
    kind: SourceKind = SourceKind.embedded
    path: str | None = None
    split: str = "train"
    # Drop the first `skip` rows, then keep at most `limit`: with one split, train skip=N and validation
    # limit=N are disjoint.
    skip: int = 0
    limit: int | None = None
    # Our field -> the source's column, e.g. {input: context, output: response} for databricks-dolly-15k.
    columns: dict[str, str] = field(default_factory=dict)
    # hf only: the file(s) inside the dataset repository to read (datasets' data_files), e.g. "11_/valid.jsonl"
    # for MiniLLM/sinst; the split of a data_files load is "train".
    data_files: str | None = None
    # hf only: the copy of this set bundled with kdbench (kdbench/assets/evalsets/<name>.jsonl.gz), read instead of
    # the hub when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set or the hub cannot be reached.
    bundled: str | None = None


@dataclass
class EmbeddedConfig:
    seed: int = 0
    # kdbench.data.embedded.BENCHMARK_VERSION (the schema imports no runtime code; a test keeps them equal): the
    # version of a data config without an `embedded` block (data=dolly), which the embedded eval sets then read.
    version: int = 5
    train_size: int = 40000
    validation_size: int = 500
    test_size: int = 2400
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
class TrainerConfig:
    max_steps: int = 2000
    batch_size: int = 32
    # A step's batch is split into micro-batches of this size; the loss is reduced by the token count of the
    # whole step, so the split does not change the objective. null: no split.
    micro_batch_size: int | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    val_every: int = 500
    val_batches: int = 8
    log_every: int = 50
    accelerator: str = "cpu"
    precision: str = "32-true"
    # Torch threads per process; null: all cores for a single run, one per worker in a parallel sweep.
    num_threads: int | None = None
    progress: bool = True
    # Save the trained student (save_pretrained + tokenizer) as <run dir>/student, for kdbench-eval.
    save_student: bool = True
    # The sft warm start's steps (method.warm_start; kdbench.stages.warm_start), counted in max_steps: the method
    # then trains max_steps - warm_start_steps. null: half of max_steps.
    warm_start_steps: int | None = None
    # Which weights a run keeps (kdbench.training.selection): best_rouge_l, the validation with the best ROUGE-L on
    # select_rows validation prompts (MiniLLM's rule), or last. Every validation scores val/rouge_l either way.
    select: Selection = Selection.best_rouge_l
    # Candidates are the validations from the warm-start length on (warm_start_steps, else max_steps // 2) for
    # every method, warm-started or not; a warm-started method's starting weights count as that step's
    # candidate. So every method chooses among the same steps. false: every validation is a candidate.
    select_after_warm_start: bool = True
    select_rows: int = 200
    select_max_new_tokens: int = 128
    # Save the whole training state this often (minutes of training) so that an interrupted run, teacher stage
    # or warm start continues where it stopped (kdbench.training.resume); 0: after every step; null: never.
    resume_every_minutes: float | None = 10.0


@dataclass
class LoggerConfig:
    # wandb (offline unless mode=online and the user is logged in) or none.
    kind: LoggerKind = LoggerKind.wandb
    project: str = "kdbench"
    entity: str | None = None
    mode: LoggerMode = LoggerMode.offline
    group: str | None = None
    tags: list[str] = field(default_factory=list)
