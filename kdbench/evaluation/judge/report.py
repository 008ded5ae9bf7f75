"""What the judge returns: one Verdict per question asked, the JudgeReport over them, and the failed-run error."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# The two orders each item is asked in, so that the judge's preference for one position cancels out.
REFERENCE_FIRST = "reference_first"
CANDIDATE_FIRST = "candidate_first"


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


class JudgeFailedError(RuntimeError):
    """More verdicts failed than `max_failed_fraction` allows: a ratio over the rest would misrepresent the run.
    Its message names the endpoint and its last error (never the key); `report` holds what was collected (the
    answered verdicts are in the cache, so a rerun asks only the failed ones)."""

    def __init__(self, message: str, report: JudgeReport):
        super().__init__(message)
        self.report = report
