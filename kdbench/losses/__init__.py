"""Divergences between teacher and student distributions; every one follows the contract in divergences.py."""

from kdbench.losses.divergences import forward_kl

# The registry a method config names by `method.divergence`.
DIVERGENCES = {"forward_kl": forward_kl}

__all__ = ["DIVERGENCES", "forward_kl"]
