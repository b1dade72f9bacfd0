"""Bootstrap intervals, the one implementation every summary uses (numpy only, seeded by the caller).

Samples are resampled with replacement; an interval is the percentile interval of the resampled
statistic at the given confidence. For CapEval-QA the resampled unit is a sample (a cluster
bootstrap: a caption's questions are not independent), and ratios are pooled over the drawn samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Interval = tuple[float | None, float | None]


def bootstrap_draws(rng: np.random.Generator, n_samples: int, n_bootstrap: int) -> np.ndarray:
    """(n_bootstrap, n_samples) sample indices drawn with replacement, in chunks to bound memory."""
    chunk = max(1, 4_000_000 // max(1, n_samples))
    parts = [
        rng.integers(0, n_samples, size=(min(chunk, n_bootstrap - start), n_samples))
        for start in range(0, n_bootstrap, chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, n_samples), dtype=np.int64)


def percentile_bounds(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central `confidence` percentile interval of `values`."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def mean_interval(values: Sequence[float], n_bootstrap: int, rng: np.random.Generator,
                  confidence: float = 0.95) -> Interval:
    """Interval of the mean of `values` over `n_bootstrap` resamples; (None, None) when undefined."""
    values = np.asarray(values, dtype=float)
    if values.size == 0 or n_bootstrap == 0:
        return None, None
    draws = bootstrap_draws(rng, values.size, n_bootstrap)
    return percentile_bounds(values[draws].mean(axis=1), confidence)


def ratio_interval(correct: np.ndarray, total: np.ndarray, draws: np.ndarray, confidence: float) -> Interval:
    """Interval, in percent, of sum(correct) / sum(total) pooled over each draw of samples.

    `correct` and `total` are per-sample counts; a draw with no items of this kind says nothing and
    is skipped."""
    c = correct[draws].sum(axis=1)
    t = total[draws].sum(axis=1)
    ratios = c[t > 0] / t[t > 0]
    if ratios.size == 0:
        return None, None
    low, high = percentile_bounds(ratios, confidence)
    return low * 100.0, high * 100.0


def paired_difference_interval(base_correct: np.ndarray, base_total: np.ndarray, correct: np.ndarray,
                               total: np.ndarray, draws: np.ndarray, confidence: float) -> Interval:
    """Interval, in points, of base ratio - ratio, both pooled over the SAME drawn samples.

    Arrays are per sample and aligned (sample k is the same sample on both sides); a draw in which
    either side has no items is skipped. Pairing removes the between-sample spread from the difference.
    """
    bc, bt = base_correct[draws].sum(axis=1), base_total[draws].sum(axis=1)
    c, t = correct[draws].sum(axis=1), total[draws].sum(axis=1)
    keep = (bt > 0) & (t > 0)
    if not keep.any():
        return None, None
    low, high = percentile_bounds(bc[keep] / bt[keep] - c[keep] / t[keep], confidence)
    return low * 100.0, high * 100.0
