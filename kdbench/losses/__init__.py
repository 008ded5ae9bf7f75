"""Divergences between teacher and student distributions; every one follows the contract in divergences.py.

`chunked_divergence` computes any of them from hidden states and LM-head weights chunk by chunk, without ever
holding the [N, V] logits."""

from kdbench.losses.divergences import (
    adaptive_kl,
    akl_weights,
    check_jsd_beta,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    total_variation,
)

# The registry a method config names by `method.divergence` (hyperparameters under `method.divergence_hp`).
DIVERGENCES = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "generalized_jsd": generalized_jsd,
    "total_variation": total_variation,
    "skew_forward_kl": skew_forward_kl,
    "skew_reverse_kl": skew_reverse_kl,
    "adaptive_kl": adaptive_kl,
}

from kdbench.losses.chunked import chunked_divergence  # noqa: E402  (after DIVERGENCES, which it looks up)

__all__ = ["DIVERGENCES", "adaptive_kl", "akl_weights", "check_jsd_beta", "chunked_divergence", "forward_kl",
           "generalized_jsd", "reverse_kl", "skew_forward_kl", "skew_reverse_kl", "total_variation"]
