"""The one generation component every part of kdbench uses (evaluation; later sequence-level KD and on-policy
methods): batched with a KV cache and left padding, prompts sorted by length so a batch pads little, a maximum
prompt length with left truncation (counted), stop at EOS, greedy or seeded sampling, and a progress bar."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from kdbench.data.template import char_window, left_truncate, tokenize_truncated


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


def generate_ids(model, ids: list[list[int]], settings, pad_id: int, eos_id: int | None,
                 max_new_tokens: int | None = None, description: str = "generating",
                 show_progress: bool = True) -> list[list[int]]:
    """The engine's core on token ids: one continuation per prompt, in the prompts' order, cut after the first EOS
    (kept: a sampled answer that stopped teaches stopping) and without padding.

    Prompts are sorted by length so a batch pads little, left-padded so every prompt ends where generation starts,
    and generated with the model's KV cache. `settings` has do_sample, temperature, top_p, top_k, batch_size,
    seed (schema.GenerationConfig); sampling is seeded per batch from one generator, so the same prompts and seed
    give the same samples.
    """
    max_new = max_new_tokens or settings.max_new_tokens
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out_ids: list[list[int] | None] = [None] * len(ids)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(settings.seed)
    kwargs = dict(max_new_tokens=max_new, pad_token_id=pad_id, eos_token_id=eos_id, do_sample=settings.do_sample)
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    try:
        with torch.no_grad(), _progress(show_progress) as bar:
            task = bar.add_task(description, total=len(ids))
            for start in range(0, len(order), settings.batch_size):
                batch = order[start:start + settings.batch_size]
                width = max(len(ids[i]) for i in batch)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                for j, i in enumerate(batch):
                    input_ids[j, width - len(ids[i]):] = torch.tensor(ids[i], dtype=torch.long)
                    attention[j, width - len(ids[i]):] = 1
                if settings.do_sample:
                    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
                out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
                for j, i in enumerate(batch):
                    seq = out[j, width:].tolist()
                    if eos_id is not None and eos_id in seq:
                        seq = seq[:seq.index(eos_id) + 1]
                    elif pad_id != eos_id:
                        seq = [t for t in seq if t != pad_id]
                    out_ids[i] = seq
                bar.advance(task, len(batch))
    finally:
        model.train(was_training)
    return [s or [] for s in out_ids]


def encode_prompts(tokenizer, prompts: list[str], max_prompt_length: int) -> tuple[list[list[int]], int]:
    """(ids left-truncated to max_prompt_length, how many were truncated). One batched call for the usual prompts
    (the fast tokenizer encodes a list in Rust; per-prompt calls pay Python overhead each); a prompt too long for
    tokenize_truncated's window is cut before the tokenizer sees it whole (a 1M-character field)."""
    window = char_window(max_prompt_length)
    short = [i for i, p in enumerate(prompts) if len(p) <= window]
    ids: list[list[int]] = [[] for _ in prompts]
    n_truncated = 0
    if short:
        for i, x in zip(short, tokenizer([prompts[i] for i in short], add_special_tokens=False)["input_ids"]):
            n_truncated += len(x) > max_prompt_length
            ids[i] = left_truncate(list(x), max_prompt_length)
    for i in sorted(set(range(len(prompts))) - set(short)):
        ids[i], truncated = tokenize_truncated(tokenizer, prompts[i], max_prompt_length, keep_end=True)
        n_truncated += truncated
    return ids, n_truncated


def generate(model, tokenizer, prompts: list[str], settings, max_prompt_length: int,
             max_new_tokens: int | None = None, description: str = "generating",
             show_progress: bool = True) -> GenerationResult:
    """Generate one response text per prompt, in the prompts' order: prompts left-truncated to max_prompt_length
    tokens (counted), `generate_ids`, EOS and padding dropped, decoded."""
    import time

    t0 = time.perf_counter()
    ids, n_truncated = encode_prompts(tokenizer, prompts, max_prompt_length)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    outs = generate_ids(model, ids, settings, pad, eos, max_new_tokens, description, show_progress)
    texts, new_tokens = [], 0
    for seq in outs:
        seq = [t for t in seq if t != eos and t != pad]
        new_tokens += len(seq)
        texts.append(tokenizer.decode(seq, skip_special_tokens=True))
    return GenerationResult(texts=texts, n_truncated=n_truncated, new_tokens=new_tokens,
                            seconds=time.perf_counter() - t0)
