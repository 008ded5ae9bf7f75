"""The embedded benchmark: instruction-following tasks kdbench generates itself, offline and deterministically.

Every item is a row of the common schema {instruction, input, output, category}. The generator is a pure
function of (seed, version): the same pair always yields the same splits, byte for byte, so a cached teacher
trained on version N stays valid until the generator's rules change, and then the version number must move.

Why these families: a distillation benchmark needs room between teacher and student, measured at convergence.
Version 1 asked for retrieval two hops away (the key in the instruction, the records in the input), counting and
category filtering: no model learned them, so they carried no signal. Versions 2 and 3 keep what the default
teacher learns and what separates model sizes: composing several rules (sentiment with negation), holding an
ordered list in memory (reverse, sort), a comparison across the list (largest), a per-item comparison with an
ordered copy (filter), and long structured text copied row by row without drifting (profile, up to ~75 tokens:
where exposure bias shows). `sentiment` has a fixed label set for calibration. Version 3 replaced `lookup`
(records, then a query: the teacher copied a random record's value, with two-digit or one-word values alike) by
`largest` (a comparison across the list) and trains on 40,000 items. Version 4 gives `sort` and `filter` twice
the share of the validation and test splits (EVAL_WEIGHTS): a one-layer student never learns them (2-6% exact
match at every budget up to 256k steps on v3) while the teacher does, so they are where model size shows at
convergence; `profile` writes the name first on every table row and answer line, so the name is the same token
in both.

Version 5 makes the truth a distribution p*(y | x) (answer_distribution), so that distillation methods can be told
apart: on v4 every prompt has one right answer, the teacher is one-hot and distilling it is fine-tuning. Each
split holds one sample of p* per prompt as its `output`, as real data holds one human answer. Its families
(kdbench.data.families): `choice` (several right answers, popular ones likelier), `pairs` (a team of two or three
written in a free order: a joint over sets and orders with sharp modes), `story` (60-130 tokens from a stochastic
grammar whose validity depends on earlier sentences, checkable word by word), `mood` (a review whose label
posterior is a logistic of its score: calibration against the truth), `sum` (deterministic, with a `rationale`)
and v4's `reverse` and `sort` as deterministic controls.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from kdbench.data.distributions import AnswerDistribution, point_mass
from kdbench.data.families import choice, mood, pairs, story, sums
from kdbench.data.families.words import ANIMALS, ASPECTS, COLORS, NAMES, NEGATIVE, POSITIVE

# Bump when any rule below changes: the teacher cache and the shipped teacher are keyed by it.
BENCHMARK_VERSION = 4

CITIES = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo", "Delhi", "Quito", "Dublin", "Vienna", "Prague",
          "Madrid", "Berlin", "Athens", "Seoul", "Nairobi"]
JOBS = ["baker", "doctor", "farmer", "pilot", "teacher", "painter", "lawyer", "nurse", "chef", "writer", "tailor",
        "singer", "driver", "dentist"]
SENTIMENT_LABELS = ("positive", "negative", "neutral")

FAMILIES = ("largest", "sentiment", "reverse", "sort", "filter", "profile")


@dataclass(frozen=True)
class SplitSizes:
    train: int = 40000
    validation: int = 500
    test: int = 2400


def _largest(rng: random.Random) -> tuple[str, str, str]:
    # One comparison across the whole list, then a two-token copy: the tens digits decide (ties broken by the
    # units), and the answer's second digit must come from the same number as its first, which takes a second
    # attention layer to compose with the first. Replaced v2's `lookup` (records, then a query), which the
    # 4-layer teacher never learned: it copied a random record's value (accuracy 1 / number of records).
    n = rng.randint(4, 7)
    numbers = rng.sample(range(10, 100), n)
    instruction = rng.choice([
        "Which number in the list is the largest?",
        "Reply with the largest of these numbers.",
        "Find the biggest number in the list.",
    ])
    return instruction, ", ".join(map(str, numbers)), str(max(numbers))


def _sentiment(rng: random.Random) -> tuple[str, str, str]:
    # Each clause carries +1 or -1, flipped by "not"; the label is the sign of the sum. A small model can
    # learn the words' polarity but struggles to compose negation and to add up several clauses.
    n = rng.randint(2, 3)
    aspects = rng.sample(ASPECTS, n)
    clauses, score = [], 0
    for aspect in aspects:
        polarity = rng.choice([1, -1])
        negated = rng.random() < 0.4
        word = rng.choice(POSITIVE if polarity > 0 else NEGATIVE)
        verb = "was not" if negated else "was"
        clauses.append(f"the {aspect} {verb} {word}")
        score += -polarity if negated else polarity
    label = "positive" if score > 0 else "negative" if score < 0 else "neutral"
    text = ", and ".join(clauses)
    text = text[0].upper() + text[1:] + "."
    instruction = rng.choice([
        "Classify the sentiment of the review as positive, negative or neutral.",
        "Is the following review positive, negative or neutral?",
        "Read the review and answer with its sentiment: positive, negative or neutral.",
    ])
    return instruction, text, label


def _reverse(rng: random.Random) -> tuple[str, str, str]:
    n = rng.randint(3, 7)
    words = [rng.choice(ANIMALS + COLORS) for _ in range(n)]
    instruction = rng.choice([
        "Write the words of the list in reverse order.",
        "Reverse the order of the following words.",
        "List these words backwards, from last to first.",
    ])
    return instruction, ", ".join(words), ", ".join(reversed(words))


def _sort(rng: random.Random) -> tuple[str, str, str]:
    n = rng.randint(3, 5)
    numbers = rng.sample(range(10, 100), n)
    instruction = rng.choice([
        "Sort the numbers from smallest to largest.",
        "Arrange these numbers in increasing order.",
        "Put the following numbers in ascending order.",
    ])
    return instruction, ", ".join(map(str, numbers)), ", ".join(map(str, sorted(numbers)))


def _filter(rng: random.Random) -> tuple[str, str, str]:
    # Select, in order, the items that pass a comparison: a per-item decision (the tens digit against 5) plus
    # an ordered copy of a variable number of items. v1 filtered by memorised word categories: nobody learned it.
    n = rng.randint(4, 7)
    k = rng.randint(1, n - 1)  # at least one number kept and one dropped
    above = rng.sample(range(51, 100), k)
    below = rng.sample(range(10, 50), n - k)
    numbers = above + below
    rng.shuffle(numbers)
    instruction = rng.choice([
        "List the numbers greater than 50, in the order given.",
        "Which of these numbers are above 50? Keep their order.",
        "Pick out the numbers larger than 50, keeping the original order.",
    ])
    return instruction, ", ".join(map(str, numbers)), ", ".join(str(x) for x in numbers if x > 50)


def _profile(rng: random.Random) -> tuple[str, str, str]:
    # The long-response family: 2-7 people, ~11 tokens of prose each (up to ~80 tokens); every field must be
    # copied into the right sentence, so one drifted token breaks exact match while ROUGE-L degrades gracefully.
    # Each table row and each answer line starts with the name at the start of a line, so the name is the same
    # token in both (v3 wrote `name: Bob` in the table, a different token from the answer's opening `Bob`, and
    # the v3 teacher never copied the first name right).
    n = rng.randint(2, 7)
    people = rng.sample(NAMES, n)
    rows, sentences = ["name | city | job"], []
    for name in people:
        city, job = rng.choice(CITIES), rng.choice(JOBS)
        rows.append(f"{name} | {city} | {job}")
        sentences.append(f"{name} lives in {city} and works as a {job}.")
    instruction = rng.choice([
        "Write a short profile for each person in the table.",
        "Describe every person listed below in one sentence.",
        "Turn each row of the table into a short description.",
    ])
    return instruction, "\n".join(rows), "\n".join(sentences)


# How often each family is drawn for the TRAIN split. The loss is a mean over response tokens, so a family's
# share of the training signal is (frequency x response length): drawn uniformly, `profile` (~67 tokens) would
# carry ~60% of every gradient and the one-word families ~5%, and the short-answer skills would be learned last.
# These weights even out the token shares (no family above ~40%).
TRAIN_WEIGHTS = {"largest": 3.0, "sentiment": 2.0, "reverse": 1.0, "sort": 1.0, "filter": 1.5, "profile": 0.5}

# How many items of each family a validation or test split holds per cycle (the splits are drawn in this fixed
# cycle, so the shares are exact). `sort` and `filter` count twice: they need two composed attention layers (a
# number is two tokens, and comparing two numbers needs the first digit moved next to the second), so the
# one-layer `tiny` stays near 0% at every budget while the teacher reaches ~99%; with the other four families
# perfect, `tiny` would still sit 40+ points below the teacher. On v3 (uniform shares) its ceiling was ~68%.
EVAL_WEIGHTS = {"largest": 1, "sentiment": 1, "reverse": 1, "sort": 2, "filter": 2, "profile": 1}
EVAL_CYCLE = tuple(f for f in FAMILIES for _ in range(EVAL_WEIGHTS[f]))

GENERATORS = {"largest": _largest, "sentiment": _sentiment, "reverse": _reverse, "sort": _sort, "filter": _filter,
              "profile": _profile}


# Version 5: the truth is a distribution p*(y | x) (answer_distribution), the splits hold one sample of it per
# prompt. The families are in kdbench.data.families; `reverse` and `sort` are v4's, deterministic controls.
FAMILIES_V5 = ("choice", "pairs", "story", "mood", "sum", "reverse", "sort")
MOOD_LABELS = mood.LABELS  # the label words of `mood`, for a calibration set's config
# As TRAIN_WEIGHTS: a family's share of the training signal is (frequency x response tokens). A story is ~88
# tokens (61-132), a choice or a mood one: these weights keep `story` at ~39% of the response tokens (sort 17%,
# the rest 5-12% each) while it holds ~1,350 stories (~17,000 sentences) to learn the grammar from.
TRAIN_WEIGHTS_V5 = {"choice": 3.0, "pairs": 2.0, "story": 0.5, "mood": 3.0, "sum": 2.0, "reverse": 1.0, "sort": 1.0}
# Validation and test: the families with a non-trivial p* (choice, pairs, mood) count twice, the deterministic
# ones once; `story` once is already 2.2 of the 3.1 nats of the mean test entropy (22 nats a story).
EVAL_WEIGHTS_V5 = {"choice": 2, "pairs": 2, "story": 1, "mood": 2, "sum": 1, "reverse": 1, "sort": 1}

_BENCHMARKS = {
    4: (FAMILIES, GENERATORS, TRAIN_WEIGHTS, EVAL_CYCLE),
    5: (FAMILIES_V5,
        {"choice": choice.generate, "pairs": pairs.generate, "story": story.generate, "mood": mood.generate,
         "sum": sums.generate, "reverse": _reverse, "sort": _sort},
        TRAIN_WEIGHTS_V5,
        tuple(f for f in FAMILIES_V5 for _ in range(EVAL_WEIGHTS_V5[f]))),
}
VERSIONS = tuple(_BENCHMARKS)


def _reversed_words(instruction: str, input_: str) -> AnswerDistribution:
    return point_mass(", ".join(reversed(input_.split(", "))))


def _sorted_numbers(instruction: str, input_: str) -> AnswerDistribution:
    return point_mass(", ".join(map(str, sorted(int(x) for x in input_.split(", ")))))


_DISTRIBUTIONS = {"choice": choice.distribution, "pairs": pairs.distribution, "story": story.distribution,
                  "mood": mood.distribution, "sum": sums.distribution, "reverse": _reversed_words,
                  "sort": _sorted_numbers}


def answer_distribution(row: dict) -> AnswerDistribution:
    """p*(y | x) of a benchmark-v5 row, from its instruction, input and category alone (never its output: that is
    one sample of it). A category outside v5 or a prompt its family cannot have written is a ValueError."""
    build = _DISTRIBUTIONS.get(row.get("category"))
    if build is None:
        raise ValueError(f"category={row.get('category')!r}: answer_distribution knows the embedded benchmark "
                         f"version 5 categories {list(FAMILIES_V5)}")
    return build(row["instruction"], row["input"])


def _key(instruction: str, input_: str) -> str:
    return hashlib.sha1(f"{instruction}\x00{input_}".encode()).hexdigest()


def generate_splits(seed: int = 0, version: int = BENCHMARK_VERSION,
                    sizes: SplitSizes = SplitSizes()) -> dict[str, list[dict]]:
    """Generate train/validation/test rows with no prompt shared between splits; validation and test cycle
    through the version's eval cycle (v4: EVAL_CYCLE), train is drawn with its train weights (v4: TRAIN_WEIGHTS).

    Test and validation are drawn first and reserved, then train skips any (instruction, input) pair already
    used, so test instructions with their inputs never occur in train. A v5 `sum` row also carries `rationale`.
    """
    if version not in _BENCHMARKS:
        raise ValueError(f"data.version={version}: this kdbench generates embedded benchmark versions "
                         f"{', '.join(map(str, VERSIONS))} only; install the kdbench release that made version "
                         f"{version}")
    families, generators, train_weights, eval_cycle = _BENCHMARKS[version]
    rng = random.Random(f"kdbench-embedded-v{version}-seed{seed}")
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split in ("test", "validation", "train"):
        rows: list[dict] = []
        target = getattr(sizes, split)
        i = 0
        while len(rows) < target:
            if split == "train":
                family = rng.choices(families, weights=[train_weights[f] for f in families])[0]
            else:
                # v4 moved along the cycle at every draw, a skipped duplicate too (kept: its splits' bytes); v5 at
                # every row kept, so the shares stay exact though `mood` has few one-clause prompts to draw.
                family = eval_cycle[(i if version == 4 else len(rows)) % len(eval_cycle)]
            i += 1
            instruction, input_, output, *rationale = generators[family](rng)
            key = _key(instruction, input_)
            if key in seen:
                continue
            seen.add(key)
            row = {"instruction": instruction, "input": input_, "output": output, "category": family}
            if rationale:
                row["rationale"] = rationale[0]
            rows.append(row)
        splits[split] = rows
    return splits
