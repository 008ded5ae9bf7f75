"""Exposure bias as ExAccErr (Arora et al. 2022, "Why Exposure Bias Matters"; the curve of MiniLLM's exposure-bias
figure, Gu et al. 2024).

For a prompt x, sample continuations y (up to L tokens) from the student q and from the teacher p. At every
prefix, the per-position divergence

    d_t = KL(p(. | x, y_<t) || q(. | x, y_<t))      exact, over the full (tokenizer) vocabulary

is the error the student makes at step t. Accumulated over steps:

    R(l)   = E_{y ~ q} [ sum_{t <= l} d_t ]     on student-sampled sequences (the student's own prefixes)
    eps(l) = E_{y ~ p} [ sum_{t <= l} d_t ]     on teacher-sampled sequences (the prefixes it was taught on)
    ExAccErr(l) = (R(l) - eps(l)) / eps(l) x 100

the excess error, in percent, that comes from running on its own prefixes instead of the teacher's.

Position convention (ours): t = 1 is the distribution over the FIRST generated token (given the prompt only);
a sequence contributes d_1 ... d_n where y_n is its EOS token (the step that chose to stop is counted) or n = L
when it ran to the limit; positions after its EOS are masked.

Averaging over sequences, `average`:
- "sequence" (default, Arora et al.'s expectation): a masked position contributes 0, so a sequence shorter than
  l keeps its final cumulative sum, and R(l) is the plain mean over all sampled sequences.
- "alive" (MiniLLM's code, minillm/evaluate_exposure_bias.py `calc_batch`): at each position, the mean of d_t
  over a prompt's samples still running there (sum(err * mask) / (sum(mask) + 1e-3), here without the 1e-3);
  then the cumulative sum over positions, then the mean over prompts. A position where none of a prompt's
  samples runs adds 0.
Both agree while no sequence has ended.

Known differences from MiniLLM's script, which slices logits[:, prompt_len:] with mask = "token at that input
position is not pad" (pad = EOS for GPT-2): its first curve entry is our d_2 (it never scores the distribution
of the first generated token given the prompt alone), its entry k is d_{k+2}, and a sequence cut at the length
limit also gets the distribution after its last token. Its log reads index 15 (our l = 17 minus d_1). It samples
with do_sample, top_k 0, top_p 1, temperature 1, max_length 512 (prompt included); the same settings are fixed
here (max_new_tokens = L). Where kdbench departs on purpose:
- no n-gram ban and no repetition penalty (no_repeat_ngram_size 0, repetition_penalty 1): the script's generation
  takes its arguments' defaults (no_repeat_ngram_size 6), which changes what is sampled; exposure bias is about
  the model's own distribution, so kdbench samples it purely;
- eval.exposure_bias.samples_per_prompt (5 in the study profile) where the script samples once per prompt
  (--eb-sample-times 1): with one sample on 96 prompts the curve's seed-to-seed std was 37 points for sft `tiny`;
- the metrics are read at positions up to the teacher's mean sample length (eval.exposure_bias.
  within_teacher_length), the students' and the teacher's mean lengths beside them.
"""

from __future__ import annotations

import math

import torch

from kdbench.data.template import left_truncate
from kdbench.evaluation.agreement import response_divergences, shared_vocab_size
from kdbench.evaluation.long_text import eval_mode, length_batches, model_device, pad_id_of
from kdbench.generation.engine import generate_batches, model_generate

AVERAGES = ("sequence", "alive")


def _check_pair(kl: torch.Tensor, mask: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    kl = torch.as_tensor(kl).detach().cpu().to(torch.float64)
    mask = torch.as_tensor(mask).detach().cpu().bool()
    if kl.ndim != 2 or kl.shape != mask.shape:
        raise ValueError(f"{name}: divergences {tuple(kl.shape)} and mask {tuple(mask.shape)} must both be [N, L]")
    if kl.shape[0] == 0:
        raise ValueError(f"{name}: no sequences")
    return torch.where(mask, kl, torch.zeros_like(kl)), mask


def _cumulative(kl: torch.Tensor, mask: torch.Tensor, average: str, groups) -> torch.Tensor:
    if average == "sequence":
        return kl.cumsum(-1).mean(0)
    g = torch.zeros(kl.shape[0], dtype=torch.long) if groups is None else torch.as_tensor(groups).long().cpu()
    if g.shape != (kl.shape[0],):
        raise ValueError(f"groups must be [N] = [{kl.shape[0]}], got {tuple(g.shape)}")
    _, g = torch.unique(g, return_inverse=True)
    n_groups = int(g.max()) + 1
    num = torch.zeros(n_groups, kl.shape[1], dtype=torch.float64).index_add_(0, g, kl)
    den = torch.zeros(n_groups, kl.shape[1], dtype=torch.float64).index_add_(0, g, mask.to(torch.float64))
    per_step = torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))
    return per_step.cumsum(-1).mean(0)


def exaccerr_from_divergences(student_prefix_kl, student_mask, teacher_prefix_kl, teacher_mask, *,
                              average: str = "sequence", student_groups=None, teacher_groups=None) -> dict:
    """The ExAccErr curve from per-position divergences (pure tensor math; float64 on CPU).

    student_prefix_kl [N, L]: d_t = KL(p || q) at position t of N student-sampled sequences, student_mask [N, L]
    True where the position exists (up to and including the sequence's EOS); teacher_* [M, L] the same on
    teacher-sampled sequences. Masked entries are ignored (may hold anything, NaN included). `average` is
    "sequence" or "alive" (module docstring); *_groups [N] / [M] give the prompt of each sequence for "alive"
    (None: one group).

    Returns {"l": LongTensor [1..L], "R": [L], "eps": [L], "exaccerr": [L]} with exaccerr = (R - eps) / eps x 100,
    NaN where eps is 0 (undefined).
    """
    if average not in AVERAGES:
        raise ValueError(f"average={average!r}: one of {AVERAGES}")
    s_kl, s_mask = _check_pair(student_prefix_kl, student_mask, "student")
    t_kl, t_mask = _check_pair(teacher_prefix_kl, teacher_mask, "teacher")
    if s_kl.shape[1] != t_kl.shape[1]:
        raise ValueError(f"student L={s_kl.shape[1]} != teacher L={t_kl.shape[1]}")
    R = _cumulative(s_kl, s_mask, average, student_groups)
    eps = _cumulative(t_kl, t_mask, average, teacher_groups)
    exacc = torch.where(eps > 0, (R - eps) / torch.where(eps > 0, eps, torch.ones_like(eps)) * 100.0,
                        torch.full_like(eps, math.nan))
    return {"l": torch.arange(1, s_kl.shape[1] + 1), "R": R, "eps": eps, "exaccerr": exacc}


@torch.no_grad()
def sample_continuations(model, tokenizer, prompt_ids: list[list[int]], samples_per_prompt: int,
                         max_new_tokens: int, seed: int, batch_size: int = 16) -> list[list[list[int]]]:
    """[prompt][sample] -> generated token ids, cut after the first EOS (kept) or at max_new_tokens.

    Pure ancestral sampling through `model.generate` (temperature 1, top_p 1, top_k 0, no repetition penalty,
    whatever the model's generation_config says) in the generation engine's loop (`generate_batches`: prompts
    left-padded with an attention mask, sorted by length, `batch_size` prompts per call) with
    num_return_sequences = samples_per_prompt. Seeded from `seed` as the engine is (one torch seed per batch drawn
    from a CPU generator) but inside torch.random.fork_rng, so the caller's RNG state is left untouched. Token
    ids, not text: the engine decodes to strings, and a decode/encode round trip would not give back the sampled
    tokens.
    """
    eos, pad = tokenizer.eos_token_id, pad_id_of(tokenizer)
    device = model_device(model)
    kwargs = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "typical_p": 1.0,
              "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "num_beams": 1, "max_new_tokens": max_new_tokens,
              "min_new_tokens": 0, "num_return_sequences": samples_per_prompt, "pad_token_id": pad,
              "eos_token_id": eos}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        # Padding is kept (strip_padding=False): a sampled pad id is a token the divergences must score.
        return generate_batches([model], prompt_ids, model_generate(model, **kwargs), pad_id=pad, eos_id=eos,
                                batch_size=batch_size, seed=seed, samples_per_prompt=samples_per_prompt,
                                strip_padding=False, show_progress=False)


@torch.no_grad()
def prefix_divergences(teacher, student, prompt_ids: list[list[int]], continuations: list[list[int]],
                       length: int, vocab_size: int, pad_id: int, batch_size: int = 16,
                       chunk_rows: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """d [S, length] = KL(p_teacher || q_student) at each generated position of S (prompt, continuation) pairs,
    teacher-forced (right-padded batches, logits cut to vocab_size), and the mask [S, length] of positions that
    exist. Float64 on CPU."""
    d = torch.zeros(len(continuations), length, dtype=torch.float64)
    mask = torch.zeros(len(continuations), length, dtype=torch.bool)
    items = [{"prompt_ids": p, "response_ids": c[:length]} for p, c in zip(prompt_ids, continuations)]
    for idx, batch in length_batches(items, batch_size, pad_id):
        flat = torch.cat([kl.double().cpu() for _, kl, _ in
                          response_divergences(teacher, student, batch, vocab_size, 1.0, chunk_rows)])
        lengths = [len(items[i]["response_ids"]) for i in idx]
        for i, n, vals in zip(idx, lengths, torch.split(flat, lengths)):
            d[i, :n] = vals
            mask[i, :n] = True
    return d, mask


def _json_float(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


@torch.no_grad()
def exposure_bias(teacher, student, tokenizer, prompts: list[str], *, max_new_tokens: int = 100,
                  samples_per_prompt: int = 1, seed: int = 0, batch_size: int = 16, max_prompt_length: int = 256,
                  vocab_size: int | None = None, average: str = "sequence",
                  report_at: tuple[int, ...] = (10, 25, 50, 100), chunk_rows: int = 1024) -> dict:
    """ExAccErr of `student` against `teacher` on `prompts` (module docstring for the definitions).

    Samples `samples_per_prompt` continuations of up to L = max_new_tokens tokens per prompt from the student and
    from the teacher (`sample_continuations`, seeded by `seed`), scores every prefix of both sets with the exact
    KL(p || q) over the tokenizer's vocabulary (len(tokenizer), or vocab_size), and returns a JSON-serialisable
    dict:

        {"l": [1..L], "R": [...], "eps": [...], "exaccerr": [...],        # the whole curve (None where undefined)
         "at": {"10": {"R", "eps", "exaccerr"}, ...},                     # values at report_at entries <= L
         "n_prompts", "samples_per_prompt", "max_new_tokens", "average", "seed",
         "student_mean_length", "teacher_mean_length"}                    # generated tokens incl. EOS

    Prompts are tokenized without special tokens and left-truncated to max_prompt_length, as the generation
    engine does. Both models run in eval mode under no_grad.
    """
    if max_new_tokens < 1 or samples_per_prompt < 1:
        raise ValueError("max_new_tokens and samples_per_prompt must be >= 1")
    if not prompts:
        raise ValueError("no prompts")
    vocab_size = shared_vocab_size(teacher, student, tokenizer, vocab_size)
    L = max_new_tokens
    prompt_ids = [left_truncate(tokenizer(p, add_special_tokens=False)["input_ids"], max_prompt_length)
                  for p in prompts]
    if not all(prompt_ids):
        raise ValueError("a prompt has no token: nothing to condition the first generated token on")
    pad = pad_id_of(tokenizer)
    sets = {}
    with eval_mode(teacher, student):
        for role, sampler in (("student", student), ("teacher", teacher)):
            samples = sample_continuations(sampler, tokenizer, prompt_ids, samples_per_prompt, L, seed, batch_size)
            flat = [c for per_prompt in samples for c in per_prompt]
            groups = torch.arange(len(prompts)).repeat_interleave(samples_per_prompt)
            owners = [prompt_ids[int(g)] for g in groups]
            d, mask = prefix_divergences(teacher, student, owners, flat, L, vocab_size, pad, batch_size, chunk_rows)
            sets[role] = (d, mask, groups)
    curve = exaccerr_from_divergences(sets["student"][0], sets["student"][1], sets["teacher"][0],
                                      sets["teacher"][1], average=average, student_groups=sets["student"][2],
                                      teacher_groups=sets["teacher"][2])
    at = {str(n): {k: _json_float(curve[k][n - 1]) for k in ("R", "eps", "exaccerr")} for n in report_at if n <= L}
    return {
        "l": curve["l"].tolist(),
        "R": [_json_float(v) for v in curve["R"]],
        "eps": [_json_float(v) for v in curve["eps"]],
        "exaccerr": [_json_float(v) for v in curve["exaccerr"]],
        "at": at,
        "n_prompts": len(prompts),
        "samples_per_prompt": samples_per_prompt,
        "max_new_tokens": L,
        "average": average,
        "seed": seed,
        "student_mean_length": float(sets["student"][1].sum(1).double().mean()),
        "teacher_mean_length": float(sets["teacher"][1].sum(1).double().mean()),
    }
