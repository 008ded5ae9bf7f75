"""Embedded benchmark v5, the default: the truth is a distribution p*(y | x) per prompt
(kdbench.data.embedded.answer_distribution, families in kdbench.data.families), the splits hold one sample of it per
prompt; v4 stays byte for byte, and data=embedded_v4 is v4's old default config."""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import statistics

import pytest
from omegaconf import OmegaConf
from scipy.stats import chi2

from kdbench.data.distributions import AnswerDistribution, Categorical
from kdbench.data.embedded import (
    BENCHMARK_VERSION,
    EVAL_WEIGHTS_V5,
    FAMILIES,
    FAMILIES_V5,
    MOOD_LABELS,
    SplitSizes,
    answer_distribution,
    generate_splits,
)
from kdbench.data.families import mood, pairs, story
from kdbench.data.families.words import ANIMALS, COLORS, POPULARITY
from kdbench.data.sources import load_rows
from kdbench.schema import ConfigError, EmbeddedConfig, SourceConfig

SMALL = SplitSizes(train=600, validation=40, test=120)
# sha256 of json.dumps(generate_splits(seed, version=4, sizes), sort_keys=True), computed before v5 was written.
V4_DEFAULT_SHA256 = "a6e9d95de2cbf838940c042d30d10e168bb81cb8368049a47e4707406d03b012"
V4_SEED3_SMALL_SHA256 = "9ab5fb941644bcdb19180176a205b7e44e2600fe7bcbf58c2de1161166166c2c"
# The teacher shipped for v4 (kdbench/assets/teachers/<key> before v5): data=embedded_v4 must still compute its key.
V4_TEACHER_KEY = "31245e2dab89c9e0"
# v5 at seed 0 and SMALL sizes, computed in another process (another PYTHONHASHSEED): the splits depend on no set
# order. A change here changes the benchmark: a teacher trained on v5 would no longer match, so the version moves.
V5_SMALL_SHA256 = "3e2516e6d1f294b28748ce4e085c7a51bf2e69052df4aceb1273b39e10c151ef"
WORLD = "Nina the fox lives in the burrow. Nearby are the lake, the forest and the mill."
STORY = ("One morning, Nina the fox left the burrow. The fox walked to the lake. There the fox found a shell. "
         "The fox walked to the forest. There the fox met a dog. The fox went back to the lake. "
         "The fox gave the shell to an owl. At last Nina went home to the burrow.")


def sha256(splits: dict) -> str:
    return hashlib.sha256(json.dumps(splits, sort_keys=True).encode()).hexdigest()


@pytest.fixture(scope="module")
def v5():
    return generate_splits(seed=0, version=5)


def rows_of(splits: dict, family: str) -> list[dict]:
    out = [r for r in splits["test"] if r["category"] == family]
    assert out, f"no {family} rows in the test split"
    return out


def story_dist(input_: str = WORLD) -> story.StoryDistribution:
    return answer_distribution({"instruction": story.PHRASINGS[0], "input": input_, "category": "story"})


# ------------------------------------------------------------------------------------------------- the splits

def test_v5_is_the_default_and_v4_splits_are_byte_identical_to_before_v5():
    assert BENCHMARK_VERSION == 5
    assert EmbeddedConfig().version == BENCHMARK_VERSION  # the schema's default (data=dolly's embedded sets) follows
    assert sha256(generate_splits(sizes=SMALL)) == V5_SMALL_SHA256  # no version asked: v5
    assert sha256(generate_splits(version=4)) == V4_DEFAULT_SHA256
    assert sha256(generate_splits(seed=3, version=4, sizes=SplitSizes(200, 20, 50))) == V4_SEED3_SMALL_SHA256


def test_the_default_data_and_profiles_are_v5_and_embedded_v4_is_v4s_old_default():
    from conftest import compose_train

    from kdbench.runtime import validate
    from kdbench.stages.teacher import teacher_key
    from kdbench.stages.tokenizer import tokenizer_key

    cfg = compose_train()
    validate(cfg)
    assert (cfg.data.name, cfg.data.embedded.version, cfg.data.max_response_length) == ("embedded", 5, 160)
    assert cfg.eval.name == "light" and list(cfg.eval.sets) == ["embedded_v5_test", "embedded_v5_mood"]
    assert cfg.eval.sets.embedded_v5_test.truth.enabled and cfg.eval.agreement.set == "embedded_v5_test"
    v4 = compose_train(["data=embedded_v4", "eval=light_v4"])
    validate(v4)
    assert (v4.data.name, v4.data.embedded.version, v4.data.max_response_length) == ("embedded_v4", 4, 128)
    assert list(v4.eval.sets) == ["embedded_test", "embedded_sentiment"] and v4.eval.name == "light_v4"
    # The same rows, lengths and tokenizer as v4's default config: the teacher trained on it keeps its key.
    assert teacher_key(v4.teacher, v4.data, tokenizer_key(v4.data.embedded)) == V4_TEACHER_KEY
    # v4's data with the default (v5) profile fails when the run starts, not after its training.
    with pytest.raises(ConfigError, match=r"eval\.sets\.embedded_v5_test\.truth\.enabled=True: "
                                          r"data\.embedded\.version=4 .*data=embedded_v4 eval=light_v4"):
        validate(compose_train(["data=embedded_v4"]))


def test_v5_is_a_pure_function_of_seed_and_version():
    random.seed(1)
    a = generate_splits(seed=0, version=5, sizes=SMALL)
    state = random.getstate()
    random.seed(2)
    b = generate_splits(seed=0, version=5, sizes=SMALL)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    random.seed(1)
    generate_splits(seed=0, version=5, sizes=SMALL)
    assert random.getstate() == state  # the generator neither reads nor consumes the global rng
    assert generate_splits(seed=1, version=5, sizes=SMALL)["test"] != a["test"]
    assert sha256(a) == V5_SMALL_SHA256


@pytest.mark.parametrize("version", [3, 6])
def test_unknown_version_names_the_key(version):
    with pytest.raises(ValueError, match=rf"data\.version={version}: .*versions 4, 5 only"):
        generate_splits(version=version, sizes=SMALL)


def test_v5_default_sizes_shares_and_disjoint_splits(v5):
    assert {k: len(v) for k, v in v5.items()} == {"train": 40000, "validation": 500, "test": 2400}
    assert set(FAMILIES_V5).isdisjoint(set(FAMILIES) - {"reverse", "sort"})
    total = sum(EVAL_WEIGHTS_V5.values())
    for split in ("test", "validation"):
        for family in FAMILIES_V5:  # the eval cycle's shares are exact
            count = sum(r["category"] == family for r in v5[split])
            assert count == len(v5[split]) * EVAL_WEIGHTS_V5[family] // total, (split, family)
    keys = {s: [(r["instruction"], r["input"]) for r in rows] for s, rows in v5.items()}
    for split, k in keys.items():
        assert len(set(k)) == len(k), f"a prompt twice in {split}"
    assert set(keys["train"]).isdisjoint(keys["test"])
    assert set(keys["train"]).isdisjoint(keys["validation"])
    assert set(keys["validation"]).isdisjoint(keys["test"])
    assert {r["category"] for r in v5["train"]} == set(FAMILIES_V5)


def test_every_output_is_possible_under_its_own_distribution(v5):
    rows = v5["test"] + v5["validation"] + v5["train"][:4000]
    for r in rows:
        assert set(r) == {"instruction", "input", "output", "category"} | ({"rationale"} if r["category"] == "sum"
                                                                          else set()), r
        dist = answer_distribution(r)
        assert isinstance(dist, AnswerDistribution)
        assert dist.log_prob(r["output"]) > -math.inf, r
    # the distribution reads the prompt only: another output changes nothing
    r = rows_of(v5, "choice")[0]
    assert answer_distribution(dict(r, output="zebra")).support() == answer_distribution(r).support()


def test_mean_entropy_per_test_response(v5):
    entropies = [answer_distribution(r).entropy() for r in v5["test"]]
    assert statistics.mean(entropies) >= 1.5
    by_family = {f: statistics.mean(h for h, r in zip(entropies, v5["test"]) if r["category"] == f)
                 for f in FAMILIES_V5}
    assert by_family["sum"] == by_family["reverse"] == by_family["sort"] == 0.0
    assert min(by_family[f] for f in ("choice", "pairs", "mood", "story")) > 0.3


def test_answer_distribution_refuses_what_v5_cannot_have_written():
    with pytest.raises(ValueError, match=r"category='largest'.*version 5"):
        answer_distribution({"instruction": "x", "input": "1, 2", "output": "2", "category": "largest"})
    with pytest.raises(ValueError, match=r"choice: unknown instruction 'Name a dog\.'"):
        answer_distribution({"instruction": "Name a dog.", "input": "cat, red", "category": "choice"})
    with pytest.raises(ValueError, match=r"story: cannot read the input 'Nina lives here\.'"):
        story_dist("Nina lives here.")
    with pytest.raises(ValueError, match=r"not the burrow's; the places near the burrow are lake, forest, mill"):
        story_dist(WORLD.replace("the mill", "the cave"))


def test_load_rows_reads_v5_through_the_embedded_config():
    emb = OmegaConf.structured(EmbeddedConfig(version=5, train_size=300, validation_size=20, test_size=40))
    rows = load_rows(OmegaConf.structured(SourceConfig(split="test")), emb)
    assert len(rows) == 40 and {r["category"] for r in rows} == set(FAMILIES_V5)
    assert all(r["references"] == [r["output"]] for r in rows)
    assert all("rationale" in r for r in rows if r["category"] == "sum")
    bad = OmegaConf.structured(EmbeddedConfig(version=7, train_size=300, validation_size=20, test_size=40))
    with pytest.raises(ValueError, match=r"data\.version=7"):
        load_rows(OmegaConf.structured(SourceConfig()), bad)


# ---------------------------------------------------------------------------------------- listed distributions

def test_categorical_supports_sum_to_one(v5):
    for r in v5["test"]:
        support = answer_distribution(r).support()
        if r["category"] == "story":
            assert support is None
            continue
        assert math.isclose(sum(support.values()), 1.0, abs_tol=1e-12), r
        assert min(support.values()) > 0
        assert len(support) <= 120
        entropy = -sum(p * math.log(p) for p in support.values())
        assert math.isclose(answer_distribution(r).entropy(), entropy, abs_tol=1e-12)


@pytest.mark.parametrize("family", ["choice", "pairs", "mood"])
def test_sample_frequencies_match_the_probabilities(v5, family):
    # the row of the family with the largest support, 20,000 draws: Pearson's chi-square over the support (texts
    # with an expected count under 5 pooled) below its 99.99% quantile
    row = max(rows_of(v5, family), key=lambda r: len(answer_distribution(r).support()))
    dist = answer_distribution(row)
    rng, n = random.Random(1234), 20000
    counts: dict[str, int] = {}
    for _ in range(n):
        text = dist.sample(rng)
        counts[text] = counts.get(text, 0) + 1
    support = dist.support()
    assert set(counts) <= set(support)
    cells, pooled_expected, pooled_seen = [], 0.0, 0
    for text, p in support.items():
        if n * p < 5:
            pooled_expected, pooled_seen = pooled_expected + n * p, pooled_seen + counts.get(text, 0)
        else:
            cells.append((n * p, counts.get(text, 0)))
    if pooled_expected:
        cells.append((pooled_expected, pooled_seen))
    statistic = sum((seen - expected) ** 2 / expected for expected, seen in cells)
    assert statistic < chi2.ppf(0.9999, len(cells) - 1), (family, statistic, len(cells))


def test_choice_prefers_popular_right_words(v5):
    for r in rows_of(v5, "choice"):
        vocabulary = ANIMALS if "animal" in r["instruction"] else COLORS
        support = answer_distribution(r).support()
        right = [w for w in r["input"].split(", ") if w in vocabulary]
        assert set(support) == set(right) and len(right) >= 2
        assert len(right) < len(r["input"].split(", "))  # the list holds words of the other kind too
        total = sum(POPULARITY[w] for w in right)
        for w in right:
            assert math.isclose(support[w], POPULARITY[w] / total)


def test_pairs_joint_over_sets_and_orders():
    row = {"instruction": "Choose two animals from the list to form a team.", "input": "cat, owl, dog, mole, toad",
           "category": "pairs"}
    support = answer_distribution(row).support()
    assert len(support) == 5 * 4  # every ordered pair of distinct animals, nothing else
    assert all(a != b for a, b in (t.split(" and ") for t in support))
    # the friend pairs are the modes: their sets carry AFFINITY times the popularity product
    sets: dict[frozenset, float] = {}
    for text, p in support.items():
        key = frozenset(text.split(" and "))
        sets[key] = sets.get(key, 0.0) + p
    assert max(sets, key=sets.get) == frozenset({"cat", "dog"})
    ratio = sets[frozenset({"owl", "mole"})] / sets[frozenset({"owl", "toad"})]
    assert math.isclose(ratio, pairs.AFFINITY)  # mole and toad are equally popular: the affinity is the ratio
    assert math.isclose(support["cat and dog"] / support["dog and cat"], 10 / 9)  # Plackett-Luce by popularity
    three = dict(row, instruction="Which three of these animals would you put together?")
    assert len(answer_distribution(three).support()) == 10 * 6
    assert "cat, dog and owl" in answer_distribution(three).support()


def test_mood_posterior_is_the_logistic_of_the_score(v5):
    assert MOOD_LABELS == ("positive", "negative")
    row = {"instruction": mood.PHRASINGS[0], "category": "mood",
           "input": "The food was not great, and the room was dirty."}
    p = answer_distribution(row).support()["positive"]
    assert math.isclose(p, 1 / (1 + math.exp(0.75 + 1.5)))
    posteriors = [answer_distribution(r).support().get("positive", 0.0) for r in rows_of(v5, "mood")]
    assert all(set(answer_distribution(r).support()) == set(MOOD_LABELS) for r in rows_of(v5, "mood"))
    assert sum(0.2 < q < 0.8 for q in posteriors) > len(posteriors) / 4  # not one-hot: calibration has room


def test_sum_rationale_leads_to_the_answer(v5):
    for r in rows_of(v5, "sum"):
        numbers = [int(x) for x in r["input"].split(", ")]
        steps = re.findall(r"(\d+) \+ (\d+) = (\d+)\.", r["rationale"])
        assert " ".join(f"{a} + {b} = {c}." for a, b, c in steps) == r["rationale"]
        assert len(steps) == len(numbers) - 1
        running = numbers[0]
        for (a, b, c), x in zip(steps, numbers[1:]):
            assert (int(a), int(b), int(c)) == (running, x, running + x)
            running += x
        assert r["output"] == str(running) == str(sum(numbers))
        assert answer_distribution(r).support() == {r["output"]: 1.0}


def test_controls_are_point_masses(v5):
    for family in ("reverse", "sort"):
        for r in rows_of(v5, family):
            assert answer_distribution(r).support() == {r["output"]: 1.0}


# ------------------------------------------------------------------------------------------------------ story

def test_story_samples_parse_and_are_long(v5):
    rng = random.Random(7)
    for r in rows_of(v5, "story")[:40]:
        dist = answer_distribution(r)
        assert dist.support() is None
        for text in [r["output"]] + [dist.sample(rng) for _ in range(5)]:
            assert dist.first_invalid_word(text) is None, text
            assert dist.log_prob(text) > -math.inf
            assert 50 <= len(text.split()) <= 130  # 3-7 episodes of two 6-8 word sentences
            assert text.startswith("One ") and f"the {dist.world.animal}" in text


def test_story_consistency_is_checked_word_by_word():
    dist = story_dist()
    words = STORY.split()
    assert dist.first_invalid_word(STORY) is None and dist.log_prob(STORY) > -math.inf
    breaks = [
        ("back to the lake.", "back to the mill."),  # "went back" to a place never visited
        ("gave the shell", "gave the feather"),  # gives what it does not carry
        ("Nina went home", "Bob went home"),  # the name changes at the end
        ("home to the burrow.", "home to the den."),  # another home
        ("met a dog.", "met a fox."),  # meets itself
        ("The fox walked to the forest.", "The fox walked to the market."),  # a place not nearby
        ("The fox walked to the forest.", "The cat walked to the forest."),  # another character
    ]
    for before, after in breaks:
        broken = STORY.replace(before, after)
        changed = next(i for i, (a, b) in enumerate(zip(words, broken.split())) if a != b)
        assert len(broken.split()) == len(words)
        assert dist.first_invalid_word(broken) == changed, after
        assert dist.log_prob(broken) == -math.inf
    # ending with hands full must say so
    no_gift = STORY.replace("The fox gave the shell to an owl.", "The fox rested by the lake.")
    assert dist.first_invalid_word(no_gift) == len(no_gift.split()) - 1
    assert dist.log_prob(no_gift.removesuffix("burrow.") + "burrow with the shell.") > -math.inf
    # the first word of the opening is checked too, and text after the end is invalid at its first word
    assert dist.first_invalid_word("Once " + STORY) == 0
    assert dist.first_invalid_word(STORY + " The fox rested.") == len(words)


def test_story_mid_way_change_and_truncation(v5):
    rng = random.Random(11)
    for r in rows_of(v5, "story")[:20]:
        dist = answer_distribution(r)
        words = dist.sample(rng).split()
        middle = len(words) // 2
        for replacement in ("zebra", words[middle] + "s"):
            changed = " ".join(words[:middle] + [replacement] + words[middle + 1:])
            assert dist.first_invalid_word(changed) == middle
            assert dist.log_prob(changed) == -math.inf
        for k in (0, 1, 7, middle, len(words) - 1):
            truncated = " ".join(words[:k])
            assert dist.first_invalid_word(truncated) == k
            assert dist.log_prob(truncated) == -math.inf
        assert dist.log_prob(" ".join(words) + " ") == -math.inf  # the grammar writes no trailing space


def test_story_log_prob_is_the_product_of_its_choices():
    others = sum(POPULARITY[a] for a in ANIMALS if a != "fox")  # the animals a fox may meet or give to
    choices = [
        4 / 10,  # "morning" among TIMES
        2 / 6 * 5 / 10,  # to the lake: three new places of weight 2; "walked" among VERBS
        0.35 / 2,  # found one of the lake's two objects
        2 / 4 * 5 / 10,  # to the forest: forest and mill are new (2 each)
        0.45 * POPULARITY["dog"] / others,  # met a dog
        1 / 3,  # back to the lake (1) rather than to the new mill (2)
        0.35 * POPULARITY["owl"] / others,  # gave the shell to an owl
        story.P_STOP,  # the end after three episodes
    ]
    assert math.isclose(story_dist().log_prob(STORY), sum(map(math.log, choices)))


@pytest.mark.parametrize("world", [WORLD, "Sam the owl lives in the den. Nearby are the cave, the hill, the farm "
                                          "and the meadow."])
def test_story_entropy_matches_a_monte_carlo_estimate(world):
    dist = story_dist(world)
    # exact by dynamic programming, on the world itself as on the canonical one it stands for
    assert math.isclose(dist.entropy(), story._entropy_from(dist.world, story._start(dist.world), {}))
    rng, n = random.Random(5), 1500
    surprisals = [-dist.log_prob(dist.sample(rng)) for _ in range(n)]
    standard_error = statistics.stdev(surprisals) / math.sqrt(n)
    assert abs(statistics.mean(surprisals) - dist.entropy()) < 4 * standard_error, (
        statistics.mean(surprisals), dist.entropy(), standard_error)


def test_story_probabilities_sum_to_one_at_every_step():
    # a Monte Carlo cannot see mass lost to a sentence left out: every state's next sentences must sum to 1
    dist = story_dist()
    seen, frontier = set(), [story._start(dist.world)]
    while frontier:
        state = frontier.pop()
        if state in seen:
            continue
        seen.add(state)
        nxt = story._next_sentences(dist.world, state)
        if state.phase != "end":
            assert math.isclose(sum(p for _, p, _ in nxt), 1.0), state
            assert len({s for s, _, _ in nxt}) == len(nxt), state  # unambiguous: one derivation per text
        frontier += [after for _, _, after in nxt]
    assert len(seen) > 100


def test_categorical_is_still_the_listed_distribution():
    dist = Categorical({"b": 1, "a": 3})
    assert dist.support() == {"a": 0.75, "b": 0.25}
