"""judge_pairwise: ask the configured judge about each item in both orders, from the cache where it can, and sum
the verdicts into a JudgeReport (or skip, with the reason, when no judge can run)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Protocol

from kdbench.evaluation.judge.cache import VerdictCache, verdict_key
from kdbench.evaluation.judge.config import BACKENDS, JudgeConfig
from kdbench.evaluation.judge.hf_backend import HFJudgeBackend, load_hf_judge, path_fingerprint
from kdbench.evaluation.judge.prompt import Messages, parse_scores, render_messages
from kdbench.evaluation.judge.report import CANDIDATE_FIRST, REFERENCE_FIRST, JudgeFailedError, JudgeReport, Verdict
from kdbench.evaluation.judge.transport import JudgeRequestError, OpenAIChatBackend, scrub

log = logging.getLogger(__name__)


class JudgeBackend(Protocol):
    """What `judge_pairwise` needs from a judge.

    identity: names the judge for the cache key (None: do not cache); settings: the generation settings that
    change its output (also in the key); max_concurrency: None, or the most requests it can serve at once.
    """

    identity: str | None
    settings: dict[str, Any]
    max_concurrency: int | None

    def complete(self, messages: Messages) -> str: ...


def judge_skip_reason(config: JudgeConfig, hf_model=None) -> str | None:
    """Why the judge cannot run with this config (None: it can). Raises on an unknown backend (a config bug)."""
    backend = (config.backend or "none").lower()
    if backend not in BACKENDS:
        raise ValueError(f"unknown judge backend {config.backend!r}; expected one of {BACKENDS}")
    if backend == "none":
        return ("no judge configured: set eval.judge.backend=openai with eval.judge.base_url, eval.judge.model "
                "and eval.judge.api_key_env, or eval.judge.backend=hf with eval.judge.model=<local model folder>")
    if backend == "openai":
        missing = [f"eval.judge.{name}" for name in ("base_url", "model") if not getattr(config, name)]
        if missing:
            return f"no judge configured: set {' and '.join(missing)}"
        if config.api_key_env and not os.environ.get(config.api_key_env):
            return f"judge API key not available: environment variable {config.api_key_env} is unset or empty"
    if backend == "hf" and hf_model is None and not config.model:
        return "no judge configured: set eval.judge.model to a local model folder (or pass the model objects)"
    return None


def make_backend(config: JudgeConfig, hf_model=None, hf_tokenizer=None, fingerprint: str | None = None):
    """The backend the config names (assumes `judge_skip_reason` returned None)."""
    backend = config.backend.lower()
    if backend == "openai":
        return OpenAIChatBackend(config.base_url, config.model, config.api_key_env, config.max_tokens,
                                 config.temperature, config.timeout_s, config.max_retries, config.backoff_base_s,
                                 config.backoff_max_s)
    if backend == "hf":
        if hf_model is None:
            hf_model, hf_tokenizer = load_hf_judge(config.model)
            fingerprint = fingerprint or path_fingerprint(config.model)
        elif hf_tokenizer is None:
            raise ValueError("hf_model given without hf_tokenizer")
        return HFJudgeBackend(hf_model, hf_tokenizer, fingerprint, config.max_tokens)
    raise ValueError(f"no backend for {config.backend!r}")


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    disable=not enabled, transient=True)


def judge_pairwise(questions: Sequence[str], references: Sequence[str], candidates: Sequence[str],
                   config: JudgeConfig, hf_model=None, hf_tokenizer=None, fingerprint: str | None = None,
                   backend: JudgeBackend | None = None) -> JudgeReport:
    """Score each candidate against its reference (the gold response), both orders per item.

    `questions` are what the judge sees as the user question (see `judge_question`). `backend` overrides the
    one the config names (any object with `complete(messages) -> str`; `identity`, `settings`, `max_concurrency`
    are optional, see JudgeBackend). Failed requests and unparsable verdicts are counted in the report (a ratio
    over fewer verdicts than asked is marked partial) up to `config.max_failed_fraction` of the verdicts: past
    that, the requests not yet sent are cancelled and JudgeFailedError is raised, naming the endpoint's last
    error (the answers received are cached first). A configured local judge that cannot be loaded raises too (a
    broken config should not pass as a skipped judge).
    """
    if not (len(questions) == len(references) == len(candidates)):
        raise ValueError(f"questions, references and candidates differ in length: "
                         f"{len(questions)}, {len(references)}, {len(candidates)}")
    if backend is not None:
        return _judge(questions, references, candidates, config, backend)
    reason = judge_skip_reason(config, hf_model)
    if reason:
        # A judge the user configured but that cannot run is worth their attention; "none" is a choice.
        configured = (config.backend or "none").lower() != "none"
        log.log(logging.WARNING if configured else logging.INFO, "LLM judge skipped: %s", reason)
        return JudgeReport.skipped_because(reason)
    own_backend = make_backend(config, hf_model, hf_tokenizer, fingerprint)
    try:
        return _judge(questions, references, candidates, config, own_backend)
    finally:
        close = getattr(own_backend, "close", None)  # the HTTP client's pooled connections
        if close is not None:
            close()


def _judge(questions: Sequence[str], references: Sequence[str], candidates: Sequence[str], config: JudgeConfig,
           backend: JudgeBackend) -> JudgeReport:
    identity = getattr(backend, "identity", None)
    settings = dict(getattr(backend, "settings", None) or {})
    cache = VerdictCache(config.cache_dir) if config.cache_dir and identity else None
    if config.cache_dir and not identity:
        log.info("LLM judge: no fingerprint for the judge model, so its verdicts are not cached")
    secret = os.environ.get(config.api_key_env) if config.api_key_env else None

    verdicts: list[Verdict] = []
    messages_of: dict[str, Messages] = {}
    pending: dict[str, list[int]] = {}  # key -> verdicts waiting for it (identical prompts are asked once)
    for i, (q, ref, cand) in enumerate(zip(questions, references, candidates)):
        for order, (a1, a2) in ((REFERENCE_FIRST, (ref, cand)), (CANDIDATE_FIRST, (cand, ref))):
            messages = render_messages(q, a1, a2)
            key = verdict_key(identity or "", messages, settings)
            verdicts.append(Verdict(item=i, order=order))
            text = cache.get(key) if cache else None
            if text is not None:
                _fill(verdicts[-1], text)
                verdicts[-1].cached = True
            else:
                messages_of[key] = messages
                pending.setdefault(key, []).append(len(verdicts) - 1)

    n_cached = sum(v.cached for v in verdicts)
    limit = getattr(backend, "max_concurrency", None) or max(1, int(config.concurrency))
    workers = max(1, min(int(config.concurrency), limit, len(pending) or 1))
    # More failed verdicts than this fail the run: the ratio over the rest would not be the run's.
    allowed_failures = int(config.max_failed_fraction * len(verdicts) + 1e-9)
    n_failed, last_error, gave_up = 0, None, False
    endpoint = getattr(backend, "url", None) or identity or type(backend).__name__
    with _progress(config.show_progress) as bar:
        task = bar.add_task("LLM judge", total=len(verdicts), completed=n_cached)
        if pending:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="judge") as pool:
                futures = {pool.submit(backend.complete, messages_of[key]): key for key in pending}
                for future in as_completed(futures):
                    key = futures[future]
                    if future.cancelled():  # never sent: the run had already failed
                        for idx in pending[key]:
                            verdicts[idx].error_kind = "not asked"
                            verdicts[idx].error = "not asked: too many verdicts had failed already"
                        continue
                    text, error, kind = _outcome(future, secret)
                    if error is not None:
                        log.warning("LLM judge request failed: %s", error)
                        n_failed, last_error = n_failed + len(pending[key]), error
                        if n_failed > allowed_failures and not gave_up:
                            gave_up = True  # requests already running finish (and are cached); the rest wait
                            for other in futures:
                                other.cancel()
                    elif cache is not None:
                        cache.put(key, identity, settings, messages_of[key], text)
                    for idx in pending[key]:
                        if error is None:
                            _fill(verdicts[idx], text)
                        else:
                            verdicts[idx].error, verdicts[idx].error_kind = error, kind
                    bar.advance(task, len(pending[key]))

    report = _summarize(verdicts, len(questions), n_cached, identity or type(backend).__name__)
    report.last_error = last_error
    if n_failed > allowed_failures:
        not_asked = report.failures.get("not asked", 0)
        raise JudgeFailedError(
            f"LLM judge at {endpoint}: {n_failed} of {report.n_requests} verdicts failed, more than "
            f"eval.judge.max_failed_fraction={config.max_failed_fraction} allows ({allowed_failures})"
            + (f"; {not_asked} more were not asked" if not_asked else "")
            + f". Last error: {last_error}", report)
    # A partial ratio is said on the console as well as in the report: it is not a ratio over every item.
    log.log(logging.WARNING if report.partial else logging.INFO,
            "LLM judge (%s): score ratio %s over %s%s; %d unparsable, %d failed, %d cached",
            report.judge, "n/a" if report.score_ratio is None else f"{report.score_ratio:.2f}", report.coverage,
            " (partial)" if report.partial else "", report.n_unparsable, report.n_failed, report.n_cached)
    return report


def _outcome(future, secret: str | None) -> tuple[str | None, str | None, str | None]:
    """(text, None, None) for an answer; (None, error message scrubbed of the key, error kind) for a failure."""
    try:
        text = future.result()
    except JudgeRequestError as e:
        return None, scrub(str(e), secret), e.kind
    except Exception as e:  # noqa: BLE001 - one broken request must not cost the whole run
        return None, scrub(f"{type(e).__name__}: {e}", secret), type(e).__name__
    return (text if isinstance(text, str) else ("" if text is None else str(text))), None, None


def _fill(verdict: Verdict, text: str) -> None:
    verdict.text = text
    scores = parse_scores(text)
    if scores is None:
        return
    first, second = scores
    if verdict.order == REFERENCE_FIRST:
        verdict.reference_score, verdict.candidate_score = first, second
    else:
        verdict.candidate_score, verdict.reference_score = first, second


def _summarize(verdicts: list[Verdict], n_items: int, n_cached: int, judge: str) -> JudgeReport:
    parsed = [v for v in verdicts if v.parsed]
    failed = [v for v in verdicts if v.error is not None]
    failures: dict[str, int] = {}
    for v in failed:
        kind = v.error_kind or "error"
        failures[kind] = failures.get(kind, 0) + 1
    sum_cand = sum(v.candidate_score for v in parsed)
    sum_ref = sum(v.reference_score for v in parsed)
    return JudgeReport(
        judge=judge, n_items=n_items, n_requests=len(verdicts), n_cached=n_cached, n_parsed=len(parsed),
        n_unparsable=len(verdicts) - len(failed) - len(parsed), n_failed=len(failed), failures=failures,
        score_ratio=100.0 * sum_cand / sum_ref if parsed and sum_ref > 0 else None,
        mean_candidate=sum_cand / len(parsed) if parsed else None,
        mean_reference=sum_ref / len(parsed) if parsed else None,
        verdicts=verdicts,
    )
