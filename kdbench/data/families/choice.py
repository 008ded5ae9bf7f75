"""`choice` (benchmark v5): name one word of the input list that is an animal (or a color). Several answers are
right; the data's writers prefer some words (words.POPULARITY, fixed across prompts), so

    p*(w | x) = POPULARITY[w] / sum of POPULARITY over the right words of the list.

A one-hot reference shows one pick; the teacher's soft label carries the preference over all the right words.
"""

from __future__ import annotations

import random

from kdbench.data.distributions import Categorical
from kdbench.data.families.words import ANIMALS, COLORS, POPULARITY

KINDS = {"animal": ANIMALS, "color": COLORS}
PHRASINGS = (
    "Name one {kind} that appears in the list.",
    "Pick a word from the list that is a {kind}.",
    "Which of these words is a {kind}? Give one.",
)
INSTRUCTIONS = {p.format(kind=kind): kind for p in PHRASINGS for kind in KINDS}


def generate(rng: random.Random) -> tuple[str, str, str]:
    kind = rng.choice(sorted(KINDS))
    other = next(k for k in sorted(KINDS) if k != kind)
    # 2-4 right words (so there is a choice) among 1-3 words of the other kind (so the property must be read).
    words = rng.sample(KINDS[kind], rng.randint(2, 4)) + rng.sample(KINDS[other], rng.randint(1, 3))
    rng.shuffle(words)
    instruction = rng.choice(PHRASINGS).format(kind=kind)
    input_ = ", ".join(words)
    return instruction, input_, distribution(instruction, input_).sample(rng)


def distribution(instruction: str, input_: str) -> Categorical:
    kind = INSTRUCTIONS.get(instruction)
    if kind is None:
        raise ValueError(f"choice: unknown instruction {instruction!r}; expected one of {sorted(INSTRUCTIONS)}")
    right = [w for w in input_.split(", ") if w in KINDS[kind]]
    if not right:
        raise ValueError(f"choice: the input {input_!r} holds no {kind}")
    return Categorical({w: POPULARITY[w] for w in right})
