"""`sum` (benchmark v5): add up 3-4 two-digit numbers. The answer is deterministic (a point mass); what a small
student cannot do in one step (carry across several numbers at once) it can after a rationale that adds one
number at a time, so each row carries that rationale in `rationale`: "23 + 45 = 68. 68 + 17 = 85."
"""

from __future__ import annotations

import random

from kdbench.data.distributions import Categorical, point_mass

PHRASINGS = (
    "What is the sum of these numbers?",
    "Add up the following numbers.",
    "Compute the total of the numbers in the list.",
)


def numbers_of(input_: str) -> list[int]:
    try:
        return [int(x) for x in input_.split(", ")]
    except ValueError:
        raise ValueError(f"sum: the input {input_!r} is not a list of numbers") from None


def rationale(input_: str) -> str:
    """The running total, one addition per sentence; its last number is the answer."""
    numbers = numbers_of(input_)
    steps, total = [], numbers[0]
    for x in numbers[1:]:
        steps.append(f"{total} + {x} = {total + x}.")
        total += x
    return " ".join(steps)


def generate(rng: random.Random) -> tuple[str, str, str, str]:
    input_ = ", ".join(str(rng.randint(10, 99)) for _ in range(rng.randint(3, 4)))
    instruction = rng.choice(PHRASINGS)
    return instruction, input_, distribution(instruction, input_).sample(rng), rationale(input_)


def distribution(instruction: str, input_: str) -> Categorical:
    if instruction not in PHRASINGS:
        raise ValueError(f"sum: unknown instruction {instruction!r}; expected one of {list(PHRASINGS)}")
    return point_mass(str(sum(numbers_of(input_))))
