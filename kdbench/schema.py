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
    # hf only: the file(s) inside the dataset repository to read (datasets' data_files), e.g. "11_/valid.jsonl"
    # for MiniLLM/sinst; the split of a data_files load is "train".
    data_files: Optional[str] = None
    # hf only: the copy of this set bundled with kdbench (kdbench/assets/evalsets/<name>.jsonl.gz), read instead of
    # the hub when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set or the hub cannot be reached.
    bundled: Optional[str] = None


@dataclass
class EmbeddedConfig:
    seed: int = 0
    version: int = 4
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
class HiddenConfig:
    """Hidden-state distillation (FitNets / TinyBERT-style): student layer i matches teacher layer layer_map[i]."""
    # Weight of the hidden-state loss added to the method's loss; 0 turns it off.
    weight: float = 0.0
    # mse or cosine (1 - cosine similarity), per response position, averaged over the mapped layers.
    loss: str = "mse"
    # Teacher layer (1..L_teacher; 0 = embeddings) for each student layer 1..L_student; null = uniform:
    # student layer l <- teacher layer round(l * L_teacher / L_student).
    layer_map: Optional[List[int]] = None


METHOD_KINDS = ("offline", "seqkd", "onpolicy", "distillm", "minillm")


@dataclass
class SeqKDConfig:
    """Sequence-level KD (Kim & Rush 2016): the teacher answers the training prompts once (content-keyed cache,
    shared by every run and sweep cell with the same teacher, prompts and settings), the student is fine-tuned on
    those answers. Text goes between the two, so their tokenizers may differ."""
    # How many training prompts the teacher answers: null = as many rows as the step budget reads
    # (trainer.max_steps x trainer.batch_size), at most the whole train split.
    max_prompts: Optional[int] = None
    # The teacher's decoding: greedy (Kim & Rush's beam-1 approximation of the mode) by default.
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    batch_size: int = 64
    seed: int = 0


@dataclass
class OnPolicyConfig:
    """On-policy steps (GKD): with probability `lmbda` a step trains on the student's own samples for the batch's
    prompts instead of the data's responses. Defaults: TRL's GKDTrainer."""
    lmbda: float = 0.5
    temperature: float = 0.9
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128


@dataclass
class DistiLLMConfig:
    """DistiLLM's adaptive off-policy student outputs (kdbench.methods.distillm); defaults: the official code."""
    init_threshold: float = 0.0
    # The threshold rises by threshold_step when validation CE is >= loss_eps above the reference.
    threshold_step: float = 0.1
    loss_eps: float = 0.1
    capacity: int = 1000
    # How the chance of fresh samples (vs replayed ones) moves over training: decreasing, increasing, constant.
    replay_ratio: str = "decreasing"
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128


@dataclass
class MiniLLMConfig:
    """MiniLLM's policy gradient (kdbench.methods.minillm). Defaults: the official code; see that module for the
    paper's values of gamma, return_includes_current, whiten_advantages (and method.alpha, the pretraining
    kd_ratio)."""
    teacher_mixed_alpha: float = 0.2
    temperature: float = 1.0
    max_new_tokens: int = 128
    ppo_epochs: int = 4
    cliprange: float = 0.2
    reward_scaling: float = 0.5
    cliprange_reward: float = 100.0
    gamma: float = 0.95
    return_includes_current: bool = True
    whiten_advantages: bool = True
    length_norm: bool = True
    single_step_reg: bool = True
    lm_coef: float = 1.0


@dataclass
class MethodConfig:
    name: str = MISSING
    # offline: a divergence to the teacher on the data's own responses (sft is the case with no divergence);
    # seqkd: fine-tuning on the teacher's generated responses (black-box: `seqkd` below, no divergence);
    # onpolicy: the divergence, on the student's own samples with probability onpolicy.lmbda (GKD);
    # distillm: the divergence, on student samples (fresh or replayed) as often as validation loss asks (DistiLLM);
    # minillm: reverse-KL policy gradient on teacher-mixed samples plus a pretraining term (MiniLLM).
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
    # Start from the student's sft warm start (kdbench.stages.warm_start) instead of its initial weights: on by
    # default for the methods that sample from the student, a switch for the others.
    warm_start: bool = False
    seqkd: SeqKDConfig = field(default_factory=SeqKDConfig)
    onpolicy: OnPolicyConfig = field(default_factory=OnPolicyConfig)
    distillm: DistiLLMConfig = field(default_factory=DistiLLMConfig)
    minillm: MiniLLMConfig = field(default_factory=MiniLLMConfig)


@dataclass
class GenerationConfig:
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    batch_size: int = 64
    seed: int = 0


def sampling_settings(cfg, batch_size: int, seed: int, do_sample: bool = True) -> GenerationConfig:
    """Generation settings from a method's sampling block (anything with temperature, top_p, top_k and
    max_new_tokens: method.seqkd, .onpolicy, .distillm)."""
    return GenerationConfig(do_sample=do_sample, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                            max_new_tokens=cfg.max_new_tokens, batch_size=batch_size, seed=seed)


@dataclass
class ClassificationConfig:
    """Zero-shot label scoring of a classification set (calibration): each row's prompt is followed by every label
    word in turn and scored by the model (kdbench.evaluation.calibration.score_labels)."""
    # The prompt is MiniLLM's Alpaca template (kdbench.data.template.render_prompt) filled with `instruction` and
    # `input`, two str.format templates over the row's fields (e.g. "{passage}\nQuestion: {question}?"); or
    # `prompt`, a whole-prompt template, when set. Embedded rows keep their own instruction and input when both
    # templates are empty.
    instruction: str = ""
    input: str = ""
    prompt: Optional[str] = None
    # Label words in class-index order: a row's label is an index (int or bool) or one of these words.
    label_words: List[str] = field(default_factory=list)
    label_column: str = "label"
    # Embedded sets: only the rows of this category (e.g. the `sentiment` family).
    category: Optional[str] = None
    # Equal-width confidence bins of the ECE and the reliability diagram.
    n_bins: int = 10


@dataclass
class EvalSetConfig:
    """One evaluation set (conf/eval_set/<name>.yaml); a profile holds them in `eval.sets`, keyed by name."""
    # generation: generate a response and score its text; classification: score label words (calibration).
    kind: str = "generation"
    source: SourceConfig = field(default_factory=lambda: SourceConfig(split="test"))
    # At most this many rows (after source.skip / source.limit); eval.limit caps every set at once.
    limit: Optional[int] = None
    # rouge_l, exact_match (strict), normalized_exact_match (MiniLLM's); kdbench.evaluation.metrics.PER_ITEM.
    metrics: List[str] = field(default_factory=lambda: ["rouge_l", "exact_match"])
    max_new_tokens: int = 128
    # ROUGE-L per reference-length bucket in words, "lo-hi" (inclusive) or "lo+"; empty: off.
    length_buckets: List[str] = field(default_factory=list)
    # Diversity (Dist-4, corpus level) and repetition inside a response (4-gram repeats), x 100.
    dist4: bool = False
    repetition: bool = False
    # MiniLLM's LM loss: mean token cross-entropy of the gold response given the prompt (teacher forcing).
    lm_loss: bool = False
    # Ask the LLM judge (eval.judge) to compare each generation with the gold response.
    judge: bool = False
    # Break every metric down by the rows' `category` (`<set>/<category>/<metric>`).
    by_category: bool = True
    classification: ClassificationConfig = field(default_factory=ClassificationConfig)


@dataclass
class SamplingConfig:
    """MiniLLM's sampling profile: every generation set named in `sets` (null: all of them) is also generated with
    pure sampling once per seed; its text metrics are reported as mean and std over the seeds
    (`<set>/sampled/<metric>_mean`, `_std`)."""
    enabled: bool = False
    seeds: List[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    sets: Optional[List[str]] = None
    # Sample only each set's first `limit` rows (null: all): the profile costs one generation per seed and row,
    # and its mean over seeds needs fewer rows than the greedy metrics. `<set>/sampled/n` records the count.
    limit: Optional[int] = None


@dataclass
class JudgeSchema:
    """The LLM judge; the same fields as kdbench.evaluation.judge.JudgeConfig (a test holds them equal).
    api_key_env is the NAME of the environment variable holding the key: the key itself is never in the config."""
    backend: str = "none"
    base_url: Optional[str] = None
    model: Optional[str] = None
    api_key_env: Optional[str] = "OPENAI_API_KEY"
    max_tokens: int = 256
    temperature: float = 0.0
    concurrency: int = 4
    max_retries: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    timeout_s: float = 120.0
    cache_dir: Optional[str] = None
    show_progress: bool = True
    # The share of verdicts that may fail (after retries) before the run fails, naming the endpoint's last error.
    max_failed_fraction: float = 0.1


@dataclass
class ExposureBiasConfig:
    """ExAccErr (kdbench.evaluation.exposure_bias): student and teacher sample continuations of the prompts of
    `set`; the curve is saved and plotted, its values at `report_at` are metrics."""
    enabled: bool = False
    set: str = "dollyeval"
    num_prompts: int = 50
    max_new_tokens: int = 100
    samples_per_prompt: int = 1
    seed: int = 0
    # sequence (Arora et al.'s expectation) or alive (MiniLLM's script); see the module docstring.
    average: str = "sequence"
    report_at: List[int] = field(default_factory=lambda: [10, 25, 50, 100])
    batch_size: int = 16


@dataclass
class AgreementConfig:
    """Teacher-student agreement on the gold responses of `set` (teacher forcing): token KL(teacher || student)
    and top-1 agreement (kdbench.evaluation.agreement)."""
    enabled: bool = False
    set: str = "embedded_test"
    # At most this many rows of the set; null: all.
    num_items: Optional[int] = None


@dataclass
class LmEvalConfig:
    """lm-eval tasks on the in-memory model (kdbench.evaluation.harness.run_lm_eval); empty `tasks`: off.
    kdbench's own tasks find their data by themselves: kdbench_embedded writes the embedded test split,
    kdbench_sst2 / kdbench_boolq read the sst2 / boolq sets' JSONL; task_data overrides (task -> JSONL path)."""
    tasks: List[str] = field(default_factory=list)
    limit: Optional[int] = None
    batch_size: int = 8
    num_fewshot: Optional[int] = None
    task_data: Dict[str, str] = field(default_factory=dict)
    include_path: Optional[str] = None


@dataclass
class EvalConfig:
    name: str = MISSING
    sets: Dict[str, EvalSetConfig] = field(default_factory=dict)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    max_prompt_length: int = 256
    # Responses are cut to this many tokens where a gold response is scored (LM loss, agreement).
    max_response_length: int = 256
    # Batch size of the teacher-forced passes (LM loss, label scoring, agreement, ExAccErr).
    score_batch_size: int = 16
    # Evaluate the teacher too, as the reference row (its generations are cached by content).
    teacher: bool = True
    # How many sample generations go into the W&B table and results.json.
    num_samples: int = 20
    # Quick runs: cap every set's rows / every generation's new tokens (null: each set's own).
    limit: Optional[int] = None
    max_new_tokens: Optional[int] = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    judge: JudgeSchema = field(default_factory=JudgeSchema)
    exposure_bias: ExposureBiasConfig = field(default_factory=ExposureBiasConfig)
    agreement: AgreementConfig = field(default_factory=AgreementConfig)
    lm_eval: LmEvalConfig = field(default_factory=LmEvalConfig)
    # PNGs (ExAccErr curve, ROUGE-L by length, reliability diagrams) next to results.json, logged to W&B.
    plots: bool = True


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
    # Save the trained student (save_pretrained + tokenizer) as <run dir>/student, for kdbench-eval.
    save_student: bool = True
    # The sft warm start's steps (method.warm_start; kdbench.stages.warm_start), counted in max_steps: the method
    # then trains max_steps - warm_start_steps. null: half of max_steps.
    warm_start_steps: Optional[int] = None
    # Which weights a run keeps (kdbench.methods.selection): best_rouge_l, the validation with the best ROUGE-L on
    # select_rows validation prompts (MiniLLM's rule), or last. Every validation scores val/rouge_l either way.
    select: str = "best_rouge_l"
    select_rows: int = 200
    select_max_new_tokens: int = 128
    # Save the whole training state this often (minutes of training) so that an interrupted run, teacher stage
    # or warm start continues where it stopped (kdbench.methods.resume); 0: after every step; null: never.
    resume_every_minutes: Optional[float] = 10.0


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
    _check(m.kind in METHOD_KINDS, "method.kind", m.kind, f"known kinds: {', '.join(METHOD_KINDS)}")
    if m.kind == "seqkd":
        _check(m.divergence is None and m.alpha == 0 and m.hidden.weight == 0, "method.kind", m.kind,
               "seqkd trains on the teacher's generated text only: set divergence null, alpha 0, hidden.weight 0")
        q = m.seqkd
        _check(q.max_prompts is None or q.max_prompts > 0, "method.seqkd.max_prompts", q.max_prompts,
               "must be > 0 (or null: what the step budget reads)")
        _check(q.max_new_tokens > 0, "method.seqkd.max_new_tokens", q.max_new_tokens, "must be > 0")
        _check(q.batch_size > 0, "method.seqkd.batch_size", q.batch_size, "must be > 0")
        _check(q.temperature > 0, "method.seqkd.temperature", q.temperature, "must be > 0")
    if m.kind in ("onpolicy", "distillm"):
        _check(m.divergence is not None and m.alpha > 0, "method.kind", m.kind,
               "distillation on student outputs needs a divergence to the teacher (method.divergence, alpha > 0)")
    if m.kind == "distillm":
        d = m.distillm
        _check(0.0 <= d.init_threshold <= 1.0, "method.distillm.init_threshold", d.init_threshold, "must lie in [0, 1]")
        _check(d.capacity > 0, "method.distillm.capacity", d.capacity, "must be > 0")
        _check(d.replay_ratio in ("decreasing", "increasing", "constant"), "method.distillm.replay_ratio",
               d.replay_ratio, "use decreasing, increasing or constant")
        _check(d.temperature > 0, "method.distillm.temperature", d.temperature, "must be > 0")
        _check(d.max_new_tokens > 0, "method.distillm.max_new_tokens", d.max_new_tokens, "must be > 0")
    if m.kind == "minillm":
        q = m.minillm
        _check(m.divergence in (None, "forward_kl"), "method.divergence", m.divergence,
               "minillm's pretraining term mixes CE with forward_kl (method.alpha is its kd_ratio)")
        _check(0.0 <= q.teacher_mixed_alpha < 1.0, "method.minillm.teacher_mixed_alpha", q.teacher_mixed_alpha,
               "must lie in [0, 1)")
        _check(q.ppo_epochs >= 1, "method.minillm.ppo_epochs", q.ppo_epochs, "must be >= 1")
        _check(0.0 < q.gamma <= 1.0, "method.minillm.gamma", q.gamma, "must lie in (0, 1]")
        _check(q.reward_scaling > 0, "method.minillm.reward_scaling", q.reward_scaling, "must be > 0")
        _check(q.cliprange > 0, "method.minillm.cliprange", q.cliprange, "must be > 0")
        _check(q.temperature > 0, "method.minillm.temperature", q.temperature, "must be > 0")
        _check(q.max_new_tokens > 0, "method.minillm.max_new_tokens", q.max_new_tokens, "must be > 0")
    if m.kind == "onpolicy":
        o = m.onpolicy
        _check(0.0 <= o.lmbda <= 1.0, "method.onpolicy.lmbda", o.lmbda, "a probability must lie in [0, 1]")
        _check(o.temperature > 0, "method.onpolicy.temperature", o.temperature, "must be > 0")
        _check(o.max_new_tokens > 0, "method.onpolicy.max_new_tokens", o.max_new_tokens, "must be > 0")
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
    _check(t.select in ("best_rouge_l", "last"), "trainer.select", t.select, "use best_rouge_l or last")
    _check(t.select_rows >= 0, "trainer.select_rows", t.select_rows, "must be >= 0")
    if m.warm_start:
        ws = t.warm_start_steps if t.warm_start_steps is not None else t.max_steps // 2
        _check(0 < ws < t.max_steps, "trainer.warm_start_steps", ws,
               f"the sft warm start takes part of trainer.max_steps={t.max_steps}: needs 0 < steps < max_steps")
    _check(t.batch_size > 0, "trainer.batch_size", t.batch_size, "must be > 0")
    if t.micro_batch_size is not None:
        _check(0 < t.micro_batch_size <= t.batch_size, "trainer.micro_batch_size", t.micro_batch_size,
               f"must lie in [1, trainer.batch_size={t.batch_size}]")
    _check(t.optim.lr > 0, "trainer.optim.lr", t.optim.lr, "must be > 0")
    _check(cfg.logger.kind in ("wandb", "none"), "logger.kind", cfg.logger.kind, "use wandb or none")
    _check(cfg.logger.mode in ("offline", "online", "disabled"), "logger.mode", cfg.logger.mode,
           "use offline, online or disabled")
    _check(cfg.data.max_prompt_length > 0, "data.max_prompt_length", cfg.data.max_prompt_length, "must be > 0")
    sources = [("data.train", cfg.data.train), ("data.validation", cfg.data.validation)]
    sources += [(f"eval.sets.{name}.source", s.source) for name, s in cfg.eval.sets.items()]
    for key, src in sources:
        _check(src.kind in ("embedded", "jsonl", "hf"), f"{key}.kind", src.kind, "use embedded, jsonl or hf")
        if src.kind != "embedded":
            _check(bool(src.path), f"{key}.path", src.path,
                   "a jsonl source needs a file path, an hf source a dataset id or folder")
    validate_eval(cfg.eval)


EVAL_SET_KINDS = ("generation", "classification")
TEXT_METRICS = ("rouge_l", "exact_match", "normalized_exact_match")


def parse_length_buckets(specs, key: str = "length_buckets") -> list[tuple[int, Optional[int]]]:
    """["0-5", "6-10", "11+"] -> [(0, 5), (6, 10), (11, None)]; a malformed or overlapping spec fails naming key."""
    out: list[tuple[int, Optional[int]]] = []
    for spec in specs:
        text = str(spec).strip()
        try:
            if text.endswith("+"):
                lo, hi = int(text[:-1]), None
            else:
                a, b = text.split("-")
                lo, hi = int(a), int(b)
        except ValueError:
            raise ConfigError(f"{key}={list(specs)!r}: {spec!r} is not 'lo-hi' or 'lo+' (words)") from None
        _check(lo >= 0 and (hi is None or hi >= lo), key, list(specs), f"{spec!r}: need 0 <= lo <= hi")
        out.append((lo, hi))
    ordered = sorted(out)
    for (_, hi1), (lo2, _) in zip(ordered, ordered[1:]):
        _check(hi1 is not None and hi1 < lo2, key, list(specs), "buckets overlap")
    return out


def validate_eval(e: Any) -> None:
    """The evaluation profile's values (called by `validate`, and by kdbench-eval)."""
    _check(e.max_prompt_length > 0, "eval.max_prompt_length", e.max_prompt_length, "must be > 0")
    _check(e.max_response_length > 0, "eval.max_response_length", e.max_response_length, "must be > 0")
    _check(e.score_batch_size > 0, "eval.score_batch_size", e.score_batch_size, "must be > 0")
    _check(e.generation.batch_size > 0, "eval.generation.batch_size", e.generation.batch_size, "must be > 0")
    for key in ("limit", "max_new_tokens"):
        _check(e[key] is None or e[key] > 0, f"eval.{key}", e[key], "must be > 0 (or null)")
    generation_sets = []
    for name, s in e.sets.items():
        k = f"eval.sets.{name}"
        _check(s.kind in EVAL_SET_KINDS, f"{k}.kind", s.kind, f"use {' or '.join(EVAL_SET_KINDS)}")
        _check(s.limit is None or s.limit > 0, f"{k}.limit", s.limit, "must be > 0 (or null)")
        if s.kind == "generation":
            generation_sets.append(name)
            _check(s.max_new_tokens > 0, f"{k}.max_new_tokens", s.max_new_tokens, "must be > 0")
            for metric in s.metrics:
                _check(metric in TEXT_METRICS, f"{k}.metrics", metric, f"known metrics: {', '.join(TEXT_METRICS)}")
            parse_length_buckets(s.length_buckets, f"{k}.length_buckets")
        else:
            c = s.classification
            _check(len(c.label_words) >= 2, f"{k}.classification.label_words", list(c.label_words),
                   "a classification set needs at least two label words")
            _check(len(set(c.label_words)) == len(c.label_words), f"{k}.classification.label_words",
                   list(c.label_words), "label words must differ")
            _check(c.n_bins >= 1, f"{k}.classification.n_bins", c.n_bins, "must be >= 1")
            if s.source.kind == "embedded":
                _check(bool(c.category), f"{k}.classification.category", c.category,
                       "an embedded classification set needs the family to keep, e.g. sentiment")
            else:
                _check(bool(c.prompt or c.instruction), f"{k}.classification.instruction", c.instruction,
                       "give an instruction template (or classification.prompt)")
    sp = e.sampling
    if sp.enabled:
        _check(len(sp.seeds) >= 1, "eval.sampling.seeds", list(sp.seeds), "give at least one seed")
        _check(sp.temperature > 0, "eval.sampling.temperature", sp.temperature, "must be > 0")
        _check(0 < sp.top_p <= 1, "eval.sampling.top_p", sp.top_p, "must lie in (0, 1]")
        _check(sp.top_k >= 0, "eval.sampling.top_k", sp.top_k, "must be >= 0 (0: off)")
        _check(sp.max_new_tokens > 0, "eval.sampling.max_new_tokens", sp.max_new_tokens, "must be > 0")
        _check(sp.limit is None or sp.limit > 0, "eval.sampling.limit", sp.limit, "must be > 0 (null: every row)")
        for name in sp.sets or []:
            _check(name in generation_sets, "eval.sampling.sets", name,
                   f"not a generation set of this profile ({', '.join(generation_sets) or 'none'})")
    from kdbench.evaluation.judge import BACKENDS
    _check(e.judge.backend in BACKENDS, "eval.judge.backend", e.judge.backend, f"use {', '.join(BACKENDS)}")
    _check(0.0 <= e.judge.max_failed_fraction <= 1.0, "eval.judge.max_failed_fraction", e.judge.max_failed_fraction,
           "must be a share between 0 and 1 (0: no failed verdict allowed, 1: never fail the run)")
    eb = e.exposure_bias
    if eb.enabled:
        _check(eb.set in generation_sets, "eval.exposure_bias.set", eb.set,
               f"not a generation set of this profile ({', '.join(generation_sets) or 'none'})")
        for key in ("num_prompts", "max_new_tokens", "samples_per_prompt", "batch_size"):
            _check(eb[key] > 0, f"eval.exposure_bias.{key}", eb[key], "must be > 0")
        _check(eb.average in ("sequence", "alive"), "eval.exposure_bias.average", eb.average,
               "use sequence or alive")
        _check(all(v > 0 for v in eb.report_at), "eval.exposure_bias.report_at", list(eb.report_at),
               "positions start at 1")
    ag = e.agreement
    if ag.enabled:
        _check(ag.set in generation_sets, "eval.agreement.set", ag.set,
               f"not a generation set of this profile ({', '.join(generation_sets) or 'none'})")
        _check(ag.num_items is None or ag.num_items > 0, "eval.agreement.num_items", ag.num_items,
               "must be > 0 (or null)")
    le = e.lm_eval
    _check(le.limit is None or le.limit > 0, "eval.lm_eval.limit", le.limit, "must be > 0 (or null)")
    _check(le.batch_size > 0, "eval.lm_eval.batch_size", le.batch_size, "must be > 0")
