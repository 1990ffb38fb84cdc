"""Accuracy metrics for latency prediction (pure numpy; torch-free)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgetrim.lookup_tables.table import LatencyTable
from edgetrim.types import OpContext

logger = logging.getLogger(__name__)


def _pair(pred: Sequence[float], meas: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=float)
    m = np.asarray(meas, dtype=float)
    if p.shape != m.shape or p.ndim != 1 or p.size == 0:
        raise ValueError(f"need two equal-length non-empty 1-D sequences, got {p.shape} and {m.shape}")
    if (m <= 0).any():
        raise ValueError("measured latencies must be > 0")
    return p, m


def relative_errors(pred: Sequence[float], meas: Sequence[float]) -> np.ndarray:
    """``(pred - meas) / meas`` per item (signed)."""
    p, m = _pair(pred, meas)
    return (p - m) / m


def mape(pred: Sequence[float], meas: Sequence[float]) -> float:
    """Mean absolute percentage error, in percent."""
    return float(np.mean(np.abs(relative_errors(pred, meas))) * 100.0)


def within_share(pred: Sequence[float], meas: Sequence[float], tol: float = 0.10) -> float:
    """Share (0..1) of items predicted within ``+-tol`` relative error of the measurement."""
    return float(np.mean(np.abs(relative_errors(pred, meas)) <= tol + 1e-12))


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size)
    ranks[order] = np.arange(1, x.size + 1)
    for v in np.unique(x):
        tie = x == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks); NaN for < 2 items or a
    constant input."""
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape or x.size < 2:
        return float("nan")
    rx, ry = _ranks(x), _ranks(y)
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def summary(pred: Sequence[float], meas: Sequence[float], *, tol: float = 0.10) -> dict[str, float]:
    """``{"n", "mape_pct", "within_10pct", "spearman", "max_abs_err_pct"}`` (tolerance in the key
    name follows ``tol``)."""
    err = relative_errors(pred, meas)
    return {
        "n": int(err.size),
        "mape_pct": mape(pred, meas),
        f"within_{round(tol * 100)}pct": within_share(pred, meas, tol),
        "spearman": spearman(pred, meas),
        "max_abs_err_pct": float(np.max(np.abs(err)) * 100.0),
    }


def holdout_errors(
    table: LatencyTable, ctx: OpContext, measured: Sequence[tuple[int, int, float]]
) -> list[dict[str, Any]]:
    """Interpolation error at held-out points: the table's prediction vs the measured median.

    ``measured`` holds ``(in_width, out_width, median_ms)`` measured outside the table (the table must
    not contain them, otherwise the prediction is exact by construction).
    """
    rows = []
    for i, o, ms in measured:
        p = table.predict_ms(ctx, i, o)
        rows.append(
            {
                "context": ctx.key(),
                "in": int(i),
                "out": int(o),
                "measured_ms": float(ms),
                "predicted_ms": p.ms,
                "rel_err": (p.ms - ms) / ms if ms > 0 else float("nan"),
                "extrapolated": p.extrapolated,
                "in_table": table.has(ctx, i, o),
            }
        )
    return rows
