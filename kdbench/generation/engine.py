"""The one generation component every part of kdbench uses (evaluation; later sequence-level KD and on-policy
methods): batched with a KV cache and left padding, prompts sorted by length so a batch pads little, a maximum
prompt length with left truncation (counted), stop at EOS, greedy or seeded sampling, and a progress bar."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from kdbench.data.template import left_truncate


@dataclass
class GenerationResult:
    texts: list[str]
    n_truncated: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    disable=not enabled, transient=True)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], settings, max_prompt_length: int,
             max_new_tokens: int | None = None, description: str = "generating",
             show_progress: bool = True) -> GenerationResult:
    """Generate one response per prompt, in the prompts' order.

    `settings` has do_sample, temperature, top_p, top_k, batch_size, seed (schema.GenerationConfig).
    """
    import time

    t0 = time.perf_counter()
    max_new = max_new_tokens or settings.max_new_tokens
    # One batched call: the fast tokenizer encodes a list in Rust, per-prompt calls pay Python overhead each.
    ids = list(tokenizer(list(prompts), add_special_tokens=False)["input_ids"]) if prompts else []
    n_truncated = sum(len(x) > max_prompt_length for x in ids)
    ids = [left_truncate(x, max_prompt_length) for x in ids]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    texts: list[str | None] = [None] * len(ids)
    pad = tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(settings.seed)
    new_tokens = 0
    kwargs = dict(max_new_tokens=max_new, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
                  do_sample=settings.do_sample)
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    try:
        with _progress(show_progress) as bar:
            task = bar.add_task(description, total=len(ids))
            for start in range(0, len(order), settings.batch_size):
                batch = order[start:start + settings.batch_size]
                width = max(len(ids[i]) for i in batch)
                input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                for j, i in enumerate(batch):  # left padding: every prompt ends where generation starts
                    input_ids[j, width - len(ids[i]):] = torch.tensor(ids[i])
                    attention[j, width - len(ids[i]):] = 1
                if settings.do_sample:
                    # Seeded per batch from one generator: the same prompts and seed give the same samples.
                    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
                out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
                for j, i in enumerate(batch):
                    seq = out[j, width:].tolist()
                    if tokenizer.eos_token_id in seq:
                        seq = seq[:seq.index(tokenizer.eos_token_id)]
                    seq = [t for t in seq if t != pad]
                    new_tokens += len(seq)
                    texts[i] = tokenizer.decode(seq, skip_special_tokens=True)
                bar.advance(task, len(batch))
    finally:
        model.train(was_training)
    return GenerationResult(texts=[t or "" for t in texts], n_truncated=n_truncated, new_tokens=new_tokens,
                            seconds=time.perf_counter() - t0)
