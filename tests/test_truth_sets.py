"""The truth metrics in the evaluation suite (kdbench.evaluation.truth_sets, eval.sets.<name>.truth): the default
`light` profile on a small benchmark v5 (the default data) with a tiny student that has learned a little (sft) and
a random teacher, every key for both, values checked against the truth module's own functions; config errors
naming their key; v4's `light_v4` profile untouched."""

from __future__ import annotations

import json
import math
import re

import pytest
from conftest import compose_train, sft, tiny_model, tiny_tokenizer

from kdbench.data.embedded import FAMILIES_V5
from kdbench.data.sources import embedded_splits
from kdbench.evaluation.suite import Model, run_suite
from kdbench.evaluation.truth_sets import evaluate_truth, first_per_family, load_truth_rows
from kdbench.runtime import validate
from kdbench.schema import ConfigError

SMALL_V5 = ["data.embedded.train_size=400", "data.embedded.validation_size=16", "data.embedded.test_size=60"]
# The first 30 test rows (the v5 split cycles through its families in tens: 3-6 rows of each), 2 of each family
# scored against p* with 4 samples; answers scored and sampled up to 48 tokens.
TRUTH_RUN = [*SMALL_V5, "eval.limit=30", "eval.max_response_length=48",
             "eval.sets.embedded_v5_test.max_new_tokens=16", "eval.sets.embedded_v5_test.truth.num_prompts=2",
             "eval.sets.embedded_v5_test.truth.k=4", "eval.sets.embedded_v5_test.truth.kl_samples=4",
             "eval.agreement.num_items=10"]
TRAIN_LENGTH = 40  # the response length the suite is told training used (below eval.max_response_length)
GENERATION_METRICS = ("forward_kl", "forward_kl_se", "precision", "greedy_precision", "recall")
SHARES = ("precision", "greedy_precision", "recall")


@pytest.fixture(scope="module")
def v5():
    """The composed truth run (the default data and profile), the tokenizer of its train rows, a student after 100
    sft steps (it answers `mood` with a label word), a random teacher, and the suite's result for both."""
    import torch

    torch.set_num_threads(1)
    cfg = compose_train(TRUTH_RUN)
    validate(cfg)
    splits = embedded_splits(cfg.data.embedded)
    tok = tiny_tokenizer(splits["train"])
    student = Model(sft(tiny_model(tok, seed=0, hidden=48), tok, splits, 100), tok, "student")
    teacher = Model(tiny_model(tok, seed=1), tok, "teacher")
    res = run_suite(student, teacher, cfg.eval, cfg.data.embedded, show_progress=False,
                    response_length=TRAIN_LENGTH)
    return cfg, tok, student, teacher, res


def _n_mood(cfg) -> int:
    """The mood set's rows: every `mood` row of the test split (eval.limit=30 caps it after the family filter, as
    classification sets count; truth.num_prompts is null there)."""
    n = sum(r["category"] == "mood" for r in embedded_splits(cfg.data.embedded)["test"])
    assert 2 < n <= 30
    return n


def _truth_keys(metrics: dict) -> set[str]:
    return {k for k in metrics if "/truth/" in k}


def _expected_keys(families: set[str], lengths) -> set[str]:
    gen = "embedded_v5_test"
    keys = {f"{gen}/truth/{m}" for m in GENERATION_METRICS} | {f"{gen}/truth/n"}
    keys |= {f"{gen}/{f}/truth/{m}" for f in families for m in GENERATION_METRICS}
    keys |= {"embedded_v5_test/story/truth/valid"} | {f"embedded_v5_test/story/truth/valid@{L}" for L in lengths}
    return keys | {"embedded_v5_mood/truth/calibration_mae", "embedded_v5_mood/truth/n"}


def test_the_default_profile_gives_every_truth_key_for_student_and_teacher(v5):
    cfg, _, _, _, res = v5
    assert (cfg.eval.name, cfg.data.embedded.version) == ("light", 5)
    lengths = list(cfg.eval.sets.embedded_v5_test.truth.validity_lengths)
    assert lengths == [10, 20, 40, 60]
    expected = _expected_keys(set(FAMILIES_V5), lengths)
    for role, metrics in (("student", res.metrics), ("teacher", res.teacher_metrics)):
        assert _truth_keys(metrics) == expected, role
        for key in expected:
            value = metrics[key]
            if key.endswith("forward_kl") or key.endswith("forward_kl_se"):
                assert value >= 0 or value == math.inf, (role, key, value)
            elif key.endswith("/n"):
                assert value == (14 if key.startswith("embedded_v5_test") else _n_mood(cfg)), (role, key, value)
            else:  # shares and the mean absolute error of probabilities
                assert 0.0 <= value <= 1.0, (role, key, value)
        # The classification set keeps its usual metrics beside the new one.
        assert {"embedded_v5_mood/ece", "embedded_v5_mood/accuracy"} <= set(metrics)
    # Two different models: their numbers differ (the teacher's are its own, not a copy of the student's).
    assert res.metrics["embedded_v5_test/truth/forward_kl"] != res.teacher_metrics["embedded_v5_test/truth/forward_kl"]
    # The student learned to answer `mood` with a label word (p* gives both labels mass), the random teacher not.
    assert res.metrics["embedded_v5_test/mood/truth/precision"] >= 0.25
    assert res.teacher_metrics["embedded_v5_test/mood/truth/precision"] == 0.0
    # (Which of the two is better calibrated after 100 steps depends on the split's draw: test_truth.py checks the
    # value itself against hand-computed cases.)
    assert res.metrics["embedded_v5_mood/truth/calibration_mae"] != res.teacher_metrics[
        "embedded_v5_mood/truth/calibration_mae"]
    assert {"truth/embedded_v5_test", "truth/embedded_v5_mood"} <= set(res.details["seconds"])


def test_overall_values_are_the_prompt_weighted_family_values(v5):
    _, _, _, _, res = v5
    for metrics in (res.metrics, res.teacher_metrics):
        n = {f: 2 for f in FAMILIES_V5}  # 2 prompts of each family
        total = sum(n.values())
        for m in ("forward_kl", *SHARES):
            pooled = sum(n[f] * metrics[f"embedded_v5_test/{f}/truth/{m}"] for f in n) / total
            assert metrics[f"embedded_v5_test/truth/{m}"] == pytest.approx(pooled, rel=1e-9)
        # Standard errors add in quadrature: N se = sqrt(sum_f (n_f se_f)^2).
        se = math.sqrt(sum((n[f] * metrics[f"embedded_v5_test/{f}/truth/forward_kl_se"]) ** 2 for f in n)) / total
        assert metrics["embedded_v5_test/truth/forward_kl_se"] == pytest.approx(se, rel=1e-9)
        # Only the story (no listed support) is Monte Carlo at exact_up_to=128: the others have no sampling error.
        assert metrics["embedded_v5_test/story/truth/forward_kl_se"] > 0
        assert all(metrics[f"embedded_v5_test/{f}/truth/forward_kl_se"] == 0 for f in n if f != "story")


def test_details_are_compact_and_say_which_response_length_scored(v5):
    _, _, _, _, res = v5
    truth = res.details["truth"]
    assert set(truth) == {"embedded_v5_test", "embedded_v5_mood"}
    for role, metrics in (("student", res.metrics), ("teacher", res.teacher_metrics)):
        gen = truth["embedded_v5_test"][role]
        assert gen["response_length"] == TRAIN_LENGTH and gen["response_length_from"].startswith("training")
        assert gen["max_new_tokens"] == TRAIN_LENGTH + 1
        assert set(gen["families"]) == set(FAMILIES_V5) and all(v["n"] == 2 for v in gen["families"].values())
        curve = gen["validity"]["story"]
        assert curve["n"] == 2 * 4 and set(curve["survival"]) == {"10", "20", "40", "60"}
        assert curve["accepted"] == metrics["embedded_v5_test/story/truth/valid"]
        assert {f"embedded_v5_test/story/truth/valid@{L}": v for L, v in curve["survival"].items()}.items() <= \
            metrics.items()
        assert truth["embedded_v5_mood"][role]["n"] == _n_mood(v5[0])
    # Per family numbers and curves, never the sampled texts: small, and JSON as results.json writes it.
    text = json.dumps(truth)
    assert len(text) < 12000 and "texts" not in text and "There the fox" not in text


def test_an_exact_familys_kl_is_the_one_computed_from_the_models_scores(v5):
    """The suite's KL of `choice` and `pairs` (exact: p* lists every answer) against sum_y p(y) [log p - log q]
    computed here from response_log_probs; without a training length, eval.max_response_length scores."""
    from kdbench.evaluation.truth import response_log_probs

    cfg, tok, student, _, res = v5
    s = cfg.eval.sets.embedded_v5_test
    rows = embedded_splits(cfg.data.embedded)["test"][:30]
    truth = load_truth_rows("embedded_v5_test", s, cfg.eval, cfg.data.embedded, rows)
    for family in ("choice", "pairs"):
        kls = []
        for prompt, dist, f in zip(truth.prompts, truth.dists, truth.families):
            if f != family:
                continue
            support = dist.support()
            logq = response_log_probs(student.model, tok, [prompt] * len(support), list(support),
                                      max_prompt_length=cfg.eval.max_prompt_length, max_response_length=TRAIN_LENGTH)
            kls.append(sum(p * (math.log(p) - lq) for p, lq in zip(support.values(), logq.log_probs)))
        assert len(kls) == 2
        assert res.metrics[f"embedded_v5_test/{family}/truth/forward_kl"] == pytest.approx(sum(kls) / 2, rel=1e-6)
    metrics, details = evaluate_truth("embedded_v5_test", truth, s, cfg.eval, student.model, tok)
    assert details["response_length"] == 48 and details["response_length_from"] == "eval.max_response_length"
    assert set(metrics) == _truth_keys(res.metrics) - {"embedded_v5_mood/truth/calibration_mae",
                                                        "embedded_v5_mood/truth/n"}


def test_truth_rows_are_the_first_of_each_family_in_order():
    assert first_per_family(["a", "b", "a", "c", "a", "b"], 2) == [0, 1, 2, 3, 5]
    assert first_per_family(["a", "b", "a"], None) == [0, 1, 2]
    cfg = compose_train([*TRUTH_RUN, "eval.sets.embedded_v5_test.truth.num_prompts=1"])
    rows = embedded_splits(cfg.data.embedded)["test"][:30]
    truth = load_truth_rows("embedded_v5_test", cfg.eval.sets.embedded_v5_test, cfg.eval, cfg.data.embedded, rows)
    firsts = {}
    for r in rows:
        firsts.setdefault(r["category"], r)
    assert truth.families == list(firsts) and len(truth.families) == len(FAMILIES_V5)
    assert truth.prompts[0].find(next(iter(firsts.values()))["input"]) >= 0
    mood = load_truth_rows("embedded_v5_mood", cfg.eval.sets.embedded_v5_mood, cfg.eval, cfg.data.embedded)
    assert mood.families == ["mood"] * _n_mood(cfg) and mood.label_words == ["positive", "negative"]


def test_truth_on_a_jsonl_source_fails_naming_the_key(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"instruction": "Say yes.", "input": "", "output": "yes"}) + "\n")
    cfg = compose_train([*TRUTH_RUN, "eval.sets.embedded_v5_test.source.kind=jsonl",
                         f"eval.sets.embedded_v5_test.source.path={data}"])
    with pytest.raises(ConfigError, match=r"eval\.sets\.embedded_v5_test\.truth\.enabled=True: .*embedded rows "
                                          r"only.*source\.kind is 'jsonl'"):
        validate(cfg)
    cfg.eval.sets.embedded_v5_test.truth.enabled = False
    validate(cfg)  # with truth off the same set is fine


@pytest.mark.parametrize("override,key", [
    ("truth.k=0", "truth.k"),
    ("truth.kl_samples=1", "truth.kl_samples"),
    ("truth.num_prompts=0", "truth.num_prompts"),
    ("truth.exact_up_to=-1", "truth.exact_up_to"),
    ("truth.validity_lengths=[0,10]", "truth.validity_lengths"),
    ("truth.validity_lengths=[10,10]", "truth.validity_lengths"),
])
def test_nonsense_truth_values_fail_naming_the_key(override, key):
    cfg = compose_train([*TRUTH_RUN, f"eval.sets.embedded_v5_test.{override}"])
    with pytest.raises(ConfigError, match=re.escape(f"eval.sets.embedded_v5_test.{key}=")):
        validate(cfg)


def test_truth_on_v4_data_fails_before_any_model_runs():
    # Benchmark v4 (one right answer a prompt, no p*) under the default (v5) profile: the run's checks fail when it
    # starts, naming both keys and v4's own profile; the suite, called without them, fails while loading its data,
    # before any model runs (models that cannot run, None, show no generation started).
    from kdbench.evaluation.truth_sets import FIRST_TRUTH_VERSION
    from kdbench.schema import checks

    assert checks.FIRST_TRUTH_VERSION == FIRST_TRUTH_VERSION  # the schema's copy (it imports no runtime code)
    cfg = compose_train(["data=embedded_v4", *TRUTH_RUN])
    with pytest.raises(ConfigError, match=r"eval\.sets\.embedded_v5_test\.truth\.enabled=True: "
                                          r"data\.embedded\.version=4 .*eval=light_v4"):
        validate(cfg)
    nothing = Model(None, None, "never-run")
    with pytest.raises(ConfigError, match=r"eval\.sets\.embedded_v5_test\.truth\.enabled=true: "
                                          r"data\.embedded\.version=4 .*data\.embedded\.version=5"):
        run_suite(nothing, nothing, cfg.eval, cfg.data.embedded, show_progress=False)


def test_the_v4_light_profile_is_unchanged():
    import torch

    torch.set_num_threads(1)
    cfg = compose_train(["data=embedded_v4", "eval=light_v4", "data.embedded.train_size=200",
                         "data.embedded.validation_size=16", "data.embedded.test_size=40", "eval.limit=16",
                         "eval.max_new_tokens=4", "eval.agreement.num_items=8"])
    validate(cfg)
    assert cfg.eval.name == "light_v4" and cfg.data.embedded.version == 4
    assert not any(s.truth.enabled for s in cfg.eval.sets.values())
    splits = embedded_splits(cfg.data.embedded)
    tok = tiny_tokenizer(splits["train"])
    res = run_suite(Model(tiny_model(tok, 0), tok, "s"), Model(tiny_model(tok, 1), tok, "t"), cfg.eval,
                    cfg.data.embedded, show_progress=False)
    families = sorted({r["category"] for r in splits["test"][:16]})
    expected = {"embedded_test/n", "embedded_test/n_truncated_prompts", "embedded_test/rouge_l",
                "embedded_test/exact_match", "embedded_sentiment/accuracy", "embedded_sentiment/ece",
                "embedded_sentiment/brier", "embedded_sentiment/n", "embedded_sentiment/n_truncated_prompts",
                "agreement/forward_kl", "agreement/top1", "agreement/n_tokens"}
    expected |= {f"embedded_test/{f}/{m}" for f in families for m in ("rouge_l", "exact_match")}
    assert set(res.metrics) == expected
    assert set(res.teacher_metrics) == {k for k in expected if not k.startswith("agreement/")}
    assert "truth" not in res.details and not any(k.startswith("truth/") for k in res.details["seconds"])


def test_a_fingerprinted_models_truth_metrics_are_cached_by_content(v5, tmp_path):
    """The teacher (a model with a fingerprint) is scored once per content: a second call is a hit with the same
    values; another setting is another entry; a model without a fingerprint (a student) is never cached; a
    damaged entry is moved aside and computed again."""
    from kdbench.evaluation.truth_sets import cached_evaluate_truth

    cfg, tok, _, teacher, _ = v5
    s = cfg.eval.sets.embedded_v5_test
    rows = embedded_splits(cfg.data.embedded)["test"][:30]
    truth = load_truth_rows("embedded_v5_test", s, cfg.eval, cfg.data.embedded, rows)
    args = ("embedded_v5_test", truth, s, cfg.eval, teacher.model, tok, TRAIN_LENGTH)
    first = cached_evaluate_truth(str(tmp_path), "teacher-fp", *args)
    second = cached_evaluate_truth(str(tmp_path), "teacher-fp", *args)
    assert (first[2], second[2]) == (False, True) and second[:2] == first[:2]
    entries = list((tmp_path / "truth").glob("*.json"))
    assert len(entries) == 1
    assert cached_evaluate_truth(str(tmp_path), "other-teacher", *args)[2] is False  # another model
    assert cached_evaluate_truth(str(tmp_path), "teacher-fp", *args[:-1], TRAIN_LENGTH + 1)[2] is False
    assert cached_evaluate_truth(str(tmp_path), "", *args)[2] is False  # no fingerprint: not cached
    assert len(list((tmp_path / "truth").glob("*.json"))) == 3
    entries[0].write_text(entries[0].read_text()[:50])  # cut short
    again = cached_evaluate_truth(str(tmp_path), "teacher-fp", *args)
    assert again[2] is False and again[:2] == first[:2]
    assert list((tmp_path / "truth").glob("*.corrupt-*"))


def test_the_story_validity_curve_is_drawn_for_both_roles(v5, tmp_path):
    from kdbench.evaluation.suite import SuiteResult, _plots

    res = SuiteResult(details={"truth": v5[4].details["truth"]})
    _plots(res, tmp_path)
    png = tmp_path / "validity_embedded_v5_test_story.png"
    assert res.plots == {"validity_embedded_v5_test_story": str(png)}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
