"""Rows -> token ids with the prompt masked out of the loss -> length-bucketed batches (a Lightning DataModule)."""

from __future__ import annotations

import random

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from kdbench.data.template import render_prompt, tokenize_truncated

IGNORE = -100


def prompt_of(row: dict) -> str:
    # MiniLLM's files carry the exact prompt string they fed their models; otherwise render the same template.
    return row.get("prompt") or render_prompt(row["instruction"], row["input"])


def encode_row(row: dict, tokenizer, max_prompt_length: int, max_response_length: int) -> dict:
    """Prompt ids (left-truncated: the end of a prompt, "### Response:", is what the model must see) followed by
    the response ids and EOS; labels are IGNORE on the prompt."""
    # tokenize_truncated cuts a huge field before the tokenizer sees it, never changing the ids kept.
    prompt_ids, truncated = tokenize_truncated(tokenizer, prompt_of(row), max_prompt_length, keep_end=True)
    response_ids, _ = tokenize_truncated(tokenizer, row["output"], max_response_length, keep_end=False)
    response_ids = response_ids + [tokenizer.eos_token_id]
    return {"prompt_ids": prompt_ids, "response_ids": response_ids, "truncated": truncated}


class EncodedDataset(Dataset):
    def __init__(self, rows: list[dict], tokenizer, max_prompt_length: int, max_response_length: int):
        self.items = [encode_row(r, tokenizer, max_prompt_length, max_response_length) for r in rows]
        self.n_truncated = sum(it["truncated"] for it in self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]

    def length(self, i: int) -> int:
        return len(self.items[i]["prompt_ids"]) + len(self.items[i]["response_ids"])


def collate(items: list[dict], pad_id: int) -> dict:
    """Right-padded batch: input_ids, attention_mask, labels (IGNORE on prompt and padding)."""
    T = max(len(it["prompt_ids"]) + len(it["response_ids"]) for it in items)
    B = len(items)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    for j, it in enumerate(items):
        p, r = it["prompt_ids"], it["response_ids"]
        n = len(p) + len(r)
        input_ids[j, :n] = torch.tensor(p + r)
        attention_mask[j, :n] = 1
        labels[j, len(p):n] = torch.tensor(r)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def split_by_length(lengths: list[int], max_parts: int = 3, part_overhead: int = 256) -> list[list[int]]:
    """Partition a batch's indices into at most `max_parts` groups of similar length, minimizing padded tokens
    plus `part_overhead` token-equivalents per extra forward pass (exact DP over the length-sorted batch)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    ls = [lengths[i] for i in order]
    n = len(ls)
    inf = float("inf")
    # best[k][j]: min cost of covering the first j sorted items with k groups; a group (a, j] pads to ls[j-1].
    best = [[inf] * (n + 1) for _ in range(max_parts + 1)]
    cut = [[0] * (n + 1) for _ in range(max_parts + 1)]
    best[0][0] = 0
    for k in range(1, max_parts + 1):
        for j in range(1, n + 1):
            for a in range(j):
                c = best[k - 1][a] + (j - a) * ls[j - 1] + part_overhead
                if c < best[k][j]:
                    best[k][j], cut[k][j] = c, a
    k = min(range(1, max_parts + 1), key=lambda k: best[k][n])
    parts, j = [], n
    while k > 0:
        a = cut[k][j]
        parts.append(order[a:j])
        j, k = a, k - 1
    return parts[::-1]


class ShuffledBatchSampler(Sampler):
    """Uniformly random batches, epoch after epoch without end (training is measured in optimizer steps).

    Batches are NOT grouped by length across steps: on the embedded benchmark, length identifies the task family,
    and length-sorted batches (one family per step) trained a 0.5M teacher to half the exact match of mixed
    batches at equal steps. Padding is cut inside each step instead (split_by_length)."""

    def __init__(self, n: int, batch_size: int, seed: int, skip: int = 0):
        self.n, self.batch_size, self.seed, self.skip = n, batch_size, seed, skip

    def __iter__(self):
        rng = random.Random(self.seed)
        order: list[int] = []
        made = 0
        while True:
            batch = []
            while len(batch) < self.batch_size:
                if not order:
                    order = list(range(self.n))
                    rng.shuffle(order)
                batch.append(order.pop())
            made += 1
            if made > self.skip:  # a resumed run continues the same stream after the batches it trained on
                yield batch


class InstructionDataModule(L.LightningDataModule):
    def __init__(self, train_rows: list[dict], val_rows: list[dict], tokenizer, batch_size: int, seed: int,
                 max_prompt_length: int = 256, max_response_length: int = 128):
        super().__init__()
        self.tokenizer, self.batch_size, self.seed = tokenizer, batch_size, seed
        self.train_set = EncodedDataset(train_rows, tokenizer, max_prompt_length, max_response_length)
        self.val_set = EncodedDataset(val_rows, tokenizer, max_prompt_length, max_response_length)
        self._skip = 0

    # The data position for a resume checkpoint (kdbench.training.resume): every method takes one training batch
    # per optimizer step, so the batches consumed are the steps taken.
    def state_dict(self) -> dict:
        return {"train_batches": int(self.trainer.global_step) if self.trainer is not None else 0}

    def load_state_dict(self, state: dict) -> None:
        self._skip = int(state.get("train_batches", 0))

    def _collate(self, items):
        return collate(items, self.tokenizer.pad_token_id)

    def probe_batch(self) -> dict:
        """One real training row as a batch, for checks before training starts."""
        return self._collate([self.train_set[0]])

    def _collate_parts(self, items):
        """One optimizer step's random batch, as length-grouped parts: the step's loss is reduced over all its
        tokens (methods.offline), so the split changes padding, not the gradient."""
        lengths = [len(it["prompt_ids"]) + len(it["response_ids"]) for it in items]
        return {"parts": [collate([items[i] for i in part], self.tokenizer.pad_token_id)
                          for part in split_by_length(lengths)]}

    def train_dataloader(self):
        sampler = ShuffledBatchSampler(len(self.train_set), self.batch_size, self.seed, self._skip)
        return DataLoader(self.train_set, batch_sampler=sampler, collate_fn=self._collate_parts)

    def val_dataloader(self):
        order = sorted(range(len(self.val_set)), key=self.val_set.length)
        batches = [order[k:k + self.batch_size] for k in range(0, len(order), self.batch_size)]
        return DataLoader(self.val_set, batch_sampler=batches, collate_fn=self._collate)
