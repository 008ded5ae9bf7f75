"""The LLM judge (kdbench.evaluation.judge): prompt, score parsing, the OpenAI-compatible backend against a real
local HTTP server (retries, malformed bodies, failures, the failed-verdict limit, partial ratios, cache, the API
key kept out of everything), the skipped judge, and a tiny local Hugging Face model as judge. Offline and fast,
but for two `kdbench-eval` runs in a subprocess (a configured judge without its key; an endpoint that fails):
what reaches the console, results.json and kdbench-report."""

from __future__ import annotations

import email.utils
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import compose_train

from kdbench.evaluation.judge import (
    CANDIDATE_FIRST,
    REFERENCE_FIRST,
    HFJudgeBackend,
    JudgeConfig,
    JudgeFailedError,
    JudgeReport,
    JudgeRequestError,
    OpenAIChatBackend,
    judge_pairwise,
    judge_question,
    load_prompt,
    parse_scores,
    render_messages,
)

KEY_ENV = "KDBENCH_TEST_JUDGE_KEY"
KEY = "sk-kdbench-TOPSECRET-7f3a9c1e5b"
START_1, END_1 = "[The Start of Assistant 1's Answer]\n", "\n\n[The End of Assistant 1's Answer]"


# ------------------------------------------------------------------------------------------ the fake endpoint


class RawBody(str):
    """A 200 body sent as it is, not wrapped in a chat completion (a gateway's error page, a cut body)."""


class FakeEndpoint:
    """A real ThreadingHTTPServer speaking the OpenAI chat-completions shape. `script(item, order, seen)` returns
    (status, content-or-body, extra headers[, delay]) for the seen-th request (0-based) of one prompt; it records
    every request and the Authorization headers it saw. The test items' answers name their item and order
    ("REF-3", "CAND-3"); a real run's prompts do not: each distinct prompt is then numbered in order of arrival
    (its item) and its order is None."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: list[tuple[int, str, int]] = []  # (item, order, status)
        self.bodies: list[dict] = []
        self.auth: list[str | None] = []
        self.seen: Counter = Counter()
        self.prompt_ids: dict[str, int] = {}
        self.script = scripted_scores
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, "not found", {})
                user = body["messages"][1]["content"]
                first = user[user.index(START_1) + len(START_1):user.index(END_1)]
                m = re.match(r"(REF|CAND)-(\d+)", first)
                with endpoint.lock:
                    if m:
                        item, order = int(m.group(2)), REFERENCE_FIRST if m.group(1) == "REF" else CANDIDATE_FIRST
                    else:
                        item, order = endpoint.prompt_ids.setdefault(user, len(endpoint.prompt_ids)), None
                    seen = endpoint.seen[(item, order)]
                    endpoint.seen[(item, order)] += 1
                    endpoint.bodies.append(body)
                    endpoint.auth.append(self.headers.get("Authorization"))
                status, payload, headers, *delay = endpoint.script(item, order, seen)
                with endpoint.lock:
                    endpoint.requests.append((item, order, status))
                if delay:
                    time.sleep(delay[0])
                if status == 200 and not isinstance(payload, RawBody):
                    payload = json.dumps({"id": "chatcmpl-test", "object": "chat.completion", "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": payload}, "finish_reason": "stop"}]})
                elif "{auth}" in payload:  # a careless server echoing the credentials back in an error
                    payload = payload.replace("{auth}", self.headers.get("Authorization") or "")
                self._send(status, payload, headers)

            def _send(self, status, payload, headers):
                data = payload.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout test)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def count(self, item=None, order=None) -> int:
        return sum((item is None or i == item) and (order is None or o == order) for i, o, _ in self.requests)


# Gold (reference) and model (candidate) scores per item; the fake judge adds +1 to whichever answer it sees
# first (a position bias), so each order gives different numbers and a swapped mapping would change the ratio.
SCORES = {0: (8, 6), 1: (7, 7), 2: (9, 4), 3: (6, 3), 4: (7.5, 5), 5: (5, 9)}


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def scripted_scores(item, order, seen):
    ref, cand = SCORES[item]
    first, second = (ref + 1, cand) if order == REFERENCE_FIRST else (cand + 1, ref)
    sep = ", " if item == 4 else " "
    ok = (200, f"{_fmt(first)}{sep}{_fmt(second)}\nAssistant 1 was more detailed.", {})
    if item == 0 and seen == 0:
        return 429, '{"error": "rate limited"}', {"Retry-After": "0"}
    if item == 1 and seen == 0:
        return 500, '{"error": "internal"}', {}
    if item == 2 and order == REFERENCE_FIRST:
        return 200, "I think both are fine.\nThey are both good answers.", {}
    if item == 3 and order == CANDIDATE_FIRST:
        return 400, '{"error": "bad request from {auth}"}', {}
    if item == 5 and order == REFERENCE_FIRST and seen == 0:
        return (*ok, 2.0)  # slower than the client's timeout: retried
    return ok


def clean_scores(item, order, seen):
    ref, cand = SCORES[item]
    first, second = (ref + 1, cand) if order == REFERENCE_FIRST else (cand + 1, ref)
    return 200, f"{_fmt(first)} {_fmt(second)}\nexplanation", {}


@pytest.fixture
def endpoint():
    ep = FakeEndpoint()
    ep.thread.start()
    yield ep
    ep.server.shutdown()
    ep.server.server_close()


def items(n: int = 6):
    questions = [judge_question(f"Question {i}: describe thing {i}.", "some context" if i % 2 else "")
                 for i in range(n)]
    references = [f"REF-{i}: the gold answer about thing {i}." for i in range(n)]
    candidates = [f"CAND-{i}: the model's answer about thing {i} {{with braces}}." for i in range(n)]
    return questions, references, candidates


def config_for(ep, tmp_path, **kw) -> JudgeConfig:
    base = {"backend": "openai", "base_url": ep.url, "model": "judge-test", "api_key_env": KEY_ENV,
            "max_tokens": 64, "concurrency": 4, "max_retries": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.05,
            "timeout_s": 1.0, "cache_dir": str(tmp_path / "cache"), "show_progress": False}
    return JudgeConfig(**{**base, **kw})


def assert_key_absent(report: JudgeReport, caplog, tmp_path):
    assert KEY not in caplog.text
    assert KEY not in json.dumps(report.to_dict(), default=str)
    assert KEY not in repr(report)
    assert KEY not in json.dumps(report.to_metrics())
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f


# ----------------------------------------------------------------------------------------- prompt and parsing


@pytest.mark.parametrize("text, expected", [
    ("7 9", (7.0, 9.0)),
    ("7, 9", (7.0, 9.0)),
    ("7,9", (7.0, 9.0)),
    ("7.5 9\nexplanation follows", (7.5, 9.0)),
    (" 7 9 ", (7.0, 9.0)),
    ("7\t 9\r\nmore", (7.0, 9.0)),
    ("\n\n8 6\nleading blank lines are skipped", (8.0, 6.0)),
    ("10 1", (10.0, 1.0)),
    ("Score: 7 9", None),  # decided: a label on the score line is not the asked format
    ("seven nine", None),
    ("7", None),
    ("7 9 10", None),
    ("7/10 9/10", None),
    ("85 90", None),  # off the 1-10 scale
    ("I think both are fine", None),
    ("explanation first\n7 9", None),
    ("", None),
    (None, None),
])
def test_parse_scores(text, expected):
    assert parse_scores(text) == expected


def test_prompt_is_the_pairwise_reviewer_prompt():
    system, template = load_prompt()
    assert system == "You are a helpful and precise assistant for checking the quality of the answer."
    for placeholder in ("{question}", "{answer_1}", "{answer_2}"):
        assert template.count(placeholder) == 1
    messages = render_messages("What is 2+2?", "Four {answer_2}", "4")
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert user.startswith("[Question]\nWhat is 2+2?\n")
    assert "[The Start of Assistant 1's Answer]\nFour {answer_2}\n\n[The End of Assistant 1's Answer]" in user
    assert "[The Start of Assistant 2's Answer]\n4\n\n[The End of Assistant 2's Answer]" in user
    for words in ("helpfulness, relevance, accuracy, and level of detail", "scale of 1 to 10",
                  "single line containing only two values", "separated by a space", "comprehensive explanation",
                  "avoiding any potential bias", "order in which the responses were presented"):
        assert words in user
    assert judge_question("Summarize.", "A text.") == "Summarize.\n\nA text."
    assert judge_question("Summarize.", "  ") == "Summarize."


def test_config_from_mapping_and_unknown_backend():
    cfg = JudgeConfig.from_mapping({"backend": "openai", "base_url": "http://x/v1", "model": "m"})
    assert cfg.base_url == "http://x/v1" and cfg.temperature == 0.0
    with pytest.raises(ValueError, match="unknown judge settings"):
        JudgeConfig.from_mapping({"backend": "openai", "api_key": "oops"})
    with pytest.raises(ValueError, match="unknown judge backend"):
        judge_pairwise(["q"], ["r"], ["c"], JudgeConfig(backend="gpt5"))


# ------------------------------------------------------------------------------------- OpenAI-compatible HTTP


def test_scripted_endpoint_retries_failures_ratio_cache_and_key(endpoint, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, KEY)
    caplog.set_level(logging.DEBUG)
    cfg = config_for(endpoint, tmp_path)
    q, r, c = items()
    report = judge_pairwise(q, r, c, cfg)

    # Every request carried the key as a bearer token, and the configured body.
    assert endpoint.auth and all(a == f"Bearer {KEY}" for a in endpoint.auth)
    assert all(b["model"] == "judge-test" and b["temperature"] == 0 and b["max_tokens"] == 64
               for b in endpoint.bodies)
    # 429 (Retry-After: 0), 500 and a timeout were retried and then answered.
    assert Counter(s for i, _, s in endpoint.requests if i == 0)[429] == 2
    assert Counter(s for i, _, s in endpoint.requests if i == 1)[500] == 2
    assert endpoint.count(5, REFERENCE_FIRST) >= 2
    by = {(v.item, v.order): v for v in report.verdicts}
    for item in (0, 1, 5):
        assert by[(item, REFERENCE_FIRST)].parsed and by[(item, CANDIDATE_FIRST)].parsed
    # The 400 failed at once (no retry), counted, without stopping the run; its echoed key was scrubbed.
    assert endpoint.count(3, CANDIDATE_FIRST) == 1
    failed = by[(3, CANDIDATE_FIRST)]
    assert failed.error_kind == "HTTP 400" and "HTTP 400" in failed.error and "***" in failed.error
    assert report.failures == {"HTTP 400": 1}
    # The garbled verdict is unparsable and left out; its other order still counts.
    assert not by[(2, REFERENCE_FIRST)].parsed and by[(2, REFERENCE_FIRST)].error is None
    assert by[(2, CANDIDATE_FIRST)].candidate_score == 5 and by[(2, CANDIDATE_FIRST)].reference_score == 9
    assert by[(4, REFERENCE_FIRST)].reference_score == 8.5  # "8.5, 5"

    # By hand from SCORES (+1 to the answer shown first), parsed verdicts only:
    #   candidate: 6+7 | 7+8 | 5 | 3 | 5+6 | 9+10 = 66;  reference: 9+8 | 8+7 | 9 | 7 | 8.5+7.5 | 6+5 = 75
    assert report.score_ratio == pytest.approx(100 * 66 / 75) == pytest.approx(88.0)
    assert (report.n_items, report.n_requests, report.n_parsed) == (6, 12, 10)
    assert (report.n_unparsable, report.n_failed, report.n_cached) == (1, 1, 0)
    assert report.unparsable_rate == pytest.approx(1 / 11)
    assert report.mean_candidate == pytest.approx(6.6) and report.mean_reference == pytest.approx(7.5)
    m = report.to_metrics()
    assert m["judge/score_ratio"] == pytest.approx(88.0)
    assert m["judge/unparsable_rate"] == pytest.approx(1 / 11)
    assert m["judge/n_failed"] == 1.0 and m["judge/n_unparsable"] == 1.0 and m["judge/n_requests"] == 12.0
    assert not report.skipped
    # 1 failed of 12 is within max_failed_fraction (0.1), so the run goes on; the ratio, over 10 of the 12
    # verdicts, is marked partial in the report's dict (results.json) and on the console.
    assert report.partial and report.coverage == "10 of 12 verdicts"
    d = report.to_dict(with_verdicts=False)
    assert d["partial"] is True and d["coverage"] == "10 of 12 verdicts"
    assert d["last_error"].startswith("HTTP 400 from " + endpoint.url) and "***" in d["last_error"]
    summary = [r for r in caplog.records if "score ratio" in r.getMessage()]
    assert summary[-1].levelno == logging.WARNING and "10 of 12 verdicts (partial)" in summary[-1].getMessage()

    # The answered verdicts (unparsable included) are cached; the failed one is not, so a rerun asks only it.
    assert len(list((tmp_path / "cache" / "judge").glob("*.json"))) == 11
    before = len(endpoint.requests)
    again = judge_pairwise(q, r, c, cfg)
    assert endpoint.requests[before:] == [(3, CANDIDATE_FIRST, 400)]
    assert again.n_cached == 11 and again.n_failed == 1
    assert again.score_ratio == pytest.approx(88.0)

    assert "HTTP 400" in caplog.text  # the failure is logged ...
    assert_key_absent(report, caplog, tmp_path)  # ... but the key is nowhere
    assert_key_absent(again, caplog, tmp_path)
    assert KEY not in repr(cfg)


def test_second_run_sends_zero_requests(endpoint, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, KEY)
    endpoint.script = clean_scores
    cfg = config_for(endpoint, tmp_path, concurrency=3)
    q, r, c = items(4)
    first = judge_pairwise(q, r, c, cfg)
    assert len(endpoint.requests) == 8 and first.n_parsed == 8 and first.n_cached == 0
    second = judge_pairwise(q, r, c, cfg)
    assert len(endpoint.requests) == 8  # zero new requests
    assert second.n_cached == 8 and second.score_ratio == pytest.approx(first.score_ratio)
    # A different judge setting is a different key: asked again.
    judge_pairwise(q, r, c, config_for(endpoint, tmp_path, max_tokens=65))
    assert len(endpoint.requests) == 16
    assert_key_absent(second, caplog, tmp_path)


def test_retry_after_is_honoured_but_capped(endpoint, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    endpoint.script = lambda item, order, seen: (
        (429, "{}", {"Retry-After": "30"}) if seen == 0 else clean_scores(item, order, seen))
    sleeps: list[float] = []
    backend = OpenAIChatBackend(endpoint.url, "judge-test", KEY_ENV, max_retries=2, backoff_base_s=0.01,
                                backoff_max_s=0.02, timeout_s=1.0, sleep=sleeps.append)
    text = backend.complete(render_messages("q", "REF-0: a", "CAND-0: b"))
    assert parse_scores(text) == (9.0, 6.0)
    assert sleeps == [0.02] and backend.http_attempts == 2
    assert KEY not in repr(backend)


def backend_for(endpoint, sleeps: list[float], **kw) -> OpenAIChatBackend:
    """A backend on the fake endpoint whose backoff records its waits instead of sleeping them."""
    settings = {"max_retries": 3, "backoff_base_s": 1.0, "backoff_max_s": 5.0, "timeout_s": 1.0, **kw}
    return OpenAIChatBackend(endpoint.url, "judge-test", KEY_ENV, sleep=sleeps.append, **settings)


def in_20_s() -> str:
    return email.utils.formatdate(time.time() + 20, usegmt=True)


@pytest.mark.parametrize("retry_after, cap, low, high", [
    ("0", 5.0, 0.0, 0.0),
    (" 3 ", 5.0, 3.0, 3.0),
    ("0.25", 5.0, 0.25, 0.25),
    ("30", 5.0, 5.0, 5.0),  # a server's Retry-After, capped at backoff_max_s
    (in_20_s, 60.0, 15.0, 20.0),  # an HTTP date, 20 s ahead
    (in_20_s, 5.0, 5.0, 5.0),
    ("soon", 5.0, 0.5, 1.0),  # invalid: the first exponential wait, base 1 s with equal jitter
    (None, 5.0, 0.5, 1.0),  # absent: the same
])
def test_retry_after_is_the_wait_of_a_429(endpoint, monkeypatch, retry_after, cap, low, high):
    monkeypatch.setenv(KEY_ENV, KEY)
    header = retry_after() if callable(retry_after) else retry_after
    endpoint.script = lambda item, order, seen: (
        (429, "{}", {} if header is None else {"Retry-After": header}) if seen == 0
        else clean_scores(item, order, seen))
    sleeps: list[float] = []
    with backend_for(endpoint, sleeps, backoff_max_s=cap) as backend:
        assert parse_scores(backend.complete(render_messages("q", "REF-0: a", "CAND-0: b"))) == (9.0, 6.0)
    assert len(sleeps) == 1 and low <= sleeps[0] <= high, sleeps
    assert backend.http_attempts == 2 and endpoint.count(0, REFERENCE_FIRST) == 2


def test_5xx_backs_off_exponentially_with_jitter_then_answers(endpoint, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    endpoint.script = lambda item, order, seen: (
        (500, '{"error": "internal"}', {}) if seen < 4 else clean_scores(item, order, seen))
    sleeps: list[float] = []
    with backend_for(endpoint, sleeps, max_retries=4) as backend:
        assert parse_scores(backend.complete(render_messages("q", "REF-1: a", "CAND-1: b"))) == (8.0, 7.0)
    assert backend.http_attempts == 5
    # Retry k waits between half and all of min(backoff_max_s, backoff_base_s * 2**k): 1, 2, 4, then capped at 5.
    full = [1.0, 2.0, 4.0, 5.0]
    assert len(sleeps) == 4 and all(d / 2 <= s <= d for s, d in zip(sleeps, full)), sleeps
    assert any(s != d / 2 for s, d in zip(sleeps, full))  # the jitter: not the fixed half alone


def test_retries_run_out_naming_the_last_failure(endpoint, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    endpoint.script = lambda item, order, seen: (503, '{"error": "overloaded for {auth}"}', {"Retry-After": "1"})
    sleeps: list[float] = []
    with backend_for(endpoint, sleeps, max_retries=2) as backend, pytest.raises(JudgeRequestError) as failure:
        backend.complete(render_messages("q", "REF-0: a", "CAND-0: b"))
    assert (failure.value.kind, failure.value.status) == ("HTTP 503", 503)
    assert str(failure.value) == (f"HTTP 503 after 3 attempt(s) to {endpoint.url}/chat/completions: "
                                  '{"error": "overloaded for Bearer ***"}')
    assert sleeps == [1.0, 1.0] and backend.http_attempts == 3 and endpoint.count() == 3


@pytest.mark.parametrize("status, retried", [
    (408, True), (429, True), (500, True), (502, True), (503, True),
    (400, False), (401, False), (403, False), (404, False), (422, False),
])
def test_which_statuses_are_retried(endpoint, monkeypatch, status, retried):
    monkeypatch.setenv(KEY_ENV, KEY)
    endpoint.script = lambda item, order, seen: (
        (status, '{"error": "refused {auth}"}', {}) if seen == 0 else clean_scores(item, order, seen))
    sleeps: list[float] = []
    with backend_for(endpoint, sleeps, backoff_base_s=0.01, backoff_max_s=0.02) as backend:
        messages = render_messages("q", "REF-0: a", "CAND-0: b")
        if retried:
            assert parse_scores(backend.complete(messages)) == (9.0, 6.0)
            assert backend.http_attempts == 2 and len(sleeps) == 1
            return
        with pytest.raises(JudgeRequestError) as failure:
            backend.complete(messages)
    # Not retried: one request, no wait, the server's echo of the credentials scrubbed from the message.
    assert backend.http_attempts == 1 and sleeps == [] and endpoint.count() == 1
    assert (failure.value.kind, failure.value.status) == (f"HTTP {status}", status)
    assert str(failure.value) == (f"HTTP {status} from {endpoint.url}/chat/completions: "
                                  '{"error": "refused Bearer ***"}')
    assert KEY not in str(failure.value) and KEY not in repr(failure.value)


def test_timeouts_are_retried_then_fail_as_timeout(endpoint, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    endpoint.script = lambda item, order, seen: (*clean_scores(item, order, seen), 1.0)
    sleeps: list[float] = []
    with backend_for(endpoint, sleeps, max_retries=1, timeout_s=0.2, backoff_base_s=0.01) as backend:
        with pytest.raises(JudgeRequestError) as failure:
            backend.complete(render_messages("q", "REF-0: a", "CAND-0: b"))
    assert failure.value.kind == "timeout" and failure.value.status is None
    assert str(failure.value) == f"timeout after 2 attempt(s) to {endpoint.url}/chat/completions"
    assert backend.http_attempts == 2 and len(sleeps) == 1


def test_unset_key_fails_before_any_request(endpoint, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    sleeps: list[float] = []
    with backend_for(endpoint, sleeps) as backend, pytest.raises(JudgeRequestError) as failure:
        backend.complete(render_messages("q", "REF-0: a", "CAND-0: b"))
    assert failure.value.kind == "no key" and str(failure.value) == f"environment variable {KEY_ENV} is unset or empty"
    assert backend.http_attempts == 0 and endpoint.requests == [] and sleeps == []


def test_unreachable_endpoint_counts_failures(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, KEY)
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Every verdict fails: counted in the report only when the config tolerates it (the default fails the run,
    # test_failed_verdicts_over_the_limit_fail_the_run_naming_the_last_error).
    cfg = JudgeConfig(backend="openai", base_url=f"http://127.0.0.1:{port}/v1", model="m", api_key_env=KEY_ENV,
                      max_retries=1, backoff_base_s=0.001, timeout_s=1.0, cache_dir=str(tmp_path / "cache"),
                      show_progress=False, max_failed_fraction=1.0)
    report = judge_pairwise(*items(2), cfg)
    assert report.n_failed == 4 and report.failures == {"connection": 4}
    assert report.score_ratio is None and report.unparsable_rate is None
    assert "judge/score_ratio" not in report.to_metrics() and report.to_metrics()["judge/n_failed"] == 4.0
    assert not list((tmp_path / "cache").rglob("*.json"))  # failures are not cached
    assert_key_absent(report, caplog, tmp_path)


def test_skipped_without_endpoint_or_key(endpoint, monkeypatch):
    q, r, c = items(2)
    none = judge_pairwise(q, r, c, JudgeConfig(show_progress=False))
    assert none.skipped and "no judge configured" in none.reason and "base_url" in none.reason
    assert none.score_ratio is None and none.to_metrics() == {}
    assert none.to_dict() == {"skipped": True, "reason": none.reason}

    no_url = judge_pairwise(q, r, c, JudgeConfig(backend="openai", model="m", show_progress=False))
    assert no_url.skipped and "eval.judge.base_url" in no_url.reason

    monkeypatch.delenv(KEY_ENV, raising=False)
    no_key = judge_pairwise(q, r, c, JudgeConfig(backend="openai", base_url=endpoint.url, model="m",
                                                 api_key_env=KEY_ENV, show_progress=False))
    assert no_key.skipped and KEY_ENV in no_key.reason and no_key.to_metrics() == {}
    assert endpoint.requests == []

    no_model = judge_pairwise(q, r, c, JudgeConfig(backend="hf", show_progress=False))
    assert no_model.skipped and "eval.judge.model" in no_model.reason


def test_endpoint_without_auth(endpoint, tmp_path):
    endpoint.script = clean_scores
    cfg = config_for(endpoint, tmp_path, api_key_env=None, cache_dir=None)
    report = judge_pairwise(*items(1), cfg)
    assert report.n_parsed == 2 and endpoint.auth == [None, None]


def test_configured_judge_without_its_key_warns(endpoint, monkeypatch, caplog):
    monkeypatch.delenv(KEY_ENV, raising=False)
    caplog.set_level(logging.INFO)
    q, r, c = items(2)
    report = judge_pairwise(q, r, c, JudgeConfig(backend="openai", base_url=endpoint.url, model="m",
                                                 api_key_env=KEY_ENV, show_progress=False))
    assert report.skipped and report.to_dict() == {"skipped": True, "reason": report.reason}
    warned = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert [rec.getMessage() for rec in warned] == [
        f"LLM judge skipped: judge API key not available: environment variable {KEY_ENV} is unset or empty"]
    # No judge at all is a choice, not a problem: said at INFO only.
    caplog.clear()
    assert judge_pairwise(q, r, c, JudgeConfig(show_progress=False)).skipped
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert endpoint.requests == []


def test_malformed_200_is_retried_like_a_5xx(endpoint, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, KEY)

    def script(item, order, seen):
        if item == 0 and seen == 0:  # a gateway's page, then a JSON body that is no completion: both retried
            body = "<html>502 Bad Gateway</html>" if order == REFERENCE_FIRST else '{"choices": []}'
            return 200, RawBody(body), {}
        if item == 1:  # never a completion, and it echoes the credentials: fails after the retries, scrubbed
            return 200, RawBody("upstream said {auth}"), {}
        return clean_scores(item, order, seen)

    endpoint.script = script
    report = judge_pairwise(*items(2), config_for(endpoint, tmp_path, max_failed_fraction=0.5))
    by = {(v.item, v.order): v for v in report.verdicts}
    assert endpoint.count(0, REFERENCE_FIRST) == 2 and endpoint.count(0, CANDIDATE_FIRST) == 2
    assert by[(0, REFERENCE_FIRST)].parsed and by[(0, CANDIDATE_FIRST)].parsed
    assert endpoint.count(1, REFERENCE_FIRST) == 4 and endpoint.count(1, CANDIDATE_FIRST) == 4  # max_retries=3
    failed = by[(1, REFERENCE_FIRST)]
    assert failed.error_kind == "bad response"
    assert failed.error == (f"bad response after 4 attempt(s) to {endpoint.url}/chat/completions: "
                            "not a chat completion: 'upstream said Bearer ***'")
    assert report.failures == {"bad response": 2} and report.coverage == "2 of 4 verdicts" and report.partial
    assert len(list((tmp_path / "cache" / "judge").glob("*.json"))) == 2  # the answers, not the failures
    assert_key_absent(report, caplog, tmp_path)


def test_failed_verdicts_over_the_limit_fail_the_run_naming_the_last_error(endpoint, tmp_path, monkeypatch,
                                                                            caplog):
    monkeypatch.setenv(KEY_ENV, KEY)
    endpoint.script = lambda item, order, seen: (
        (503, '{"error": "overloaded for {auth}"}', {}) if item == 1 else clean_scores(item, order, seen))
    # One worker, so the order is known: item 0 answers, item 1's two verdicts fail (2 > 0.1 x 12), and the
    # requests not yet sent are cancelled instead of waiting on a failing endpoint.
    cfg = config_for(endpoint, tmp_path, concurrency=1)
    with pytest.raises(JudgeFailedError) as failure:
        judge_pairwise(*items(6), cfg)
    message = str(failure.value)
    assert message.startswith(f"LLM judge at {endpoint.url}/chat/completions: 2 of 12 verdicts failed, more than "
                              "eval.judge.max_failed_fraction=0.1 allows (1); ")
    assert message.endswith(f". Last error: HTTP 503 after 4 attempt(s) to {endpoint.url}/chat/completions: "
                            '{"error": "overloaded for Bearer ***"}')
    assert KEY not in message
    report = failure.value.report
    assert report.n_failed == 12 - report.n_parsed and report.failures["HTTP 503"] == 2
    assert report.failures["not asked"] == int(re.search(r"; (\d+) more were not asked", message).group(1)) >= 6
    assert endpoint.count(1) == 8 and endpoint.count(4) == endpoint.count(5) == 0  # 2 verdicts x 4 attempts
    # What was answered is cached (nothing lost): a rerun against a healed endpoint asks only the rest.
    answered = {(v.item, v.order) for v in report.verdicts if v.text is not None}
    assert {(0, REFERENCE_FIRST), (0, CANDIDATE_FIRST)} <= answered
    assert len(list((tmp_path / "cache" / "judge").glob("*.json"))) == len(answered)
    assert_key_absent(report, caplog, tmp_path)
    endpoint.script = clean_scores
    before = len(endpoint.requests)
    again = judge_pairwise(*items(6), cfg)
    assert again.n_cached == len(answered) and len(endpoint.requests) - before == 12 - len(answered)
    assert not again.partial and again.coverage == "12 of 12 verdicts"


def test_max_failed_fraction_is_checked_naming_its_key(tmp_path):
    for bad in (-0.1, 1.5, "0.1", True):
        with pytest.raises(ValueError, match=r"eval\.judge\.max_failed_fraction="):
            JudgeConfig(max_failed_fraction=bad)
    with pytest.raises(ValueError, match=r"eval\.judge\.max_failed_fraction=2"):
        JudgeConfig.from_mapping({"backend": "none", "max_failed_fraction": 2})
    from kdbench.schema import ConfigError, validate

    with pytest.raises(ConfigError, match=r"^eval\.judge\.max_failed_fraction=1\.5: must be a share between 0 and 1"):
        validate(compose_train(["eval.judge.max_failed_fraction=1.5"]))
    assert compose_train(["eval=full"]).eval.judge.max_failed_fraction == 0.1


def test_report_sums_judge_coverage_over_seeds(tmp_path):
    """kdbench-report's "n of N" beside a judge ratio covers every seed of the row; a full ratio has no note."""
    from kdbench.report import build_table, collect_results, render_markdown

    def write(run, seed, method, n_parsed):
        metrics = {"dollyeval/judge/score_ratio": 90.0 + seed, "dollyeval/judge/n_parsed": n_parsed,
                   "dollyeval/judge/n_requests": 12.0}
        record = {"status": "complete", "labels": {"method": method, "student": "tiny", "seed": seed},
                  "metrics": metrics}
        (tmp_path / run).mkdir()
        (tmp_path / run / "results.json").write_text(json.dumps(record))

    write("kd0", 0, "kd", 12.0)
    write("kd1", 1, "kd", 10.0)
    write("sft0", 0, "sft", 12.0)
    table = build_table(collect_results(tmp_path))
    kd, sft = table.row("kd", "tiny"), table.row("sft", "tiny")
    assert kd.notes == {"dollyeval/judge/score_ratio": "partial: 22 of 24 verdicts"} and sft.notes == {}
    md = render_markdown(table, precision=1)
    assert "| kd | tiny | 2 | 90.5 ± 0.7 [partial: 22 of 24 verdicts] |" in md
    assert "| sft | tiny | 1 | 90.0 |" in md
    assert table.notes == []  # no judge was skipped


# ------------------------------------------------------------------------------ kdbench-eval in a subprocess

SMALL_EMBEDDED = ["data.embedded.train_size=400", "data.embedded.validation_size=40", "data.embedded.test_size=60"]


@pytest.fixture(scope="module")
def saved_student(tmp_path_factory):
    """(cache folder, a saved untrained tiny student): what `kdbench-eval model.path=...` evaluates."""
    from kdbench.models.loading import build_from_arch, save_model_folder
    from kdbench.stages.tokenizer import embedded_tokenizer

    cfg = compose_train(SMALL_EMBEDDED)
    root = tmp_path_factory.mktemp("eval_run")
    tok = embedded_tokenizer(cfg.data.embedded, root / "cache")  # the subprocess finds it in the same cache
    return root / "cache", save_model_folder(build_from_arch(cfg.student.arch, tok, seed=0), tok, root / "student")


def kdbench_eval(tmp_path, saved_student, url, key: str | None):
    """`kdbench-eval` on the smoke profile's 16 test items (32 verdicts), the judge at `url`, the student only."""
    cache, student = saved_student
    tmp_path.mkdir(parents=True, exist_ok=True)
    args = [f"model.path={student}", "eval=smoke", "eval.teacher=false", "eval.agreement.enabled=false",
            "eval.plots=false", "eval.sets.embedded_v5_test.judge=true", "logger=none", "trainer=smoke",
            *SMALL_EMBEDDED,
            "eval.judge.backend=openai", f"eval.judge.base_url={url}", "eval.judge.model=judge-test",
            f"eval.judge.api_key_env={KEY_ENV}", "eval.judge.max_retries=1", "eval.judge.backoff_base_s=0.01",
            "eval.judge.backoff_max_s=0.02", "eval.judge.timeout_s=10", "eval.judge.show_progress=false"]
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    env.update({"KDBENCH_CACHE": str(cache), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1", **({KEY_ENV: key} if key else {})})
    out = subprocess.run([sys.executable, "-c", "from kdbench.evaluate import cli; cli()", *args], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    return out, list((tmp_path / "outputs").rglob("results.json"))


def report_of(tmp_path, capsys, *options) -> str:
    """kdbench-report's stdout over the runs under tmp_path (its stderr stays in capsys for the caller)."""
    from kdbench.report.cli import main as kdbench_report

    capsys.readouterr()
    assert kdbench_report([str(tmp_path / "outputs"), *options]) == 0
    out, err = capsys.readouterr()
    print(err, file=sys.stderr, end="")
    return out


@pytest.mark.slow
def test_kdbench_eval_with_a_configured_judge_but_no_key(endpoint, saved_student, tmp_path, capsys):
    out, results = kdbench_eval(tmp_path, saved_student, endpoint.url, key=None)
    assert out.returncode == 0, out.stderr[-3000:]
    reason = f"judge API key not available: environment variable {KEY_ENV} is unset or empty"
    # On the console as a warning (Hydra's job logging: "[time][logger][WARNING] - message"), ...
    assert re.search(rf"\[WARNING\] - LLM judge skipped: {re.escape(reason)}", out.stdout + out.stderr)
    # ... in results.json, with no score, ...
    rec = json.loads(results[0].read_text())
    assert rec["eval"]["judge"] == {"skipped": True, "reason": reason} and rec["eval"]["skipped"]["judge"] == reason
    assert not any("/judge/" in k for k in rec["metrics"])
    # ... and under kdbench-report's table, as under the run's own.
    line = f"LLM judge skipped: {reason} (1 run(s): method=pretrained student=student seed=0)"
    assert line in report_of(tmp_path, capsys).splitlines()
    assert line in out.stdout.splitlines()
    assert endpoint.requests == []


@pytest.mark.slow
def test_kdbench_eval_with_a_partial_judge_and_with_a_failing_one(endpoint, saved_student, tmp_path, capsys):
    # Partial: the first two distinct prompts get a 400 (not retried), the other 30 verdicts "7 7". Equal scores:
    # which two prompts reach the concurrent endpoint first (candidate shown first or second) cannot move the
    # ratio, 100 over the 30 parsed verdicts (the orientation of scores is tested above).
    endpoint.script = lambda item, order, seen: (400, '{"error": "no"}', {}) if item < 2 else (200, "7 7\nok", {})
    out, results = kdbench_eval(tmp_path / "partial", saved_student, endpoint.url, key=KEY)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(endpoint.prompt_ids) == 32  # 16 items x 2 orders, all distinct prompts
    rec = json.loads(results[0].read_text())
    judged = rec["eval"]["judge"]["student"]["embedded_v5_test"]
    assert judged["partial"] is True and judged["coverage"] == "30 of 32 verdicts"
    assert judged["n_failed"] == 2 and judged["failures"] == {"HTTP 400": 2}
    assert judged["last_error"] == f'HTTP 400 from {endpoint.url}/chat/completions: {{"error": "no"}}'
    assert rec["metrics"]["embedded_v5_test/judge/n_parsed"] == 30.0
    assert rec["metrics"]["embedded_v5_test/judge/score_ratio"] == pytest.approx(100.0)
    assert re.search(r"\[WARNING\] - LLM judge .*: score ratio 100\.00 over 30 of 32 verdicts \(partial\)",
                     out.stdout + out.stderr)
    # The table (kdbench-report's and the run's own) shows the ratio with its coverage beside it.
    for table in (report_of(tmp_path / "partial", capsys), out.stdout):
        header, _, row = [line for line in table.splitlines() if line.startswith("|")][:3]
        column = [c.strip() for c in header.strip("|").split("|")].index("embedded_v5_test/judge/score_ratio")
        assert [c.strip() for c in row.strip("|").split("|")][column] == "100.0 [partial: 30 of 32 verdicts]"
    # The CSV keeps its columns (still parsed as numbers); the caveat goes to stderr.
    csv_text = report_of(tmp_path / "partial", capsys, "--format", "csv", "--metrics", "all")
    header, row = [line.split(",") for line in csv_text.splitlines()[:2]]
    assert float(row[header.index("embedded_v5_test/judge/score_ratio_mean")]) == pytest.approx(100.0)
    assert ("kdbench-report: note: pretrained student embedded_v5_test/judge/score_ratio: partial: 30 of 32 verdicts"
            in capsys.readouterr().err.splitlines())

    # Failing: every request gets a 503; the run stops, names the endpoint's last error and writes no result.
    endpoint.script = lambda item, order, seen: (503, '{"error": "overloaded for {auth}"}', {})
    out, results = kdbench_eval(tmp_path / "failing", saved_student, endpoint.url, key=KEY)
    assert out.returncode != 0
    assert ("eval.judge.max_failed_fraction=0.1 allows (3); " in out.stderr
            and f". Last error: HTTP 503 after 2 attempt(s) to {endpoint.url}/chat/completions: "
                '{"error": "overloaded for Bearer ***"}' in out.stderr), out.stderr[-3000:]
    assert results == []
    assert KEY not in out.stdout + out.stderr


# -------------------------------------------------------------------------------------------- local HF judge


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kdbench.models.tokenizer import train_bpe_tokenizer

    torch.set_num_threads(1)
    texts = [" ".join(load_prompt()), "7 9 8 6 Assistant 1 answer question score 10"] * 3
    tok = train_bpe_tokenizer(texts, vocab_size=300)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("judge_model")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok, path


def test_hf_judge_counts_unparsable_and_caches(tiny_judge, tmp_path):
    model, tok, path = tiny_judge
    cfg = JudgeConfig(backend="hf", max_tokens=6, cache_dir=str(tmp_path / "cache"), show_progress=False)
    q, r, c = items(2)
    report = judge_pairwise(q, r, c, cfg, hf_model=model, hf_tokenizer=tok, fingerprint="tiny-random-llama")
    assert (report.n_requests, report.n_failed) == (4, 0)
    assert report.n_parsed + report.n_unparsable == 4
    assert all(isinstance(v.text, str) for v in report.verdicts)
    assert report.to_metrics()["judge/unparsable_rate"] == pytest.approx(report.n_unparsable / 4)
    assert report.judge == "hf|tiny-random-llama"
    again = judge_pairwise(q, r, c, cfg, hf_model=model, hf_tokenizer=tok, fingerprint="tiny-random-llama")
    assert again.n_cached == 4 and [v.text for v in again.verdicts] == [v.text for v in report.verdicts]

    # From a local folder (local_files_only), fingerprinted by its files: same greedy text as the objects.
    from_path = judge_pairwise(q[:1], r[:1], c[:1], JudgeConfig(backend="hf", model=str(path), max_tokens=6,
                                                                 show_progress=False))
    assert from_path.n_requests == 2 and from_path.n_failed == 0
    assert from_path.verdicts[0].text == report.verdicts[0].text


def test_hf_judge_uses_chat_template_when_present(tiny_judge):
    model, tok, _ = tiny_judge
    messages = render_messages("q", "a", "b")
    plain, templated = HFJudgeBackend(model, tok).render(messages)
    assert not templated
    assert plain.startswith("System: You are a helpful") and "\n\nUser: [Question]\nq" in plain
    assert plain.endswith("Assistant:")
    tok_t = tok.__class__.from_pretrained(tiny_judge[2])
    tok_t.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                           "{% if add_generation_prompt %}<assistant>{% endif %}")
    text, templated = HFJudgeBackend(model, tok_t).render(messages)
    assert templated and text.startswith("<system>You are a helpful") and text.endswith("<assistant>")


def test_custom_backend_errors_are_counted(tmp_path):
    class Backend:  # only `complete` is required; no identity, so nothing is cached
        def complete(self, messages):
            if "CAND-1" in messages[1]["content"]:
                raise RuntimeError("judge crashed")
            return "7 8\nok"

    # 2 of 4 verdicts fail: exactly the tolerated share (the limit is "more than"), so the run goes on.
    cfg = JudgeConfig(cache_dir=str(tmp_path / "cache"), show_progress=False, max_failed_fraction=0.5)
    report = judge_pairwise(*items(2), cfg, backend=Backend())
    assert (report.n_parsed, report.n_failed, report.failures) == (2, 2, {"RuntimeError": 2})
    # Item 0: reference first gives ref 7 / cand 8, candidate first gives cand 7 / ref 8.
    assert report.score_ratio == pytest.approx(100.0)
    assert not (tmp_path / "cache").exists()
