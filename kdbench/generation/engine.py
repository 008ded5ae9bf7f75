"""The one generation component every part of kdbench uses (evaluation, sequence-level KD, on-policy methods,
MiniLLM's teacher-mixed sampling, exposure bias): `generate_batches` is the one loop — prompts batched (sorted by
length so a batch pads little), left-padded with an attention mask so every prompt ends where generation starts,
decoded, cut after the first EOS — with a maximum prompt length with left truncation (counted, `encode_prompts`),
greedy or seeded sampling, and a progress bar. What differs between callers is the per-batch `decode` step:
transformers' generate with its KV cache (`model_generate`) or a caller's own (the two-model mixture of
generation.mixed)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from kdbench.data.template import char_window, left_truncate, tokenize_truncated

# decode(input_ids [B, W], attention_mask [B, W], generator) -> the generated token ids only [B * samples, N]:
# rows grouped by prompt (prompt j's samples are rows j * samples ... j * samples + samples - 1, the layout of
# generate's num_return_sequences), any row may run on past its EOS (the loop cuts there). `generator` is the
# loop's one CPU generator, seeded once per call: the per-batch randomness comes from it.
Decode = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


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


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [B, W], attention_mask [B, W]) with each prompt right-aligned at width W = the longest prompt,
    pad_id and mask 0 before it: every prompt ends where generation starts."""
    width = max((len(p) for p in prompts), default=0)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for j, p in enumerate(prompts):
        input_ids[j, width - len(p):] = torch.tensor(p, dtype=torch.long)
        attention[j, width - len(p):] = 1
    return input_ids, attention


def cut_after_eos(seq: list[int], eos_id: int | None, pad_id: int, strip_padding: bool = True) -> list[int]:
    """A generated row up to and including its first EOS (kept: a sampled answer that stopped teaches stopping).
    A row without EOS is kept whole, less its pad tokens when strip_padding (generate pads rows that stopped on
    an EOS id from the model's own generation_config when eos_id is None)."""
    if eos_id is not None and eos_id in seq:
        return seq[:seq.index(eos_id) + 1]
    if strip_padding and pad_id != eos_id:
        return [t for t in seq if t != pad_id]
    return seq


def model_generate(model, **generate_kwargs) -> Decode:
    """The decode step through transformers' `model.generate` (KV cache) with these keyword arguments. When
    sampling, torch's global seed is set once per batch from the loop's generator, so the same prompts and seed
    give the same samples whatever ran before."""

    def decode(input_ids: torch.Tensor, attention_mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if generate_kwargs.get("do_sample"):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
        return out[:, input_ids.shape[1]:]

    return decode


def generate_batches(models: Sequence[torch.nn.Module], ids: list[list[int]], decode: Decode, *, pad_id: int,
                     eos_id: int | None, batch_size: int, seed: int, samples_per_prompt: int = 1,
                     sort_by_length: bool = True, strip_padding: bool = True, description: str = "generating",
                     show_progress: bool = True) -> list[list[list[int]]]:
    """The generation loop: [prompt][sample] -> generated token ids, in the prompts' order, each cut after its
    first EOS (`cut_after_eos`).

    Prompts go `batch_size` at a time, sorted by length (stable) when sort_by_length, else in their own order;
    each batch is left-padded (`left_pad`), moved to the device of models[0] and handed to `decode` with one
    CPU generator seeded by `seed` for the whole call. `models` (those `decode` runs) are in eval mode during
    the loop and get their training flags back after; no gradients.
    """
    if batch_size < 1 or samples_per_prompt < 1:
        raise ValueError(f"batch_size={batch_size} and samples_per_prompt={samples_per_prompt} must be >= 1")
    order = sorted(range(len(ids)), key=lambda i: len(ids[i])) if sort_by_length else list(range(len(ids)))
    out: list[list[list[int]]] = [[] for _ in ids]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    device = next(models[0].parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    try:
        with torch.no_grad(), _progress(show_progress) as bar:
            task = bar.add_task(description, total=len(ids))
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                input_ids, attention = left_pad([ids[i] for i in batch], pad_id)
                rows = decode(input_ids.to(device), attention.to(device), gen)
                if rows.shape[0] != len(batch) * samples_per_prompt:
                    raise ValueError(f"decode returned {rows.shape[0]} rows for {len(batch)} prompts x "
                                     f"samples_per_prompt={samples_per_prompt}")
                rows = rows.tolist()
                for j, i in enumerate(batch):
                    for s in range(samples_per_prompt):
                        out[i].append(cut_after_eos(rows[j * samples_per_prompt + s], eos_id, pad_id, strip_padding))
                bar.advance(task, len(batch))
    finally:
        for m, was in zip(models, modes):
            m.train(was)
    return out


def generate_ids(model, ids: list[list[int]], settings, pad_id: int, eos_id: int | None,
                 max_new_tokens: int | None = None, description: str = "generating",
                 show_progress: bool = True) -> list[list[int]]:
    """The engine on token ids: one continuation per prompt, in the prompts' order, cut after the first EOS (kept)
    and without padding: `generate_batches` through `model_generate`.

    `settings` has do_sample, temperature, top_p, top_k, max_new_tokens, batch_size, seed
    (generation.settings.GenerationSettings); sampling is seeded per batch from one generator, so the same prompts
    and seed give the same samples.
    """
    kwargs = dict(max_new_tokens=max_new_tokens or settings.max_new_tokens, pad_token_id=pad_id,
                  eos_token_id=eos_id, do_sample=settings.do_sample)
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    samples = generate_batches([model], ids, model_generate(model, **kwargs), pad_id=pad_id, eos_id=eos_id,
                               batch_size=settings.batch_size, seed=settings.seed, description=description,
                               show_progress=show_progress)
    return [s[0] for s in samples]


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
