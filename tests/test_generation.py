"""The generation engine (batched, left-padded, truncating, EOS-stopping, seeded) and the content-keyed cache."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import threading
import time

import pytest
import torch
from omegaconf import OmegaConf

from kdbench.evaluation.exposure_bias import sample_continuations
from kdbench.generation.cache import cached_generate, generation_key
from kdbench.generation.engine import (
    GenerationResult,
    cut_after_eos,
    generate,
    generate_batches,
    generate_ids,
    left_pad,
)
from kdbench.generation.mixed import mixed_sample
from kdbench.generation.settings import GenerationSettings
from kdbench.models.loading import build_from_arch
from kdbench.models.tokenizer import train_bpe_tokenizer
from kdbench.schema import ArchConfig

WORDS = ("the cat sat on a mat while dogs ran over green hills and birds sang songs in tall trees near rivers "
         "every morning before noon").split()

PROMPTS = [  # very different lengths (2 to ~80 tokens), not sorted by length
    "birds sang songs in tall trees",
    "the",
    "the cat sat on a mat while dogs ran over green hills and birds sang songs in tall trees near rivers every "
    "morning before noon the cat sat on a mat while dogs ran",
    "dogs ran",
    "green hills and birds sang songs near rivers every morning",
    "a cat",
]


@pytest.fixture(scope="module")
def tokenizer():
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(50)]
    return train_bpe_tokenizer(texts, vocab_size=300)


def tiny_model(tokenizer, seed: int = 0):
    """A random decoder whose greedy output depends on the whole prompt (and on positions): the default init
    (std 0.02, tied embeddings) just repeats the last prompt token, which would make the padding and truncation
    checks below vacuous, so the weights are redrawn at unit scale."""
    arch = ArchConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, tie_word_embeddings=False)
    model = build_from_arch(arch, tokenizer, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                std = 1.0 if "embed_tokens" in name else p.shape[1] ** -0.5
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer)


def greedy(batch_size: int = 4, max_new_tokens: int = 8):
    return OmegaConf.structured(GenerationSettings(batch_size=batch_size, max_new_tokens=max_new_tokens))


def gen(model, tokenizer, prompts, settings, max_prompt_length: int = 128, **kw) -> GenerationResult:
    return generate(model, tokenizer, prompts, settings, max_prompt_length=max_prompt_length, show_progress=False,
                    **kw)


# ----------------------------------------------------------------------------------------------------------------
# generate
# ----------------------------------------------------------------------------------------------------------------

def test_batched_left_padded_generation_equals_one_prompt_at_a_time(model, tokenizer):
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in PROMPTS]
    assert min(lengths) <= 3 and max(lengths) >= 40, lengths
    batched = gen(model, tokenizer, PROMPTS, greedy(batch_size=4))
    singles = [gen(model, tokenizer, [p], greedy(batch_size=1)).texts[0] for p in PROMPTS]
    assert batched.texts == singles
    # not vacuous: every prompt gets text, and texts differ from prompt to prompt (so the order is checked too)
    assert all(batched.texts), batched.texts
    assert len(set(batched.texts)) == len(PROMPTS), batched.texts
    assert batched.n_truncated == 0
    assert 0 < batched.new_tokens <= 8 * len(PROMPTS)
    # one batch holding everything gives the same texts as well
    assert gen(model, tokenizer, PROMPTS, greedy(batch_size=64)).texts == singles


def test_outputs_come_back_in_the_prompts_order(model, tokenizer):
    forward = gen(model, tokenizer, PROMPTS, greedy(batch_size=2)).texts
    backward = gen(model, tokenizer, PROMPTS[::-1], greedy(batch_size=2)).texts
    assert backward == forward[::-1]
    assert len(set(forward)) == len(forward)


def test_max_new_tokens_argument_overrides_the_settings(model, tokenizer):
    short = gen(model, tokenizer, PROMPTS[:3], greedy(max_new_tokens=8), max_new_tokens=2)
    long = gen(model, tokenizer, PROMPTS[:3], greedy(max_new_tokens=8))
    assert short.new_tokens <= 2 * 3 < long.new_tokens
    for s, lo in zip(short.texts, long.texts):
        assert lo.startswith(s)


def test_truncation_counts_long_prompts_and_keeps_the_end(model, tokenizer):
    ids = lambda p: tokenizer(p, add_special_tokens=False)["input_ids"]  # noqa: E731
    tail = " birds sang songs near rivers"  # a word boundary: its tokens are exactly the long prompt's last ones
    heads = ["the cat sat on a mat while dogs ran over green hills and", "every morning before noon a cat",
             "dogs ran over the"]
    longs = [h + tail for h in heads]
    k = len(ids(tail))
    for p in longs:
        assert ids(p)[-k:] == ids(tail) and len(ids(p)) > k
    exact = "a" + tail  # may or may not exceed k; counted independently below
    short = "the cat"
    prompts = longs + [short, exact]
    expected_truncated = sum(len(ids(p)) > k for p in prompts)
    assert expected_truncated >= 3
    result = gen(model, tokenizer, prompts, greedy(), max_prompt_length=k)
    assert result.n_truncated == expected_truncated
    # every long prompt, cut to its last k tokens, generates what the bare tail generates
    reference = gen(model, tokenizer, [tail], greedy(batch_size=1), max_prompt_length=1000).texts[0]
    assert result.texts[:3] == [reference] * 3
    # ...and the cut matters: untruncated, the long prompts generate something else (so the check can fail)
    untruncated = gen(model, tokenizer, longs, greedy(), max_prompt_length=1000)
    assert untruncated.n_truncated == 0
    assert any(t != reference for t in untruncated.texts), untruncated.texts
    # prompts within the limit are untouched
    assert result.texts[3] == gen(model, tokenizer, [short], greedy(batch_size=1)).texts[0]


class ForcedNextToken:
    """A forward hook that makes the model's next token a function of the current one, to test EOS handling."""

    def __init__(self, rule):
        self.rule = rule

    def __call__(self, module, args, kwargs, output):
        input_ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]
        logits = output.logits
        last = input_ids[:, -logits.shape[1]:]
        forced = torch.full_like(logits, -1e4)
        forced.scatter_(-1, self.rule(last).unsqueeze(-1), 1e4)
        output.logits = forced
        return output


def test_generation_stops_at_eos(tokenizer):
    eos = tokenizer.eos_token_id
    x = tokenizer(" cat", add_special_tokens=False)["input_ids"]
    assert len(x) == 1
    x = x[0]
    y = tokenizer(" dogs", add_special_tokens=False)["input_ids"][0]
    assert len({x, y, eos}) == 3
    prompts = ["the", "birds sang songs in tall trees", "dogs ran over green hills"]
    model = tiny_model(tokenizer, seed=3)

    # EOS first; had generation gone on past EOS, the model would emit " cat" after it
    handle = model.register_forward_hook(
        ForcedNextToken(lambda last: torch.where(last == eos, torch.full_like(last, x), torch.full_like(last, eos))),
        with_kwargs=True)
    try:
        result = gen(model, tokenizer, prompts, greedy(batch_size=2))
    finally:
        handle.remove()
    assert result.texts == ["", "", ""]
    assert result.new_tokens == 0

    # one token, then EOS, then (never reached) " dogs"
    def one_then_eos(last):
        return torch.where(last == x, torch.full_like(last, eos),
                           torch.where(last == eos, torch.full_like(last, y), torch.full_like(last, x)))

    handle = model.register_forward_hook(ForcedNextToken(one_then_eos), with_kwargs=True)
    try:
        result = gen(model, tokenizer, prompts, greedy(batch_size=2))
    finally:
        handle.remove()
    assert result.texts == [" cat"] * 3
    assert result.new_tokens == 3

    # the hook is gone: the same model generates freely again (the check above is about EOS, not the model)
    free = gen(model, tokenizer, prompts, greedy(batch_size=2))
    assert free.new_tokens > 3


def test_sampling_is_reproducible_with_a_seed(model, tokenizer):
    def sampled(seed):
        s = OmegaConf.structured(GenerationSettings(do_sample=True, temperature=2.0, batch_size=2, max_new_tokens=8,
                                                  seed=seed))
        return gen(model, tokenizer, PROMPTS, s).texts

    a, b, c = sampled(0), sampled(0), sampled(1)
    assert a == b
    assert a != c
    assert sum(x != z for x, z in zip(a, c)) >= len(PROMPTS) // 2, (a, c)
    # and sampling is not greedy decoding
    assert a != gen(model, tokenizer, PROMPTS, greedy()).texts


def test_generate_restores_the_training_mode(model, tokenizer):
    model.train()
    try:
        gen(model, tokenizer, PROMPTS[:2], greedy())
        assert model.training
    finally:
        model.eval()
    gen(model, tokenizer, PROMPTS[:2], greedy())
    assert not model.training


# ----------------------------------------------------------------------------------------------------------------
# generate_batches: the one loop under generate_ids, mixed_sample and sample_continuations
# ----------------------------------------------------------------------------------------------------------------

def test_left_pad_right_aligns_every_prompt_with_a_mask():
    ids, mask = left_pad([[5, 6, 7], [8], []], pad_id=1)
    assert ids.tolist() == [[5, 6, 7], [1, 1, 8], [1, 1, 1]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]


def test_cut_after_eos_keeps_the_eos_and_strips_padding_only_without_one():
    assert cut_after_eos([4, 1, 0, 1, 1], eos_id=0, pad_id=1) == [4, 1, 0]  # a pad before EOS is a sampled token
    assert cut_after_eos([4, 1, 5], eos_id=0, pad_id=1) == [4, 5]
    assert cut_after_eos([4, 1, 5], eos_id=0, pad_id=1, strip_padding=False) == [4, 1, 5]
    assert cut_after_eos([4, 1, 5], eos_id=None, pad_id=1) == [4, 5]
    assert cut_after_eos([4, 0, 5], eos_id=0, pad_id=0) == [4, 0]


class RecordingDecode:
    """A decode step that records the padded batches it gets and answers, for sample s of each prompt, the row
    [last prompt token, 100 + s, EOS, 7] (7: what a row holds after its EOS, which the loop must cut)."""

    def __init__(self, samples: int = 1, eos: int = 0):
        self.batches, self.samples, self.eos = [], samples, eos

    def __call__(self, input_ids, attention_mask, generator):
        self.batches.append((input_ids.tolist(), attention_mask.tolist()))
        return torch.tensor([[int(row[-1]), 100 + s, self.eos, 7] for row in input_ids for s in range(self.samples)])


def test_generate_batches_sorts_by_length_and_returns_in_the_prompts_order():
    net = torch.nn.Linear(1, 1)
    net.train()
    prompts = [[11, 12, 13], [21], [31, 32], [41, 42, 43, 44]]
    decode = RecordingDecode(samples=2)
    out = generate_batches([net], prompts, decode, pad_id=1, eos_id=0, batch_size=2, seed=0, samples_per_prompt=2,
                           show_progress=False)
    assert out == [[[p[-1], 100, 0], [p[-1], 101, 0]] for p in prompts]
    assert [b[0] for b in decode.batches] == [[[1, 21], [31, 32]], [[1, 11, 12, 13], [41, 42, 43, 44]]]
    assert decode.batches[1][1] == [[0, 1, 1, 1], [1, 1, 1, 1]]
    assert net.training  # eval only while generating

    unsorted = RecordingDecode()
    out = generate_batches([net], prompts, unsorted, pad_id=1, eos_id=0, batch_size=2, seed=0, sort_by_length=False,
                           show_progress=False)
    assert [b[0] for b in unsorted.batches] == [[[11, 12, 13], [1, 1, 21]], [[1, 1, 31, 32], [41, 42, 43, 44]]]
    assert out == [[[p[-1], 100, 0]] for p in prompts]


def test_generate_batches_rejects_a_decode_with_the_wrong_row_count_and_restores_the_mode():
    nets = [torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)]
    nets[0].train()
    nets[1].eval()
    with pytest.raises(ValueError, match=r"decode returned 2 rows for 2 prompts x samples_per_prompt=3"):
        generate_batches(nets, [[5], [6]], RecordingDecode(samples=1), pad_id=1, eos_id=0, batch_size=2, seed=0,
                         samples_per_prompt=3, show_progress=False)
    assert [n.training for n in nets] == [True, False]
    with pytest.raises(ValueError, match="batch_size=0"):
        generate_batches(nets, [[5]], RecordingDecode(), pad_id=1, eos_id=0, batch_size=0, seed=0)


def test_sample_continuations_is_the_engine_sampling_with_the_same_seed(model, tokenizer):
    """Exposure bias samples through the same loop and seeding as the engine: with the engine set to pure
    ancestral sampling the two give the same tokens (none is a pad here, which only the engine would drop)."""
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    settings = GenerationSettings(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=8,
                                batch_size=4, seed=5)
    engine = generate_ids(model, ids, settings, tokenizer.pad_token_id, tokenizer.eos_token_id, show_progress=False)
    samples = sample_continuations(model, tokenizer, ids, 1, 8, seed=5, batch_size=4)
    assert [s[0] for s in samples] == engine
    assert len({tuple(x) for x in engine}) == len(PROMPTS)
    assert engine != generate_ids(model, ids, dataclasses.replace(settings, seed=6), tokenizer.pad_token_id,
                                  tokenizer.eos_token_id, show_progress=False)


def test_mixed_sample_near_zero_temperature_is_the_engine_greedy_decoding_row_for_row(model, tokenizer):
    """The teacher-mixed sampler goes through the same left padding and EOS cut in the prompts' own row order: a
    mixture of one model with itself at temperature ~0 is greedy decoding, so it must give the engine's greedy
    continuations, prompt by prompt (the batch mixes 1- to 40-token prompts: padding matters)."""
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    greedy_ids = generate_ids(model, ids, greedy(batch_size=len(ids), max_new_tokens=10), tokenizer.pad_token_id,
                              tokenizer.eos_token_id, show_progress=False)
    rng_before = torch.get_rng_state()
    mixed = mixed_sample(model, model, ids, alpha=0.5, max_new_tokens=10, pad_id=tokenizer.pad_token_id,
                         eos_id=tokenizer.eos_token_id, vocab_size=len(tokenizer), temperature=1e-6, seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before)  # its draws come from its own generator
    assert mixed == greedy_ids
    assert len({tuple(x) for x in mixed}) > 1


# ----------------------------------------------------------------------------------------------------------------
# cached_generate
# ----------------------------------------------------------------------------------------------------------------

SETTINGS = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 8,
            "batch_size": 4, "seed": 0, "max_prompt_length": 256}
CACHE_PROMPTS = ["the cat sat", "dogs ran over", "birds sang"]


class Counter:
    def __init__(self, texts=("a", "b", "c"), sleep: float = 0.0):
        self.calls, self.texts, self.sleep = 0, list(texts), sleep
        self.lock = threading.Lock()

    def __call__(self) -> GenerationResult:
        with self.lock:
            self.calls += 1
        if self.sleep:
            time.sleep(self.sleep)
        return GenerationResult(texts=list(self.texts), n_truncated=1, new_tokens=7, seconds=0.5)


def test_miss_computes_and_writes_then_hit_reads(tmp_path):
    compute = Counter()
    result, hit = cached_generate(tmp_path, "fp-1", CACHE_PROMPTS, SETTINGS, compute)
    assert (hit, compute.calls) == (False, 1)
    assert result.texts == ["a", "b", "c"]
    key = generation_key("fp-1", CACHE_PROMPTS, SETTINGS)
    entry = tmp_path / "generations" / f"{key}.json"
    assert entry.is_file()
    data = json.loads(entry.read_text())
    assert data["texts"] == ["a", "b", "c"] and data["n_truncated"] == 1 and data["new_tokens"] == 7
    # atomic write: nothing but the entry (and its lock file) is left in the folder
    leftovers = sorted(p.name for p in entry.parent.iterdir() if p.name not in (entry.name, entry.name + ".lock"))
    assert leftovers == []

    again, hit = cached_generate(tmp_path, "fp-1", list(CACHE_PROMPTS), dict(SETTINGS), compute)
    assert (hit, compute.calls) == (True, 1)
    assert (again.texts, again.n_truncated, again.new_tokens) == (["a", "b", "c"], 1, 7)


def test_a_failed_write_leaves_no_entry_and_no_temp_file(tmp_path, monkeypatch):
    compute = Counter()
    real_replace = os.replace

    def failing_replace(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        cached_generate(tmp_path, "fp-1", CACHE_PROMPTS, SETTINGS, compute)
    monkeypatch.setattr(os, "replace", real_replace)
    folder = tmp_path / "generations"
    assert [p.name for p in folder.iterdir() if not p.name.endswith(".lock")] == []
    # the next call is a clean miss, not a read of half a file
    result, hit = cached_generate(tmp_path, "fp-1", CACHE_PROMPTS, SETTINGS, compute)
    assert (hit, compute.calls, result.texts) == (False, 2, ["a", "b", "c"])


def test_a_failed_compute_writes_nothing(tmp_path):
    def boom():
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        cached_generate(tmp_path, "fp-1", CACHE_PROMPTS, SETTINGS, boom)
    compute = Counter()
    _, hit = cached_generate(tmp_path, "fp-1", CACHE_PROMPTS, SETTINGS, compute)
    assert (hit, compute.calls) == (False, 1)


def test_every_input_changes_the_key(tmp_path):
    base = generation_key("fp-1", CACHE_PROMPTS, SETTINGS)
    assert base == generation_key("fp-1", list(CACHE_PROMPTS), dict(reversed(list(SETTINGS.items()))))
    variants = {"fingerprint": generation_key("fp-2", CACHE_PROMPTS, SETTINGS)}
    for name, value in [("do_sample", True), ("temperature", 0.7), ("top_p", 0.9), ("top_k", 50),
                        ("max_new_tokens", 9), ("batch_size", 8), ("seed", 1), ("max_prompt_length", 128)]:
        variants[name] = generation_key("fp-1", CACHE_PROMPTS, {**SETTINGS, name: value})
    variants["extra setting"] = generation_key("fp-1", CACHE_PROMPTS, {**SETTINGS, "repetition_penalty": 1.1})
    variants["one prompt"] = generation_key("fp-1", ["the cat sat", "dogs ran over", "birds sang!"], SETTINGS)
    variants["prompt order"] = generation_key("fp-1", CACHE_PROMPTS[::-1], SETTINGS)
    variants["prompt boundary"] = generation_key("fp-1", ["the cat", " sat", "dogs ran over", "birds sang"],
                                                 SETTINGS)
    variants["one prompt fewer"] = generation_key("fp-1", CACHE_PROMPTS[:2], SETTINGS)
    for name, key in variants.items():
        assert key != base, name
    assert len(set(variants.values())) == len(variants)
    # and through cached_generate: a changed input is a miss
    compute = Counter()
    cached_generate(tmp_path, "fp-1", CACHE_PROMPTS, SETTINGS, compute)
    cached_generate(tmp_path, "fp-2", CACHE_PROMPTS, SETTINGS, compute)
    cached_generate(tmp_path, "fp-1", CACHE_PROMPTS, {**SETTINGS, "seed": 1}, compute)
    cached_generate(tmp_path, "fp-1", CACHE_PROMPTS[:2] + ["birds"], SETTINGS, compute)
    assert compute.calls == 4
    _, hit = cached_generate(tmp_path, "fp-1", CACHE_PROMPTS, SETTINGS, compute)
    assert hit and compute.calls == 4


def test_concurrent_callers_compute_once(tmp_path):
    compute = Counter(sleep=0.3)
    start = threading.Barrier(2)
    outcomes, errors = [], []

    def worker():
        try:
            start.wait()
            outcomes.append(cached_generate(tmp_path, "fp-1", CACHE_PROMPTS, SETTINGS, compute))
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert compute.calls == 1
    assert sorted(hit for _, hit in outcomes) == [False, True]
    assert all(r.texts == ["a", "b", "c"] for r, _ in outcomes)
