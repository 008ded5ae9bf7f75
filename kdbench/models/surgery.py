"""Model surgery the methods and the evaluation share: the decoder stack and LM head of a causal LM, hidden states
and logits at the response positions only (the [B, T, V] logits of a whole batch are never built), and the check
that a model's logits are lm_head(last hidden state), which those shortcuts assume."""

from __future__ import annotations

import torch

from kdbench.data.datamodule import IGNORE


def base_and_head(model):
    """The decoder stack and LM head of a causal LM (Llama: .model / .lm_head; GPT-2: .transformer / .lm_head)."""
    return getattr(model, model.base_model_prefix), model.get_output_embeddings()


def response_hidden(model, batch: dict, all_layers: bool = False):
    """Final hidden states [N, H] at the N positions that predict a response token, and those tokens [N];
    with all_layers, also every layer's states at those positions (index 0 = embeddings, L = last layer)."""
    base, _ = base_and_head(model)
    out = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=all_layers)
    targets = batch["labels"][:, 1:]
    at = targets != IGNORE
    # Boolean indexing copies the selected rows: [N, H] is far smaller than the [B, T, V] logits it replaces.
    final = out.last_hidden_state[:, :-1][at]
    if not all_layers:
        return final, targets[at]
    return final, targets[at], [h[:, :-1][at] for h in out.hidden_states]


def response_logits(model, batch: dict, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N, V] at the N positions that predict a response token, and those tokens [N]."""
    hidden, targets = response_hidden(model, batch)
    return base_and_head(model)[1](hidden)[:, :vocab_size], targets


def check_head_path(model, batch: dict) -> None:
    """The response-only path assumes logits = lm_head(last hidden state); a model that scales or soft-caps its
    logits (Gemma 2, Cohere) would be distilled on the wrong values. Checked once on a real batch."""
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"][:1], attention_mask=batch["attention_mask"][:1]).logits
        base, head = base_and_head(model)
        ours = head(base(input_ids=batch["input_ids"][:1],
                         attention_mask=batch["attention_mask"][:1]).last_hidden_state)
    if not torch.allclose(full.float(), ours.float(), atol=1e-4, rtol=1e-3):
        raise NotImplementedError(f"{type(model).__name__}: its logits are not lm_head(last hidden state) "
                                  "(a logit scale or soft-cap?); kdbench's response-only logits do not support it yet")
