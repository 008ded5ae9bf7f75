"""Rows -> token ids with the prompt masked out of the loss -> length-bucketed batches (a Lightning DataModule)."""

from __future__ import annotations

import random

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from kdbench.data.template import render_prompt

IGNORE = -100


def prompt_of(row: dict) -> str:
    # MiniLLM's files carry the exact prompt string they fed their models; otherwise render the same template.
    return row.get("prompt") or render_prompt(row["instruction"], row["input"])


def encode_row(row: dict, tokenizer, max_prompt_length: int, max_response_length: int) -> dict:
    """Prompt ids (left-truncated: the end of a prompt, "### Response:", is what the model must see) followed by
    the response ids and EOS; labels are IGNORE on the prompt."""
    prompt_ids = tokenizer(prompt_of(row), add_special_tokens=False)["input_ids"]
    truncated = len(prompt_ids) > max_prompt_length
    prompt_ids = prompt_ids[len(prompt_ids) - max_prompt_length:] if truncated else prompt_ids
    response_ids = tokenizer(row["output"], add_special_tokens=False)["input_ids"][:max_response_length]
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


class BucketBatchSampler(Sampler):
    """Batches of similar length: draw a pool of `pool_batches` batches' worth of indices, sort the pool by length,
    cut it into batches and shuffle those. Padding waste on the embedded benchmark drops from ~45% to a few %.
    Infinite: training is measured in optimizer steps, not epochs."""

    def __init__(self, dataset: EncodedDataset, batch_size: int, seed: int, pool_batches: int = 50):
        self.dataset, self.batch_size, self.seed, self.pool_batches = dataset, batch_size, seed, pool_batches

    def __iter__(self):
        rng = random.Random(self.seed)
        n = len(self.dataset)
        order: list[int] = []
        while True:
            pool = []
            for _ in range(self.batch_size * self.pool_batches):
                if not order:
                    order = list(range(n))
                    rng.shuffle(order)
                pool.append(order.pop())
            pool.sort(key=self.dataset.length)
            batches = [pool[k:k + self.batch_size] for k in range(0, len(pool), self.batch_size)]
            rng.shuffle(batches)
            yield from batches


class InstructionDataModule(L.LightningDataModule):
    def __init__(self, train_rows: list[dict], val_rows: list[dict], tokenizer, batch_size: int, seed: int,
                 max_prompt_length: int = 256, max_response_length: int = 128):
        super().__init__()
        self.tokenizer, self.batch_size, self.seed = tokenizer, batch_size, seed
        self.train_set = EncodedDataset(train_rows, tokenizer, max_prompt_length, max_response_length)
        self.val_set = EncodedDataset(val_rows, tokenizer, max_prompt_length, max_response_length)

    def _collate(self, items):
        return collate(items, self.tokenizer.pad_token_id)

    def train_dataloader(self):
        sampler = BucketBatchSampler(self.train_set, self.batch_size, self.seed)
        return DataLoader(self.train_set, batch_sampler=sampler, collate_fn=self._collate)

    def val_dataloader(self):
        order = sorted(range(len(self.val_set)), key=self.val_set.length)
        batches = [order[k:k + self.batch_size] for k in range(0, len(order), self.batch_size)]
        return DataLoader(self.val_set, batch_sampler=batches, collate_fn=self._collate)
