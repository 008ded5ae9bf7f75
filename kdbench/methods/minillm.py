"""MiniLLM (Gu et al. 2024, "MiniLLM: Knowledge Distillation of Large Language Models"): minimize the
sequence-level reverse KL KL(q_student || p_teacher) by policy gradient.

Every `ppo_epochs` optimizer steps, the student (mixed with the teacher, alpha = 0.2) samples responses for the
current batch's prompts: a rollout. Per response token t, with q the student at sampling time and p the teacher:

    reward r_t = (log p(y_t) - log q(y_t)) / reward_scaling, clipped to +-cliprange_reward
    weight w_t = q(y_t) / ((1 - alpha) q(y_t) + alpha p(y_t))       importance weight of teacher-mixed sampling
    return R_t = sum_{t' >= t} gamma^(t'-t) r_t'   (official code: the current step included, gamma 0.95)
    advantage A_t = R_t / (tokens left from t)     length normalization; then whitened (official code)

The next `ppo_epochs` steps each minimize, on that rollout with the current student q_new:

    PPO:          mean_t max(-A_t rho_t, -A_t clip(rho_t, 1 - 0.2, 1 + 0.2)),   rho_t = w_t q_new(y_t) / q(y_t)
    single step:  mean_t KL(q_new(. | y<t) || p(. | y<t))   (the one-step part, exactly over the vocabulary)
    pretraining:  lm_coef x [(1 - kd_ratio) CE + kd_ratio KL(p || q_new)] on the batch's own responses
                  (kd_ratio is method.alpha, the divergence method.divergence = forward_kl)

The paper and the official code (microsoft/LMOps minillm/, which produced the published numbers) differ; kdbench
defaults to the code and makes each difference a switch (conf/method/minillm.yaml; minillm_paper.yaml sets the
paper's values):

    switch                        official code        paper
    gamma                         0.95                 1.0 (no discount)
    return_includes_current       true                 false (R_{t+1}: the single-step term covers step t)
    whiten_advantages             true                 false
    alpha (the pretraining kd_ratio) 0.5               0.0 (the pretraining term is the LM loss alone)

Where kdbench differs from both, by necessity: the pretraining term reads the batch's own instruction data (the
embedded benchmark has no pretraining corpus; MiniLLM uses OpenWebText), a rollout is one batch of prompts reused
for ppo_epochs steps (the official store holds num_rollouts samples), the EOS a sample ends with is an action like
any other token, and whitening uses the response positions only (the official `whiten` also counts padding).
trainer.micro_batch_size splits the rollout's backward and the data batch's; the rollout is sampled whole.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from kdbench.data.datamodule import IGNORE, collate
from kdbench.generation.mixed import mixed_sample
from kdbench.losses import chunked_divergence
from kdbench.methods.offline import OfflineDistillation, chunk_rows
from kdbench.methods.onpolicy import prompts_of_batch
from kdbench.methods.registry import Method, TrainingContext, phase_optim, register
from kdbench.models.surgery import base_and_head, response_hidden
from kdbench.schema import check, check_decoding

# ------------------------------------------------------------------------------------------------- arithmetic

def returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float, include_current: bool) -> torch.Tensor:
    """Discounted returns [B, L] of per-token rewards, right-aligned padding masked out: R_t = sum_{t'>=t}
    gamma^(t'-t) r_t' (include_current) or the same sum from t+1."""
    rewards = rewards * mask
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        if include_current:
            running = rewards[:, t] + gamma * running
            out[:, t] = running
        else:
            out[:, t] = running
            running = rewards[:, t] + gamma * running
    return out * mask


def tokens_left(mask: torch.Tensor) -> torch.Tensor:
    """[B, L]: how many response tokens remain from position t to the end (t included), at least 1."""
    left = mask.flip(-1).cumsum(-1).flip(-1)
    return left.clamp(min=1) * mask + (1 - mask)


def advantages(rewards: torch.Tensor, mask: torch.Tensor, gamma: float, include_current: bool,
               length_norm: bool, whiten: bool) -> torch.Tensor:
    adv = returns(rewards, mask, gamma, include_current)
    if length_norm:  # divided by the number of rewards the return sums (the paper's 1 / (T - t - 1) without t)
        left = tokens_left(mask)
        adv = adv / (left if include_current else (left - 1).clamp(min=1))
    if whiten:
        sel = adv[mask.bool()]
        if sel.numel() > 1:
            adv = (adv - sel.mean()) / (sel.std(unbiased=False) + 1e-8)
    return adv * mask


def ppo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, adv: torch.Tensor, w: torch.Tensor,
             cliprange: float) -> torch.Tensor:
    """Per-token clipped surrogate (flat tensors over response tokens): max(-A rho, -A clip(rho)), rho = w q/q_old."""
    ratio = torch.exp(logprobs - old_logprobs) * w
    return torch.max(-adv * ratio, -adv * ratio.clamp(1 - cliprange, 1 + cliprange))


# ------------------------------------------------------------------------------------------------- rollouts

@dataclass
class Rollout:
    batch: dict              # prompts + sampled responses, right-padded, labels on the responses
    old_logprobs: torch.Tensor   # [N] log q(y_t) at sampling time, response tokens flattened in batch order
    weights: torch.Tensor        # [N] importance weights of teacher-mixed sampling
    advantages: torch.Tensor     # [N]
    reward_per_token: float
    reverse_kl: float            # mean log q - log p over the sampled tokens (a sample estimate)
    tokens: int


def token_logprobs(model, batch: dict, vocab_size: int) -> torch.Tensor:
    """log model(y_t | y<t) at the batch's response tokens [N] (flattened in batch order)."""
    hidden, targets = response_hidden(model, batch)
    logits = base_and_head(model)[1](hidden)[:, :vocab_size].float()
    return torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)


def response_grid(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(Response tokens per row [B], their [B, L] mask, L the longest response): to move flat per-token values
    (response_hidden's order: row by row) onto a grid and back."""
    at = batch["labels"][:, 1:] != IGNORE
    lengths = at.sum(-1)
    L = int(lengths.max()) if len(lengths) else 0
    mask = (torch.arange(L)[None, :] < lengths[:, None]).float()
    return lengths, mask


def to_grid(values: torch.Tensor, lengths: torch.Tensor, L: int) -> torch.Tensor:
    out = torch.zeros(len(lengths), L)
    start = 0
    for j, n in enumerate(lengths.tolist()):
        out[j, :n] = values[start:start + n]
        start += n
    return out


def from_grid(grid: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return torch.cat([grid[j, :n] for j, n in enumerate(lengths.tolist())]) if len(lengths) else grid.flatten()


@torch.no_grad()
def collect_rollout(student, teacher, prompts: list[list[int]], cfg, vocab_size: int, pad_id: int, eos_id: int,
                    seed: int) -> Rollout:
    responses = mixed_sample(student, teacher, prompts, alpha=cfg.teacher_mixed_alpha,
                             max_new_tokens=cfg.decoding.max_new_tokens, pad_id=pad_id, eos_id=eos_id,
                             vocab_size=vocab_size, temperature=cfg.decoding.temperature, seed=seed)
    batch = collate([{"prompt_ids": p, "response_ids": r or [eos_id]} for p, r in zip(prompts, responses)], pad_id)
    was = student.training
    student.eval()
    logq = token_logprobs(student, batch, vocab_size)
    student.train(was)
    logp = token_logprobs(teacher, batch, vocab_size)
    a = cfg.teacher_mixed_alpha
    weights = torch.exp(logq) / ((1 - a) * torch.exp(logq) + a * torch.exp(logp))
    rewards = ((logp - logq) / cfg.reward_scaling).clamp(-cfg.cliprange_reward, cfg.cliprange_reward)
    lengths, mask = response_grid(batch)
    adv = advantages(to_grid(rewards, lengths, mask.shape[1]), mask, cfg.gamma, cfg.return_includes_current,
                     cfg.length_norm, cfg.whiten_advantages)
    return Rollout(batch=batch, old_logprobs=logq, weights=weights, advantages=from_grid(adv, lengths),
                   reward_per_token=float(rewards.mean()), reverse_kl=float((logq - logp).mean()),
                   tokens=int(mask.sum()))


# ------------------------------------------------------------------------------------------------- module

class MiniLLMDistillation(OfflineDistillation):
    """`method.divergence` (forward_kl) and `method.alpha` (the kd_ratio) drive the pretraining term through the
    offline loss; the policy-gradient part is below."""

    RESUME_ATTRS = (*OfflineDistillation.RESUME_ATTRS, "rollout", "rollout_uses", "rollouts", "generated_tokens")

    def __init__(self, student, teacher, method, optim, max_steps: int, vocab_size: int, pad_id: int, eos_id: int,
                 seed: int, micro_batch_size: int | None = None):
        super().__init__(student, teacher, method, optim, max_steps, vocab_size, micro_batch_size)
        self.cfg = method.minillm
        self.pad_id, self.eos_id, self.seed = pad_id, eos_id, seed
        self.rollout: Rollout | None = None
        self.rollout_uses = 0
        self.rollouts = 0
        self.generated_tokens = 0

    def policy_sums(self, rollout: Rollout, rows: slice, tokens: slice) -> dict:
        """PPO and single-step losses of the rollout's rows `rows`, summed over their response tokens (`tokens`
        in the rollout's flat per-token order), for the current student."""
        batch = {k: v[rows].to(self.device) for k, v in rollout.batch.items()}
        s_hidden, targets = response_hidden(self.student, batch)
        with torch.no_grad():
            t_hidden, _ = response_hidden(self.teacher, batch)
        s_head, t_head = base_and_head(self.student)[1], base_and_head(self.teacher)[1]
        # One chunked pass gives both the exact per-position KL(q_new || p) and the CE = -log q_new(y_t).
        rkl, ce = chunked_divergence(
            s_hidden, s_head.weight, t_hidden, t_head.weight, "reverse_kl", vocab_size=self.vocab_size,
            temperature=1.0, chunk_size=chunk_rows(self.method, self.vocab_size), student_head_bias=s_head.bias,
            teacher_head_bias=t_head.bias, targets=targets)
        pg = ppo_loss(-ce, rollout.old_logprobs[tokens].to(self.device),
                      rollout.advantages[tokens].to(self.device), rollout.weights[tokens].to(self.device),
                      self.cfg.cliprange)
        sums = {"pg": pg.sum(), "single_step": rkl.sum()}
        sums["rl"] = sums["pg"] + (sums["single_step"] if self.cfg.single_step_reg else 0.0)
        return sums

    def training_step(self, batch, batch_idx):
        self._start_clock()
        parts = batch["parts"] if "parts" in batch else [batch]
        if self.rollout is None or self.rollout_uses >= self.cfg.ppo_epochs:
            prompts = [p for part in parts for p in prompts_of_batch(part)]
            self.rollout = collect_rollout(self.student, self.teacher, prompts, self.cfg, self.vocab_size,
                                           self.pad_id, self.eos_id, seed=self.seed * 1_000_003 + self.global_step)
            self.rollout_uses = 0
            self.rollouts += 1
            self.generated_tokens += self.rollout.tokens
        opt, sched = self.optimizers(), self.lr_schedulers()
        # loss = (PG + single-step) per rollout token + lm_coef * pretraining loss per data token, backpropagated
        # in micro-batches of trainer.micro_batch_size rows, each part divided by its whole count: the sum of the
        # pieces is the full-batch gradient, whatever the split.
        n_roll = max(int(self.rollout.old_logprobs.numel()), 1)
        rows = int(self.rollout.batch["input_ids"].shape[0])
        size = self.micro_batch_size or rows
        ends = [0, *response_grid(self.rollout.batch)[0].cumsum(0).tolist()]  # rows' bounds in the flat tokens
        rl = {"pg": 0.0, "single_step": 0.0, "rl": 0.0}
        for k in range(0, rows, size):
            stop = min(k + size, rows)
            sums = self.policy_sums(self.rollout, slice(k, stop), slice(ends[k], ends[stop]))
            self.manual_backward(sums["rl"] / n_roll)
            for key in rl:
                rl[key] += float(sums[key].detach()) / n_roll
        # The pretraining term on the data's own responses: (1 - kd_ratio) CE + kd_ratio forward KL, per token.
        n_tokens = max(sum(int((p["labels"][:, 1:] != IGNORE).sum()) for p in parts), 1)
        pt = 0.0
        for micro in self._micro_batches(parts):
            piece = self.loss_sums(micro)["loss"]
            self.manual_backward(self.cfg.lm_coef * piece / n_tokens)
            pt += float(piece.detach()) / n_tokens
        loss = rl["rl"] + self.cfg.lm_coef * pt
        self.clip_gradients(opt, gradient_clip_val=self.optim_cfg.grad_clip, gradient_clip_algorithm="norm")
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        self.rollout_uses += 1
        self.tokens_seen += sum(int(p["attention_mask"].sum()) for p in parts) + int(
            self.rollout.batch["attention_mask"].sum())
        logs = {"train/loss": loss, "train/pg": rl["pg"], "train/single_step": rl["single_step"], "train/pt": pt,
                "train/reward": self.rollout.reward_per_token, "train/rollout_reverse_kl": self.rollout.reverse_kl,
                "train/lr": sched.get_last_lr()[0]}
        logs["train/tokens_per_s"] = self._tokens_per_s()
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=sum(p["input_ids"].shape[0] for p in parts))
        self.log("loss", logs["train/loss"], prog_bar=True, on_step=True, logger=False)


@register
class MiniLLM(Method):
    """`method.kind: minillm`: reverse-KL policy gradient on teacher-mixed samples plus a pretraining term."""

    kind = "minillm"
    samples_student = True

    def validate_block(self) -> None:
        m, q = self.cfg, self.cfg.minillm
        check(m.divergence in (None, "forward_kl"), "method.divergence", m.divergence,
              "minillm's pretraining term mixes CE with forward_kl (method.alpha is its kd_ratio)")
        check(0.0 <= q.teacher_mixed_alpha < 1.0, "method.minillm.teacher_mixed_alpha", q.teacher_mixed_alpha,
              "must lie in [0, 1)")
        check(q.ppo_epochs >= 1, "method.minillm.ppo_epochs", q.ppo_epochs, "must be >= 1")
        check(q.lr_ratio > 0, "method.minillm.lr_ratio", q.lr_ratio, "must be > 0 (the official code: 0.01)")
        check(0.0 < q.gamma <= 1.0, "method.minillm.gamma", q.gamma, "must lie in (0, 1]")
        check(q.reward_scaling > 0, "method.minillm.reward_scaling", q.reward_scaling, "must be > 0")
        check(q.cliprange > 0, "method.minillm.cliprange", q.cliprange, "must be > 0")
        check_decoding(q.decoding, "method.minillm.decoding")
        check(q.decoding.top_p == 1 and q.decoding.top_k == 0, "method.minillm.decoding", dict(q.decoding),
              "teacher-mixed sampling applies temperature only: keep top_p 1 and top_k 0")

    def build(self, student, teacher, context: TrainingContext):
        q = self.cfg.minillm
        optim = phase_optim(context.optim, lr_scale=q.lr_ratio, constant=q.constant_lr)
        return self.sampling_module(MiniLLMDistillation, student, teacher, replace(context, optim=optim))

    def cost(self, module) -> dict:
        return {"student_generated_tokens": module.generated_tokens, "rollouts": module.rollouts}
