"""The OpenAI-compatible chat client: `POST {base_url}/chat/completions` with httpx, retried with tenacity.

Which failures are retried is the judge's own policy (a rate limit or a gateway's error page is transient, a 400
is the request's fault); how long to wait is tenacity's exponential backoff with jitter, unless the server says
how long in a Retry-After header. The API key is read from the environment for each attempt, sent only in that
request's headers and scrubbed from every message this module writes.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from datetime import timezone

import httpx
from tenacity import RetryCallState, RetryError, Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_base, wait_exponential, wait_random_exponential

from kdbench.evaluation.judge.prompt import Messages

log = logging.getLogger(__name__)

# HTTP statuses worth retrying: rate limits, request timeouts and server-side errors (5xx, checked apart). Any
# other 4xx is the request's own fault and fails at once.
RETRY_STATUSES = frozenset({408, 429})


class JudgeRequestError(Exception):
    """A request that failed for good (after retries, or at once for a non-retryable status). `kind` names the
    failure for the report ("HTTP 400", "timeout", "connection", "bad response", ...). Its message never holds
    the API key."""

    def __init__(self, message: str, kind: str, status: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.status = status


class _Retryable(Exception):
    """A failed attempt worth retrying; `detail` (already scrubbed of the key) says what the endpoint sent and
    `retry_after` how long the server asked to wait (seconds), if it did."""

    def __init__(self, kind: str, status: int | None = None, retry_after: float | None = None, detail: str = ""):
        super().__init__(kind)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after
        self.detail = detail


def scrub(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` (the API key) replaced by "***"."""
    return text.replace(secret, "***") if secret else text


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP date); None if absent or invalid."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:  # "-0000": HTTP dates are GMT, not local time
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


class WaitRetryAfterOr(wait_base):
    """The server's Retry-After (capped at `cap_s`) when the last attempt carried one, else `fallback`'s wait."""

    def __init__(self, fallback: wait_base, cap_s: float):
        self.fallback = fallback
        self.cap_s = cap_s

    def __call__(self, retry_state: RetryCallState) -> float:
        failure = retry_state.outcome.exception() if retry_state.outcome is not None else None
        retry_after = getattr(failure, "retry_after", None)
        if retry_after is not None:
            return min(self.cap_s, retry_after)
        return self.fallback(retry_state)


def backoff_wait(base_s: float, max_s: float) -> wait_base:
    """Exponential backoff, base_s * 2**retry capped at max_s, with "equal jitter" (half fixed, half uniform) so
    that concurrent workers hit by the same rate limit do not retry in lockstep; a Retry-After wins, capped too."""
    exponential = (wait_exponential(multiplier=base_s / 2, max=max_s / 2)
                   + wait_random_exponential(multiplier=base_s / 2, max=max_s / 2))
    return WaitRetryAfterOr(exponential, cap_s=max_s)


class OpenAIChatBackend:
    """An OpenAI-compatible chat endpoint as judge.

    Retries 408, 429, 5xx, timeouts, connection errors and a 200 whose body is not a chat completion (a proxy's
    HTML page, a truncated body) up to `max_retries` times (see `backoff_wait`); any other 4xx fails the request
    at once. One httpx.Client (thread-safe, pooled) serves the concurrent requests of a run; `close()` it, or use
    the backend as a context manager. The key is read from `os.environ[api_key_env]` for each attempt and lives
    only in that request's headers. `sleep` is how the backoff waits (a test records the delays instead).
    """

    max_concurrency: int | None = None

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, max_tokens: int = 256,
                 temperature: float = 0.0, timeout_s: float = 120.0, max_retries: int = 5,
                 backoff_base_s: float = 1.0, backoff_max_s: float = 60.0,
                 sleep: Callable[[float], None] = time.sleep):
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.api_key_env = api_key_env or None
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.sleep = sleep
        self.identity = f"openai|{self.base_url}|{model}"
        self.settings = {"temperature": self.temperature, "max_tokens": self.max_tokens}
        self._client = httpx.Client(timeout=httpx.Timeout(self.timeout_s),
                                    headers={"Content-Type": "application/json", "Accept": "application/json"})
        self._lock = threading.Lock()
        self.http_attempts = 0  # every POST sent, retries included

    def __repr__(self) -> str:
        return f"OpenAIChatBackend(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OpenAIChatBackend:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def complete(self, messages: Messages) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature,
                           "max_tokens": self.max_tokens}).encode("utf-8")
        # A Retrying per call: its state is this request's alone, so concurrent calls do not share attempts.
        retrying = Retrying(stop=stop_after_attempt(self.max_retries + 1),
                            wait=backoff_wait(self.backoff_base_s, self.backoff_max_s),
                            retry=retry_if_exception_type(_Retryable), sleep=self.sleep,
                            before_sleep=self._log_retry)
        try:
            return retrying(self._post, body)
        except RetryError as e:
            last = e.last_attempt
            failure = last.exception()
            assert isinstance(failure, _Retryable)  # only those are retried
            detail = f": {failure.detail}" if failure.detail else ""
            raise JudgeRequestError(f"{failure.kind} after {last.attempt_number} attempt(s) to {self.url}{detail}",
                                    kind=failure.kind, status=failure.status) from None

    def _log_retry(self, retry_state: RetryCallState) -> None:
        failure = retry_state.outcome.exception()
        delay = retry_state.next_action.sleep if retry_state.next_action else 0.0
        log.debug("judge request: %s; retry %d/%d in %.2f s", getattr(failure, "kind", failure),
                  retry_state.attempt_number, self.max_retries, delay)

    def _post(self, body: bytes) -> str:
        headers = {}
        key = None
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise JudgeRequestError(f"environment variable {self.api_key_env} is unset or empty", kind="no key")
            headers["Authorization"] = f"Bearer {key}"
        with self._lock:
            self.http_attempts += 1
        try:
            response = self._client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException:
            raise _Retryable("timeout") from None
        except httpx.TransportError:  # refused, reset, a broken response: the connection, not the request
            raise _Retryable("connection") from None
        status = response.status_code
        if not 200 <= status < 300:
            detail = scrub(" ".join(response.content[:500].decode("utf-8", errors="replace").split())[:300], key)
            if status in RETRY_STATUSES or status >= 500:
                raise _Retryable(f"HTTP {status}", status, parse_retry_after(response.headers.get("Retry-After")),
                                 detail)
            raise JudgeRequestError(f"HTTP {status} from {self.url}: {detail}", kind=f"HTTP {status}", status=status)
        try:
            content = json.loads(response.content)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            # A 200 that is not a chat completion is most often transient (a gateway's error page, a cut body).
            snippet = scrub(response.content[:200].decode("utf-8", errors="replace"), key)
            raise _Retryable("bad response", detail=f"not a chat completion: {snippet!r}") from None
        return content if isinstance(content, str) else ""
