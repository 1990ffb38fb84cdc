"""Which widths to measure: initial plans and adaptive refinement (pure functions).

Design (latency is a staircase in width, DESIGN.md):

* One-axis kinds (depthwise, activation, add, mul, pool, norms, softmax, other): every width
  ``1..max``. They are cheap, and onnxruntime's depthwise conv changes ~3x between neighbouring widths.
* Two-axis kinds (linear, conv2d, matmul): the product of two axis sets. Each axis is every width
  ``1..16``, then tiers that sample around multiples of the alignment period so that every residue
  class mod 4 (and the step edges mod 8 / 16) has measured widths on both sides of any query:

  ====================  =================  ==================================
  widths                around multiples   offsets
  ====================  =================  ==================================
  17 .. 64              8                  -2, -1, 0, +1, +4
  65 .. 256             16                 -2, -1, 0, +1, +4, +8
  257 ..                32                 -2, -1, 0, +1, +4, +8, +16
  ====================  =================  ==================================

  plus the top widths ``max - 7 .. max`` (``max - 3 ..``, ``max - 1 ..`` on coarser levels): every
  residue class mod 8 gets a measured width near the top, where queries (the unpruned and lightly pruned
  widths) are most common and no class could be bracketed from above. ``m - 1, m, m + 1`` resolve the step at ``m``; ``m - 2`` and ``m + 4``
  keep the classes 2 and 0 (mod 4) apart. A product keeps every row a full line along the other axis,
  which the separable interpolator and the rule selection need.
* ``budget`` caps the number of points: the largest product of coarser axis designs (``_LEVELS``,
  then a geometric axis) that fits, the output axis never coarser than the input axis (runtimes step
  in output-channel tiles; the reduction axis is smoother).

:func:`refine_points` proposes the midpoints of gaps where bilinear interpolation misses measured
points by more than ``tol``; measure them, record them and call it again until it returns nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from edgetrim.types import OpContext

logger = logging.getLogger(__name__)

# (dense_upto, [(tier_upto or None, period, offsets)]) from densest to coarsest.
_Tier = tuple[int | None, int, tuple[int, ...]]
_TOP_DENSE = (8, 4, 2, 2, 2)
_LEVELS: tuple[tuple[int, tuple[_Tier, ...]], ...] = (
    (16, ((64, 8, (-2, -1, 0, 1, 4)), (256, 16, (-2, -1, 0, 1, 4, 8)), (None, 32, (-2, -1, 0, 1, 4, 8, 16)))),
    (8, ((64, 8, (-1, 0, 1, 4)), (256, 16, (-1, 0, 1, 8)), (None, 32, (-1, 0, 1, 16)))),
    (8, ((128, 8, (-1, 0, 1)), (None, 32, (-1, 0, 1)))),
    # every multiple of 8 (the aligned dips of onnxruntime's NCHWc and XNNPACK's tiles) and the width
    # just below it (the unaligned class), so neither class is ever bracketed by the other
    (4, ((128, 8, (-1, 0)), (None, 32, (-1, 0)))),
    (4, ((128, 16, (-1, 0)), (None, 64, (-1, 0)))),
)


def axis_widths(max_w: int, *, level: int = 0) -> list[int]:
    """Widths to measure along one two-axis dimension (see the module docstring)."""
    if max_w < 1:
        raise ValueError(f"max width must be >= 1, got {max_w}")
    if level >= len(_LEVELS):
        return _geometric(max_w)
    dense, tiers = _LEVELS[level]
    ws = set(range(1, min(dense, max_w) + 1))
    lo = dense
    for upto, period, offsets in tiers:
        hi = max_w if upto is None else min(upto, max_w)
        for m in range((lo // period) * period, hi + period + 1, period):
            ws.update(m + o for o in offsets if lo < m + o <= hi)
        lo = max(lo, hi)
        if lo >= max_w:
            break
    ws.update(range(max(1, max_w - _TOP_DENSE[level] + 1), max_w + 1))
    return sorted(w for w in ws if 1 <= w <= max_w)


def _geometric(max_w: int, n: int = 12) -> list[int]:
    """About ``n`` geometric anchors, each from 8 up snapped to a multiple of 8 and measured together
    with the width just below it: coarse, yet aligned and unaligned widths are both sampled."""
    ws = {1, 2, 3, 4, max(1, max_w - 1), max_w}
    if max_w > 8:
        for a in np.geomspace(8, max_w, num=max(2, n // 2)):
            m = 8 * int(np.rint(a / 8.0))
            ws.update((m - 1, m))
    return sorted(w for w in ws if 1 <= w <= max_w)


def plan_points(
    ctx: OpContext,
    max_in: int,
    max_out: int,
    *,
    budget: int | None = None,
    include: Iterable[tuple[int, int]] = (),
) -> list[tuple[int, int]]:
    """Initial ``(in_width, out_width)`` points to measure for ``ctx`` up to the given maxima.

    Args:
        ctx: the operator context; one-axis kinds use ``max_in`` only and return ``(w, w)`` points.
        max_in, max_out: largest widths the table must cover (>= 1).
        budget: optional cap on the number of points (the ``include`` points come on top).
        include: points that must be measured as well (e.g. a model's exact layer widths).

    Returns:
        Sorted, de-duplicated points.

    Example:
        >>> from edgetrim.types import OpKind
        >>> plan_points(OpContext(OpKind.DEPTHWISE_CONV2D), 4, 4)
        [(1, 1), (2, 2), (3, 3), (4, 4)]
    """
    if max_in < 1 or max_out < 1:
        raise ValueError(f"max widths must be >= 1, got ({max_in}, {max_out})")
    if budget is not None and budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    extra = {(int(i), int(o)) for i, o in include}
    if ctx.one_axis:
        ws = list(range(1, max_in + 1))
        if budget is not None and len(ws) > budget:
            for level in range(len(_LEVELS) + 1):
                ws = axis_widths(max_in, level=level)
                if len(ws) <= budget:
                    break
        pts = {(w, w) for w in ws}
        pts.update((i, i) for i, _ in extra)
        return sorted(pts)
    n_levels = len(_LEVELS) + 1
    in_sets = [axis_widths(max_in, level=lv) for lv in range(n_levels)]
    out_sets = [axis_widths(max_out, level=lv) for lv in range(n_levels)]
    ins, outs = in_sets[0], out_sets[0]
    if budget is not None and len(ins) * len(outs) > budget:
        # The coarsest axis decides how well alignment steps are resolved (onnxruntime's NCHWc conv
        # steps with the *input* width as much as the output width), so the design that fits with
        # the finest coarser axis wins; among those the most points, the output axis never coarser
        # than the input axis (runtimes step in output-channel tiles). The geometric design, blind
        # to alignment, is the last resort.
        aligned = len(_LEVELS)
        combos = [(li, lo) for lo in range(aligned) for li in range(lo, aligned)]
        fitting = [(-li, len(in_sets[li]) * len(out_sets[lo]), -lo) for li, lo in combos]
        fitting = [f for f in fitting if f[1] <= budget]
        if fitting:
            neg_li, _, neg_lo = max(fitting)
            ins, outs = in_sets[-neg_li], out_sets[-neg_lo]
        else:  # fewer geometric widths per axis (both ends of each axis are always kept)
            n = max(2, int(budget**0.5))
            while n > 2 and len(_geometric(max_in, n)) * len(_geometric(max_out, n)) > budget:
                n -= 1
            ins, outs = _geometric(max_in, n), _geometric(max_out, n)
            if len(ins) * len(outs) > budget:
                logger.warning(
                    "%s: %d points asked for, the coarsest grid this planner builds has %d; "
                    "measuring those", ctx.key(), budget, len(ins) * len(outs),
                )  # fmt: skip
    pts = {(i, o) for i in ins for o in outs}
    pts.update(extra)
    return sorted(pts)


def _triple_misses(xs: np.ndarray, ys: np.ndarray, tol: float) -> list[tuple[int, int]]:
    """Gaps ``(x_a, x_b)`` (>= 2 apart) next to a measured point that linear interpolation from its
    two neighbours misses by more than ``tol`` (relative)."""
    gaps: set[tuple[int, int]] = set()
    for k in range(1, xs.size - 1):
        x0, x1, x2 = xs[k - 1], xs[k], xs[k + 1]
        lin = ys[k - 1] + (ys[k + 1] - ys[k - 1]) * (x1 - x0) / (x2 - x0)
        if abs(lin - ys[k]) > tol * max(abs(ys[k]), 1e-12):
            for a, b in ((x0, x1), (x1, x2)):
                if b - a >= 2:
                    gaps.add((int(a), int(b)))
    return sorted(gaps)


def refine_points(
    table: object, ctx: OpContext, *, tol: float = 0.05, max_new: int | None = None
) -> list[tuple[int, int]]:
    """Points worth measuring next: midpoints of the gaps where the surface is not yet proven.

    Every measured point with measured neighbours on both sides along an axis (the midpoint of the
    cell those neighbours span, once refinement measured it) is compared with bilinear interpolation
    from those neighbours with the point itself held out. Where the miss exceeds ``tol`` (relative),
    the midpoints of the two gaps beside it are returned (gaps of width >= 2 only), so each round
    halves the cells around a step until the step is resolved to adjacent widths. Two-axis contexts
    run this along every row (fixed input width) and every column (fixed output width); one-axis
    contexts along their single axis. Returns ``[]`` when every gap is proven, so a loop
    ``while pts := refine_points(...): measure(pts)`` terminates.

    Args:
        table: a ``LatencyTable`` (anything with ``.points(ctx)``).
        ctx: the context to refine.
        tol: relative miss that triggers refinement.
        max_new: optional cap; the largest misses win.
    """
    if tol <= 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    pts = table.points(ctx)  # type: ignore[attr-defined]
    if not pts:
        return []
    have = {(i, o) for i, o, _ in pts}
    new: dict[tuple[int, int], int] = {}
    if ctx.one_axis:
        xs = np.array([i for i, _, _ in pts])
        ys = np.array([s.median_ms for _, _, s in pts])
        for a, b in _triple_misses(xs, ys, tol):
            m = (a + b) // 2
            new[(m, m)] = b - a
    else:
        rows: dict[int, list[tuple[int, float]]] = {}
        cols: dict[int, list[tuple[int, float]]] = {}
        for i, o, s in pts:
            rows.setdefault(i, []).append((o, s.median_ms))
            cols.setdefault(o, []).append((i, s.median_ms))
        for i, line in rows.items():
            line.sort()
            xs, ys = np.array([p[0] for p in line]), np.array([p[1] for p in line])
            for a, b in _triple_misses(xs, ys, tol):
                new[(i, (a + b) // 2)] = b - a
        for o, line in cols.items():
            line.sort()
            xs, ys = np.array([p[0] for p in line]), np.array([p[1] for p in line])
            for a, b in _triple_misses(xs, ys, tol):
                new[((a + b) // 2, o)] = b - a
    out = [p for p in new if p not in have]
    out.sort(key=lambda p: (-new[p], p))  # widest unresolved gaps first
    if max_new is not None:
        out = out[:max_new]
    return sorted(out)
