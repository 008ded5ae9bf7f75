"""Method kinds. Each `method.kind` is one class in a module of this package, registered with `@register`: it says
what it needs (a teacher, the teacher's distributions and so one tokenizer, sampling from the student), validates
its own config block (naming the key), builds its Lightning module, prepares its training data and reports what it
cost. A run asks `method_of(cfg.method)` and nothing else; adding a method is a module here plus its YAML in
conf/method/ (plus its config dataclass in kdbench.schema.methods). The module's RESUME_ATTRS list its resume
state (kdbench.methods.offline.OfflineDistillation.on_save_checkpoint).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, ClassVar

from kdbench.schema import ConfigError, check

_KINDS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make `cls` the class of `method.kind == cls.kind`."""
    if cls.kind in _KINDS and _KINDS[cls.kind] is not cls:
        raise RuntimeError(f"method kind {cls.kind!r} is registered twice: {_KINDS[cls.kind]} and {cls}")
    _KINDS[cls.kind] = cls
    return cls


def kinds() -> dict[str, type[Method]]:
    """Every registered kind; imports each module of kdbench.methods once, so that a new module registers itself
    without an import list to edit."""
    if not kinds.discovered:
        import kdbench.methods as package

        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{info.name}")
        kinds.discovered = True
    return dict(_KINDS)


kinds.discovered = False


def method_of(method_cfg) -> Method:
    """The method object for a `method` config block; an unknown kind fails naming method.kind."""
    known = kinds()
    if method_cfg.kind not in known:
        raise ConfigError(f"method.kind={method_cfg.kind!r}: known kinds: {', '.join(sorted(known))}")
    return known[method_cfg.kind](method_cfg)


class Method:
    """What every kind shares. Subclasses set `kind`, and override what differs."""

    kind: ClassVar[str] = ""
    # Samples from the student while training: needs the teacher and one tokenizer for both.
    samples_student: ClassVar[bool] = False

    def __init__(self, cfg):
        self.cfg = cfg

    # ---------------------------------------------------------------------------------------------- needs
    @property
    def reads_teacher_logits(self) -> bool:
        """White-box: the loss reads the teacher's distributions or hidden states (so they must share a
        vocabulary), on the data or on student samples."""
        m = self.cfg
        return self.samples_student or (m.divergence is not None and m.alpha > 0) or m.hidden.weight > 0

    @property
    def needs_teacher(self) -> bool:
        return self.reads_teacher_logits

    # ----------------------------------------------------------------------------------------- validation
    def validate(self) -> None:
        """The method's own block first, then what every kind shares (loss mixing, divergence, chunking)."""
        self.validate_block()
        m = self.cfg
        check(m.temperature > 0, "method.temperature", m.temperature, "must be > 0")
        check(0.0 <= m.alpha <= 1.0, "method.alpha", m.alpha, "a mixing weight must lie in [0, 1]")
        if m.divergence is not None:
            from kdbench.losses import DIVERGENCES

            check(m.divergence in DIVERGENCES, "method.divergence", m.divergence,
                  f"known divergences: {', '.join(sorted(DIVERGENCES))}")
            _check_divergence_hp(DIVERGENCES[m.divergence], dict(m.divergence_hp or {}), m.divergence)
        check(m.chunk_size is None or m.chunk_size > 0, "method.chunk_size", m.chunk_size, "must be > 0 (or null)")
        check(m.chunk_elements > 0, "method.chunk_elements", m.chunk_elements, "must be > 0")
        check(m.hidden.weight >= 0, "method.hidden.weight", m.hidden.weight, "must be >= 0")

    def validate_block(self) -> None:
        """Checks of this kind's own config block (method.<kind>.*) and of what it requires of the rest."""

    def requires_divergence(self) -> None:
        check(self.cfg.divergence is not None and self.cfg.alpha > 0, "method.kind", self.cfg.kind,
              "distillation on student outputs needs a divergence to the teacher (method.divergence, alpha > 0)")

    # ------------------------------------------------------------------------------------------- training
    def training_rows(self, rows: list[dict], teacher, context: TrainingContext) -> tuple[list[dict], dict]:
        """(the rows to train on, what preparing them cost): the data's rows unless the method makes its own."""
        return rows, {}

    def build(self, student, teacher, context: TrainingContext):
        """The LightningModule that trains `student` (a kdbench.models.loading.Loaded)."""
        raise NotImplementedError

    def sampling_module(self, module_class, student, teacher, context: TrainingContext):
        """The constructor call every student-sampling module shares (it also needs pad, EOS and the seed)."""
        tok = student.tokenizer
        return module_class(student.model, teacher.model, self.cfg, context.optim, context.steps, context.vocab_size,
                            tok.pad_token_id, tok.eos_token_id, context.seed, context.micro_batch_size)

    def cost(self, module) -> dict[str, Any]:
        """What the training cost beyond the offline tokens (sampling from the student, rollouts)."""
        return {}


@dataclass(frozen=True, kw_only=True)
class TrainingContext:
    """What a method's data and module need from the run: the budget and its batch shape, the optimizer settings,
    the shared vocabulary, the seed, the data limits and where caches and progress go."""
    steps: int
    batch_size: int
    micro_batch_size: int | None
    optim: Any
    vocab_size: int
    seed: int
    max_prompt_length: int
    cache_dir: str | None
    show_progress: bool


def phase_optim(optim, *, lr_scale: float = 1.0, constant: bool = False) -> SimpleNamespace:
    """The optimizer settings of a method whose official recipe trains at another rate than SFT: the trainer's
    settings with lr scaled by lr_scale and, when constant, no decay after the warmup (min_lr_ratio 1)."""
    fields = ("lr", "weight_decay", "beta1", "beta2", "warmup_steps", "min_lr_ratio", "grad_clip")
    out = SimpleNamespace(**{f: getattr(optim, f) for f in fields})
    out.lr = optim.lr * lr_scale
    if constant:
        out.min_lr_ratio = 1.0
    return out


def _check_divergence_hp(fn, hp: dict, name: str) -> None:
    """Call the divergence once on a toy pair: an unknown or out-of-range hyperparameter fails now, naming it,
    rather than at the first training step (and the JSD's near-endpoint warning shows at start)."""
    import torch

    try:
        fn(torch.zeros(1, 3), torch.zeros(1, 3), **hp)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"method.divergence_hp={hp!r}: {name} rejects it: {e}") from None
