"""`mood` (benchmark v5): is a review positive or negative, where the truth is a posterior, not a label.

v4's sentiment clauses ("the food was not great"), each word with a strength (STRENGTH) and a negation that flips
and halves it ("not terrible" is mildly positive). The review's score is the sum over its clauses, and
    p*(positive | x) = 1 / (1 + exp(-score)),
so a review with one mild clause is nearly a coin flip and one with three strong clauses nearly certain:
calibration can be measured against the truth, not against one sampled label.
"""

from __future__ import annotations

import math
import random
import re

from kdbench.data.distributions import Categorical
from kdbench.data.families.words import ASPECTS

LABELS = ("positive", "negative")
STRENGTH = {
    "superb": 2.0, "excellent": 2.0, "great": 1.5, "lovely": 1.5, "friendly": 1.0, "pleasant": 1.0, "tasty": 1.0,
    "clean": 0.5,
    "awful": -2.0, "terrible": -2.0, "rude": -1.5, "dirty": -1.5, "boring": -1.0, "noisy": -1.0, "bland": -1.0,
    "poor": -0.5,
}
NEGATION = -0.5  # "was not X" scores NEGATION * STRENGTH[X]
P_NEGATED = 0.35
PHRASINGS = (
    "Is the following review positive or negative?",
    "Classify the review as positive or negative.",
    "Read the review and answer positive or negative.",
)
_CLAUSE = re.compile(r"the (\w+) was (not )?(\w+)")


def generate(rng: random.Random) -> tuple[str, str, str]:
    clauses = []
    for aspect in rng.sample(ASPECTS, rng.randint(1, 3)):
        negated = "not " if rng.random() < P_NEGATED else ""
        clauses.append(f"the {aspect} was {negated}{rng.choice(sorted(STRENGTH))}")
    text = ", and ".join(clauses)
    input_ = text[0].upper() + text[1:] + "."
    instruction = rng.choice(PHRASINGS)
    return instruction, input_, distribution(instruction, input_).sample(rng)


def score(review: str) -> float:
    """The summed clause strengths of a review this family wrote; ValueError naming the clause it cannot read."""
    total = 0.0
    for clause in review.rstrip(".").split(", and "):
        m = _CLAUSE.fullmatch(clause[0].lower() + clause[1:])
        if m is None or m.group(1) not in ASPECTS or m.group(3) not in STRENGTH:
            raise ValueError(f"mood: cannot read the clause {clause!r} of the review {review!r}")
        total += STRENGTH[m.group(3)] * (NEGATION if m.group(2) else 1.0)
    return total


def distribution(instruction: str, input_: str) -> Categorical:
    if instruction not in PHRASINGS:
        raise ValueError(f"mood: unknown instruction {instruction!r}; expected one of {list(PHRASINGS)}")
    p_positive = 1.0 / (1.0 + math.exp(-score(input_)))
    return Categorical({"positive": p_positive, "negative": 1.0 - p_positive})
