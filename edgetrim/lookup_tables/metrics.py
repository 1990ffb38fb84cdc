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


def summary(pred: Sequence[float], meas: Sequence[float], *, tol: float = 0.10) -> dict[str, Any]:
    """``{"n", "mape_pct", "within_10pct", "spearman", "max_abs_err_pct"}`` (tolerance in the key
    name follows ``tol``)."""
    err = relative_errors(pred, meas)
    return {
        "n": int(err.size),
        "mape_pct": mape(pred, meas),
        f"within_{round(tol * 100)}pct": within_share(pred, meas, tol),
        "spearman": None if np.isnan(rho := spearman(pred, meas)) else rho,  # None: < 2 items / constant
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


def heldout_points(table: LatencyTable, n_points: int, *, seed: int = 0) -> list[tuple[OpContext, int, int]]:
    """``n_points`` random ``(context, in, out)`` points inside each context's measured range that the
    table does not hold, spread round-robin over the contexts (fewer when a context is full)."""
    import random

    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    rng = random.Random(seed)
    free: dict[OpContext, list[tuple[int, int]]] = {}
    for ctx in table.contexts():
        max_in, max_out = table.max_widths(ctx)
        if ctx.one_axis:
            cand = [(w, w) for w in range(1, max_in + 1) if not table.has(ctx, w, w)]
        else:
            cand = []
            for _ in range(min(20 * n_points, max_in * max_out)):
                i, o = rng.randint(1, max_in), rng.randint(1, max_out)
                if not table.has(ctx, i, o):
                    cand.append((i, o))
            cand = sorted(set(cand))
        rng.shuffle(cand)
        if cand:
            free[ctx] = cand
    out: list[tuple[OpContext, int, int]] = []
    while len(out) < n_points and any(free.values()):
        for ctx in list(free):
            if free[ctx] and len(out) < n_points:
                i, o = free[ctx].pop()
                out.append((ctx, i, o))
    return out


def validate_table(
    table: LatencyTable, target: Any, *, n_points: int, timing: Any, seed: int = 0
) -> dict[str, Any]:
    """Measure ``n_points`` held-out points on ``target`` and report the table's interpolation error.

    Args:
        table: the table to check.
        target: an ``edgetrim.profiler`` target (anything with ``measure_ops(requests, timing)``).
        n_points: held-out points to measure (see :func:`heldout_points`).
        timing: the target's timing configuration, passed through.
        seed: seed of the point choice.

    Returns:
        ``{"n", "mape_pct", "within_10pct", "max_abs_err_pct", "spearman", "by_context", "points",
        "below_resolution"}``. Points measured at 0 ms (below the timer's resolution) are listed in
        ``points`` but count in no error; ``below_resolution`` says how many. Errors compare one invoke of the op as measured with the table's prediction plus the invoke
        overhead the profiler subtracted from the table (``meta["invoke_overhead_ms"]``), so ops
        cheaper than the overhead's noise do not produce meaningless ratios. Measurement noise
        counts as error.
    """
    requests = heldout_points(table, n_points, seed=seed)
    if not requests:
        raise ValueError("the table holds every width of every context: nothing is held out")
    overhead = 0.0
    if table.meta.get("invoke_overhead_subtracted"):
        overhead = float(table.meta.get("invoke_overhead_ms") or 0.0)
    rows: list[dict[str, Any]] = []
    for (ctx, i, o), stats in target.measure_ops(requests, timing):
        # Compare one invoke of the op as measured (overhead included) with the table's op cost plus
        # the overhead the profiler subtracted: tiny ops below the overhead's noise stay comparable.
        row = holdout_errors(table, ctx, [(i, o, stats.median_ms - overhead)])[0]
        row["measured_ms"] = float(stats.median_ms)
        row["predicted_ms"] = row["predicted_ms"] + overhead
        # a median of 0: the op ran below the timer's resolution (benchmark_model counts whole
        # microseconds), so it has no relative error and stays out of the error summary
        measured = row["measured_ms"]
        row["rel_err"] = (row["predicted_ms"] - measured) / measured if measured > 0 else float("nan")
        row["overhead_ms"] = overhead
        rows.append(row)
    timed = [r for r in rows if r["measured_ms"] > 0]
    if not timed:
        raise ValueError(
            f"every one of the {len(rows)} held-out points measured 0 ms (below the timer's resolution); "
            "validate a table of larger ops"
        )
    report: dict[str, Any] = summary([r["predicted_ms"] for r in timed], [r["measured_ms"] for r in timed])
    report["below_resolution"] = len(rows) - len(timed)
    by_ctx: dict[str, list[dict[str, Any]]] = {}
    for r in timed:
        by_ctx.setdefault(r["context"], []).append(r)
    report["by_context"] = {
        k: summary([r["predicted_ms"] for r in v], [r["measured_ms"] for r in v]) for k, v in by_ctx.items()
    }
    report["points"] = rows
    report["extrapolated"] = int(sum(r["extrapolated"] for r in rows))
    return report
