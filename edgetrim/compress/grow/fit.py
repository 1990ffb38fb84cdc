"""Land a grown network on a latency budget: widen against the table, then check by measurement.

Growth drives the *table-predicted* latency of the sampled network to the budget, but what is
exported runs at its *measured* latency, and the table's prediction for a small net can be off by
10-20% (per-op overheads, fusions the table prices separately). Width is discrete, so the greedy
controller also stops a little short of or over the budget. Two fitters close the gap on the table:
:func:`scale_to_budget` scales the grown widths by one common factor (the largest whose
prediction stays within the target), keeping the proportions growth chose; :func:`fill_to_budget`
instead adds the single channel whose predicted cost is lowest, one at a time (it exploits any layer
the table under-prices, so it is not the default). :func:`fit_to_measured_budget` wraps either in a
calibration loop: measure the candidate, divide the prediction target by the measured / predicted
ratio pooled over the candidates so far (the starting widths included), refit, and keep the measured
candidate closest to the budget (``prefer_under``: the closest one not over it).

``cost`` and ``measure`` are callables the caller supplies (the table lookup and, for example, a
runtime's ``measure_model``), so this module needs neither the lookup tables nor the profiler.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

Widths = list[int]


@dataclass
class FitResult:
    """Outcome of :func:`fit_to_measured_budget`."""

    widths: Widths
    predicted_ms: float
    measured_ms: float | None
    budget_ms: float
    rounds: list[dict[str, Any]] = field(default_factory=list)  # one per measured candidate


def fill_to_budget(
    widths: Sequence[int],
    max_widths: Sequence[int],
    cost: Callable[[Widths], float],
    target: float,
    *,
    min_width: int = 1,
    max_steps: int = 10_000,
) -> Widths:
    """Widths whose ``cost`` is as close to ``target`` as single-channel steps get, without exceeding it.

    Over the target: repeatedly drop the channel that lowers the cost the most (never below
    ``min_width``). Then repeatedly add the channel with the lowest resulting cost while that cost is
    at most ``target``; ties go to the layer with the smallest width relative to its maximum, so
    zero-cost steps (a flat stretch of the table) spread over layers instead of filling one.

    Example:
        >>> fill_to_budget([1, 1], [4, 4], lambda w: w[0] * 1.0 + w[1] * 2.0, 7.0)
        [3, 2]
    """
    w = [max(min_width, min(int(a), int(m))) for a, m in zip(widths, max_widths, strict=True)]
    current = cost(w)
    steps = 0
    while current > target and steps < max_steps:
        options = []
        for j in range(len(w)):
            if w[j] > min_width:
                cand = [*w[:j], w[j] - 1, *w[j + 1 :]]
                options.append((cost(cand), j, cand))
        if not options:
            break
        current, _, w = min(options, key=lambda t: (t[0], t[1]))
        steps += 1
    while steps < max_steps:
        options = []
        for j in range(len(w)):
            if w[j] < max_widths[j]:
                cand = [*w[:j], w[j] + 1, *w[j + 1 :]]
                c = cost(cand)
                if c <= target:
                    options.append((c, w[j] / max_widths[j], j, cand))
        if not options:
            break
        current, _, _, w = min(options, key=lambda t: (t[0], t[1], t[2]))
        steps += 1
    return w


def scale_to_budget(
    widths: Sequence[int],
    max_widths: Sequence[int],
    cost: Callable[[Widths], float],
    target: float,
    *,
    iters: int = 40,
) -> Widths:
    """The grown widths scaled by one common factor, the largest whose ``cost`` is at most ``target``.

    Keeps the proportions growth chose (so a table error on one layer is not exploited by piling
    channels onto it); widths are rounded and clipped to ``1..max``. Bisection on the factor.

    Example:
        >>> scale_to_budget([2, 4], [16, 16], lambda w: float(w[0] + w[1]), 12.0)
        [4, 8]
    """
    base = [max(1, int(a)) for a in widths]

    def at(f: float) -> Widths:
        return [max(1, min(int(m), round(a * f))) for a, m in zip(base, max_widths, strict=True)]

    hi = max(m / a for a, m in zip(base, max_widths, strict=True))
    if cost(at(hi)) <= target:
        return at(hi)
    lo = 0.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if cost(at(mid)) <= target:
            lo = mid
        else:
            hi = mid
    return at(lo)


def fit_to_measured_budget(
    widths: Sequence[int],
    max_widths: Sequence[int],
    cost: Callable[[Widths], float],
    budget_ms: float,
    measure: Callable[[Widths], float] | None = None,
    *,
    rounds: int = 4,
    tolerance: float = 0.06,
    method: str = "scale",
    prefer_under: bool = False,
) -> FitResult:
    """Fit widths to ``budget_ms`` on the table, then correct the table's bias by measurement.

    ``method`` "scale" (default) keeps the grown proportions (:func:`scale_to_budget`); "greedy" adds
    the cheapest single channels (:func:`fill_to_budget`). The aim is ``budget * (1 - tolerance / 2)``,
    inside the accepted band ``[budget * (1 - tolerance), budget]``. Round 0 fits the prediction to the
    aim; each later round sets the prediction target to ``aim / ratio``, ``ratio`` being the median of
    measured / predicted over every candidate so far, and refits from the grown widths. Stops once a measured
    candidate lies in the band. Returns the measured candidate closest to the budget (either side:
    runtime latency is a staircase in the widths, and the step below can be far below); with
    ``prefer_under`` the closest one not over it, if any. Without ``measure``, the round-0 widths.
    """
    if budget_ms <= 0:
        raise ValueError(f"budget_ms must be > 0, got {budget_ms}")
    if method not in ("scale", "greedy"):
        raise ValueError(f"method must be 'scale' or 'greedy', got {method!r}")
    fitter = scale_to_budget if method == "scale" else fill_to_budget
    goal = budget_ms * (1 - tolerance / 2)  # aim inside the accepted band, not at its edge
    target = goal
    log: list[dict[str, Any]] = []
    seen: dict[tuple[int, ...], float] = {}
    best: tuple[Widths, float, float] | None = None
    if measure is not None:  # the starting (grown) widths are a candidate too
        w0 = [int(a) for a in widths]
        seen[tuple(w0)] = m0 = measure(w0)
        log.append(
            {"round": "start", "target": None, "widths": w0, "predicted_ms": cost(w0), "measured_ms": m0}
        )
        best = (w0, cost(w0), m0)
    for r in range(max(1, rounds)):
        w = fitter(widths, max_widths, cost, target)
        pred = cost(w)
        if measure is None:
            return FitResult(
                w, pred, None, budget_ms, [{"round": r, "target": target, "widths": w, "predicted_ms": pred}]
            )
        key = tuple(w)
        meas = seen[key] if key in seen else measure(w)
        seen[key] = meas
        log.append({"round": r, "target": target, "widths": w, "predicted_ms": pred, "measured_ms": meas})
        logger.info("fit round %d: widths %s predicted %.4f measured %.4f ms", r, w, pred, meas)
        if best is None or _better(meas, best[2], budget_ms, prefer_under=prefer_under):
            best = (w, pred, meas)
        if budget_ms * (1 - tolerance) <= meas <= budget_ms:
            break
        # The runtime / table ratio, pooled over every candidate measured so far (median): one noisy
        # measurement on a shared core should not swing the next target.
        ratio = statistics.median(row["measured_ms"] / row["predicted_ms"] for row in log)
        target = goal / ratio
    assert best is not None
    return FitResult(best[0], best[1], best[2], budget_ms, log)


def _better(candidate: float, incumbent: float, budget: float, *, prefer_under: bool = False) -> bool:
    """Closer to the budget wins. With ``prefer_under``: under the budget beats over it; among under,
    closer wins; among over, smaller wins (a hard cap, at the price of landing on a lower latency step)."""
    if not prefer_under:
        return abs(candidate - budget) < abs(incumbent - budget)
    c_ok, i_ok = candidate <= budget, incumbent <= budget
    if c_ok != i_ok:
        return c_ok
    return candidate > incumbent if c_ok else candidate < incumbent
