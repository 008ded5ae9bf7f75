"""The true answer distribution p*(y | x) of an embedded row (benchmark v5): what a perfect teacher would put on
each response text. The training split holds one sample of it per prompt, as real data holds one human answer;
the metrics of kdbench.evaluation.truth score students and the teacher against it.

Every family's distribution is an `AnswerDistribution`; `Categorical` serves every family whose answers can be
listed (a few thousand at most), a family with a larger space (long-form text from a grammar) implements the
same four methods itself.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Mapping
from typing import Protocol, runtime_checkable


@runtime_checkable
class AnswerDistribution(Protocol):
    def log_prob(self, text: str) -> float:
        """Natural log of p*(text | x); -inf for a text this prompt's family can never produce."""

    def sample(self, rng: random.Random) -> str:
        """One response text drawn from p*(. | x)."""

    def support(self) -> dict[str, float] | None:
        """Every possible response with its probability (summing to 1), or None where there are too many to list."""

    def entropy(self) -> float:
        """H(p*(. | x)) in nats: exact where the support is listed, else an estimate its docstring describes."""


class Categorical:
    """A distribution over a listed set of texts (probabilities normalized here; zero-probability texts dropped)."""

    def __init__(self, probs: Mapping[str, float]):
        total = float(sum(probs.values()))
        if not probs or total <= 0 or any(p < 0 for p in probs.values()):
            raise ValueError(f"a categorical answer distribution needs non-negative weights with a positive sum: "
                             f"{dict(probs)!r}")
        # Sorted by text: the same distribution samples the same way whatever order its weights came in.
        self._probs = {text: p / total for text, p in sorted(probs.items()) if p > 0}
        self._texts = list(self._probs)
        self._cumulative = []
        acc = 0.0
        for text in self._texts:
            acc += self._probs[text]
            self._cumulative.append(acc)

    def log_prob(self, text: str) -> float:
        p = self._probs.get(text, 0.0)
        return math.log(p) if p > 0 else -math.inf

    def sample(self, rng: random.Random) -> str:
        i = bisect.bisect_right(self._cumulative, rng.random() * self._cumulative[-1])
        return self._texts[min(i, len(self._texts) - 1)]

    def support(self) -> dict[str, float]:
        return dict(self._probs)

    def entropy(self) -> float:
        return -sum(p * math.log(p) for p in self._probs.values())

    def __repr__(self) -> str:
        return f"Categorical({self._probs!r})"


def point_mass(text: str) -> Categorical:
    """A deterministic family's distribution: all mass on the one right answer."""
    return Categorical({text: 1.0})
