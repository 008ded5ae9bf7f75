"""kdbench.evaluation.truth(_math): metrics against the true answer distribution p*, checked against values
computed by hand on small distributions, and the model-facing half on a tiny random model."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer

from kdbench.data.distributions import Categorical, point_mass
from kdbench.evaluation.truth import (
    calibration_vs_truth,
    longform_validity,
    precision,
    recall,
    response_log_probs,
    sample_responses,
    true_forward_kl,
    truth_label_probs,
    truth_metrics,
)

P3 = {"a": 0.5, "b": 0.3, "c": 0.2}


class Scripted:
    """p* with known probabilities whose sample() replays a fixed script: 'random' draws known by hand."""

    def __init__(self, probs: dict, script: list[str], listed: bool = True):
        self.probs, self.script, self.listed = probs, itertools.cycle(script), listed

    def log_prob(self, text):
        return math.log(self.probs[text]) if text in self.probs else -math.inf

    def sample(self, rng):
        return next(self.script)

    def support(self):
        return dict(self.probs) if self.listed else None

    def entropy(self):
        return -sum(p * math.log(p) for p in self.probs.values())


def table(values: dict):
    """A fake log q given as a table {(prompt index, text): log q}; a pair it lacks is a KeyError (a wrong index)."""
    return lambda indices, texts: [values[(i, y)] for i, y in zip(indices, texts)]


Q_TABLE = {(0, "a"): math.log(0.4), (0, "b"): math.log(0.4), (0, "c"): math.log(0.1), (1, "x"): math.log(0.25)}
KL0 = 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.4) + 0.2 * math.log(0.2 / 0.1)


# ----------------------------------------------------------------------------------------------- forward KL


def test_exact_kl_is_sum_p_log_p_over_q():
    out = true_forward_kl([Categorical(P3), point_mass("x")], table(Q_TABLE))
    assert out["per_prompt"] == pytest.approx([KL0, math.log(4)], abs=1e-12)
    assert out["mean"] == pytest.approx((KL0 + math.log(4)) / 2, abs=1e-12)
    assert out["standard_error"] == 0 and out["per_prompt_standard_error"] == [0, 0]
    assert out["exact"] == [True, True] and out["n_prompts"] == 2


def test_kl_is_inf_when_q_gives_no_mass_to_a_supported_answer():
    out = true_forward_kl([Categorical(P3)], table({**Q_TABLE, (0, "c"): -math.inf}))
    assert out["per_prompt"] == [math.inf] and out["mean"] == math.inf


def test_monte_carlo_kl_by_hand_and_exact_prompts_add_no_error():
    # prompts 0 and 2 (support hidden: Monte Carlo) draw a, b, a, c and c, c, b, a with the q of prompt 0;
    # prompt 1 is exact.
    q = {**Q_TABLE, **{(2, y): Q_TABLE[(0, y)] for y in P3}}
    means, ses = [], []
    for draws in (["a", "b", "a", "c"], ["c", "c", "b", "a"]):
        d = [math.log(P3[y]) - Q_TABLE[(0, y)] for y in draws]
        means.append(sum(d) / 4)
        ses.append(math.sqrt(sum((v - means[-1]) ** 2 for v in d) / 3) / 2)
    dists = [Scripted(P3, ["a", "b", "a", "c"], listed=False), point_mass("x"),
             Scripted(P3, ["c", "c", "b", "a"], listed=False)]
    out = true_forward_kl(dists, table(q), n_samples=4)
    assert out["exact"] == [False, True, False]
    assert out["per_prompt"] == pytest.approx([means[0], math.log(4), means[1]], abs=1e-12)
    assert out["per_prompt_standard_error"] == pytest.approx([ses[0], 0.0, ses[1]], abs=1e-12)
    # the Monte Carlo error of the mean: sqrt(sum of squared errors) / N, the exact prompt adding 0
    assert out["standard_error"] == pytest.approx(math.sqrt(ses[0] ** 2 + ses[1] ** 2) / 3, abs=1e-12)
    values = [means[0], math.log(4), means[1]]
    m = sum(values) / 3
    assert out["prompt_standard_error"] == pytest.approx(math.sqrt(sum((v - m) ** 2 for v in values) / 2)
                                                         / math.sqrt(3), abs=1e-12)


def test_monte_carlo_kl_agrees_with_exact_within_three_standard_errors():
    dists = [Categorical(P3)]
    exact = true_forward_kl(dists, table(Q_TABLE))["mean"]
    forced = true_forward_kl(dists, table(Q_TABLE), n_samples=4000, seed=3, exact_up_to=0)
    assert forced["exact"] == [False] and forced["standard_error"] > 0
    assert abs(forced["mean"] - exact) < 3 * forced["standard_error"]
    # seeded: the same seed draws the same answers
    assert true_forward_kl(dists, table(Q_TABLE), n_samples=4000, seed=3, exact_up_to=0) == forced


def test_kl_rejects_a_support_that_does_not_sum_to_one():
    with pytest.raises(ValueError, match="prompt 1: p\\*.support\\(\\) must list .* sum of 0.9"):
        true_forward_kl([point_mass("x"), Scripted({"a": 0.6, "b": 0.3}, ["a"])], table(Q_TABLE))


def test_kl_checks_log_q_returns_one_value_per_pair():
    with pytest.raises(ValueError, match="log_q returned 1 values for 3"):
        true_forward_kl([Categorical(P3)], lambda indices, texts: [0.0])


# ----------------------------------------------------------------------------------------------- precision / recall


def test_precision_drops_by_the_share_of_answers_p_star_cannot_produce():
    samples = [["a", "b", "z", "c"], ["x", "x"]]  # "z": an answer p* never gives, a quarter of prompt 0's
    out = precision([Categorical(P3), point_mass("x")], samples)
    assert out["per_prompt"] == [0.75, 1.0]
    assert out["precision"] == pytest.approx(5 / 6) and out["n"] == 6 and out["n_unfinished"] == 0
    # an answer the model never finished is not valid, whatever its text
    out = precision([Categorical(P3), point_mass("x")], samples, [[True] * 4, [True, False]])
    assert out["per_prompt"] == [0.75, 0.5] and out["precision"] == pytest.approx(4 / 6)
    assert out["n_unfinished"] == 1


def test_recall_is_the_mean_of_per_prompt_ratios_of_distinct_valid_mass():
    dists = [Scripted(P3, ["a", "a", "b", "a"]), Scripted({"x": 0.6, "y": 0.4}, ["x", "x", "x", "x"])]
    samples = [["a", "c", "z", "c"], ["x", "y", "y", "w"]]
    out = recall(dists, samples)
    # prompt 0: model covers {a, c} = 0.7, p*'s draws {a, b} = 0.8; prompt 1: {x, y} = 1.0 vs {x} = 0.6
    assert out["covered"] == pytest.approx([0.7, 1.0]) and out["reference"] == pytest.approx([0.8, 0.6])
    assert out["per_prompt"] == pytest.approx([0.875, 1 / 0.6])
    assert out["recall"] == pytest.approx((0.875 + 1 / 0.6) / 2)
    assert out["ratio_of_means"] == pytest.approx(1.7 / 1.4)
    # unfinished answers cover nothing
    out = recall(dists, samples, finished=[[False, True, True, True], [True] * 4])
    assert out["covered"] == pytest.approx([0.2, 1.0])


def test_recall_reference_draws_are_seeded():
    dists = [Categorical({f"t{j}": 1.0 for j in range(50)})]
    samples = [["t0"] * 16]
    assert recall(dists, samples, seed=1) == recall(dists, samples, seed=1)
    assert recall(dists, samples, seed=1)["covered"] == pytest.approx([1 / 50])


# ----------------------------------------------------------------------------------------------- calibration


def test_calibration_vs_truth_by_hand():
    q = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    p = [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]
    out = calibration_vs_truth(q, p)
    assert out["per_item"] == pytest.approx([0.6 / 3, 0.4 / 3], abs=1e-7)
    assert out["mean_abs_error"] == pytest.approx(1.0 / 6, abs=1e-7) and out["n"] == 2
    with pytest.raises(ValueError, match="differ in shape"):
        calibration_vs_truth(q, p[:1])


def test_truth_label_probs_renormalize_over_the_labels():
    dists = [Categorical({"positive": 0.75, "negative": 0.25}),
             Categorical({"positive": 0.5, "negative": 0.25, "neutral": 0.25})]
    assert truth_label_probs(dists, ["negative", "positive"]) == [pytest.approx([0.25, 0.75]),
                                                                  pytest.approx([1 / 3, 2 / 3])]
    with pytest.raises(ValueError, match="prompt 1: p\\* gives no probability to any of the labels"):
        truth_label_probs([dists[0], point_mass("neutral")], ["negative", "positive"])


# ----------------------------------------------------------------------------------------------- long-form validity


def test_longform_survival_curve_from_first_invalid_words():
    verdicts = {"the cat sat": None,  # valid and complete
                "the cat dog ran fast": 2,  # first invalid word: the third
                "dog the cat sat": 0,
                "the cat sat on": 4,  # a valid prefix that stopped early
                "the cat": None}  # complete, but cut by the generation budget (finished False below)
    texts = list(verdicts)
    out = longform_validity(texts, [verdicts.get] * 5, [0, 1, 2, 3, 4, 5], finished=[True] * 4 + [False])
    assert out["accepted"] == pytest.approx(1 / 5) and out["n"] == 5
    # first errors: inf, 2, 0, 4, 2 (the cut text fails at its end)
    assert out["survival"] == pytest.approx({"0": 1.0, "1": 0.8, "2": 0.8, "3": 0.4, "4": 0.4, "5": 0.2})
    assert out["reached"] == {"0": 5, "1": 5, "2": 5, "3": 4, "4": 3, "5": 1}


def test_longform_rejects_an_index_past_the_text():
    with pytest.raises(ValueError, match=r"text 1: first_invalid_word returned 9, outside \[0, 2\]"):
        longform_validity(["a b", "a b"], [lambda t: None, lambda t: 9], [1])


# ----------------------------------------------------------------------------------------------- on a tiny model

PROMPT_A = "### Instruction:\nName a colour.\n\n### Response:\n"
PROMPT_B = "### Instruction:\nName two colours, please.\n\n### Answer:"  # its last token differs from A's
ANSWERS = ["red", "green", "light blue", "dark red and green", "blue green red", ""]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer([{"instruction": i, "input": "", "output": o}
                           for i in ("Name a colour.", "Name two colours, please.") for o in ANSWERS])


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(tok, seed=0).eval()


def by_hand(model, tok, prompt, text, max_response_length=10**6):
    """Sum of log_softmax over the response tokens and EOS, the vocabulary cut to len(tok), one unpadded row."""
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    r = tok(text, add_special_tokens=False)["input_ids"][:max_response_length] + [tok.eos_token_id]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p + r])).logits[0].double()
    return sum(float(torch.log_softmax(logits[len(p) + t - 1, :len(tok)], -1)[y]) for t, y in enumerate(r))


def test_response_log_probs_equal_log_softmax_by_hand_with_eos_and_the_vocabulary_cut(model, tok):
    padded = copy.deepcopy(model)
    padded.resize_token_embeddings(len(tok) + 13)  # an output layer wider than the vocabulary, as Qwen2.5's
    torch.nn.init.normal_(padded.get_output_embeddings().weight[len(tok):], std=1.0)
    got = response_log_probs(padded, tok, [PROMPT_A], ["light blue"]).log_probs[0]
    assert got == pytest.approx(by_hand(padded, tok, PROMPT_A, "light blue"), abs=1e-4)
    p, r = tok(PROMPT_A)["input_ids"], tok("light blue")["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        logits = padded(input_ids=torch.tensor([p + r])).logits[0].double()
    # the padded columns are cut: a softmax over them would give another value
    full = torch.log_softmax(logits, -1)
    assert abs(sum(float(full[len(p) + t - 1, y]) for t, y in enumerate(r)) - got) > 1e-2
    # the EOS is scored: the sum over the text's tokens alone is larger by -log q(EOS | prompt, text)
    cut = torch.log_softmax(logits[:, :len(tok)], -1)
    eos = float(cut[len(p) + len(r) - 2, tok.eos_token_id])
    assert sum(float(cut[len(p) + t - 1, y]) for t, y in enumerate(r[:-1])) + eos == pytest.approx(got, abs=1e-4)
    assert eos < -1e-3


def test_response_log_probs_are_the_same_in_a_batch_as_alone(model, tok):
    prompts = [PROMPT_A, PROMPT_B, PROMPT_A, PROMPT_B, PROMPT_A, PROMPT_A]
    texts = ["red", "dark red and green", "", "blue green red", "red", "light blue"]
    batched = response_log_probs(model, tok, prompts, texts, batch_size=3).log_probs
    alone = [response_log_probs(model, tok, [p], [t], batch_size=1).log_probs[0] for p, t in zip(prompts, texts)]
    assert batched == pytest.approx(alone, abs=1e-5)
    assert batched[0] == batched[4]  # a repeated pair is scored once
    assert batched[2] == pytest.approx(by_hand(model, tok, PROMPT_A, ""), abs=1e-4)  # EOS alone


def test_a_response_over_the_limit_is_flagged_and_scored_cut(model, tok):
    lengths = {t: len(tok(t)["input_ids"]) for t in ANSWERS}
    exactly = min((t for t in ANSWERS if lengths[t] >= 2), key=lambda t: lengths[t])
    limit = lengths[exactly]
    longer = next(t for t in ANSWERS if lengths[t] > limit)
    out = response_log_probs(model, tok, [PROMPT_B, PROMPT_B], [longer, exactly], max_response_length=limit)
    assert out.truncated == [True, False] and out.n_truncated == 1
    assert out.log_probs[0] == pytest.approx(by_hand(model, tok, PROMPT_B, longer, limit), abs=1e-4)
    assert out.log_probs[1] == pytest.approx(by_hand(model, tok, PROMPT_B, exactly), abs=1e-4)
    assert response_log_probs(model, tok, [PROMPT_A, PROMPT_B, PROMPT_B], ["red"] * 3,
                              max_prompt_length=4).n_prompt_truncated == 2


def test_response_log_probs_reject_a_tokenizer_without_eos(model, tok):
    no_eos = copy.deepcopy(tok)
    no_eos.eos_token = None
    with pytest.raises(ValueError, match="no EOS token"):
        response_log_probs(model, no_eos, [PROMPT_A], ["red"])


def steered(model, tok, eos_logit: float, stop_after: int | None = None):
    """A copy whose next-token logits are all 0 but EOS's: about +eos_logit after the token `stop_after` (None:
    after every token), -eos_logit after any other. The current token's embedding sets dimension 0 of the
    residual stream to +-100 (the layers add little to it), the final norm keeps only that dimension, and the
    head reads only it, for EOS."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        embeddings = m.get_input_embeddings().weight
        embeddings[:, 0] = 100.0 if stop_after is None else -100.0
        if stop_after is not None:
            embeddings[stop_after, 0] = 100.0
        m.model.norm.weight.zero_()
        m.model.norm.weight[0] = 1.0
        m.lm_head.weight = torch.nn.Parameter(torch.zeros_like(m.lm_head.weight))
        m.lm_head.weight[tok.eos_token_id, 0] = eos_logit / math.sqrt(m.config.hidden_size)
    return m


def test_samples_are_seeded_grouped_by_prompt_and_flag_unfinished_answers(model, tok):
    a = sample_responses(model, tok, [PROMPT_A, PROMPT_B], 3, max_new_tokens=4, seed=5)
    assert a == sample_responses(model, tok, [PROMPT_A, PROMPT_B], 3, max_new_tokens=4, seed=5)
    assert [len(t) for t in a.texts] == [3, 3] and [len(f) for f in a.finished] == [3, 3]
    stops = sample_responses(steered(model, tok, 40.0), tok, [PROMPT_A, PROMPT_B], 3, max_new_tokens=4)
    assert stops.texts == [[""] * 3] * 2 and stops.finished == [[True] * 3] * 2
    # stops right after prompt A, never after B: each prompt's k answers are its own
    only_a = steered(model, tok, 40.0, stop_after=tok(PROMPT_A)["input_ids"][-1])
    mixed = sample_responses(only_a, tok, [PROMPT_B, PROMPT_A, PROMPT_B], 3, max_new_tokens=4)
    assert mixed.finished == [[False] * 3, [True] * 3, [False] * 3] and mixed.texts[1] == [""] * 3
    assert all(mixed.texts[0]) and all(mixed.texts[2])
    never = sample_responses(steered(model, tok, -40.0), tok, [PROMPT_A], 2, max_new_tokens=3)
    assert never.finished == [[False, False]]
    with pytest.raises(ValueError, match="greedy decoding gives one answer per prompt"):
        sample_responses(model, tok, [PROMPT_A], 2, greedy=True)


def test_truth_metrics_on_a_model_that_stops_after_one_prompt_only(model, tok):
    stopper = steered(model, tok, 40.0, stop_after=tok(PROMPT_A)["input_ids"][-1])
    dists = [Categorical({"": 0.5, "red": 0.5}), Categorical({"": 0.1, "red": 0.9})]
    out = truth_metrics(stopper, tok, [PROMPT_A, PROMPT_B], dists, k=16, max_response_length=8)
    # prompt A: every answer is "" (EOS first), valid; prompt B: never stops within 9 tokens, so never valid
    assert out["precision"]["per_prompt"] == [1.0, 0.0] and out["greedy_precision"]["per_prompt"] == [1.0, 0.0]
    assert out["precision"]["n_unfinished"] == 16 and out["recall"]["covered"] == [0.5, 0.0]
    want = [sum(p * (math.log(p) - by_hand(stopper, tok, prompt, y)) for y, p in d.support().items())
            for prompt, d in zip([PROMPT_A, PROMPT_B], dists)]
    assert out["forward_kl"]["per_prompt"] == pytest.approx(want, rel=1e-5)
    assert out["n_response_truncated"] == 0
