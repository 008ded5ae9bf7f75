"""The embedded benchmark: instruction-following tasks kdbench generates itself, offline and deterministically.

Every item is a row of the common schema {instruction, input, output, category}. The generator is a pure
function of (seed, version): the same pair always yields the same splits, byte for byte, so a cached teacher
trained on version N stays valid until the generator's rules change, and then the version number must move.

Why these families: a distillation benchmark needs room between teacher and student. Families that only copy
or count are solved by every model; families that need exact arithmetic are solved by none. What separates
model sizes is retrieval over a context (lookup), composing several rules (sentiment with negation), holding
an ordered list in memory (reverse, sort) and producing long structured text without drifting (profiles,
60+ tokens: where exposure bias shows). `sentiment` has a fixed label set for calibration.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

# Bump when any rule below changes: the teacher cache and the shipped teacher are keyed by it.
BENCHMARK_VERSION = 1

FRUITS = ["apple", "pear", "plum", "fig", "kiwi", "lime", "mango", "peach", "grape", "melon", "lemon", "cherry",
          "date", "olive", "guava", "papaya"]
ANIMALS = ["cat", "dog", "fox", "owl", "bear", "wolf", "duck", "frog", "goat", "hare", "lion", "mole", "seal",
           "swan", "toad", "crab"]
TOOLS = ["hammer", "saw", "drill", "rake", "shovel", "wrench", "chisel", "ladder", "brush", "knife", "axe", "file"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "pink", "brown", "gray", "purple", "orange", "gold"]
NAMES = ["Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Irene", "Jack", "Karen", "Leo",
         "Maria", "Nina", "Oscar", "Paul", "Rita", "Sam", "Tina", "Victor"]
CITIES = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo", "Delhi", "Quito", "Dublin", "Vienna", "Prague",
          "Madrid", "Berlin", "Athens", "Seoul", "Nairobi"]
JOBS = ["baker", "doctor", "farmer", "pilot", "teacher", "painter", "lawyer", "nurse", "chef", "writer", "tailor",
        "singer", "driver", "dentist"]
ASPECTS = ["food", "service", "room", "music", "price", "view", "staff", "coffee", "bed", "menu", "garden", "show"]
POSITIVE = ["great", "lovely", "excellent", "pleasant", "superb", "friendly", "clean", "tasty"]
NEGATIVE = ["awful", "terrible", "rude", "dirty", "boring", "noisy", "bland", "poor"]
SENTIMENT_LABELS = ("positive", "negative", "neutral")
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

FAMILIES = ("lookup", "sentiment", "count", "reverse", "sort", "filter", "profile")


@dataclass(frozen=True)
class SplitSizes:
    train: int = 30000
    validation: int = 500
    test: int = 2100


def _lookup(rng: random.Random) -> tuple[str, str, str]:
    n = rng.randint(3, 6)
    keys = rng.sample(FRUITS, n)
    values = [rng.randint(10, 99) for _ in keys]
    target = rng.randrange(n)
    instruction = rng.choice([
        "What number is paired with {k} in the list?",
        "Look up the value of {k} in the records below.",
        "Which number does the list give for {k}?",
    ]).format(k=keys[target])
    context = ", ".join(f"{k} = {v}" for k, v in zip(keys, values))
    return instruction, context, str(values[target])


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


def _count(rng: random.Random) -> tuple[str, str, str]:
    pool = rng.sample(ANIMALS, 3)
    n = rng.randint(5, 9)  # at most nine: the answer is a number word
    words = [rng.choice(pool) for _ in range(n)]
    target = rng.choice(pool)
    instruction = rng.choice([
        "How many times does the word {w} appear in the text?",
        "Count how often {w} occurs in the following words.",
        "Tell me the number of times {w} is mentioned below.",
    ]).format(w=target)
    return instruction, " ".join(words), NUMBER_WORDS[min(words.count(target), 9)]


def _reverse(rng: random.Random) -> tuple[str, str, str]:
    n = rng.randint(3, 6)
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
    # Needs word-category knowledge (memorised from training) applied to every item of a list, in order.
    categories = {"animals": ANIMALS, "tools": TOOLS, "fruits": FRUITS, "colors": COLORS}
    target = rng.choice(list(categories))
    n = rng.randint(4, 7)
    k = rng.randint(1, 3)
    chosen = rng.sample(categories[target], k)
    others = [w for c, ws in categories.items() if c != target for w in ws]
    words = chosen + rng.sample(others, n - k)
    rng.shuffle(words)
    instruction = rng.choice([
        "List only the {c} from the words below, in the order given.",
        "Which of these words are {c}? Keep their order.",
        "Pick out the {c} in the following list, keeping the original order.",
    ]).format(c=target)
    return instruction, ", ".join(words), ", ".join(w for w in words if w in chosen)


def _profile(rng: random.Random) -> tuple[str, str, str]:
    # The long-response family: 2-4 people, ~17 tokens of prose each; every field must be copied to the right
    # sentence, so one drifted token breaks exact match while ROUGE-L degrades gracefully.
    n = rng.randint(2, 4)
    people = rng.sample(NAMES, n)
    rows, sentences = [], []
    for name in people:
        city, job, pet = rng.choice(CITIES), rng.choice(JOBS), rng.choice(ANIMALS)
        age = rng.randint(20, 79)
        rows.append(f"name: {name}; age: {age}; city: {city}; job: {job}; pet: {pet}")
        sentences.append(f"{name} is {age} years old and lives in {city}. {name} works as a {job} and has a {pet}.")
    instruction = rng.choice([
        "Write a short profile for each person in the table.",
        "Describe every person listed below in two sentences.",
        "Turn each row of the table into a short description.",
    ])
    return instruction, "\n".join(rows), " ".join(sentences)


# How often each family is drawn for the TRAIN split. The loss is a mean over response tokens, so a family's
# share of the training signal is (frequency x response length): drawn uniformly, `profile` (~67 tokens) would
# carry ~60% of every gradient and the one-word families ~5%, and the short-answer skills would be learned last.
# These weights even out the token shares (no family above ~40%). Validation and test stay uniform over families.
TRAIN_WEIGHTS = {"lookup": 3.0, "sentiment": 3.0, "count": 3.0, "reverse": 1.0, "sort": 1.0, "filter": 2.0,
                 "profile": 0.5}

GENERATORS = {"lookup": _lookup, "sentiment": _sentiment, "count": _count, "reverse": _reverse, "sort": _sort,
              "filter": _filter, "profile": _profile}


def _key(instruction: str, input_: str) -> str:
    return hashlib.sha1(f"{instruction}\x00{input_}".encode()).hexdigest()


def generate_splits(seed: int = 0, version: int = BENCHMARK_VERSION,
                    sizes: SplitSizes = SplitSizes()) -> dict[str, list[dict]]:
    """Generate train/validation/test rows with no prompt shared between splits; validation and test are
    balanced over families, train is drawn with TRAIN_WEIGHTS.

    Test and validation are drawn first and reserved, then train skips any (instruction, input) pair already
    used, so test instructions with their inputs never occur in train.
    """
    if version != BENCHMARK_VERSION:
        raise ValueError(f"data.version={version}: this kdbench generates embedded benchmark version "
                         f"{BENCHMARK_VERSION} only; install the kdbench release that made version {version}")
    rng = random.Random(f"kdbench-embedded-v{version}-seed{seed}")
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split in ("test", "validation", "train"):
        rows: list[dict] = []
        target = getattr(sizes, split)
        i = 0
        while len(rows) < target:
            if split == "train":
                family = rng.choices(FAMILIES, weights=[TRAIN_WEIGHTS[f] for f in FAMILIES])[0]
            else:
                family = FAMILIES[i % len(FAMILIES)]
            i += 1
            instruction, input_, output = GENERATORS[family](rng)
            key = _key(instruction, input_)
            if key in seen:
                continue
            seen.add(key)
            rows.append({"instruction": instruction, "input": input_, "output": output, "category": family})
        splits[split] = rows
    return splits
