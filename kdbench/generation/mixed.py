"""Sampling from a mixture of two models token by token (MiniLLM's teacher-mixed sampling): at every step the next
token is drawn from (1 - alpha) q_student + alpha p_teacher, both with their own KV cache. transformers' generate
drives one model, so this supplies its own decode step (explicit position ids, one multinomial draw per step from
the loop's seeded generator) to the engine's loop (`generate_batches`: left padding, eval mode, cut after EOS).
"""

from __future__ import annotations

import torch

from kdbench.generation.engine import Decode, generate_batches


def mixture_decode(student, teacher, *, alpha: float, max_new_tokens: int, pad_id: int, eos_id: int,
                   vocab_size: int, temperature: float = 1.0) -> Decode:
    """The decode step of `mixed_sample`: [B, N <= max_new_tokens] sampled ids, a row that ended fed (and given)
    pad_id after its EOS; it stops early once every row has ended."""

    def decode(input_ids: torch.Tensor, attention_mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, device = input_ids.shape[0], input_ids.device
        caches = [None, None]
        # Drawn on the CPU: the generator is a CPU one, and the draws are then the same wherever the models run.
        done = torch.zeros(n, dtype=torch.bool)
        tokens: list[torch.Tensor] = []
        step_ids, step_mask = input_ids, attention_mask
        for _ in range(max_new_tokens):
            position = (step_mask.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1]:]
            probs = []
            for k, m in enumerate((student, teacher)):
                res = m(input_ids=step_ids, attention_mask=step_mask, position_ids=position,
                        past_key_values=caches[k], use_cache=True)
                caches[k] = res.past_key_values
                logits = res.logits[:, -1, :vocab_size].float() / temperature
                probs.append(torch.softmax(logits, dim=-1))
            mix = (1 - alpha) * probs[0] + alpha * probs[1]
            nxt = torch.multinomial(mix.cpu(), 1, generator=generator).squeeze(1)
            nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
            tokens.append(nxt)
            done = done | (nxt == eos_id)
            if bool(done.all()):
                break
            step_ids = nxt.unsqueeze(1).to(device)
            # Finished rows go on feeding padding (ignored); keeping them attended keeps the cache shapes simple.
            step_mask = torch.cat([step_mask, torch.ones((n, 1), dtype=torch.long, device=device)], dim=1)
        return torch.stack(tokens, dim=1) if tokens else torch.zeros((n, 0), dtype=torch.long)

    return decode


@torch.no_grad()
def mixed_sample(student, teacher, prompts: list[list[int]], *, alpha: float, max_new_tokens: int, pad_id: int,
                 eos_id: int, vocab_size: int, temperature: float = 1.0, seed: int = 0) -> list[list[int]]:
    """One continuation per prompt from the per-token mixture, cut after the first EOS (kept). alpha = 0 samples
    the student alone, 1 the teacher alone. The prompts are one batch in their own row order (MiniLLM's rollout),
    sampled with one torch.Generator seeded by `seed`; the caller's global RNG is not touched."""
    decode = mixture_decode(student, teacher, alpha=alpha, max_new_tokens=max_new_tokens, pad_id=pad_id,
                            eos_id=eos_id, vocab_size=vocab_size, temperature=temperature)
    samples = generate_batches([student, teacher], prompts, decode, pad_id=pad_id, eos_id=eos_id,
                               batch_size=max(len(prompts), 1), seed=seed, sort_by_length=False,
                               strip_padding=False, show_progress=False)
    return [s[0] for s in samples]
