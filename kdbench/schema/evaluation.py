"""The config nodes of the evaluation suite: `eval`, its sets and its optional parts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from omegaconf import MISSING

from kdbench.schema.checks import check_max_failed_fraction
from kdbench.schema.common import Decoding, GenerationConfig, SourceConfig


class EvalSetKind(StrEnum):
    """generation: generate a response and score its text; classification: score label words (calibration)."""
    generation = "generation"
    classification = "classification"


class TextMetric(StrEnum):
    """Per-item text metrics (kdbench.evaluation.metrics.PER_ITEM)."""
    rouge_l = "rouge_l"
    exact_match = "exact_match"
    normalized_exact_match = "normalized_exact_match"


class ExposureAverage(StrEnum):
    """ExAccErr's average: sequence (Arora et al.'s expectation) or alive (MiniLLM's script)."""
    sequence = "sequence"
    alive = "alive"


class JudgeBackend(StrEnum):
    """openai: any OpenAI-compatible chat endpoint; hf: a local model; none: no judging."""
    openai = "openai"
    hf = "hf"
    none = "none"


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
    prompt: str | None = None
    # Label words in class-index order: a row's label is an index (int or bool) or one of these words.
    label_words: list[str] = field(default_factory=list)
    label_column: str = "label"
    # Embedded sets: only the rows of this category (e.g. benchmark v5's `mood` family).
    category: str | None = None
    # Equal-width confidence bins of the ECE and the reliability diagram.
    n_bins: int = 10


@dataclass
class TruthConfig:
    """Metrics against the true answer distribution p*(y | x) of each row (kdbench.evaluation.truth_sets): only
    for embedded sources of a benchmark with one (data.embedded.version=5). A generation set gets the true forward
    KL, precision (T=1 samples and greedy), recall and, for the long-form family, validity; a classification set
    the mean |q(label) - p*(label)|."""
    enabled: bool = False
    # The first num_prompts rows of each family, in the set's order (null: every row). 60 a family on the v5 test
    # split: 420 prompts x (k + 1) answers a model, a family's precision pooled over 960 answers. Its cost is the
    # sampling: on the tiny random student (whose answers never stop) ~5x the set's greedy pass over all 2,400
    # rows; a trained model stops early on every family but `story`.
    num_prompts: int | None = 60
    # T=1 samples a prompt for precision and recall (recall compares them with as many draws of p*).
    k: int = 16
    # Draws of p* a prompt for the Monte Carlo KL where p* lists no support (or a larger one than exact_up_to).
    kl_samples: int = 32
    # Support size up to which the KL is exact (every listed answer scored once); above it, Monte Carlo. 128 keeps
    # every listed v5 family exact (pairs lists at most 120 answers): no sampling noise for little more cost.
    # null: exact wherever p* lists its support; 0: always Monte Carlo.
    exact_up_to: int | None = 128
    # Word counts at which the long-form family's survival curve is read (`valid@<L>`).
    validity_lengths: list[int] = field(default_factory=lambda: [10, 20, 40, 60])
    seed: int = 0


@dataclass
class EvalSetConfig:
    """One evaluation set (conf/eval_set/<name>.yaml); a profile holds them in `eval.sets`, keyed by name."""
    # generation: generate a response and score its text; classification: score label words (calibration).
    kind: EvalSetKind = EvalSetKind.generation
    source: SourceConfig = field(default_factory=lambda: SourceConfig(split="test"))
    # At most this many rows (after source.skip / source.limit); eval.limit caps every set at once.
    limit: int | None = None
    # rouge_l, exact_match (strict), normalized_exact_match (MiniLLM's); kdbench.evaluation.metrics.PER_ITEM.
    metrics: list[TextMetric] = field(default_factory=lambda: [TextMetric.rouge_l, TextMetric.exact_match])
    max_new_tokens: int = 128
    # ROUGE-L per reference-length bucket in words, "lo-hi" (inclusive) or "lo+"; empty: off.
    length_buckets: list[str] = field(default_factory=list)
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
    # Metrics against each row's true answer distribution (embedded benchmark v5 only); off by default.
    truth: TruthConfig = field(default_factory=TruthConfig)


@dataclass
class SamplingConfig:
    """MiniLLM's sampling profile: every generation set named in `sets` (null: all of them) is also generated with
    pure sampling once per seed; its text metrics are reported as mean and std over the seeds
    (`<set>/sampled/<metric>_mean`, `_std`)."""
    enabled: bool = False
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    decoding: Decoding = field(default_factory=lambda: Decoding(max_new_tokens=256))
    sets: list[str] | None = None
    # Sample only each set's first `limit` rows (null: all): the profile costs one generation per seed and row,
    # and its mean over seeds needs fewer rows than the greedy metrics. `<set>/sampled/n` records the count.
    limit: int | None = None


@dataclass
class JudgeConfig:
    """The LLM judge (kdbench.evaluation.judge), defined once: `eval.judge` in a config, and what judge_pairwise
    takes when called directly.

    backend: openai (an OpenAI-compatible /chat/completions endpoint), hf (a local causal LM: `model` is its folder,
    or pass the objects to judge_pairwise) or none (skipped).
    api_key_env: the NAME of the environment variable holding the key, read at request time (the key itself is
    never in the config); None or "" for an endpoint without authentication (e.g. a local server).
    max_tokens: the judge's output budget (for hf, its new tokens; a few dozen suffice for the score line).
    temperature: sent to the endpoint (0 = deterministic, as MiniLLM); the local model always decodes greedily.
    backoff_base_s / backoff_max_s: exponential backoff base and cap; the cap also bounds a server's Retry-After.
    cache_dir: verdicts go to `<cache_dir>/judge/<key>.json`; None disables the cache.
    max_failed_fraction: the share of verdicts (0-1) whose request may fail for good before the run fails, naming
    the endpoint's last error, instead of reporting a ratio over the rest (1.0: never fail; 0: none may fail).
    """
    backend: JudgeBackend = JudgeBackend.none
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    max_tokens: int = 256
    temperature: float = 0.0
    concurrency: int = 4
    max_retries: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    timeout_s: float = 120.0
    cache_dir: str | None = None
    show_progress: bool = True
    max_failed_fraction: float = 0.1

    def __post_init__(self):
        # A hand-made config (judge_pairwise called directly) gets the check a composed one gets at run start.
        check_max_failed_fraction(self.max_failed_fraction)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> JudgeConfig:
        """From a dict or an OmegaConf node; an unknown key is an error (a typo would otherwise pass silently)."""
        data = dict(mapping)
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown judge settings: {unknown}")
        return cls(**data)


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
    average: ExposureAverage = ExposureAverage.sequence
    report_at: list[int] = field(default_factory=lambda: [10, 25, 50, 100])
    # Report only positions up to the teacher's mean sample length (and that length itself): past it most teacher
    # samples have ended, and the curve measures answer length more than accumulated error.
    within_teacher_length: bool = True
    batch_size: int = 16


@dataclass
class AgreementConfig:
    """Teacher-student agreement on the gold responses of `set` (teacher forcing): token KL(teacher || student)
    and top-1 agreement (kdbench.evaluation.agreement)."""
    enabled: bool = False
    set: str = "embedded_v5_test"  # the default benchmark's test split (conf/eval/light.yaml)
    # At most this many rows of the set; null: all.
    num_items: int | None = None


@dataclass
class LmEvalConfig:
    """lm-eval tasks on the in-memory model (kdbench.evaluation.harness.run_lm_eval); empty `tasks`: off.
    kdbench's own tasks find their data by themselves: kdbench_embedded writes the embedded test split,
    kdbench_sst2 / kdbench_boolq read the sst2 / boolq sets' JSONL; task_data overrides (task -> JSONL path)."""
    tasks: list[str] = field(default_factory=list)
    limit: int | None = None
    batch_size: int = 8
    num_fewshot: int | None = None
    task_data: dict[str, str] = field(default_factory=dict)
    include_path: str | None = None


@dataclass
class EvalConfig:
    name: str = MISSING
    sets: dict[str, EvalSetConfig] = field(default_factory=dict)
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
    limit: int | None = None
    max_new_tokens: int | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    exposure_bias: ExposureBiasConfig = field(default_factory=ExposureBiasConfig)
    agreement: AgreementConfig = field(default_factory=AgreementConfig)
    lm_eval: LmEvalConfig = field(default_factory=LmEvalConfig)
    # PNGs (ExAccErr curve, ROUGE-L by length, reliability diagrams) next to results.json, logged to W&B.
    plots: bool = True
