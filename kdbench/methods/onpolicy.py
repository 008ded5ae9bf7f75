"""On-policy distillation (GKD, Agarwal et al. 2024): with probability lambda an optimizer step trains on responses
the student samples itself for the batch's prompts (no gradient through the sampling), otherwise on the data's own
responses; either way the loss is the configured divergence to the teacher at the response positions (for GKD the
generalized JSD with beta), exactly as the offline methods compute it.

Why on-policy: a student trained only on fixed sequences never sees its own mistakes during training, and at
generation time it conditions on them (exposure bias); sampling from the student puts the teacher's feedback on the
prefixes the student actually produces.

Defaults follow TRL's GKDTrainer (lambda 0.5, beta 0.5, sampling temperature 0.9, 128 new tokens; the divergence
itself at temperature 1). The coin is a seeded `random.Random`, so a run is reproducible.
"""

from __future__ import annotations

import random

from kdbench.data.datamodule import IGNORE, collate
from kdbench.generation.engine import generate_ids
from kdbench.generation.settings import generation_settings
from kdbench.methods.offline import OfflineDistillation
from kdbench.methods.registry import Method, TrainingContext, register
from kdbench.schema import check, check_decoding


def prompts_of_batch(batch: dict) -> list[list[int]]:
    """Each row's prompt ids: the attended tokens before its first response label (right-padded batches)."""
    out = []
    for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
        response = (labels != IGNORE).nonzero()
        end = int(response[0]) if len(response) else int(mask.sum())
        out.append(ids[:end][mask[:end].bool()].tolist())
    return out


def step_seed(run_seed: int, step: int, part: int) -> int:
    """One sampling seed per (optimizer step, batch part): reproducible, and new samples at every step and epoch."""
    return run_seed * 1_000_003 + step * 7 + part


def student_batch(student, prompts: list[list[int]], settings, pad_id: int, eos_id: int) -> tuple[dict, int]:
    """(A right-padded training batch of the prompts followed by the student's samples, the sampled tokens). A
    sample that stopped keeps its EOS as a target; an empty one (EOS at once) is still one target, EOS."""
    responses = generate_ids(student, prompts, settings, pad_id, eos_id, show_progress=False)
    items = [{"prompt_ids": p, "response_ids": r or [eos_id]} for p, r in zip(prompts, responses)]
    return collate(items, pad_id), sum(len(r) for r in responses)


class OnPolicyDistillation(OfflineDistillation):
    RESUME_ATTRS = (*OfflineDistillation.RESUME_ATTRS, "_coin", "onpolicy_steps", "generated_tokens")

    def __init__(self, student, teacher, method, optim, max_steps: int, vocab_size: int, pad_id: int, eos_id: int,
                 seed: int, micro_batch_size: int | None = None):
        super().__init__(student, teacher, method, optim, max_steps, vocab_size, micro_batch_size)
        self.onpolicy = method.onpolicy
        self.pad_id, self.eos_id, self.seed = pad_id, eos_id, seed
        self._coin = random.Random(f"kdbench-onpolicy-{seed}")
        self.onpolicy_steps = 0
        self.generated_tokens = 0

    def training_step(self, batch, batch_idx):
        if self._coin.random() < self.onpolicy.lmbda:
            parts = batch["parts"] if "parts" in batch else [batch]
            device = parts[0]["input_ids"].device
            new_parts = []
            for k, part in enumerate(parts):
                prompts = prompts_of_batch(part)
                settings = generation_settings(self.onpolicy.decoding, do_sample=True, batch_size=len(prompts),
                                               seed=step_seed(self.seed, self.global_step, k))
                sampled, n_new = student_batch(self.student, prompts, settings, self.pad_id, self.eos_id)
                self.generated_tokens += n_new
                new_parts.append({key: v.to(device) for key, v in sampled.items()})
            batch = {"parts": new_parts}
            self.onpolicy_steps += 1
        self.log("train/onpolicy_fraction", self.onpolicy_steps / (self.global_step + 1), on_step=True,
                 on_epoch=False, batch_size=1)
        return super().training_step(batch, batch_idx)


@register
class OnPolicy(Method):
    """`method.kind: onpolicy` (GKD): the divergence on the student's own samples with probability lmbda."""

    kind = "onpolicy"
    samples_student = True

    def validate_block(self) -> None:
        self.requires_divergence()
        o = self.cfg.onpolicy
        check(0.0 <= o.lmbda <= 1.0, "method.onpolicy.lmbda", o.lmbda, "a probability must lie in [0, 1]")
        check_decoding(o.decoding, "method.onpolicy.decoding")

    def build(self, student, teacher, context: TrainingContext):
        return self.sampling_module(OnPolicyDistillation, student, teacher, context)

    def cost(self, module) -> dict:
        return {"student_generated_tokens": module.generated_tokens, "onpolicy_steps": module.onpolicy_steps}
