"""DistiLLM (Ko et al. 2024, "DistiLLM: Towards Streamlined Distillation for Large Language Models"): a skew
divergence to the teacher plus adaptive off-policy use of student-generated outputs.

Per optimizer step, one draw r ~ U(0, 1) against the adaptive probability `threshold` (the official code's
`finetune.py`, whose defaults these are):

    fresh = threshold x schedule(step)   schedule: decreasing 1 - step/total (default), increasing step/total,
                                         constant 0.5
    r < fresh, or r < threshold while the replay buffer is not full:
        the student samples responses for the batch's prompts; they go into the buffer and this step trains on them
    else r < threshold:
        this step trains on a batch drawn from the buffer (the student's earlier outputs: off-policy, cheap)
    else:
        this step trains on the data's responses

`threshold` starts at `init_threshold` (0) and rises by `threshold_step` (0.1, at most 1) at a validation whose
loss (the student's CE on the validation split) is at least `loss_eps` (0.1) above the reference loss; the
reference is the loss before training and moves to the new loss whenever the threshold rises. So student outputs
come in only when the student starts to overfit the fixed data, and more of them the more it does. The
validations that move the threshold are the method's own, `threshold_checks` of them evenly over its phase (the
official code measures at every --eval-interval): tied to the trainer's validations, the schedule ran twice in a
1,000-step phase and never engaged, and every method keeps the same selection validations.
"""

from __future__ import annotations

import random
from collections import deque

from kdbench.data.datamodule import collate
from kdbench.generation.settings import generation_settings
from kdbench.methods.offline import OfflineDistillation
from kdbench.methods.onpolicy import prompts_of_batch, step_seed, student_batch
from kdbench.methods.registry import Method, TrainingContext, register
from kdbench.schema import check, check_decoding


def fresh_probability(threshold: float, step: int, total: int, schedule: str) -> float:
    """The probability of sampling new student outputs at this step (the official `samp_threshold`)."""
    if schedule == "constant":
        return threshold * 0.5
    if schedule == "increasing":
        return threshold * step / total
    return threshold * (1 - step / total)


class AdaptiveThreshold:
    """The validation-loss rule that raises the probability of training on student outputs."""

    def __init__(self, init: float, step: float, loss_eps: float):
        self.value, self.step, self.loss_eps = init, step, loss_eps
        self.reference: float | None = None

    def update(self, val_loss: float) -> bool:
        """Feed one validation loss (the first is the reference). Returns whether the threshold rose."""
        if self.reference is None:
            self.reference = val_loss
            return False
        if val_loss >= self.reference + self.loss_eps:
            self.value = min(1.0, self.value + self.step)
            self.reference = val_loss
            return True
        return False


class ReplayBuffer:
    """The last `capacity` student outputs as (prompt ids, response ids), drawn uniformly without replacement."""

    def __init__(self, capacity: int, rng: random.Random):
        self.items: deque = deque(maxlen=capacity)
        self.capacity, self.rng = capacity, rng

    def __len__(self) -> int:
        return len(self.items)

    @property
    def full(self) -> bool:
        return len(self.items) >= self.capacity

    def add(self, items: list[dict]) -> None:
        self.items.extend(items)

    def sample(self, n: int) -> list[dict]:
        return self.rng.sample(list(self.items), k=min(n, len(self.items)))


class DistiLLMDistillation(OfflineDistillation):
    RESUME_ATTRS = (*OfflineDistillation.RESUME_ATTRS, "_rng", "threshold", "buffer", "counts", "generated_tokens",
                    "threshold_checks")

    def __init__(self, student, teacher, method, optim, max_steps: int, vocab_size: int, pad_id: int, eos_id: int,
                 seed: int, micro_batch_size: int | None = None):
        super().__init__(student, teacher, method, optim, max_steps, vocab_size, micro_batch_size)
        d = method.distillm
        self.cfg = d
        self.pad_id, self.eos_id, self.seed = pad_id, eos_id, seed
        self._rng = random.Random(f"kdbench-distillm-{seed}")
        self.threshold = AdaptiveThreshold(d.init_threshold, d.threshold_step, d.loss_eps)
        self.buffer = ReplayBuffer(d.capacity, self._rng)
        self.counts = {"fresh": 0, "replay": 0, "data": 0}
        self.generated_tokens = 0
        # The threshold's own validations (DistiLLMConfig.threshold_checks), evenly inside the phase (a check at
        # its last step could change nothing).
        n = d.threshold_checks
        self.check_steps = {round(k * max_steps / (n + 1)) for k in range(1, n + 1)} - {0}
        self.threshold_checks = 0

    # --------------------------------------------------------------------------------------------- data choice

    def choose(self, step: int) -> str:
        """'fresh', 'replay' or 'data' for this step (one uniform draw, as the official loop)."""
        r = self._rng.random()
        t = self.threshold.value
        if r < fresh_probability(t, step, self.max_steps, self.cfg.replay_ratio) or (r < t and not self.buffer.full):
            return "fresh"
        if r < t and len(self.buffer):
            return "replay"
        return "data"

    def _sample_fresh(self, parts: list[dict], step: int) -> list[dict]:
        d = self.cfg
        out = []
        for k, part in enumerate(parts):
            prompts = prompts_of_batch(part)
            settings = generation_settings(d.decoding, do_sample=True, batch_size=len(prompts),
                                           seed=step_seed(self.seed, step, k))
            batch, n_new = student_batch(self.student, prompts, settings, self.pad_id, self.eos_id)
            self.generated_tokens += n_new
            self.buffer.add(_items_of(batch))
            out.append(batch)
        return out

    def training_step(self, batch, batch_idx):
        parts = batch["parts"] if "parts" in batch else [batch]
        device = parts[0]["input_ids"].device
        if self.global_step in self.check_steps:
            self.threshold.update(self._validation_ce())
            self.threshold_checks += 1
        kind = self.choose(self.global_step)
        if kind == "fresh":
            parts = self._sample_fresh(parts, self.global_step)
        elif kind == "replay":
            parts = [collate(self.buffer.sample(sum(p["input_ids"].shape[0] for p in parts)), self.pad_id)]
        self.counts[kind] += 1
        self.log("train/student_data_probability", self.threshold.value, on_step=True, on_epoch=False, batch_size=1)
        return super().training_step({"parts": [{k: v.to(device) for k, v in p.items()} for p in parts]}, batch_idx)

    # ------------------------------------------------------------------------------------ adaptive threshold

    def on_train_start(self):
        # The reference loss: the student's validation CE before any step (the official code evaluates first);
        # a resumed run has it already, in the restored threshold.
        if not self.resumed:
            self.threshold.update(self._validation_ce())

    def _validation_ce(self) -> float:
        import torch

        limit = self.trainer.limit_val_batches
        total = n = 0.0
        was = self.student.training
        self.student.eval()
        with torch.no_grad():
            for i, b in enumerate(self.trainer.datamodule.val_dataloader()):
                if isinstance(limit, int) and i >= limit:
                    break
                sums = self.loss_sums({k: v.to(self.device) for k, v in b.items()})
                total += float(sums["ce"])
                n += sums["tokens"]
        self.student.train(was)
        return total / max(n, 1)


def _items_of(batch: dict) -> list[dict]:
    """A collated batch back into (prompt ids, response ids) items for the replay buffer."""
    return [{"prompt_ids": p, "response_ids": ids[len(p):int(mask.sum())].tolist()}
            for p, ids, mask in zip(prompts_of_batch(batch), batch["input_ids"], batch["attention_mask"])]


@register
class DistiLLM(Method):
    """`method.kind: distillm`: the divergence on student samples (fresh or replayed) as often as validation asks."""

    kind = "distillm"
    samples_student = True

    def validate_block(self) -> None:
        self.requires_divergence()
        d = self.cfg.distillm
        check(0.0 <= d.init_threshold <= 1.0, "method.distillm.init_threshold", d.init_threshold,
              "must lie in [0, 1]")
        check(d.capacity > 0, "method.distillm.capacity", d.capacity, "must be > 0")
        check(d.threshold_checks >= 5, "method.distillm.threshold_checks", d.threshold_checks,
              "the adaptive schedule needs at least 5 validations in the method's phase to engage")
        check_decoding(d.decoding, "method.distillm.decoding")

    def build(self, student, teacher, context: TrainingContext):
        return self.sampling_module(DistiLLMDistillation, student, teacher, context)

    def cost(self, module) -> dict:
        # Fresh samples, replayed samples, data; and the adaptive probability where training ended.
        return {"student_generated_tokens": module.generated_tokens,
                **{f"{k}_steps": v for k, v in module.counts.items()},
                "student_output_steps": module.counts["fresh"] + module.counts["replay"],
                "threshold_checks": module.threshold_checks,
                "final_student_data_probability": module.threshold.value}
