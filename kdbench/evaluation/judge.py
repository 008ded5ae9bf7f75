"""LLM judge: pairwise feedback scores as in MiniLLM's GPT-4 evaluation.

MiniLLM (Gu et al., ICLR 2024, arXiv:2306.08543) asks GPT-4 to compare a model's answer with the gold response
using the Vicuna / FastChat pairwise reviewer prompt (lm-sys/FastChat, fastchat/eval/table/prompt.jsonl,
prompt_id 1; kdbench's own wording is in prompts/judge_pairwise.txt), and reports
sum(model scores) / sum(gold scores) x 100. Here every item is asked in both orders, (reference, candidate) and
(candidate, reference), so that the judge's preference for one position cancels out.

Two backends sit behind one method, `complete(messages) -> str`: an OpenAI-compatible chat endpoint over plain
HTTP (standard library only: retries with backoff, a thread pool) and a local Hugging Face causal LM (greedy).
Verdicts are cached on disk keyed by content (judge identity, full rendered messages, generation settings), so a
rerun asks nothing twice. The API key is read from the environment at request time and stored nowhere: not in
the config, the backend, the report, the logs, error messages or the cache.

With no judge configured (or the key's environment variable unset) `judge_pairwise` returns a report marked
skipped with the reason, never a score; a configured judge that is skipped says so as a warning. A score ratio
over fewer verdicts than were asked (failed or unparsable ones left out) is marked partial, "n of N"; more failed
verdicts than `max_failed_fraction` of them fail the run (JudgeFailedError, naming the endpoint's last error).
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

PROMPT_PATH = Path(__file__).with_name("prompts") / "judge_pairwise.txt"
BACKENDS = ("openai", "hf", "none")
REFERENCE_FIRST = "reference_first"
CANDIDATE_FIRST = "candidate_first"
# Bump when the cache record or the meaning of a key changes, so old verdicts are not reused.
CACHE_VERSION = 1
# HTTP statuses worth retrying: rate limits, request timeouts and server-side errors. Any other 4xx is the
# request's own fault and fails at once.
RETRY_STATUSES = frozenset({408, 429})

Messages = list[dict[str, str]]


# --------------------------------------------------------------------------------------------------- config


@dataclass
class JudgeConfig:
    """Judge settings (plain values, so it maps 1:1 onto an `eval.judge` config group).

    backend: "openai" (an OpenAI-compatible /chat/completions endpoint), "hf" (a local causal LM: `model` is its
    folder, or pass the objects to `judge_pairwise`) or "none" (skipped).
    api_key_env: the NAME of the environment variable holding the key, read at request time; None or "" for an
    endpoint without authentication (e.g. a local server).
    max_tokens: the judge's output budget (for "hf", its new tokens; a few dozen suffice for the score line).
    temperature: sent to the endpoint (0 = deterministic, as MiniLLM); the local model always decodes greedily.
    backoff_base_s / backoff_max_s: exponential backoff base and cap; the cap also bounds a server's Retry-After.
    cache_dir: verdicts go to `<cache_dir>/judge/<key>.json`; None disables the cache.
    max_failed_fraction: the share of verdicts (0-1) whose request may fail for good before the run fails instead
    of reporting a ratio over the rest (1.0: never fail; 0: no failure allowed).
    """

    backend: str = "none"
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    max_tokens: int = 256
    temperature: float = 0.0
    concurrency: int = 4
    max_retries: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    timeout_s: float = 120.0
    cache_dir: str | None = None
    show_progress: bool = True
    max_failed_fraction: float = 0.1

    def __post_init__(self):
        # Checked here too (not only in kdbench.schema): judge_pairwise is also called with a hand-made config.
        check_max_failed_fraction(self.max_failed_fraction)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> JudgeConfig:
        """From a dict or an OmegaConf node; an unknown key is an error (a typo would otherwise pass silently)."""
        data = dict(mapping)
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown judge settings: {unknown}")
        return cls(**data)


def check_max_failed_fraction(value: Any) -> None:
    """A share in [0, 1]; anything else is an error naming its config key (kdbench.schema checks the same)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0
    if not ok:
        raise ValueError(f"eval.judge.max_failed_fraction={value!r}: must be a share between 0 and 1 "
                         "(0: no failed verdict allowed, 1: never fail the run)")


# --------------------------------------------------------------------------------------------------- prompt


@lru_cache(maxsize=8)
def load_prompt(path: str | Path = PROMPT_PATH) -> tuple[str, str]:
    """(system message, user template) from a prompt file (format described at the top of the shipped one)."""
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        marker = re.fullmatch(r"=== (\w+) ===", line.strip())
        if marker:
            current = marker.group(1)
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
        elif line.strip() and not line.startswith("#"):
            raise ValueError(f"{path}: text before the first section marker: {line!r}")
    missing = {"system", "user"} - set(sections)
    if missing:
        raise ValueError(f"{path}: missing section(s) {sorted(missing)}")
    return "\n".join(sections["system"]).strip(), "\n".join(sections["user"]).strip() + "\n"


def judge_question(instruction: str, input: str | None = None) -> str:
    """The question shown to the judge: the instruction, then its input (context) when there is one."""
    return f"{instruction}\n\n{input}" if input and input.strip() else instruction


def render_messages(question: str, answer_1: str, answer_2: str, prompt_path: str | Path = PROMPT_PATH) -> Messages:
    """The chat messages for one pairwise verdict. Plain replacement, so answers may contain braces."""
    system, template = load_prompt(prompt_path)
    # One pass over the placeholders so that an answer containing "{answer_2}" is not itself substituted.
    values = {"question": question, "answer_1": answer_1, "answer_2": answer_2}
    user = re.sub(r"\{(question|answer_1|answer_2)\}", lambda m: values[m.group(1)], template)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# -------------------------------------------------------------------------------------------------- parsing

_NUMBER = r"(\d+(?:\.\d+)?|\.\d+)"
_SCORE_LINE = re.compile(rf"{_NUMBER}\s*(?:,\s*|\s+){_NUMBER}")


def parse_scores(text: str | None) -> tuple[float, float] | None:
    """(score of Assistant 1, score of Assistant 2), or None if the verdict does not follow the format.

    The first line (after leading whitespace and blank lines) must hold exactly two numbers (integers or
    decimals) separated by spaces and/or one comma, as the prompt asks. Anything else is unparsable: a label
    ("Score: 7 9"), words ("seven nine"), one or three numbers, or a score outside 0-10 (it is not on the
    prompt's scale and would distort the ratio). Guessing at a free-form verdict would make the ratio depend on
    the guessing, so those are counted and reported instead.
    """
    if not text or not text.strip():
        return None
    first = text.strip().splitlines()[0].strip()
    m = _SCORE_LINE.fullmatch(first)
    if not m:
        return None
    a, b = float(m.group(1)), float(m.group(2))
    if not (0.0 <= a <= 10.0 and 0.0 <= b <= 10.0):
        return None
    return a, b


# ------------------------------------------------------------------------------------------------- backends


class JudgeRequestError(Exception):
    """A request that failed for good (after retries, or at once for a non-retryable status). `kind` names the
    failure for the report ("HTTP 400", "timeout", "connection", "bad response", ...). Its message never holds
    the API key."""

    def __init__(self, message: str, kind: str, status: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.status = status


class _Retryable(Exception):
    """A failed attempt worth retrying; `detail` (already scrubbed of the key) says what the endpoint sent."""

    def __init__(self, kind: str, status: int | None = None, retry_after: float | None = None, detail: str = ""):
        super().__init__(kind)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after
        self.detail = detail


class JudgeFailedError(RuntimeError):
    """More verdicts failed than `max_failed_fraction` allows: a ratio over the rest would misrepresent the run.
    Its message names the endpoint and its last error (never the key); `report` holds what was collected (the
    answered verdicts are in the cache, so a rerun asks only the failed ones)."""

    def __init__(self, message: str, report: JudgeReport):
        super().__init__(message)
        self.report = report


class JudgeBackend(Protocol):
    """What `judge_pairwise` needs from a judge.

    identity: names the judge for the cache key (None: do not cache); settings: the generation settings that
    change its output (also in the key); max_concurrency: None, or the most requests it can serve at once.
    """

    identity: str | None
    settings: dict[str, Any]
    max_concurrency: int | None

    def complete(self, messages: Messages) -> str: ...


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP date); None if absent or invalid."""
    if value is None or not value.strip():
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(attempt: int, base_s: float, max_s: float, retry_after: float | None = None,
                  rng: random.Random | None = None) -> float:
    """Seconds before retry number `attempt + 1`.

    A server's Retry-After wins (capped at max_s). Otherwise exponential, base_s * 2**attempt capped at max_s,
    with "equal jitter" (half fixed, half uniform) so that concurrent workers hit by the same rate limit do not
    retry in lockstep.
    """
    if retry_after is not None:
        return min(max_s, max(0.0, retry_after))
    delay = min(max_s, base_s * (2 ** attempt))
    return delay / 2 + (rng or random).uniform(0.0, delay / 2)


def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


class OpenAIChatBackend:
    """`POST {base_url}/chat/completions` with the standard library.

    Retries 408, 429, 5xx, timeouts, connection errors and a 200 whose body is not a chat completion (a proxy's
    HTML page, a truncated body) with exponential backoff (honouring Retry-After, capped); any other 4xx fails
    the request at once. The key is read from `os.environ[api_key_env]` for each attempt and lives only in that
    request's headers.
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
        self._lock = threading.Lock()
        self.http_attempts = 0  # every POST sent, retries included

    def __repr__(self) -> str:
        return f"OpenAIChatBackend(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def complete(self, messages: Messages) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature,
                           "max_tokens": self.max_tokens}).encode("utf-8")
        for attempt in range(self.max_retries + 1):
            try:
                return self._post(body)
            except _Retryable as e:
                if attempt == self.max_retries:
                    detail = f": {e.detail}" if e.detail else ""
                    raise JudgeRequestError(f"{e.kind} after {attempt + 1} attempt(s) to {self.url}{detail}",
                                            kind=e.kind, status=e.status) from None
                delay = backoff_delay(attempt, self.backoff_base_s, self.backoff_max_s, e.retry_after)
                log.debug("judge request: %s; retry %d/%d in %.2f s", e.kind, attempt + 1, self.max_retries, delay)
                self.sleep(delay)
        raise AssertionError("unreachable")

    def _post(self, body: bytes) -> str:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = None
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise JudgeRequestError(f"environment variable {self.api_key_env} is unset or empty", kind="no key")
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with self._lock:
            self.http_attempts += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            status = e.code
            retry_after = parse_retry_after(e.headers.get("Retry-After")) if e.headers is not None else None
            try:
                detail = e.read(500).decode("utf-8", errors="replace")
            except Exception:  # noqa: BLE001 - the body is only a hint for the message
                detail = ""
            finally:
                e.close()
            detail = _scrub(" ".join(detail.split())[:300], key)
            if status in RETRY_STATUSES or status >= 500:
                raise _Retryable(f"HTTP {status}", status, retry_after, detail) from None
            raise JudgeRequestError(f"HTTP {status} from {self.url}: {detail}", kind=f"HTTP {status}",
                                    status=status) from None
        except TimeoutError:
            raise _Retryable("timeout") from None
        except urllib.error.URLError as e:
            raise _Retryable("timeout" if isinstance(e.reason, TimeoutError) else "connection") from None
        except (ConnectionError, http.client.HTTPException):
            raise _Retryable("connection") from None
        try:
            data = json.loads(raw)
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            # A 200 that is not a chat completion is most often transient (a gateway's error page, a cut body).
            snippet = _scrub(raw[:200].decode("utf-8", errors="replace"), key)
            raise _Retryable("bad response", detail=f"not a chat completion: {snippet!r}") from None
        return content if isinstance(content, str) else ""


class HFJudgeBackend:
    """A local causal LM as judge: chat template when the tokenizer has one (else a plain "System/User/Assistant"
    rendering), greedy decoding of `max_new_tokens`. One generation at a time (the model is shared).

    identity is None without a fingerprint: an unnamed model's verdicts cannot be keyed, so they are not cached.
    """

    max_concurrency: int | None = 1

    def __init__(self, model, tokenizer, fingerprint: str | None = None, max_new_tokens: int = 48):
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = int(max_new_tokens)
        self.identity = f"hf|{fingerprint}" if fingerprint else None
        self.settings = {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"HFJudgeBackend(identity={self.identity!r}, max_new_tokens={self.max_new_tokens})"

    def render(self, messages: Messages) -> tuple[str, bool]:
        """(prompt text, whether it came from the chat template: then it already holds any special tokens)."""
        if getattr(self.tokenizer, "chat_template", None):
            try:
                text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                return text, True
            except Exception as e:  # noqa: BLE001 - e.g. a template without a system role
                log.warning("judge tokenizer's chat template failed (%s); using a plain rendering", e)
        text = "".join(f"{m['role'].capitalize()}: {m['content'].strip()}\n\n" for m in messages) + "Assistant:"
        return text, False

    def complete(self, messages: Messages) -> str:
        import torch

        text, templated = self.render(messages)
        tok = self.tokenizer
        enc = tok(text, return_tensors="pt", add_special_tokens=not templated)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with self._lock, torch.no_grad():
            was_training = self.model.training
            self.model.eval()
            try:
                device = next(self.model.parameters()).device
                input_ids = enc["input_ids"].to(device)
                out = self.model.generate(input_ids=input_ids, attention_mask=enc["attention_mask"].to(device),
                                          max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad,
                                          eos_token_id=tok.eos_token_id)
            finally:
                self.model.train(was_training)
        return tok.decode(out[0, input_ids.shape[1]:].tolist(), skip_special_tokens=True)


def path_fingerprint(path: str | Path) -> str:
    """A fingerprint for a model folder: its resolved path plus every file's name, size and mtime."""
    root = Path(path).resolve()
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return f"path:{root}:{h.hexdigest()[:16]}"


def load_hf_judge(path: str | Path):
    """(model, tokenizer) from a local folder, never from the hub."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------------------------------- cache


def verdict_key(identity: str, messages: Messages, settings: Mapping[str, Any]) -> str:
    """Content key of one verdict: judge identity, the full rendered messages and the generation settings."""
    payload = {"version": CACHE_VERSION, "judge": identity, "messages": messages, "settings": dict(settings)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:32]


class VerdictCache:
    """One JSON file per verdict under `<cache_dir>/judge/`, written atomically (temp file + os.replace) with a
    checksum, so concurrent runs at worst write the same content twice. Only answers are stored, never failures.
    A corrupt entry is moved aside with a warning and reads as a miss, so the judge is asked again
    (kdbench.tracking.cache_entry; entries written before checksums are read when their fields are right)."""

    def __init__(self, cache_dir: str | Path):
        self.dir = Path(cache_dir) / "judge"

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def get(self, key: str) -> str | None:
        from kdbench.tracking.cache_entry import CorruptEntry, lock_for, read_entry, read_or_quarantine, require

        path, fields = self.path(key), require(key=str, text=str)

        def check(data: dict) -> str | None:
            return fields(data) or (f"holds the verdict of key {data['key']}" if data["key"] != key else None)

        try:
            data = read_entry(path, check)
        except CorruptEntry:
            # Moved aside under the entry's lock, after reading it again: another run may have rewritten it.
            with lock_for(path):
                data = read_or_quarantine(path, check)
        except OSError as e:  # unreadable but maybe sound (permissions): left in place, the judge is asked again
            log.warning("judge cache entry %s unreadable (%s): asking again", path, e)
            return None
        return None if data is None else data["text"]

    def put(self, key: str, identity: str, settings: Mapping[str, Any], messages: Messages, text: str) -> None:
        record = {"version": CACHE_VERSION, "key": key, "judge": identity, "settings": dict(settings),
                  "messages": messages, "text": text}
        from kdbench.tracking.cache_entry import write_entry

        try:
            write_entry(self.path(key), record)
        except OSError as e:  # a full disk must not cost the run its verdicts
            log.warning("judge cache: could not write %s (%s)", key, e)


# ---------------------------------------------------------------------------------------------------- report


@dataclass
class Verdict:
    """One judge call: item index, which answer came first, the judge's text and the scores it gave to the
    candidate and the reference (None when unparsable or failed); error/error_kind for a failed request."""

    item: int
    order: str
    text: str | None = None
    candidate_score: float | None = None
    reference_score: float | None = None
    cached: bool = False
    error: str | None = None
    error_kind: str | None = None

    @property
    def parsed(self) -> bool:
        return self.candidate_score is not None


@dataclass
class JudgeReport:
    """The judge's result over a set of items.

    score_ratio = 100 * sum(candidate scores) / sum(reference scores) over the parsed verdicts (MiniLLM's
    figure); a verdict that fails or does not parse is left out of it and counted. n_requests counts verdicts
    asked (2 per item), whether answered from the cache or not; unparsable_rate is over the answered ones.
    A ratio over fewer verdicts than were asked is `partial`, and `coverage` says over how many ("10 of 12
    verdicts"); last_error is the last failed request's message (no key in it).
    """

    skipped: bool = False
    reason: str | None = None
    judge: str | None = None
    n_items: int = 0
    n_requests: int = 0
    n_cached: int = 0
    n_parsed: int = 0
    n_unparsable: int = 0
    n_failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    score_ratio: float | None = None
    mean_candidate: float | None = None
    mean_reference: float | None = None
    last_error: str | None = None
    verdicts: list[Verdict] = field(default_factory=list)

    @classmethod
    def skipped_because(cls, reason: str) -> JudgeReport:
        return cls(skipped=True, reason=reason)

    @property
    def unparsable_rate(self) -> float | None:
        answered = self.n_requests - self.n_failed
        return self.n_unparsable / answered if answered > 0 else None

    @property
    def partial(self) -> bool:
        return not self.skipped and self.n_parsed < self.n_requests

    @property
    def coverage(self) -> str | None:
        return None if self.skipped else f"{self.n_parsed} of {self.n_requests} verdicts"

    def to_metrics(self, prefix: str = "judge") -> dict[str, float]:
        """Flat metrics (`judge/score_ratio`, `judge/unparsable_rate`, ...). Empty when skipped: a skipped judge
        has no score, and its reason is in `to_dict()`. Undefined values (no parsed verdict) are left out."""
        if self.skipped:
            return {}
        values = {"score_ratio": self.score_ratio, "mean_candidate": self.mean_candidate,
                  "mean_reference": self.mean_reference, "unparsable_rate": self.unparsable_rate,
                  "n_items": self.n_items, "n_requests": self.n_requests, "n_cached": self.n_cached,
                  "n_parsed": self.n_parsed, "n_unparsable": self.n_unparsable, "n_failed": self.n_failed}
        return {f"{prefix}/{k}": float(v) for k, v in values.items() if v is not None}

    def to_dict(self, with_verdicts: bool = True) -> dict[str, Any]:
        if self.skipped:
            return {"skipped": True, "reason": self.reason}
        out = {k: v for k, v in asdict(self).items() if k != "verdicts"}
        out["unparsable_rate"] = self.unparsable_rate
        out["partial"], out["coverage"] = self.partial, self.coverage
        if with_verdicts:
            out["verdicts"] = [asdict(v) for v in self.verdicts]
        return out


# ------------------------------------------------------------------------------------------------ entry point


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
    if backend is None:
        reason = judge_skip_reason(config, hf_model)
        if reason:
            # A judge the user configured but that cannot run is worth their attention; "none" is a choice.
            configured = (config.backend or "none").lower() != "none"
            log.log(logging.WARNING if configured else logging.INFO, "LLM judge skipped: %s", reason)
            return JudgeReport.skipped_because(reason)
        backend = make_backend(config, hf_model, hf_tokenizer, fingerprint)
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
                    text, error, kind = None, None, None
                    if future.cancelled():  # never sent: the run had already failed
                        for idx in pending[key]:
                            verdicts[idx].error_kind = "not asked"
                            verdicts[idx].error = "not asked: too many verdicts had failed already"
                        continue
                    try:
                        text = future.result()
                        text = text if isinstance(text, str) else ("" if text is None else str(text))
                    except JudgeRequestError as e:
                        error, kind = _scrub(str(e), secret), e.kind
                    except Exception as e:  # noqa: BLE001 - one broken request must not cost the whole run
                        error, kind = _scrub(f"{type(e).__name__}: {e}", secret), type(e).__name__
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
