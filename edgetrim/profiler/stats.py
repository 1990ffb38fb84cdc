"""Robust latency statistics and the stopping rule of the timing loop (torch-free, pure functions).

A latency measurement is a distribution: :func:`summarize` turns raw samples into a
:class:`~edgetrim.types.LatencyStats` (median, p10, p90, mean, std). Budgets and tables use the median,
which one slow sample (a context switch, a page fault) cannot move. :func:`median_ci_rel` is the
stopping rule: the half-width of a distribution-free confidence interval of the median, relative to
the median, computed from order statistics (no bootstrap, no normality assumption).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from edgetrim.types import LatencyStats

logger = logging.getLogger(__name__)

# Samples further than this many robust standard deviations (1.4826 * MAD) above the median are
# dropped from mean/std only; median and percentiles always use every sample.
OUTLIER_MADS = 6.0
_Z95 = 1.959963984540054


def summarize(samples_ms: Sequence[float], *, warmup: int = 0) -> LatencyStats:
    """Summarise latency samples (milliseconds) into a :class:`LatencyStats`.

    Args:
        samples_ms: measured samples, warm-up runs already excluded.
        warmup: how many warm-up runs preceded them (recorded, not used).

    Returns:
        median / p10 / p90 over all samples; mean and std over samples without extreme outliers
        (more than ``OUTLIER_MADS`` robust sigmas above the median), so one preempted run does not
        inflate them.

    Raises:
        ValueError: no samples, or a sample that is negative or not finite.

    Example:
        >>> s = summarize([1.0, 1.1, 0.9, 1.0, 50.0])
        >>> s.median_ms, s.n
        (1.0, 5)
    """
    arr = np.asarray(list(samples_ms), dtype=np.float64)
    if arr.size == 0:
        raise ValueError("summarize needs at least one sample")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"latency samples must be finite and >= 0, got min={arr.min()} max={arr.max()}")
    median = float(np.median(arr))
    p10, p90 = (float(v) for v in np.percentile(arr, [10.0, 90.0]))
    kept = arr[arr <= median + OUTLIER_MADS * robust_sigma(arr)]
    if kept.size == 0:  # cannot happen (the median itself is kept) but keep the invariant explicit
        kept = arr
    return LatencyStats(
        median_ms=median,
        p10_ms=min(p10, median),
        p90_ms=max(p90, median),
        mean_ms=float(kept.mean()),
        std_ms=float(kept.std(ddof=1)) if kept.size > 1 else 0.0,
        n=int(arr.size),
        warmup=int(warmup),
    )


def robust_sigma(samples: Sequence[float] | np.ndarray) -> float:
    """1.4826 x median absolute deviation: the standard deviation for normal data, robust to outliers."""
    arr = np.asarray(samples, dtype=np.float64)
    if arr.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(arr - np.median(arr))))


def median_ci_indices(n: int, *, z: float = _Z95) -> tuple[int, int] | None:
    """0-based order-statistic indices (lo, hi) bracketing the median with ~95% confidence.

    The number of samples below the true median is Binomial(n, 1/2); with the normal approximation
    the interval is ``[x_(j), x_(k)]`` with ``j = floor(n/2 - z sqrt(n)/2)`` and
    ``k = n + 1 - j`` (1-based, symmetric). Returns ``None`` when ``n`` is too small for the
    interval to lie inside the sample (n < 8).
    """
    if n < 6:
        return None
    half = z * math.sqrt(n) / 2.0
    j = math.floor(n / 2.0 - half)  # 1-based
    k = n + 1 - j  # 1-based
    if j < 1 or k > n:
        return None
    return j - 1, k - 1


def median_ci_rel(samples: Sequence[float] | np.ndarray, *, z: float = _Z95) -> float:
    """Half-width of the ~95% order-statistic confidence interval of the median, over the median.

    ``inf`` when there are too few samples to bound the median (fewer than 8) or the median is 0.
    Outliers do not widen the interval unless they are so many that they reach the central order
    statistics.

    Example:
        >>> median_ci_rel([1.0] * 20)
        0.0
    """
    arr = np.sort(np.asarray(samples, dtype=np.float64))
    idx = median_ci_indices(int(arr.size), z=z)
    if idx is None:
        return math.inf
    median = float(np.median(arr))
    if median <= 0.0:
        return math.inf
    lo, hi = idx
    return float(arr[hi] - arr[lo]) / (2.0 * median)


def shift_stats(stats: LatencyStats, offset_ms: float, *, floor_ms: float = 0.0) -> LatencyStats:
    """Subtract a constant (e.g. the runtime's per-invoke overhead) from every location statistic.

    The subtraction is clamped at ``floor_ms``; clamping is monotone, so the p10 <= median <= p90
    order is kept. ``std_ms`` is unchanged (a shift does not change spread).
    """

    def sub(v: float) -> float:
        return max(v - offset_ms, floor_ms)

    return LatencyStats(
        median_ms=sub(stats.median_ms),
        p10_ms=sub(stats.p10_ms),
        p90_ms=sub(stats.p90_ms),
        mean_ms=sub(stats.mean_ms),
        std_ms=stats.std_ms,
        n=stats.n,
        warmup=stats.warmup,
    )
