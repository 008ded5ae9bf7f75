"""`pairs` (benchmark v5): pick two or three animals of the input list to form a team, written in a free order.

The joint over sets and orders is known. A set S of the list's animals is chosen with weight
    prod_{a in S} POPULARITY[a] * AFFINITY ** (number of FRIENDS pairs inside S),
and written in the order of a Plackett-Luce draw by popularity (the first name with probability POPULARITY over the
set's sum, the next among the rest, ...). So p* has a sharp mode where the list holds a friend pair (both of its
orders) and a long tail of other teams: a capacity-limited student must choose between covering the tail and
putting mass between the modes (a name twice, a name not in the list, a non-friend pairing). The support is at
most 6*5*4 = 120 texts.
"""

from __future__ import annotations

import itertools
import math
import random

from kdbench.data.distributions import Categorical
from kdbench.data.families.words import ANIMALS, POPULARITY

FRIENDS = (("cat", "dog"), ("fox", "hare"), ("owl", "mole"), ("bear", "wolf"), ("duck", "swan"), ("frog", "toad"),
           ("goat", "lion"), ("seal", "crab"))
FRIEND_SETS = {frozenset(pair) for pair in FRIENDS}
AFFINITY = 8
COUNTS = {"two": 2, "three": 3}
PHRASINGS = (
    "Choose {count} animals from the list to form a team.",
    "Which {count} of these animals would you put together?",
    "Pick {count} animals from the list that go well together.",
)
INSTRUCTIONS = {p.format(count=count): k for p in PHRASINGS for count, k in COUNTS.items()}
# How often the list holds a friend pair on purpose (a list drawn at random holds one less often).
P_FRIEND_PAIR = 0.6


def write(team: tuple[str, ...]) -> str:
    """('cat', 'dog') -> 'cat and dog'; ('cat', 'dog', 'owl') -> 'cat, dog and owl'."""
    return ", ".join(team[:-1]) + " and " + team[-1]


def generate(rng: random.Random) -> tuple[str, str, str]:
    n = rng.randint(4, 6)
    if rng.random() < P_FRIEND_PAIR:
        pair = list(rng.choice(FRIENDS))
        animals = pair + rng.sample([a for a in ANIMALS if a not in pair], n - 2)
    else:
        animals = rng.sample(ANIMALS, n)
    rng.shuffle(animals)
    instruction = rng.choice(PHRASINGS).format(count=rng.choice(sorted(COUNTS)))
    input_ = ", ".join(animals)
    return instruction, input_, distribution(instruction, input_).sample(rng)


def distribution(instruction: str, input_: str) -> Categorical:
    k = INSTRUCTIONS.get(instruction)
    if k is None:
        raise ValueError(f"pairs: unknown instruction {instruction!r}; expected one of {sorted(INSTRUCTIONS)}")
    animals = input_.split(", ")
    if len(set(animals)) != len(animals) or not set(animals) <= set(ANIMALS) or len(animals) < k:
        raise ValueError(f"pairs: the input {input_!r} is not a list of at least {k} distinct animals")
    weights: dict[str, float] = {}
    for team in itertools.combinations(animals, k):
        friends = sum(frozenset(two) in FRIEND_SETS for two in itertools.combinations(team, 2))
        set_weight = math.prod(POPULARITY[a] for a in team) * AFFINITY ** friends
        team_total = sum(POPULARITY[a] for a in team)
        for order in itertools.permutations(team):
            # Plackett-Luce by popularity: each next name is drawn among those not yet written.
            p, left = set_weight, team_total
            for a in order:
                p *= POPULARITY[a] / left
                left -= POPULARITY[a]
            weights[write(order)] = p
    return Categorical(weights)
