"""Sampling from a mixture of two models token by token (MiniLLM's teacher-mixed sampling): at every step the next
token is drawn from (1 - alpha) q_student + alpha p_teacher, both with their own KV cache. The engine's
`generate_ids` cannot do this (transformers' generate drives one model), so this is a small decode loop of its own:
left-padded prompts, explicit position ids, stop at EOS, seeded.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def mixed_sample(student, teacher, prompts: list[list[int]], *, alpha: float, max_new_tokens: int, pad_id: int,
                 eos_id: int, vocab_size: int, temperature: float = 1.0, seed: int = 0) -> list[list[int]]:
    """One continuation per prompt from the per-token mixture, cut after the first EOS (kept). alpha = 0 samples
    the student alone, 1 the teacher alone."""
    width = max(len(p) for p in prompts)
    n = len(prompts)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for j, p in enumerate(prompts):
        ids[j, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[j, width - len(p):] = 1
    gen = torch.Generator(device="cpu").manual_seed(seed)
    models = [student, teacher]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    caches = [None, None]
    out = [[] for _ in range(n)]
    done = torch.zeros(n, dtype=torch.bool)
    step_ids, step_mask = ids, mask
    try:
        for _ in range(max_new_tokens):
            position = (step_mask.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1]:]
            probs = []
            for k, m in enumerate(models):
                res = m(input_ids=step_ids, attention_mask=step_mask, position_ids=position,
                        past_key_values=caches[k], use_cache=True)
                caches[k] = res.past_key_values
                logits = res.logits[:, -1, :vocab_size].float() / temperature
                probs.append(torch.softmax(logits, dim=-1))
            mix = (1 - alpha) * probs[0] + alpha * probs[1]
            nxt = torch.multinomial(mix, 1, generator=gen).squeeze(1)
            nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
            for j in range(n):
                if not done[j]:
                    out[j].append(int(nxt[j]))
            done = done | (nxt == eos_id)
            if bool(done.all()):
                break
            step_ids = nxt.unsqueeze(1)
            # Finished rows go on feeding padding (ignored); keeping them attended keeps the cache shapes simple.
            step_mask = torch.cat([step_mask, torch.ones((n, 1), dtype=torch.long)], dim=1)
    finally:
        for m, was in zip(models, modes):
            m.train(was)
    return out
