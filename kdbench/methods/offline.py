"""Offline white-box distillation: the student learns on the data's own responses, from the ground truth
(cross-entropy), from the teacher's next-token distribution at the same positions (a divergence), and optionally
from the teacher's hidden states (hidden-state distillation).

    loss = (1 - alpha) * CE + alpha * [T^2] * divergence(student, teacher; T; divergence_hp)
           + hidden.weight * mean over mapped layers of MSE(proj(h_student_l), h_teacher_map[l])

`sft` is alpha = 0 (the teacher is never run); `kd` is forward KL; `rkl`, `jsd`, `tvd`, `skl`, `srkl`, `akl` are
the other divergences of kdbench.losses, which plug in by name; `hidden` adds the hidden-state term.

Three choices that matter for the numbers:
- Logits are computed at response positions only: the LM head runs on the hidden states the loss reads, never on
  prompt positions (on the embedded benchmark ~60% of tokens are prompt).
- With a teacher, the divergence and the CE come from `chunked_divergence`: the logits of both models exist
  `chunk_rows(method, V)` rows at a time (a fixed number of logits, `method.chunk_elements`), so the loss's
  memory does not grow with the vocabulary x tokens.
- The loss is summed over tokens and divided by the token count of the whole optimizer step, with the step's
  batch split into micro-batches here (manual optimization), so the micro-batch size never changes the objective;
  Lightning's own accumulation would average micro-batch means instead.
"""

from __future__ import annotations

import math
import pickle
import time

import lightning as L
import torch
import torch.nn.functional as F

from kdbench.data.datamodule import IGNORE
from kdbench.losses import DIVERGENCES, chunked_divergence
from kdbench.methods.registry import Method, TrainingContext, register
from kdbench.models.surgery import base_and_head, response_hidden


def chunk_rows(method, vocab_size: int) -> int:
    """Rows of logits per chunk of the memory-bounded loss: `method.chunk_size` if set, else as many rows as fit
    `method.chunk_elements` logits, so that the loss's peak memory stays put whatever the vocabulary."""
    return method.chunk_size or max(1, method.chunk_elements // vocab_size)


def uniform_layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Student layer l (1..n_student) <- teacher layer round(l * n_teacher / n_student): last matches last."""
    return [round(i * n_teacher / n_student) for i in range(1, n_student + 1)]


def cosine_with_warmup(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class OfflineDistillation(L.LightningModule):
    # Attributes that change as training goes and are not tensors of the module: saved in a resume checkpoint
    # (kdbench.training.resume) so that a resumed run continues exactly. Subclasses add theirs.
    RESUME_ATTRS: tuple[str, ...] = ("tokens_seen",)

    def __init__(self, student, teacher, method, optim, max_steps: int, vocab_size: int,
                 micro_batch_size: int | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.student = student
        # Held outside the module tree on purpose: not in checkpoints, not in the optimizer, not in .train().
        self._teacher = [teacher] if teacher is not None else []
        self.method, self.optim_cfg = method, optim
        self.max_steps, self.vocab_size, self.micro_batch_size = max_steps, vocab_size, micro_batch_size
        self.divergence = DIVERGENCES[method.divergence] if method.divergence and method.alpha > 0 else None
        self.divergence_hp = dict(method.divergence_hp or {})
        self.layer_map, self.projections = None, None
        if method.hidden.weight > 0:
            self._setup_hidden(method.hidden, student, teacher)
        self.tokens_seen = 0
        self._t0, self._tokens0 = None, 0
        self.resumed = False
        # Training seconds spent by the processes this run resumed from: a resumed run's cost includes them.
        self.seconds_before = 0.0

    def on_save_checkpoint(self, checkpoint):
        state = {a: getattr(self, a) for a in self.RESUME_ATTRS}
        state["seconds_before"] = self.seconds_before + (time.perf_counter() - self._t0 if self._t0 else 0.0)
        # Pickled together, so objects shared between attributes (DistiLLM's buffer and its rng) stay shared.
        checkpoint["kdbench_state"] = pickle.dumps(state)

    def on_load_checkpoint(self, checkpoint):
        for a, v in pickle.loads(checkpoint["kdbench_state"]).items():
            setattr(self, a, v)
        self.resumed = True

    def _setup_hidden(self, hidden, student, teacher) -> None:
        from kdbench.schema import ConfigError

        if teacher is None:
            raise ConfigError("method.hidden.weight > 0 needs a white-box teacher")
        n_s, n_t = student.config.num_hidden_layers, teacher.config.num_hidden_layers
        layer_map = list(hidden.layer_map) if hidden.layer_map is not None else uniform_layer_map(n_s, n_t)
        if len(layer_map) != n_s or not all(0 <= t <= n_t for t in layer_map):
            raise ConfigError(f"method.hidden.layer_map={layer_map}: needs one teacher layer in [0, {n_t}] "
                              f"for each of the student's {n_s} layers")
        self.layer_map = layer_map
        h_s, h_t = student.config.hidden_size, teacher.config.hidden_size
        if h_s != h_t:  # a learned projection per mapped layer, trained with the student, dropped after
            self.projections = torch.nn.ModuleList(torch.nn.Linear(h_s, h_t, bias=False) for _ in layer_map)

    def hidden_loss_sum(self, s_layers: list, t_layers: list) -> torch.Tensor:
        """Summed over positions, averaged over mapped layers: MSE per position (mean over the teacher's width)
        or 1 - cosine similarity."""
        total = 0.0
        for i, t_index in enumerate(self.layer_map):
            s = s_layers[i + 1].float()
            if self.projections is not None:
                s = self.projections[i](s)
            t = t_layers[t_index].float()
            if self.method.hidden.loss == "mse":
                total = total + (s - t).pow(2).mean(-1).sum()
            else:
                total = total + (1 - F.cosine_similarity(s, t, dim=-1)).sum()
        return total / len(self.layer_map)

    @property
    def teacher(self):
        return self._teacher[0] if self._teacher else None

    def on_fit_start(self):
        # from_pretrained returns a model in eval mode (a real student's dropout off, e.g. GPT-2's 0.1): training
        # runs in train mode whatever mode the student was loaded in. The teacher is no submodule: it stays frozen.
        self.train()
        if self.teacher is not None:
            self.teacher.to(self.device)

    def loss_sums(self, batch: dict) -> dict:
        """Summed (not averaged) CE, divergence and hidden-state loss over the batch's response tokens."""
        layers = self.layer_map is not None
        s_out = response_hidden(self.student, batch, all_layers=layers)
        s_hidden, targets = s_out[0], s_out[1]
        t_out = None
        if self.divergence is not None or layers:
            with torch.no_grad():
                t_out = response_hidden(self.teacher, batch, all_layers=layers)
        s_head = base_and_head(self.student)[1]
        if self.divergence is None:
            ce = F.cross_entropy(s_head(s_hidden)[:, :self.vocab_size].float(), targets, reduction="sum")
            out = {"ce": ce, "loss": ce}
        else:
            # The memory-bounded path: logits of both models exist only chunk_rows at a time (forward and
            # backward), and the CE comes from the same student logits as the divergence.
            t_head = base_and_head(self.teacher)[1]
            div, ce = chunked_divergence(
                s_hidden, s_head.weight, t_out[0], t_head.weight, self.divergence, vocab_size=self.vocab_size,
                temperature=self.method.temperature, chunk_size=chunk_rows(self.method, self.vocab_size),
                student_head_bias=s_head.bias, teacher_head_bias=t_head.bias, targets=targets,
                **self.divergence_hp)
            ce, kd = ce.sum(), div.sum()
            if self.method.scale_by_t2:
                kd = kd * self.method.temperature ** 2
            out = {"ce": ce, "kd": kd, "loss": (1 - self.method.alpha) * ce + self.method.alpha * kd}
        if layers:
            out["hidden"] = self.hidden_loss_sum(s_out[2], t_out[2])
            out["loss"] = out["loss"] + self.method.hidden.weight * out["hidden"]
        out["tokens"] = targets.numel()
        return out

    def _start_clock(self) -> None:
        # Throughput counts this process's tokens only: a resumed run restores tokens_seen, not the clock.
        if self._t0 is None:
            self._t0, self._tokens0 = time.perf_counter(), self.tokens_seen

    def _tokens_per_s(self) -> float:
        return (self.tokens_seen - self._tokens0) / max(time.perf_counter() - self._t0, 1e-9)

    def _micro_batches(self, parts: list[dict]):
        for part in parts:
            size = self.micro_batch_size or part["input_ids"].shape[0]
            for k in range(0, part["input_ids"].shape[0], size):
                yield {key: v[k:k + size] for key, v in part.items()}

    def training_step(self, batch, batch_idx):
        """One optimizer step over a batch given as one padded tensor dict or as {"parts": [...]}."""
        self._start_clock()
        opt = self.optimizers()
        sched = self.lr_schedulers()
        parts = batch["parts"] if "parts" in batch else [batch]
        n_tokens = sum(int((p["labels"][:, 1:] != IGNORE).sum()) for p in parts)
        totals = {}
        for micro in self._micro_batches(parts):
            sums = self.loss_sums(micro)
            # Divide by the whole step's token count: the sum over micro-batches equals the full-batch loss.
            self.manual_backward(sums["loss"] / max(n_tokens, 1))
            for k, v in sums.items():
                if k != "tokens":
                    totals[k] = totals.get(k, 0.0) + float(v.detach())
        self.clip_gradients(opt, gradient_clip_val=self.optim_cfg.grad_clip, gradient_clip_algorithm="norm")
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        self.tokens_seen += sum(int(p["attention_mask"].sum()) for p in parts)
        logs = {f"train/{k}": v / max(n_tokens, 1) for k, v in totals.items()}
        logs["train/lr"] = sched.get_last_lr()[0]
        logs["train/tokens_per_s"] = self._tokens_per_s()
        self.log_dict(logs, prog_bar=False, on_step=True, on_epoch=False,
                      batch_size=sum(p["input_ids"].shape[0] for p in parts))
        self.log("loss", logs["train/loss"], prog_bar=True, on_step=True, logger=False)

    def validation_step(self, batch, batch_idx):
        sums = self.loss_sums(batch)
        n = max(sums["tokens"], 1)
        bs = batch["input_ids"].shape[0]
        self.log("val/ce", sums["ce"] / n, batch_size=bs, prog_bar=True)
        for k in ("kd", "hidden"):
            if k in sums:
                self.log(f"val/{k}", sums[k] / n, batch_size=bs)
        return sums

    def configure_optimizers(self):
        o = self.optim_cfg
        decay = [p for n, p in self.student.named_parameters() if p.requires_grad and p.ndim >= 2]
        if self.projections is not None:
            decay += list(self.projections.parameters())
        no_decay = [p for n, p in self.student.named_parameters() if p.requires_grad and p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=o.lr, betas=(o.beta1, o.beta2))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: cosine_with_warmup(s, o.warmup_steps, self.max_steps, o.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@register
class Offline(Method):
    """`method.kind: offline`: sft, kd and every divergence on the data's responses, hidden-state distillation."""

    kind = "offline"

    def build(self, student, teacher, context: TrainingContext):
        return OfflineDistillation(student.model, teacher.model if self.reads_teacher_logits else None, self.cfg,
                                   context.optim, context.steps, context.vocab_size, context.micro_batch_size)
