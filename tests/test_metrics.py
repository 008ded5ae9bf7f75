"""Text metrics with the MiniLLM protocol: ROUGE-L (rouge-score, stemmed, max over references, mean x 100) and a
strict exact match. The golden ROUGE-L values come from rouge_score itself (the protocol's definition) or from
LCS arithmetic done by hand; the real DollyEval and S-NI files are used, not toy strings only."""

from __future__ import annotations

import random

import pytest
from conftest import bundled_records
from rouge_score import rouge_scorer

from kdbench.evaluation.metrics import exact_match, exact_match_per_item, rouge_l, rouge_l_per_item

N_ROWS = 30


def load_rows(name: str, n: int = N_ROWS) -> list[dict]:
    """The first `n` rows of the MiniLLM file bundled with kdbench (kdbench/assets/evalsets)."""
    rows = bundled_records(name, n)
    assert len(rows) == n, f"{name}: only {len(rows)} rows"
    return rows


def reference_rouge_l(predictions: list[str], references: list[str | list[str]]) -> float:
    """The protocol written out with rouge_score directly: a fresh scorer, max over references, mean, x 100."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    total = 0.0
    for pred, refs in zip(predictions, references):
        refs = [refs] if isinstance(refs, str) else refs
        total += max(scorer.score(r, pred)["rougeL"].fmeasure for r in refs)
    return 100.0 * total / len(predictions)


def shuffled(items: list[str], seed: int = 0) -> list[str]:
    """A seeded permutation with no fixed point (every prediction belongs to another row)."""
    rng = random.Random(seed)
    while True:
        out = items[:]
        rng.shuffle(out)
        if all(a != b for a, b in zip(out, items)):
            return out


@pytest.mark.parametrize("name", ["dollyeval_minillm_500", "sni_minillm_1694"])
def test_rouge_l_matches_rouge_score_on_real_data(name):
    rows = load_rows(name)
    refs = [r["output"] for r in rows]
    assert all(isinstance(r, str) and r.strip() for r in refs)

    perfect = rouge_l(refs, refs)
    assert perfect == pytest.approx(reference_rouge_l(refs, refs), abs=1e-9)
    assert perfect == pytest.approx(100.0, abs=1e-9)

    preds = shuffled(refs)
    value = rouge_l(preds, refs)
    assert value == pytest.approx(reference_rouge_l(preds, refs), abs=1e-9)
    assert 0.0 <= value < 50.0, value  # other rows' answers overlap little
    per_item = rouge_l_per_item(preds, refs)
    assert len(per_item) == N_ROWS and all(0.0 <= s <= 100.0 for s in per_item)
    assert sum(per_item) / N_ROWS == pytest.approx(value, abs=1e-9)


def test_rouge_l_with_all_references_of_sni():
    rows = load_rows("sni_minillm_1694")
    multi = [r["outputs"] for r in rows]
    assert all(isinstance(m, list) and m for m in multi)
    preds = shuffled([r["output"] for r in rows], seed=1)
    assert rouge_l(preds, multi) == pytest.approx(reference_rouge_l(preds, multi), abs=1e-9)
    # more references can only raise a row's score
    single = rouge_l_per_item(preds, [r["output"] for r in rows])
    assert all(m >= s - 1e-12 for m, s in zip(rouge_l_per_item(preds, multi), single))


def test_rouge_l_hand_computed_values():
    # LCS("the cat sat", "the cat sat on the mat") = 3: P = 3/3, R = 3/6, F = 2PR/(P+R) = 2/3
    assert rouge_l(["the cat sat"], ["the cat sat on the mat"]) == pytest.approx(200 / 3, abs=1e-9)
    # LCS("b a c", "a b c") = 2 ("a c" or "b c"): P = R = F = 2/3
    assert rouge_l(["b a c"], ["a b c"]) == pytest.approx(200 / 3, abs=1e-9)
    # stemming and case folding: "Cats running" and "cat runs" are the same stems
    assert rouge_l(["Cats running"], ["cat runs"]) == pytest.approx(100.0, abs=1e-9)
    # the mean over rows: (100 + 0) / 2
    assert rouge_l(["same words", "alpha"], ["same words", "omega"]) == pytest.approx(50.0, abs=1e-9)


def test_rouge_l_takes_the_best_reference():
    pred = "the quick brown fox"
    worse, better = "lazy dogs sleep all day", "the quick brown dog"  # LCS 0 and 3: P = R = F = 3/4
    assert rouge_l([pred], [worse]) == pytest.approx(0.0, abs=1e-9)
    assert rouge_l([pred], [[worse, better]]) == pytest.approx(75.0, abs=1e-9)
    assert rouge_l([pred], [[better, worse]]) == pytest.approx(75.0, abs=1e-9)
    assert rouge_l([pred], [(worse, better)]) == pytest.approx(75.0, abs=1e-9)  # any sequence of strings


def test_rouge_l_bounds_identical_and_disjoint():
    assert rouge_l(["Paris is the capital of France."], ["Paris is the capital of France."]) == pytest.approx(100.0)
    assert rouge_l(["one two three"], ["four five six"]) == 0.0
    assert rouge_l([""], ["something"]) == 0.0
    rng = random.Random(3)
    vocab = "a b c d e f g h".split()
    preds = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 8))) for _ in range(40)]
    refs = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 8))) for _ in range(40)]
    v = rouge_l(preds, refs)
    assert 0.0 < v < 100.0
    assert all(0.0 <= s <= 100.0 for s in rouge_l_per_item(preds, refs))


def test_rouge_l_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        rouge_l(["a", "b"], ["a"])


def test_exact_match_is_strict_about_case_and_punctuation():
    assert exact_match(["Paris"], ["Paris"]) == 100.0
    assert exact_match(["Paris"], ["paris"]) == 0.0
    assert exact_match(["Paris."], ["Paris"]) == 0.0
    assert exact_match(["Paris"], ["Paris."]) == 0.0
    assert exact_match(["Paris, France"], ["Paris France"]) == 0.0
    assert exact_match(["the answer"], ["the  answer"]) == 0.0  # inner whitespace is part of the answer


def test_exact_match_ignores_surrounding_whitespace():
    assert exact_match([" Paris\n"], ["Paris"]) == 100.0
    assert exact_match(["\tParis"], ["  Paris  "]) == 100.0


def test_exact_match_any_reference_and_mean():
    assert exact_match(["Lyon"], [["Paris", "Lyon"]]) == 100.0
    assert exact_match(["Nice"], [["Paris", "Lyon"]]) == 0.0
    assert exact_match_per_item(["Paris", "x", " Lyon "], ["Paris", "y", ["Nice", "Lyon"]]) == [100.0, 0.0, 100.0]
    assert exact_match(["Paris", "x", " Lyon "], ["Paris", "y", ["Nice", "Lyon"]]) == pytest.approx(200 / 3)


def test_exact_match_rejects_mismatched_lengths():
    """Like rouge_l: a prediction list that does not line up with its references is an error, not a silently
    truncated score (zip would score only the common prefix: here 100.0 on 1 of 2 predictions)."""
    with pytest.raises(ValueError):
        exact_match(["Paris", "Lyon"], ["Paris"])
    with pytest.raises(ValueError):
        exact_match_per_item(["Paris"], ["Paris", "Lyon"])


def _lcs_by_table(a, b) -> int:
    """The textbook dynamic programme, written out independently."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = table[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


def test_bit_parallel_lcs_equals_the_dynamic_programme_on_random_sequences():
    from kdbench.evaluation.metrics import lcs_length

    rng = random.Random(0)
    for _ in range(400):
        alphabet = rng.choice([2, 3, 5, 20])
        a = [rng.randrange(alphabet) for _ in range(rng.randrange(0, 90))]
        b = [rng.randrange(alphabet) for _ in range(rng.randrange(0, 90))]
        assert lcs_length(a, b) == _lcs_by_table(a, b) == lcs_length(b, a)
    assert lcs_length("abcbdab", "bdcaba") == 4  # CLRS's example
    assert lcs_length([], [1, 2]) == 0


def test_rouge_l_equals_rouge_score_exactly_on_every_dollyeval_pair_shape():
    """Long against short, empty, punctuation only, repeated words: the same float as rouge_score, not approximately."""
    rows = load_rows("dollyeval_minillm_500", 60)
    refs = [r["output"] for r in rows]
    preds = [refs[(i + 7) % 60][: (i * 37) % 400] for i in range(60)] + ["", "!!!", "the the the the", refs[3] * 3]
    refs = refs + refs[:4]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = [100.0 * scorer.score(r, p)["rougeL"].fmeasure for r, p in zip(refs, preds)]
    assert rouge_l_per_item(preds, refs) == expected
