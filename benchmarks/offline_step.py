"""The offline distillation training step: kdbench's against a plain implementation and TRL's GKDTrainer.

  pip install trl                                   # benchmark-only dependency (not one of kdbench's)
  python benchmarks/offline_step.py                 # the full benchmark: all offline methods, 20 rounds
  python benchmarks/offline_step.py --skip-trl      # without TRL
  python benchmarks/offline_step.py --tiny          # smoke test: tiny dims, 2 rounds (seconds)
  python benchmarks/offline_step.py --methods kd jsd --rounds 10 --skip-memory

Run the full benchmark on a quiet machine: it uses torch's default thread count (--threads to pin it), takes
about 5 GB of memory in the main process, and one process per variant for the memory columns.

Setup (fixed, seeded): a random-init LLaMA-style pair built with transformers' LlamaConfig + LlamaForCausalLM,
fp32, SDPA attention, no grouped-query attention, untied embeddings, MLP width 4x hidden (not LLaMA's 8/3 rule):
teacher hidden 512 x 8 layers x 8 heads, student 256 x 4 layers x 4 heads, vocabulary 32,000. One batch of 8 rows x
256 random tokens, no padding, labels -100 on the first half of each row (the prompt), so 8 x 128 = 1,024 positions
carry a loss. Every variant below trains its own copy of the same initial student with its own AdamW (kdbench's
`configure_optimizers`: same groups, lr schedule, betas, weight decay) and clips the gradient norm to
`OptimConfig.grad_clip` like Lightning / the HF Trainer do. A process holds ~21 student copies with AdamW state,
about 5 GB at full size.

Variants, one optimizer step each:
- `kdbench:<m>`: `OfflineDistillation` with conf/method/<m>.yaml merged onto `MethodConfig`; its `loss_sums`,
  backward of sum / response-token count, clip, AdamW step, lr-scheduler step: `training_step`'s math without a
  Lightning Trainer (one micro-batch). Logits only at response positions; divergence + CE through the chunked
  autograd Function.
- `plain:<m>`: the same objective written plainly: full-sequence fp32 logits of both models
  (`model(input_ids).logits`, [B, T, V]), the method's divergence from kdbench.losses on [B, T-1, V] with the
  response mask, CE with ignore_index, the same sum / token count. `hidden` projects every position and masks;
  there the teacher runs its decoder only (it needs no logits), `sft` runs no teacher at all.
- `trl:jsd`: TRL's GKDTrainer (`trl.experimental.gkd`) on the same models, batch and optimizer (passed in through
  `optimizers=`), fp32, no gradient checkpointing, lmbda = 0 (no student generation: pure offline), seq_kd off,
  beta from conf/method/jsd.yaml. Timed: `trainer.training_step(model, inputs, num_items_in_batch)` (forward of
  both models, GKD's `compute_loss`, backward) + `accelerator.clip_grad_norm_` + optimizer and scheduler step +
  `zero_grad`: what one iteration of the HF training loop does, without its dataloader, callbacks and logging.
  GKD's loss is the generalized JSD alone (no CE term), over full-sequence logits; kdbench's `jsd` is
  0.5 CE + 0.5 JSD, so TRL's step does slightly less loss work than kdbench:jsd.
- `bf16:<m>` (methods of --bf16-methods): kdbench's step under `torch.autocast("cpu", dtype=torch.bfloat16)`
  around loss, backward and optimizer step, as Lightning's "bf16-mixed" precision wraps kdbench's
  `training_step`. Compared with a bf16 matmul probe; the loss difference vs fp32 is taken on the first
  (warm-up) step, where every variant sees the same weights and batch.

Timing: one untimed warm-up step per variant, then --rounds rounds; a round is one step of every variant in an
order rotated by one each round. These machines switch between a fast and a slow phase for minutes at a time, so
every comparison is a per-round ratio (a variant's step / its reference's step in the same round) and rounds are
grouped into phases: a 1024^3 fp32 matmul probe (best of 3) runs before every round and after the last one; a
round's rate is the geometric mean of the probes around it; rounds at or above the median rate are "fast", the
others "slow". Reported per phase: median step time, median per-round ratio to plain (the same method's plain
step; plain:jsd for TRL) and to TRL, and executed-FLOP utilisation = FLOPs / step time / the round's matmul rate.

Executed FLOPs (matmuls only): 2 x (decoder linear weights) x tokens forward, x3 for the student (forward +
backward), attention QK^T and PV causal (2 x B x hidden x T(T+1) per layer forward), the LM head 2 x V x H per
row on the rows where it runs: kdbench's response positions (student: forward, backward recompute, 2 backward
matmuls = 4 passes; teacher: forward + backward recompute = 2; `sft` 3 student passes), every position for
plain and TRL (student 3 passes, teacher 1); hidden-state projections likewise. Softmax and other elementwise work
are not counted.

Memory: each variant in a fresh process (`--variant X --measure-memory`): models and batch are built, one
warm-up step runs (AdamW state, one-time initialisations), then the kernel's peak-RSS mark is reset
(/proc/self/clear_refs; ru_maxrss where that is not allowed), a second step runs and its peak minus the RSS
before it is reported: gradients, activations and loss temporaries. The loss alone likewise: fixed random hidden
states [B, T, H] and LM-head weights, loss + backward at 32k and 128k vocabulary (after a warm-up at vocabulary
128), plain (full [B, T, V] logits of both models) against kdbench's chunked path (response rows,
`chunked_divergence` with the method's chunk rows), for --loss-methods. Children run with
MALLOC_MMAP_THRESHOLD_=131072 so freed buffers go back to the kernel and RSS tracks live memory, and with
RLIMIT_DATA at 90% of available memory, so a plain loss too big for the machine fails its allocation instead of
invoking the OOM killer.

Targets (issue): step time <= 0.65x plain (every method) and kdbench:jsd <= 0.5x TRL, in both phases; loss memory
<= 0.15x plain at 32k and 128k; utilisation >= 50% of the fp32 matmul rate in the fast phase (kdbench fp32 steps).
Output: Markdown tables on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
METHOD_DIR = ROOT / "conf" / "method"
IGNORE = -100
MEMORY_TAG = "MEMORY_JSON "
# --chunk-size: replaces every method's `chunk_size` (to measure the memory/speed trade-off without editing conf/).
CHUNK_SIZE_OVERRIDE: int | None = None


@dataclass(frozen=True)
class Shapes:
    batch: int
    seq: int
    vocab: int
    loss_vocabs: tuple[int, ...]
    teacher: tuple[int, int, int]  # hidden, layers, heads
    student: tuple[int, int, int]
    rounds: int
    probe_n: int = 1024


FULL = Shapes(batch=8, seq=256, vocab=32000, loss_vocabs=(32000, 128000), teacher=(512, 8, 8), student=(256, 4, 4),
              rounds=20)
TINY = Shapes(batch=2, seq=32, vocab=512, loss_vocabs=(512, 2048), teacher=(64, 2, 8), student=(32, 2, 4),
              rounds=2)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------------------
# Configs, models, batch
# ------------------------------------------------------------------------------------------------------------------

ORDER = ["sft", "kd", "rkl", "jsd", "tvd", "skl", "srkl", "akl", "hidden"]


def available_methods() -> list[str]:
    names = sorted(p.stem for p in METHOD_DIR.glob("*.yaml"))
    return [m for m in ORDER if m in names] + [m for m in names if m not in ORDER]


def load_method(name: str):
    from omegaconf import OmegaConf

    from kdbench.schema import MethodConfig

    merged = OmegaConf.merge(OmegaConf.structured(MethodConfig), OmegaConf.load(METHOD_DIR / f"{name}.yaml"))
    method = OmegaConf.to_object(merged)
    if CHUNK_SIZE_OVERRIDE is not None:
        method.chunk_size = CHUNK_SIZE_OVERRIDE
    if method.kind != "offline":
        raise SystemExit(f"conf/method/{name}.yaml: kind={method.kind!r}, not an offline method")
    return method


def build_model(hidden: int, layers: int, heads: int, vocab: int, seq: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max(seq, 256),
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=1, pad_token_id=0)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float()


def build_pair(shapes: Shapes, seed: int):
    teacher = build_model(*shapes.teacher, shapes.vocab, shapes.seq, seed).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = build_model(*shapes.student, shapes.vocab, shapes.seq, seed + 1).train()
    return teacher, student


def build_batch(shapes: Shapes, vocab: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed + 2)
    ids = torch.randint(0, vocab, (shapes.batch, shapes.seq), generator=g)
    labels = ids.clone()
    labels[:, :shapes.seq // 2] = IGNORE  # the prompt half
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def response_tokens(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())


# ------------------------------------------------------------------------------------------------------------------
# FLOPs as executed
# ------------------------------------------------------------------------------------------------------------------

def dims(model) -> dict:
    cfg = model.config
    linear = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    return {"P": linear, "L": cfg.num_hidden_layers, "H": cfg.hidden_size, "V": cfg.vocab_size}


def body_forward_flops(d: dict, B: int, T: int) -> float:
    """Decoder linears on every token + causal attention (QK^T and PV over the lower triangle)."""
    return 2.0 * d["P"] * B * T + d["L"] * 2.0 * B * d["H"] * T * (T + 1)


def step_flops(kind: str, method, s: dict, t: dict, B: int, T: int, n_resp: int) -> float:
    def head(d, rows):
        return 2.0 * d["V"] * d["H"] * rows

    layers = method.hidden.weight > 0
    divergence = method.divergence is not None and method.alpha > 0
    proj = 0.0
    if layers and s["H"] != t["H"]:
        proj_rows = n_resp if kind != "plain" else B * (T - 1)
        proj = 3 * 2.0 * s["H"] * t["H"] * proj_rows * s["L"]
    if kind in ("plain", "trl"):
        flops = 3 * (body_forward_flops(s, B, T) + head(s, B * T))
        if divergence:
            flops += body_forward_flops(t, B, T) + head(t, B * T)
        elif layers:
            flops += body_forward_flops(t, B, T)
        return flops + proj
    # kdbench (fp32 or bf16): the LM head on response rows only
    flops = 3 * body_forward_flops(s, B, T)
    if divergence:  # chunked: forward, backward recompute, dlogits @ W, dlogits^T @ h; teacher forward + recompute
        flops += 4 * head(s, n_resp) + body_forward_flops(t, B, T) + 2 * head(t, n_resp)
    else:
        flops += 3 * head(s, n_resp)
        if layers:
            flops += body_forward_flops(t, B, T)
    return flops + proj


# ------------------------------------------------------------------------------------------------------------------
# The steps
# ------------------------------------------------------------------------------------------------------------------

def plain_sums(module, batch: dict, vocab: int) -> dict:
    """The same objective as OfflineDistillation.loss_sums, without response slicing or chunking."""
    m = module.method
    layers = module.layer_map is not None
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE
    s_out = module.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           output_hidden_states=layers)
    s_logits = s_out.logits[:, :-1, :vocab].float()
    ce = F.cross_entropy(s_logits.reshape(-1, vocab), targets.reshape(-1), ignore_index=IGNORE, reduction="sum")
    out = {"ce": ce, "loss": ce}
    if module.divergence is not None:
        with torch.no_grad():
            t_logits = module.teacher(input_ids=batch["input_ids"],
                                      attention_mask=batch["attention_mask"]).logits[:, :-1, :vocab].float()
        kd = module.divergence(s_logits, t_logits, mask, temperature=m.temperature, **module.divergence_hp).sum()
        if m.scale_by_t2:
            kd = kd * m.temperature ** 2
        out.update(kd=kd, loss=(1 - m.alpha) * ce + m.alpha * kd)
    if layers:
        with torch.no_grad():
            t_states = module.teacher.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                            output_hidden_states=True).hidden_states
        total = 0.0
        for i, t_index in enumerate(module.layer_map):
            s = s_out.hidden_states[i + 1][:, :-1].float()
            if module.projections is not None:
                s = module.projections[i](s)
            t = t_states[t_index][:, :-1].float()
            if m.hidden.loss == "mse":
                per = (s - t).pow(2).mean(-1)
            else:
                per = 1 - F.cosine_similarity(s, t, dim=-1)
            total = total + torch.where(mask, per, torch.zeros_like(per)).sum()
        out["hidden"] = total / len(module.layer_map)
        out["loss"] = out["loss"] + m.hidden.weight * out["hidden"]
    return out


class Variant:
    """One training setup; `step()` runs one optimizer step and returns the step's loss terms (per token)."""

    def __init__(self, name: str, kind: str, method, flops: float, rate: str = "fp32"):
        self.name, self.kind, self.method, self.flops, self.rate = name, kind, method, flops, rate
        self.first_losses: dict | None = None

    def step(self) -> dict:
        raise NotImplementedError


class KdbenchVariant(Variant):
    def __init__(self, name, kind, method, flops, module, batch, vocab, optim_cfg, autocast=False):
        super().__init__(name, kind, method, flops, "bf16" if autocast else "fp32")
        self.module, self.batch, self.vocab, self.optim_cfg, self.autocast = module, batch, vocab, optim_cfg, autocast
        conf = module.configure_optimizers()
        self.opt, self.sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
        self.params = [p for g in self.opt.param_groups for p in g["params"]]
        self.n_tokens = response_tokens(batch)

    def step(self) -> dict:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.autocast else nullcontext()
        n = max(self.n_tokens, 1)
        with ctx:
            if self.kind == "plain":
                sums = plain_sums(self.module, self.batch, self.vocab)
            else:
                sums = self.module.loss_sums(self.batch)
            (sums["loss"] / n).backward()
            losses = {k: float(v.detach()) / n for k, v in sums.items() if k != "tokens"}
            torch.nn.utils.clip_grad_norm_(self.params, self.optim_cfg.grad_clip)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        return losses


def import_trl():
    try:
        import trl
    except ImportError:
        raise SystemExit("TRL is not installed. It is a benchmark-only dependency (not one of kdbench's): "
                         "`pip install trl`, or run with --skip-trl.") from None
    try:
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    except ImportError:  # older TRL kept GKD in the main namespace
        from trl import GKDConfig, GKDTrainer
    return trl.__version__, GKDConfig, GKDTrainer


def placeholder_tokenizer():
    """GKDTrainer needs a tokenizer with a pad token (for its generation config) even when it never generates."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "<unk>": 2}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


class TrlVariant(Variant):
    def __init__(self, name, method, flops, student, teacher, batch, optim_cfg, max_steps, seed, workdir):
        super().__init__(name, "trl", method, flops)
        from datasets import Dataset

        from kdbench.methods.offline import OfflineDistillation

        _, GKDConfig, GKDTrainer = import_trl()
        o = optim_cfg
        beta = float(method.divergence_hp.get("beta", 0.5))
        args = GKDConfig(output_dir=workdir, per_device_train_batch_size=batch["input_ids"].shape[0],
                         learning_rate=o.lr, weight_decay=o.weight_decay, adam_beta1=o.beta1, adam_beta2=o.beta2,
                         max_grad_norm=o.grad_clip, lmbda=0.0, beta=beta, temperature=1.0, seq_kd=False,
                         bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, report_to=[],
                         save_strategy="no", logging_strategy="no", dataloader_num_workers=0, seed=seed,
                         disable_dropout=True, max_length=None)
        # The same optimizer and schedule as kdbench's (AdamW, decay / no-decay groups), handed to the trainer.
        conf = OfflineDistillation(student, teacher, method, optim_cfg, max_steps=max_steps,
                                   vocab_size=student.config.vocab_size).configure_optimizers()
        self.opt, self.sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
        rows = {k: v.tolist() for k, v in batch.items()}
        threads = torch.get_num_threads()
        self.trainer = GKDTrainer(model=student, teacher_model=teacher, args=args,
                                  train_dataset=Dataset.from_dict(rows), processing_class=placeholder_tokenizer(),
                                  data_collator=lambda items: items, optimizers=(self.opt, self.sched))
        torch.set_num_threads(threads)  # in case the trainer's setup touched it
        self.trainer.current_gradient_accumulation_steps = 1  # set by the HF training loop, which we bypass
        self.batch = batch
        self.n_tokens = response_tokens(batch)

    def num_items(self, inputs: dict):
        getter = getattr(self.trainer, "_get_num_items_in_batch", None)
        if getter is not None:
            return getter([inputs], self.trainer.args.device)
        return inputs["labels"][:, 1:].ne(IGNORE).sum()

    def step(self) -> dict:
        tr = self.trainer
        inputs = dict(self.batch)  # training_step may replace keys (only on its on-policy branch, lmbda = 0 here)
        loss = tr.training_step(tr.model, inputs, self.num_items(inputs))
        tr.accelerator.clip_grad_norm_(tr.model.parameters(), tr.args.max_grad_norm)
        self.opt.step()
        self.sched.step()
        tr.model.zero_grad(set_to_none=True)
        return {"kd": float(loss)}  # the generalized JSD alone, per response token


def make_variant(name: str, shapes: Shapes, teacher, student_init, batch, seed: int, optim_cfg, max_steps: int,
                 workdir: str) -> Variant:
    from kdbench.methods.offline import OfflineDistillation

    kind, method_name = name.split(":")
    method = load_method(method_name)
    s, t = dims(student_init), dims(teacher)
    B, T = batch["input_ids"].shape
    flop_kind = "kdbench" if kind == "bf16" else kind
    flops = step_flops(flop_kind, method, s, t, B, T, response_tokens(batch))
    student = copy.deepcopy(student_init).train()
    if kind == "trl":
        return TrlVariant(name, method, flops, student, teacher, batch, optim_cfg, max_steps, seed, workdir)
    torch.manual_seed(seed + 3)  # hidden-state projections: the same init in every variant
    module = OfflineDistillation(student, teacher, method, optim_cfg, max_steps=max_steps, vocab_size=shapes.vocab)
    module.train()
    return KdbenchVariant(name, kind, method, flops, module, batch, shapes.vocab, optim_cfg, autocast=kind == "bf16")


# ------------------------------------------------------------------------------------------------------------------
# Probes and memory
# ------------------------------------------------------------------------------------------------------------------

def matmul_rate(dtype: torch.dtype, n: int, reps: int = 3) -> float:
    """FLOP/s of an n x n x n matmul, best of `reps`."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)
    torch.mm(a, b)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


def _proc_kb(path: str, field: str) -> int | None:
    """A `Field:  123 kB` line of a /proc file, in kB (None where /proc is unavailable)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _status_kb(field: str) -> int | None:
    return _proc_kb("/proc/self/status", field)


class PeakMemory:
    """Peak RSS growth over a block: the kernel's high-water mark reset first where allowed."""

    def __enter__(self):
        gc.collect()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.how = "VmHWM"
        except OSError:
            self.how = "ru_maxrss"
        self.before_kb = _status_kb("VmRSS") if self.how == "VmHWM" else resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc):
        after = _status_kb("VmHWM") if self.how == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.peak_mb = max(0, after - self.before_kb) / 1024
        return False


def limit_data_memory() -> None:
    """A plain loss too large for the machine fails its allocation instead of waking the OOM killer."""
    avail = _meminfo_kb("MemAvailable")
    if avail:
        limit = int(avail * 1024 * 0.9)
        try:
            resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
        except (ValueError, OSError):
            pass


def _meminfo_kb(field: str) -> int | None:
    return _proc_kb("/proc/meminfo", field)


def loss_only(kind: str, method_name: str, vocab: int, shapes: Shapes, seed: int) -> dict:
    """Loss + backward from fixed hidden states and LM-head weights: plain full logits or kdbench's chunked path.
    A first run at a small vocabulary takes the one-time initialisations (kernels, autograd) out of the peak."""
    _loss_only(kind, method_name, min(vocab, 128), shapes, seed, measure=False)
    return _loss_only(kind, method_name, vocab, shapes, seed, measure=True)


def _loss_only(kind: str, method_name: str, vocab: int, shapes: Shapes, seed: int, measure: bool) -> dict:
    from kdbench.losses import DIVERGENCES, chunked_divergence
    from kdbench.methods.offline import chunk_rows

    m = load_method(method_name)
    B, T, Hs, Ht = shapes.batch, shapes.seq, shapes.student[0], shapes.teacher[0]
    g = torch.Generator().manual_seed(seed)
    s_hidden = torch.randn(B, T, Hs, generator=g).requires_grad_()
    t_hidden = torch.randn(B, T, Ht, generator=g)
    s_weight = (torch.randn(vocab, Hs, generator=g) * 0.02).requires_grad_()
    t_weight = torch.randn(vocab, Ht, generator=g) * 0.02
    labels = torch.randint(0, vocab, (B, T), generator=g)
    labels[:, :T // 2] = IGNORE
    targets = labels[:, 1:]
    mask = targets != IGNORE
    n = int(mask.sum())
    hp = dict(m.divergence_hp or {})
    with PeakMemory() if measure else nullcontext() as mem:
        if kind == "plain":
            s_logits = F.linear(s_hidden, s_weight)[:, :-1]
            with torch.no_grad():
                t_logits = F.linear(t_hidden, t_weight)[:, :-1]
            ce = F.cross_entropy(s_logits.reshape(-1, vocab), targets.reshape(-1), ignore_index=IGNORE,
                                 reduction="sum")
            kd = DIVERGENCES[m.divergence](s_logits, t_logits, mask, temperature=m.temperature, **hp).sum()
        else:
            div, ce = chunked_divergence(s_hidden[:, :-1][mask], s_weight, t_hidden[:, :-1][mask], t_weight,
                                         m.divergence, vocab_size=vocab, temperature=m.temperature,
                                         chunk_size=chunk_rows(m, vocab), targets=targets[mask], **hp)
            kd, ce = div.sum(), ce.sum()
        if m.scale_by_t2:
            kd = kd * m.temperature ** 2
        loss = ((1 - m.alpha) * ce + m.alpha * kd) / n
        loss.backward()
    if not measure:
        return {}
    return {"peak_mb": mem.peak_mb, "how": mem.how, "loss": float(loss.detach())}


def measure_memory_child(args, shapes: Shapes) -> None:
    """--variant X --measure-memory: one step (or the loss alone) in this fresh process; prints a JSON line."""
    limit_data_memory()
    try:
        if args.variant.startswith("loss-"):
            kind_method, vocab = args.variant[len("loss-"):].split("@")
            kind, method_name = kind_method.split(":")
            out = loss_only(kind, method_name, int(vocab), shapes, args.seed)
        else:
            from kdbench.schema import OptimConfig

            teacher, student = build_pair(shapes, args.seed)
            batch = build_batch(shapes, shapes.vocab, args.seed)
            with tempfile.TemporaryDirectory(prefix="kdbench-offline-step-") as tmp:
                v = make_variant(args.variant, shapes, teacher, student, batch, args.seed, OptimConfig(), 1000, tmp)
                del student
                v.step()  # warm-up: AdamW state, one-time initialisations
                with PeakMemory() as mem:
                    v.step()
            out = {"peak_mb": mem.peak_mb, "how": mem.how}
    except (RuntimeError, MemoryError) as e:
        out = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    print(MEMORY_TAG + json.dumps(out), flush=True)


def measure_memory(variant: str, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--variant", variant, "--measure-memory",
           "--seed", str(args.seed)]
    if args.tiny:
        cmd.append("--tiny")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, cwd=ROOT)
    for line in done.stdout.splitlines():
        if line.startswith(MEMORY_TAG):
            return json.loads(line[len(MEMORY_TAG):])
    return {"error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1][:200] if done.stderr else ''}"}


# ------------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------------

def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec=".2f", none="—"):
    return none if x is None else format(x, spec)


def fmt_mb(result: dict | None) -> str:
    if not result:
        return "—"
    if "peak_mb" not in result:
        return "failed"
    mb = result["peak_mb"]
    return f"{mb:.0f}" if mb >= 100 else f"{mb:.1f}"


def verdict(values: list, limit: float, at_least: bool = False) -> str:
    if not values or any(v is None for v in values):
        return "not measured"
    ok = all(v >= limit for v in values) if at_least else all(v <= limit for v in values)
    return "met" if ok else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 20; 2 with --tiny)")
    parser.add_argument("--methods", nargs="+", default=None, help="offline methods (default: all conf/method/*)")
    parser.add_argument("--bf16-methods", nargs="*", default=["kd", "jsd"],
                        help="methods also timed under bf16 autocast (default: kd jsd; none: no bf16 rows)")
    parser.add_argument("--loss-methods", nargs="*", default=["kd", "jsd"],
                        help="divergence methods of the loss-alone memory measurement (default: kd jsd)")
    parser.add_argument("--tiny", action="store_true", help="smoke mode: tiny dims, 2 rounds")
    parser.add_argument("--skip-trl", action="store_true", help="leave TRL's GKDTrainer out")
    parser.add_argument("--skip-memory", action="store_true", help="leave the memory subprocesses out")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="rows of logits per chunk for every method (default: each conf/method yaml's)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--measure-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    shapes = TINY if args.tiny else FULL
    global CHUNK_SIZE_OVERRIDE
    CHUNK_SIZE_OVERRIDE = args.chunk_size
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.measure_memory:
        if not args.variant:
            raise SystemExit("--measure-memory needs --variant")
        measure_memory_child(args, shapes)
        return

    known = available_methods()
    methods = args.methods or known
    for m in methods + list(args.bf16_methods) + list(args.loss_methods):
        if m not in known:
            raise SystemExit(f"unknown method {m!r}: conf/method has {', '.join(known)}")
    bf16_methods = [m for m in args.bf16_methods if m in methods]
    loss_methods = [m for m in args.loss_methods if load_method(m).divergence]
    trl_version = None
    if not args.skip_trl:
        trl_version = import_trl()[0]
        if "jsd" not in known:
            raise SystemExit("TRL's GKD is compared with conf/method/jsd.yaml, which is missing")
    rounds = args.rounds if args.rounds is not None else shapes.rounds

    from kdbench.schema import OptimConfig

    teacher, student = build_pair(shapes, args.seed)
    batch = build_batch(shapes, shapes.vocab, args.seed)
    optim_cfg = OptimConfig()
    max_steps = rounds + 1000
    names = [f"kdbench:{m}" for m in methods] + [f"plain:{m}" for m in methods] + [f"bf16:{m}" for m in bf16_methods]
    if trl_version:
        names.append("trl:jsd")
    if trl_version and "jsd" not in methods:
        names.append("plain:jsd")  # TRL's reference
    workdir = tempfile.mkdtemp(prefix="kdbench-offline-step-")
    log(f"building {len(names)} variants ...")
    variants = [make_variant(n, shapes, teacher, student, batch, args.seed, optim_cfg, max_steps, workdir)
                for n in names]
    del student
    threads = torch.get_num_threads()

    # Warm-up: the first step of every variant, on identical weights and batch: the loss values are comparable.
    for v in variants:
        v.first_losses = v.step()
    log("warm-up done; timing ...")
    has_bf16 = any(v.rate == "bf16" for v in variants)
    probes = {"fp32": [matmul_rate(torch.float32, shapes.probe_n)],
              "bf16": [matmul_rate(torch.bfloat16, shapes.probe_n)] if has_bf16 else []}
    times = {v.name: [] for v in variants}
    for r in range(rounds):
        k = r % len(variants)
        for v in variants[k:] + variants[:k]:
            t0 = time.perf_counter()
            v.step()
            times[v.name].append(time.perf_counter() - t0)
        probes["fp32"].append(matmul_rate(torch.float32, shapes.probe_n))
        if has_bf16:
            probes["bf16"].append(matmul_rate(torch.bfloat16, shapes.probe_n))
        log(f"round {r + 1}/{rounds}: fp32 probe {probes['fp32'][-1] / 1e9:.1f} GFLOP/s, "
            + ", ".join(f"{v.name} {times[v.name][-1] * 1e3:.0f} ms" for v in variants[:4]) + " ...")

    rate = {d: [math.sqrt(p[r] * p[r + 1]) for r in range(rounds)] for d, p in probes.items() if p}
    cut = statistics.median(rate["fp32"])
    phase_rounds = {"fast": [r for r in range(rounds) if rate["fp32"][r] >= cut],
                    "slow": [r for r in range(rounds) if rate["fp32"][r] < cut]}
    by_name = {v.name: v for v in variants}

    def reference(v: Variant) -> str | None:
        if v.kind == "trl":
            return "plain:jsd"
        return f"plain:{v.method.name}" if f"plain:{v.method.name}" in by_name else None

    def ratio(name: str, ref: str | None, phase: str):
        if ref is None or ref not in times:
            return None
        return median([times[name][r] / times[ref][r] for r in phase_rounds[phase]])

    def step_ms(name: str, phase: str | None = None):
        rs = range(rounds) if phase is None else phase_rounds[phase]
        return median([times[name][r] * 1e3 for r in rs])

    def util(v: Variant, phase: str):
        return median([v.flops / times[v.name][r] / rate[v.rate][r] for r in phase_rounds[phase]])

    memory = {}
    if not args.skip_memory:
        for v in variants:
            log(f"memory: {v.name} ...")
            memory[v.name] = measure_memory(v.name, args)
    loss_memory = {}
    if not args.skip_memory:
        for m in loss_methods:
            for vocab in shapes.loss_vocabs:
                for kind in ("plain", "chunked"):
                    name = f"loss-{kind}:{m}@{vocab}"
                    log(f"memory: {name} ...")
                    loss_memory[(m, vocab, kind)] = measure_memory(name, args)

    # ---------------------------------------------------------------------------------------------------------
    import transformers

    print(f"## Offline distillation step ({'TINY smoke mode' if args.tiny else 'full size'})\n")
    tB, tL, tH = shapes.teacher[1], shapes.teacher[2], shapes.teacher[0]
    print(f"Teacher hidden {tH} x {tB} layers x {tL} heads, student hidden {shapes.student[0]} x "
          f"{shapes.student[1]} layers x {shapes.student[2]} heads (MLP 4x hidden, untied head), vocabulary "
          f"{shapes.vocab}, batch {shapes.batch} x {shapes.seq} tokens ({response_tokens(batch)} response "
          f"positions). torch {torch.__version__}, transformers {transformers.__version__}, "
          f"TRL {trl_version or 'skipped'}, {threads} thread(s), {rounds} rounds after one warm-up step each.")
    print(f"fp32 matmul probe ({shapes.probe_n}^3): median {statistics.median(rate['fp32']) / 1e9:.1f} GFLOP/s "
          f"(fast phase {fmt(median([rate['fp32'][r] for r in phase_rounds['fast']]), '.3g')} / slow "
          f"{fmt(median([rate['fp32'][r] for r in phase_rounds['slow']]), '.3g')} FLOP/s, "
          f"{len(phase_rounds['fast'])} / {len(phase_rounds['slow'])} rounds)"
          + (f"; bf16 probe median {statistics.median(rate['bf16']) / 1e9:.1f} GFLOP/s" if has_bf16 else "")
          + ".\n")

    has_trl = "trl:jsd" in times
    print("| variant | GFLOP/step | median ms | ms fast | ms slow | x plain fast | x plain slow | x TRL fast "
          "| x TRL slow | peak MB | util fast | util slow |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for v in variants:
        peak = fmt_mb(memory.get(v.name))
        trl_fast = ratio(v.name, "trl:jsd", "fast") if has_trl else None
        trl_slow = ratio(v.name, "trl:jsd", "slow") if has_trl else None
        label = v.name + (" (autocast)" if v.rate == "bf16" else "")
        print(f"| {label} | {v.flops / 1e9:.2f} | {fmt(step_ms(v.name), '.1f')} | "
              f"{fmt(step_ms(v.name, 'fast'), '.1f')} | {fmt(step_ms(v.name, 'slow'), '.1f')} | "
              f"{fmt(ratio(v.name, reference(v), 'fast'))} | {fmt(ratio(v.name, reference(v), 'slow'))} | "
              f"{fmt(trl_fast)} | {fmt(trl_slow)} | {peak} | "
              f"{fmt(util(v, 'fast'), '.1%')} | {fmt(util(v, 'slow'), '.1%')} |")
    print("\nx plain: median over the phase's rounds of (step / the same method's plain step in the same round); "
          "TRL's reference is plain:jsd. util: executed matmul FLOPs / step time / the round's matmul rate "
          "(bf16 rows: the bf16 probe). peak MB: growth of peak RSS over one step in a fresh process "
          "(gradients, activations, loss temporaries; models and AdamW state excluded).")
    for k, m in memory.items():
        if "error" in m:
            print(f"\nmemory of {k} failed: {m['error']}")

    print("\n### Per round\n")
    refs = [(f"kdbench:{m}", f"plain:{m}") for m in methods]
    if has_trl and "kdbench:jsd" in times:
        refs.append(("kdbench:jsd", "trl:jsd"))
    print("| round | fp32 GFLOP/s | phase | " + " | ".join(f"{a.split(':')[1]} / {b.split(':')[0]}" for a, b in refs)
          + " |")
    print("| ---: | ---: | --- | " + " | ".join("---:" for _ in refs) + " |")
    for r in range(rounds):
        phase = "fast" if r in phase_rounds["fast"] else "slow"
        print(f"| {r + 1} | {rate['fp32'][r] / 1e9:.1f} | {phase} | "
              + " | ".join(f"{times[a][r] / times[b][r]:.2f}" for a, b in refs) + " |")

    print("\n### Loss on the first step (identical weights and batch), per response token\n")
    print("| method | kdbench | plain | abs diff | bf16 autocast | bf16 - fp32 | rel |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for m in methods:
        k, p = by_name[f"kdbench:{m}"].first_losses["loss"], by_name[f"plain:{m}"].first_losses["loss"]
        b = by_name[f"bf16:{m}"].first_losses["loss"] if f"bf16:{m}" in by_name else None
        diff = None if b is None else b - k
        print(f"| {m} | {k:.6f} | {p:.6f} | {abs(k - p):.2e} | {fmt(b, '.6f')} | {fmt(diff, '+.2e')} | "
              f"{fmt(None if b is None else abs(diff) / abs(k), '.2e')} |")
    if has_trl:
        trl_kd = by_name["trl:jsd"].first_losses["kd"]
        ours = by_name["kdbench:jsd"].first_losses.get("kd") if "kdbench:jsd" in by_name else None
        print(f"\nGeneralized JSD term on the first step: TRL {trl_kd:.6f}, kdbench:jsd {fmt(ours, '.6f')}"
              + (f" (abs diff {abs(trl_kd - ours):.2e})" if ours is not None else "") + ".")
    if has_bf16:
        print("\nbf16 autocast against kdbench fp32, same rounds: "
              + "; ".join(f"{m}: x{fmt(ratio(f'bf16:{m}', f'kdbench:{m}', 'fast'))} fast, "
                          f"x{fmt(ratio(f'bf16:{m}', f'kdbench:{m}', 'slow'))} slow" for m in bf16_methods) + ".")

    if loss_memory:
        print("\n### Loss alone (loss + backward from fixed hidden states), peak MB\n")
        print("| method | vocab | plain (full logits) | chunked | chunked / plain |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for (m, vocab, kind), res in loss_memory.items():
            if kind != "plain":
                continue
            ch = loss_memory[(m, vocab, "chunked")]
            p_mb, c_mb = res.get("peak_mb"), ch.get("peak_mb")
            print(f"| {m} | {vocab} | {fmt_mb(res)} | {fmt_mb(ch)} | "
                  f"{fmt(c_mb / p_mb if p_mb and c_mb is not None else None, '.3f')} |")
        for key, res in loss_memory.items():
            if "error" in res:
                print(f"\nloss memory {key} failed: {res['error']}")

    # ---------------------------------------------------------------------------------------------------------
    print("\n### Targets\n")
    for m in methods:
        rs = {ph: ratio(f"kdbench:{m}", f"plain:{m}", ph) for ph in ("fast", "slow")}
        print(f"- step time kdbench:{m} <= 0.65x plain in both phases (fast {fmt(rs['fast'])}, slow "
              f"{fmt(rs['slow'])}): {verdict(list(rs.values()), 0.65)}")
    if has_trl and "kdbench:jsd" in times:
        rs = {ph: ratio("kdbench:jsd", "trl:jsd", ph) for ph in ("fast", "slow")}
        print(f"- step time kdbench:jsd <= 0.5x TRL GKD in both phases (fast {fmt(rs['fast'])}, slow "
              f"{fmt(rs['slow'])}): {verdict(list(rs.values()), 0.5)}")
    elif not has_trl:
        print("- step time <= 0.5x TRL: not measured (--skip-trl)")
    for (m, vocab, kind), res in loss_memory.items():
        if kind != "plain":
            continue
        p_mb, c_mb = res.get("peak_mb"), loss_memory[(m, vocab, "chunked")].get("peak_mb")
        r = c_mb / p_mb if p_mb and c_mb is not None else None
        print(f"- loss memory {m} at vocab {vocab} <= 0.15x plain ({fmt(r, '.3f')}): {verdict([r], 0.15)}")
    if not loss_memory:
        print("- loss memory <= 0.15x plain: not measured (--skip-memory)")
    for m in methods:
        u = util(by_name[f"kdbench:{m}"], "fast")
        print(f"- utilisation kdbench:{m} >= 50% of the fp32 matmul rate in the fast phase ({fmt(u, '.1%')}): "
              f"{verdict([u], 0.5, at_least=True)}")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
