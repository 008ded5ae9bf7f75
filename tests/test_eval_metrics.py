"""Evaluation metrics beyond ROUGE-L / exact match: MiniLLM's normalized exact match, calibration (ECE, Brier,
reliability, zero-shot label scoring), long-text metrics (ROUGE-L by length, Dist-n, repetition, LM loss),
teacher-student agreement and exposure bias (ExAccErr). Expected values are counted by hand or recomputed with an
unbatched forward pass written out here, never by calling the code under test."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from kdbench.evaluation.agreement import teacher_student_agreement
from kdbench.evaluation.calibration import (
    brier_score,
    calibration_metrics,
    expected_calibration_error,
    reliability_diagram,
    score_labels,
)
from kdbench.evaluation.exposure_bias import exaccerr_from_divergences, exposure_bias, sample_continuations
from kdbench.evaluation.long_text import distinct_n, lm_loss, repetition_rate, rouge_l_by_length
from kdbench.evaluation.metrics import PER_ITEM, normalized_exact_match, normalized_exact_match_per_item
from kdbench.models.tokenizer import train_bpe_tokenizer

WORDS = ("review sentiment positive negative the movie was great bad fine plot actors music story boring "
         "loved hated it a an and very not really good").split()


@pytest.fixture(scope="module")
def tok():
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(80)]
    texts += ["Review: the movie was great. Sentiment: positive", "Review: bad plot. Sentiment: negative"]
    return train_bpe_tokenizer(texts, vocab_size=300)


def tiny_llama(vocab_rows: int, seed: int) -> LlamaForCausalLM:
    """One layer, hidden 32, weights redrawn at unit scale (the default init's near-uniform outputs would make
    the divergence checks weak)."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_rows, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                std = 1.0 if "embed_tokens" in name else p.shape[1] ** -0.5
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


@pytest.fixture(scope="module")
def model_a(tok):
    return tiny_llama(len(tok), seed=1)


@pytest.fixture(scope="module")
def model_b(tok):
    return tiny_llama(len(tok), seed=2)


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------------------------------------------
# Normalized exact match
# ----------------------------------------------------------------------------------------------------------------

def test_normalized_exact_match_cases():
    preds = ["The Cat.", "  hello   world ", "a cat", "Paris", "dogs", "don't!"]
    refs = ["the cat", "Hello, world!", "cat", ["London", "paris."], ["cats"], "dont"]
    # case + punctuation; whitespace + punctuation; articles are KEPT (MiniLLM) -> no match; list: max over refs;
    # a plain mismatch; punctuation inside a word is deleted.
    assert normalized_exact_match_per_item(preds, refs) == [100.0, 100.0, 0.0, 100.0, 0.0, 100.0]
    assert normalized_exact_match(preds, refs) == pytest.approx(400 / 6)
    assert PER_ITEM["normalized_exact_match"] is normalized_exact_match_per_item
    assert normalized_exact_match([], []) == 0.0
    with pytest.raises(ValueError):
        normalized_exact_match(["a"], [])


# ----------------------------------------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------------------------------------

def test_ece_two_bins():
    # 5 items at confidence 0.25 (bin [0.2, 0.3)), 2 right: accuracy 0.4; 5 at 0.85 (bin [0.8, 0.9)), 4 right: 0.8.
    conf = [0.25] * 5 + [0.85] * 5
    correct = [1, 1, 0, 0, 0] + [1, 1, 1, 1, 0]
    # ECE = 0.5 * |0.4 - 0.25| + 0.5 * |0.8 - 0.85| = 0.075 + 0.025
    assert expected_calibration_error(conf, correct, n_bins=10) == pytest.approx(0.1)
    # One bin: |0.6 - 0.55|
    assert expected_calibration_error(conf, correct, n_bins=1) == pytest.approx(0.05)
    d = reliability_diagram(conf, correct, n_bins=10)
    assert d["counts"] == [0, 0, 5, 0, 0, 0, 0, 0, 5, 0]
    assert d["accuracy"][2] == pytest.approx(0.4) and d["accuracy"][8] == pytest.approx(0.8)
    assert d["confidence"][2] == pytest.approx(0.25) and d["confidence"][8] == pytest.approx(0.85)
    assert d["accuracy"][0] is None and d["confidence"][5] is None
    assert d["edges"][0] == 0.0 and d["edges"][-1] == 1.0 and len(d["edges"]) == 11
    json.dumps(d)  # serialisable, no NaN


def test_ece_edges_and_errors():
    d = reliability_diagram([0.0, 1.0, 0.5], [0, 1, 1], n_bins=4)
    assert d["counts"] == [1, 0, 1, 1]  # 0 -> first bin, 0.5 -> [0.5, 0.75), 1.0 -> last bin
    # each item alone in its bin: (|0 - 0| + |1 - 0.5| + |1 - 1|) / 3
    assert expected_calibration_error([0.0, 1.0, 0.5], [0, 1, 1], n_bins=4) == pytest.approx(0.5 / 3)
    assert expected_calibration_error(torch.tensor([0.9, 0.9]), torch.tensor([True, True])) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        expected_calibration_error([], [])
    with pytest.raises(ValueError):
        expected_calibration_error([1.2], [1])
    with pytest.raises(ValueError):
        expected_calibration_error([0.5, 0.6], [1])


def test_brier_and_calibration_metrics_two_classes():
    probs = [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]
    labels = [0, 0, 1]
    # (0.2^2 + 0.2^2) + (0.7^2 + 0.7^2) + (0.6^2 + 0.6^2) = 0.08 + 0.98 + 0.72
    assert brier_score(probs, labels) == pytest.approx(1.78 / 3)
    m = calibration_metrics(torch.tensor(probs), torch.tensor(labels), n_bins=10)
    # predictions 0, 1, 0: only the first is right; confidences 0.8, 0.7, 0.6 each alone in a bin
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["ece"] == pytest.approx((0.2 + 0.7 + 0.6) / 3)
    assert m["brier"] == pytest.approx(1.78 / 3)
    assert m["n"] == 3 and sum(m["reliability"]["counts"]) == 3
    json.dumps(m)
    with pytest.raises(ValueError):
        brier_score([[0.5, 0.5]], [2])
    with pytest.raises(ValueError):
        calibration_metrics(torch.zeros(0, 3), torch.zeros(0))


def brute_force_label_probs(model, tok, prompt: str, labels: list[str]) -> torch.Tensor:
    """Unbatched: one forward pass per (prompt, label) over the tokens of prompt + label; the label's tokens are
    those after the longest prefix the prompt shares with every prompt + label."""
    p = ids_of(tok, prompt)
    joints = [ids_of(tok, prompt + lab) for lab in labels]
    cut = min(next((i for i, (a, b) in enumerate(zip(p, j)) if a != b), min(len(p), len(j))) for j in joints)
    sums = []
    for j in joints:
        with torch.no_grad():
            logp = F.log_softmax(model(input_ids=torch.tensor([j])).logits[0].double(), -1)
        sums.append(sum(logp[t - 1, j[t]] for t in range(cut, len(j))))
    return torch.softmax(torch.stack(sums), 0)


def test_score_labels_matches_unbatched_forward(tok, model_a):
    prompts = ["Review: the movie was great. Sentiment:", "Review: bad plot and boring actors. Sentiment:",
               "Review: it was fine, not really good music but loved the story. Sentiment:", "Review: hated it."]
    labels = [" positive", " negative", " neutral"]
    for p in prompts:  # the natural case: the prompt's tokens are a prefix of prompt + label
        for lab in labels:
            assert ids_of(tok, p + lab)[:len(ids_of(tok, p))] == ids_of(tok, p)
    assert max(len(ids_of(tok, p + " neutral")) - len(ids_of(tok, p)) for p in prompts) >= 2  # multi-token label
    probs = score_labels(model_a, tok, prompts, labels, batch_size=2)
    assert probs.shape == (4, 3)
    assert torch.allclose(probs.sum(-1), torch.ones(4), atol=1e-5)
    expected = torch.stack([brute_force_label_probs(model_a, tok, p, labels) for p in prompts]).float()
    assert torch.allclose(probs, expected, atol=1e-5), (probs, expected)
    # batch size does not matter
    assert torch.allclose(score_labels(model_a, tok, prompts, labels, batch_size=16), probs, atol=1e-5)


def test_score_labels_boundary_merge(tok, model_a):
    prompt, labels = "Review: great music. Sentiment: ", ["positive", "negative"]
    p = ids_of(tok, prompt)
    assert ids_of(tok, prompt + "positive")[:len(p)] != p  # the trailing space merges into the label's token
    with pytest.raises(ValueError, match="not a prefix"):
        score_labels(model_a, tok, [prompt], labels, on_mismatch="error")
    probs = score_labels(model_a, tok, [prompt], labels)
    assert torch.allclose(probs[0], brute_force_label_probs(model_a, tok, prompt, labels).float(), atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Long text
# ----------------------------------------------------------------------------------------------------------------

def test_rouge_l_by_length_buckets():
    three = "alpha beta gamma"
    seven = "alpha beta gamma delta epsilon zeta eta"
    eight = "one two three four five six seven eight"
    twelve = "red green blue cyan magenta yellow black white grey pink brown orange"
    preds = [three, "zulu yankee", eight, twelve, "short"]
    refs = [three, seven, eight, twelve, [twelve, "short"]]
    out = rouge_l_by_length(preds, refs)
    assert list(out) == ["0-5", "6-10", "11+"]
    assert out["0-5"] == {"rouge_l": pytest.approx(100.0), "n": 1}
    assert out["6-10"] == {"rouge_l": pytest.approx(50.0), "n": 2}  # one disjoint (0), one identical (100)
    # the list row is bucketed by its FIRST reference (12 words) and scored by the max over references (100)
    assert out["11+"] == {"rouge_l": pytest.approx(100.0), "n": 2}
    empty = rouge_l_by_length([three], [three], buckets=((0, 2), (3, None)))
    assert empty == {"0-2": {"rouge_l": None, "n": 0}, "3+": {"rouge_l": pytest.approx(100.0), "n": 1}}
    json.dumps(empty)
    with pytest.raises(ValueError):
        rouge_l_by_length([three], [three], buckets=((0, 5), (5, None)))


def test_distinct_n_by_hand():
    texts = ["a b c d e", "a b c d", "x y"]
    # 4-grams: (a b c d), (b c d e) | (a b c d) | none -> 2 distinct of 3
    assert distinct_n(texts, n=4) == pytest.approx(200 / 3)
    # unigrams: a b c d e a b c d x y -> 7 distinct of 11
    assert distinct_n(texts, n=1) == pytest.approx(700 / 11)
    assert distinct_n(["a b"], n=4) == 0.0
    # n-grams do not cross responses: "a b" + "c d" has no 4-gram
    assert distinct_n(["a b", "c d"], n=4) == 0.0


def test_repetition_rate_by_hand():
    assert repetition_rate(["a b a b a b"], n=2) == pytest.approx(60.0)  # ab ba ab ba ab: 3 of 5 repeat
    # "a b c d a b c d": abcd bcda cdab dabc abcd -> 1 of 5 (20); "a b c d e": 0; "x y z" has no 4-gram (left out)
    assert repetition_rate(["a b c d a b c d", "a b c d e", "x y z"], n=4) == pytest.approx(10.0)
    assert repetition_rate(["x y z"], n=4) == 0.0


def hand_lm_loss(model, tok, prompts, responses, with_eos=True) -> float:
    per = []
    for prompt, resp in zip(prompts, responses):
        p = ids_of(tok, prompt)
        r = ids_of(tok, resp) + ([tok.eos_token_id] if with_eos else [])
        ids = torch.tensor([p + r])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].double()
        per.append(F.cross_entropy(logits[len(p) - 1:-1], torch.tensor(r)).item())
    return sum(per) / len(per)


def test_lm_loss_matches_hand_loop(tok, model_a):
    prompts = ["Review: great movie. Sentiment:", "the plot",
               "Review: it was very boring and bad music and not really good actors. Sentiment:"]
    responses = [" positive", " was not good at all and the actors were bad", " negative"]
    assert lm_loss(model_a, tok, prompts, responses, batch_size=2) == pytest.approx(
        hand_lm_loss(model_a, tok, prompts, responses), rel=1e-5)
    assert lm_loss(model_a, tok, prompts, responses, batch_size=2, include_eos=False) == pytest.approx(
        hand_lm_loss(model_a, tok, prompts, responses, with_eos=False), rel=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Teacher-student agreement
# ----------------------------------------------------------------------------------------------------------------

PROMPTS = ["Review: great movie. Sentiment:", "the plot was", "Review: boring actors and bad music. Sentiment:"]
RESPONSES = [" positive", " very good and loved it", " negative"]


def test_agreement_self_and_other(tok, model_a, model_b):
    same = teacher_student_agreement(model_a, model_a, tok, PROMPTS, RESPONSES, batch_size=2)
    n_tokens = sum(len(ids_of(tok, r)) + 1 for r in RESPONSES)  # response tokens + EOS
    assert same["n_tokens"] == n_tokens
    assert abs(same["forward_kl"]) < 1e-6 and same["top1_agreement"] == 1.0
    other = teacher_student_agreement(model_a, model_b, tok, PROMPTS, RESPONSES, batch_size=2)
    # by hand: unbatched forwards, KL(p_teacher || q_student) and argmax agreement at each response position
    kls, agree = [], []
    for prompt, resp in zip(PROMPTS, RESPONSES):
        p, r = ids_of(tok, prompt), ids_of(tok, resp) + [tok.eos_token_id]
        ids = torch.tensor([p + r])
        with torch.no_grad():
            lp = F.log_softmax(model_a(input_ids=ids).logits[0, len(p) - 1:-1].double(), -1)
            lq = F.log_softmax(model_b(input_ids=ids).logits[0, len(p) - 1:-1].double(), -1)
        kls += (lp.exp() * (lp - lq)).sum(-1).tolist()
        agree += (lp.argmax(-1) == lq.argmax(-1)).tolist()
    assert other["forward_kl"] > 0.01
    assert other["forward_kl"] == pytest.approx(sum(kls) / len(kls), rel=1e-4)
    assert other["top1_agreement"] == pytest.approx(sum(agree) / len(agree))


def test_agreement_slices_padded_vocabulary(tok, model_a):
    """A student whose output layer is padded past the tokenizer (extra rows with huge logits) but equal on the
    real vocabulary agrees perfectly once logits are sliced to len(tokenizer)."""
    V = len(tok)
    padded = tiny_llama(V + 8, seed=1)
    with torch.no_grad():
        state = {k: v for k, v in model_a.model.state_dict().items() if k != "embed_tokens.weight"}
        padded.model.load_state_dict(state, strict=False)
        padded.model.embed_tokens.weight[:V] = model_a.model.embed_tokens.weight
        padded.lm_head.weight[:V] = model_a.lm_head.weight
        padded.lm_head.weight[V:] = 50.0
    out = teacher_student_agreement(model_a, padded, tok, PROMPTS, RESPONSES)
    assert abs(out["forward_kl"]) < 1e-5 and out["top1_agreement"] == 1.0
    with pytest.raises(ValueError, match="vocab"):
        teacher_student_agreement(model_a, padded, batches=[])


# ----------------------------------------------------------------------------------------------------------------
# Exposure bias
# ----------------------------------------------------------------------------------------------------------------

def test_exaccerr_from_divergences_by_hand():
    nan = math.nan
    s_kl = torch.tensor([[1.0, 2.0, 3.0], [1.0, nan, 7.0]])  # masked entries may hold anything
    s_mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    t_kl = torch.tensor([[1.0, 1.0, 1.0]])
    t_mask = torch.ones(1, 3, dtype=torch.bool)
    seq = exaccerr_from_divergences(s_kl, s_mask, t_kl, t_mask)
    # cumulative sums [1, 3, 6] and [1, 1, 1] (the short one keeps its sum) -> R = [1, 2, 3.5]; eps = [1, 2, 3]
    assert seq["l"].tolist() == [1, 2, 3]
    assert torch.allclose(seq["R"], torch.tensor([1.0, 2.0, 3.5], dtype=torch.float64))
    assert torch.allclose(seq["eps"], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert torch.allclose(seq["exaccerr"], torch.tensor([0.0, 0.0, 50 / 3], dtype=torch.float64))
    # MiniLLM's averaging over the sequences still running: steps (1+1)/2, 2/1, 3/1 -> R = [1, 3, 6]
    alive = exaccerr_from_divergences(s_kl, s_mask, t_kl, t_mask, average="alive")
    assert torch.allclose(alive["R"], torch.tensor([1.0, 3.0, 6.0], dtype=torch.float64))
    assert torch.allclose(alive["exaccerr"], torch.tensor([0.0, 50.0, 100.0], dtype=torch.float64))
    # one sample per prompt: per-prompt means, then the mean over prompts = the sequence average
    grouped = exaccerr_from_divergences(s_kl, s_mask, t_kl, t_mask, average="alive",
                                        student_groups=[0, 1], teacher_groups=[0])
    assert torch.allclose(grouped["R"], seq["R"])
    # eps 0 -> undefined
    zero = exaccerr_from_divergences(s_kl, s_mask, torch.zeros(1, 3), t_mask)
    assert torch.isnan(zero["exaccerr"]).all()
    with pytest.raises(ValueError):
        exaccerr_from_divergences(s_kl, s_mask, torch.zeros(1, 4), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError):
        exaccerr_from_divergences(s_kl, s_mask, t_kl, t_mask, average="mean")


def prefix_blind_llama(tok, seed: int) -> LlamaForCausalLM:
    """A Llama whose next-token distribution is the same at every position, whatever the prefix: every token
    embeds to the same vector, attention and MLP write nothing to the residual stream (o_proj, down_proj = 0),
    so the final hidden state, and the logits, are constant; the EOS logit is pushed to -1000 so that every
    sample runs to the length limit."""
    model = tiny_llama(len(tok), seed)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        embed.copy_(torch.randn(1, 32, generator=g).expand_as(embed))
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        h = model.model(input_ids=torch.tensor([[0]])).last_hidden_state[0, 0]
        model.lm_head.weight[tok.eos_token_id] = -h * 1000.0 / h.dot(h)
    return model.eval()


def test_exaccerr_zero_when_prefix_is_ignored(tok):
    teacher, student = prefix_blind_llama(tok, seed=11), prefix_blind_llama(tok, seed=12)
    probe = [torch.tensor([ids_of(tok, "the movie was great")]), torch.tensor([ids_of(tok, "bad")])]
    with torch.no_grad():
        lt = [teacher(input_ids=x).logits[0] for x in probe]
        lq = [student(input_ids=x).logits[0] for x in probe]
    for logits in (lt, lq):  # precondition: the same distribution at every position and prefix
        flat = torch.cat(logits)
        assert torch.allclose(flat, flat[:1].expand_as(flat), atol=1e-5)
    lp, lq1 = F.log_softmax(lt[0][0].double(), -1), F.log_softmax(lq[0][0].double(), -1)
    kl = float((lp.exp() * (lp - lq1)).sum())  # the constant d_t
    assert kl > 0.01
    L = 12
    prompts = ["Review: great movie. Sentiment:", "the plot", "bad music and boring actors"]
    for average in ("sequence", "alive"):
        out = exposure_bias(teacher, student, tok, prompts, max_new_tokens=L, samples_per_prompt=2, seed=0,
                            batch_size=2, average=average)
        assert out["student_mean_length"] == L and out["teacher_mean_length"] == L  # no EOS ever
        assert out["l"] == list(range(1, L + 1))
        R, eps = torch.tensor(out["R"], dtype=torch.float64), torch.tensor(out["eps"], dtype=torch.float64)
        assert torch.allclose(R, eps, rtol=1e-5)
        assert torch.allclose(R, kl * torch.arange(1, L + 1, dtype=torch.float64), rtol=1e-4)
        assert all(abs(v) < 1e-3 for v in out["exaccerr"])
        assert list(out["at"]) == ["10"] and abs(out["at"]["10"]["exaccerr"]) < 1e-3


def test_exaccerr_end_to_end_random_models(tok, model_a, model_b):
    L = 8
    prompts = ["Review: great movie. Sentiment:", "the plot", "bad music"]
    rng_before = torch.get_rng_state()
    out = exposure_bias(model_a, model_b, tok, prompts, max_new_tokens=L, samples_per_prompt=2, seed=3,
                        batch_size=2, report_at=(1, 5, 8, 10))
    assert torch.equal(torch.get_rng_state(), rng_before)  # sampling leaves the caller's RNG alone
    assert len(out["R"]) == len(out["eps"]) == len(out["exaccerr"]) == L
    assert all(v is not None and math.isfinite(v) for v in out["R"] + out["eps"] + out["exaccerr"])
    assert out["eps"][0] > 0 and all(b >= a for a, b in zip(out["R"], out["R"][1:]))  # cumulative: non-decreasing
    assert list(out["at"]) == ["1", "5", "8"]
    assert 1 <= out["student_mean_length"] <= L and 1 <= out["teacher_mean_length"] <= L
    json.dumps(out)
    again = exposure_bias(model_a, model_b, tok, prompts, max_new_tokens=L, samples_per_prompt=2, seed=3,
                          batch_size=2, report_at=(1, 5, 8, 10))
    assert again["R"] == pytest.approx(out["R"], rel=1e-6)  # seeded
    other_seed = exposure_bias(model_a, model_b, tok, prompts, max_new_tokens=L, samples_per_prompt=2, seed=4,
                               batch_size=2)
    assert other_seed["R"] != pytest.approx(out["R"], rel=1e-6)
    # samples: per prompt, samples_per_prompt sequences of at most L tokens, cut after EOS
    conts = sample_continuations(model_a, tok, [ids_of(tok, p) for p in prompts], 2, L, seed=0)
    assert [len(c) for c in conts] == [2, 2, 2]
    for per_prompt in conts:
        for c in per_prompt:
            assert 1 <= len(c) <= L and tok.eos_token_id not in c[:-1]
