"""Confidence intervals over test items, for the cells of a one-seed run: where there is no spread over seeds to
show, the spread over the test items says how far the mean could move with another draw of them. Percentile
bootstrap through scipy.stats.bootstrap (seeded: a table is the same every time it is printed)."""

from __future__ import annotations

import numpy as np

N_RESAMPLES = 2000
CONFIDENCE = 0.95


def bootstrap_ci(values, seed: int = 0) -> tuple[float, float] | None:
    """95% percentile-bootstrap CI of the mean of per-item values; None with fewer than 2 items."""
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return None
    if np.all(x == x[0]):  # every item the same: the mean cannot move (scipy warns on a degenerate sample)
        return float(x[0]), float(x[0])
    res = bootstrap((x,), np.mean, n_resamples=N_RESAMPLES, confidence_level=CONFIDENCE, method="percentile",
                    random_state=np.random.default_rng(seed), vectorized=True, axis=-1)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_bootstrap_ci(values, baseline, seed: int = 0) -> tuple[float, float] | None:
    """95% CI of mean(values - baseline) over the same items (resampled together); None unless both cover the
    same number of items (at least 2)."""
    a, b = np.asarray(values, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape:
        return None
    return bootstrap_ci(a - b, seed)
