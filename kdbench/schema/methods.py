"""The config nodes of the distillation methods: `method` and each kind's own block."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from omegaconf import MISSING

from kdbench.schema.common import Decoding


class HiddenLoss(StrEnum):
    mse = "mse"
    cosine = "cosine"


class ReplaySchedule(StrEnum):
    """How DistiLLM's chance of fresh (vs replayed) student samples moves over training."""
    decreasing = "decreasing"
    increasing = "increasing"
    constant = "constant"


@dataclass
class HiddenConfig:
    """Hidden-state distillation (FitNets / TinyBERT-style): student layer i matches teacher layer layer_map[i]."""
    # Weight of the hidden-state loss added to the method's loss; 0 turns it off.
    weight: float = 0.0
    # mse or cosine (1 - cosine similarity), per response position, averaged over the mapped layers.
    loss: HiddenLoss = HiddenLoss.mse
    # Teacher layer (1..L_teacher; 0 = embeddings) for each student layer 1..L_student; null = uniform:
    # student layer l <- teacher layer round(l * L_teacher / L_student).
    layer_map: list[int] | None = None


@dataclass
class SeqKDConfig:
    """Sequence-level KD (Kim & Rush 2016): the teacher answers the training prompts once (content-keyed cache,
    shared by every run and sweep cell with the same teacher, prompts and settings), the student is fine-tuned on
    those answers. Text goes between the two, so their tokenizers may differ."""
    # How many training prompts the teacher answers: null = as many rows as the step budget reads
    # (trainer.max_steps x trainer.batch_size), at most the whole train split.
    max_prompts: int | None = None
    # The teacher's decoding: greedy (Kim & Rush's beam-1 approximation of the mode) by default.
    do_sample: bool = False
    decoding: Decoding = field(default_factory=Decoding)
    batch_size: int = 64
    seed: int = 0


@dataclass
class OnPolicyConfig:
    """On-policy steps (GKD): with probability `lmbda` a step trains on the student's own samples for the batch's
    prompts instead of the data's responses. Defaults: TRL's GKDTrainer."""
    lmbda: float = 0.5
    decoding: Decoding = field(default_factory=lambda: Decoding(temperature=0.9))


@dataclass
class DistiLLMConfig:
    """DistiLLM's adaptive off-policy student outputs (kdbench.methods.distillm); defaults: the official code."""
    init_threshold: float = 0.0
    # The threshold rises by threshold_step when validation CE is >= loss_eps above the reference.
    threshold_step: float = 0.1
    loss_eps: float = 0.1
    capacity: int = 1000
    # How the chance of fresh samples (vs replayed ones) moves over training: decreasing, increasing, constant.
    replay_ratio: ReplaySchedule = ReplaySchedule.decreasing
    # The student's sampling (the official code: temperature 1, top-p 1, top-k 0).
    decoding: Decoding = field(default_factory=Decoding)
    # How many times the adaptive threshold re-measures the validation CE during the method's phase, evenly
    # spaced (the official code does it at every evaluation, --eval-interval). Its own cadence, not the
    # trainer's validations: the schedule engages whatever trainer.val_every is, and every method keeps the same
    # selection candidates. At least 5 (issue 17).
    threshold_checks: int = 10


@dataclass
class MiniLLMConfig:
    """MiniLLM's policy gradient (kdbench.methods.minillm). Defaults: the official code; see that module for the
    paper's values of gamma, return_includes_current, whiten_advantages (and method.alpha, the pretraining
    kd_ratio)."""
    teacher_mixed_alpha: float = 0.2
    # The mixed sampler applies temperature and max_new_tokens; top_p and top_k must stay off (1, 0).
    decoding: Decoding = field(default_factory=Decoding)
    # The policy-gradient phase's learning rate as a share of trainer.optim.lr, held there after the warmup when
    # constant_lr: the official scripts fine-tune (SFT) at 5e-4 with cosine decay and train MiniLLM at 5e-6 with
    # lr-min 5e-6 (scripts/gpt2/sft/sft_base.sh, scripts/gpt2/minillm/train_base_xl.sh): 1/100, constant.
    lr_ratio: float = 0.01
    constant_lr: bool = True
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
    divergence: str | None = None
    # loss = (1 - alpha) * CE(ground truth) + alpha * divergence.
    alpha: float = 0.0
    temperature: float = 1.0
    # Hinton-style KD multiplies the soft loss by T^2 to keep gradient scale; off by default (MiniLLM's KD).
    scale_by_t2: bool = False
    # The divergence's own hyperparameters, e.g. {beta: 0.5} for generalized_jsd (see its docstring).
    divergence_hp: dict[str, float] = field(default_factory=dict)
    # The memory-bounded loss computes logits a chunk of rows at a time: chunk_elements // vocabulary rows (2^22
    # fp32 logits = 16 MiB per model and per temporary: 131 rows at a 32k vocabulary, one chunk for the embedded
    # benchmark's ~900 tokens), or chunk_size rows when set. Peak loss memory ~ rows x vocabulary.
    chunk_size: int | None = None
    chunk_elements: int = 4194304
    hidden: HiddenConfig = field(default_factory=HiddenConfig)
    # Start from the student's sft warm start (kdbench.stages.warm_start) instead of its initial weights: on by
    # default for the methods that sample from the student, a switch for the others.
    warm_start: bool = False
    seqkd: SeqKDConfig = field(default_factory=SeqKDConfig)
    onpolicy: OnPolicyConfig = field(default_factory=OnPolicyConfig)
    distillm: DistiLLMConfig = field(default_factory=DistiLLMConfig)
    minillm: MiniLLMConfig = field(default_factory=MiniLLMConfig)
