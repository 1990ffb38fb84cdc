"""Alignment-aware interpolation of measured latency points (numpy only, torch-free).

Latency is a staircase in channel width, not a smooth surface (DESIGN.md): onnxruntime's depthwise
conv runs ~3x slower at odd widths than at multiples of 8, XNNPACK's pointwise conv steps every 8
output channels. Plain bilinear interpolation between "round" widths blurs both. This module predicts
along each width axis with an :class:`AxisRule` chosen per context and axis from the measurements
themselves (leave-one-out, :func:`select_rule`):

* ``RESIDUE(p)``: interpolate only between measured widths of the query's residue class mod ``p``,
  falling back to ``p/2, p/4, ..., 1`` when that class has no measured widths on both sides of the
  query (a query at most ``p`` beyond the class's last or first width continues the class's line
  through its two nearest widths instead). ``RESIDUE(1)`` is plain piecewise-linear interpolation. Fits "alignment classes differ"
  surfaces (the onnxruntime depthwise pattern).
* ``STEP(p)``: widths ``p*(k-1)+1 .. p*k`` form one step; inside a step with measurements interpolate
  (flat beyond them), a step with none takes the linear interpolation between the neighbouring steps'
  edge values (each step's value at its widest measured width) evaluated at its own edge ``p*k``. Fits
  "cost jumps every p channels" surfaces (the XNNPACK pattern); it never blurs a step.

Both rules are exact at measured widths. Two-dimensional contexts are predicted separably: along the
output axis on every measured input-width row, then along the input axis over those rows. On a full
product grid with ``RESIDUE(1)`` on both axes this is exactly the paper's bilinear formula
(:func:`bilinear_ms`).

Outside the measured range (the one policy, flagged ``extrapolated=True`` everywhere it surfaces):
linear extrapolation through the two nearest measured widths of the query's class (the largest
period whose class holds two widths; for ``STEP`` the two nearest steps' edge values), clamped at 0.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

# A rule is chosen when its mean leave-one-out error is within (1 + margin) * best + slack; plain
# linear gets the wider margin: on smooth or noisy data all rules score alike and it is the safest.
_RULE_SLACK = 0.003
_LINEAR_MARGIN = 0.15
_RULE_MARGIN = 0.05
_MAX_LOO_LINES = 48
_DENSE_AFTER = 32  # single-point queries before a context's dense grid is built
_DENSE_MAX = 1 << 20  # largest dense grid (cells) kept per context


class RuleKind(enum.StrEnum):
    RESIDUE = "residue"
    STEP = "step"


@dataclass(frozen=True)
class AxisRule:
    """How to interpolate along one width axis (see the module docstring)."""

    kind: RuleKind = RuleKind.RESIDUE
    period: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.kind, RuleKind):
            object.__setattr__(self, "kind", RuleKind(self.kind))
        if self.period < 1 or self.period & (self.period - 1):
            raise ValueError(f"AxisRule.period must be a power of two >= 1, got {self.period}")

    def __str__(self) -> str:
        return "linear" if self.period == 1 else f"{self.kind.value}{self.period}"


LINEAR = AxisRule(RuleKind.RESIDUE, 1)
#: Candidates tried by :func:`select_rule`, simplest first (ties go to the earlier one).
CANDIDATE_RULES: tuple[AxisRule, ...] = (
    LINEAR,
    AxisRule(RuleKind.RESIDUE, 8),
    AxisRule(RuleKind.STEP, 8),
    AxisRule(RuleKind.RESIDUE, 4),
    AxisRule(RuleKind.STEP, 4),
    AxisRule(RuleKind.RESIDUE, 16),
    AxisRule(RuleKind.STEP, 16),
)


def _periods(period: int) -> list[int]:
    out = []
    while period >= 1:
        out.append(period)
        period //= 2
    return out


def _line(x0: float, y0: float, x1: float, y1: float, q: np.ndarray) -> np.ndarray:
    if x1 == x0:
        return np.full(q.shape, y1, dtype=float)
    return y0 + (y1 - y0) * (q - x0) / (x1 - x0)


def interp_1d(
    xs: np.ndarray, ys: np.ndarray, q: np.ndarray | Sequence[float], rule: AxisRule = LINEAR
) -> tuple[np.ndarray, np.ndarray]:
    """Predict ``y`` at widths ``q`` from measured ``(xs, ys)`` along one axis.

    Args:
        xs: measured widths, strictly increasing integers.
        ys: latency at ``xs`` (ms).
        q: query widths (integers; non-integers are allowed for ``RESIDUE(1)`` only).
        rule: the axis rule.

    Returns:
        ``(values, extrapolated)``: predictions (>= 0) and a boolean mask of queries outside
        ``[xs[0], xs[-1]]``.

    Example:
        >>> xs = np.array([1, 8, 9, 16]); ys = np.array([1.0, 1.0, 2.0, 2.0])
        >>> interp_1d(xs, ys, np.array([5, 12]), AxisRule("step", 8))[0].tolist()
        [1.0, 2.0]
    """
    xs = np.asarray(xs)
    ys = np.asarray(ys, dtype=float)
    q = np.atleast_1d(np.asarray(q))
    if xs.size == 0:
        raise ValueError("interp_1d needs at least one measured point")
    extrap = (q < xs[0]) | (q > xs[-1])
    if xs.size == 1:
        return np.full(q.shape, ys[0], dtype=float), extrap
    if rule.kind is RuleKind.STEP and rule.period > 1:
        out = _step_interp(xs, ys, q, rule.period)
    else:
        out = _residue_interp(xs, ys, q, rule.period, extrap)
    return np.maximum(out, 0.0), extrap


def _residue_interp(
    xs: np.ndarray, ys: np.ndarray, q: np.ndarray, period: int, extrap: np.ndarray
) -> np.ndarray:
    out = np.empty(q.shape, dtype=float)
    if period == 1:
        out[~extrap] = np.interp(q[~extrap], xs, ys)
    else:
        qi = np.rint(q).astype(np.int64)
        xi = xs.astype(np.int64)
        unresolved = ~extrap
        for m in _periods(period):
            if not unresolved.any():
                break
            rq, rx = qi % m, xi % m
            for r in np.unique(rq[unresolved]):
                cls = rx == r
                if not cls.any():
                    continue
                cx, cy = xs[cls], ys[cls]
                mask = unresolved & (rq == r) & (q >= cx[0]) & (q <= cx[-1])
                if mask.any():
                    out[mask] = np.interp(q[mask], cx, cy)
                    unresolved &= ~mask
                if cx.size >= 2:  # within one period beyond the class's last / first width
                    hi = unresolved & (rq == r) & (q > cx[-1]) & (q - cx[-1] <= m)
                    if hi.any():
                        out[hi] = _line(cx[-2], cy[-2], cx[-1], cy[-1], q[hi])
                        unresolved &= ~hi
                    lo = unresolved & (rq == r) & (q < cx[0]) & (cx[0] - q <= m)
                    if lo.any():
                        out[lo] = _line(cx[0], cy[0], cx[1], cy[1], q[lo])
                        unresolved &= ~lo
    for idx in np.flatnonzero(extrap):
        out[idx] = _residue_extrapolate(xs, ys, q[idx], period)
    return out


def _residue_extrapolate(xs: np.ndarray, ys: np.ndarray, qv: float, period: int) -> float:
    above = qv > xs[-1]
    for m in _periods(period):
        cls = (xs.astype(np.int64) % m) == (round(float(qv)) % m) if m > 1 else np.ones(xs.shape, bool)
        if cls.sum() >= 2:
            cx, cy = xs[cls], ys[cls]
            if above:
                return float(_line(cx[-2], cy[-2], cx[-1], cy[-1], np.array([qv]))[0])
            return float(_line(cx[0], cy[0], cx[1], cy[1], np.array([qv]))[0])
    return float(ys[-1] if above else ys[0])


def _step_interp(xs: np.ndarray, ys: np.ndarray, q: np.ndarray, period: int) -> np.ndarray:
    xb = -(-xs.astype(np.int64) // period)  # ceil: step index of each measured width
    buckets, first = np.unique(xb, return_index=True)
    last = np.r_[first[1:], xs.size] - 1
    edges = (buckets * period).astype(float)
    reps = ys[last]  # value at the widest measured width of each step
    qb = -(-np.rint(q).astype(np.int64) // period)
    out = np.empty(q.shape, dtype=float)
    for b in np.unique(qb):
        mask = qb == b
        pos = np.searchsorted(buckets, b)
        if pos < buckets.size and buckets[pos] == b:
            sl = slice(first[pos], last[pos] + 1)
            out[mask] = np.interp(q[mask], xs[sl], ys[sl])
            continue
        edge = float(b * period)
        if buckets.size == 1:
            out[mask] = reps[0]
        elif 0 < pos < buckets.size:
            out[mask] = np.interp(edge, edges, reps)
        elif pos == 0:
            out[mask] = _line(edges[0], reps[0], edges[1], reps[1], np.array([edge]))[0]
        else:
            out[mask] = _line(edges[-2], reps[-2], edges[-1], reps[-1], np.array([edge]))[0]
    return out


# --------------------------------------------------------------------------- rule selection


def loo_errors(xs: np.ndarray, ys: np.ndarray, rule: AxisRule) -> np.ndarray:
    """Relative errors of predicting each interior point of one line from all the others.

    Vectorised; equal to calling :func:`interp_1d` without point ``k`` at ``xs[k]`` for every interior
    ``k`` (tests check this against the direct computation).
    """
    xs = np.asarray(xs)
    ys = np.asarray(ys, dtype=float)
    n = xs.size
    if n < 3:
        return np.empty(0)
    if rule.kind is RuleKind.STEP and rule.period > 1:
        pred = _loo_step(xs, ys, rule.period)
    else:
        pred = _loo_residue(xs, ys, rule.period)
    pred = np.maximum(pred[1:-1], 0.0)
    # Relative error, with a floor of 5% of the line's mean so near-zero points (tiny ops after the
    # invoke overhead was subtracted) do not dominate.
    floor = max(0.05 * float(np.mean(np.abs(ys))), 1e-12)
    return np.abs(pred - ys[1:-1]) / np.maximum(np.abs(ys[1:-1]), floor)


def _loo_residue(xs: np.ndarray, ys: np.ndarray, period: int) -> np.ndarray:
    n = xs.size
    pred = np.full(n, np.nan)
    done = np.zeros(n, dtype=bool)
    done[[0, n - 1]] = True
    xi = xs.astype(np.int64)
    for m in _periods(period):
        rx = xi % m
        for r in np.unique(rx):
            idx = np.flatnonzero(rx == r)
            if idx.size < 3:
                continue
            prv, cur, nxt = idx[:-2], idx[1:-1], idx[2:]
            sel = ~done[cur]
            prv, cur, nxt = prv[sel], cur[sel], nxt[sel]
            t = (xs[cur] - xs[prv]) / (xs[nxt] - xs[prv])
            pred[cur] = ys[prv] + (ys[nxt] - ys[prv]) * t
            done[cur] = True
            if m > 1:  # class edges: extrapolate within the class by at most one period
                k, a, b = idx[-1], idx[-3], idx[-2]
                if not done[k] and xs[k] - xs[b] <= m:
                    pred[k] = _line(xs[a], ys[a], xs[b], ys[b], xs[k : k + 1])[0]
                    done[k] = True
                k, a, b = idx[0], idx[1], idx[2]
                if not done[k] and xs[a] - xs[k] <= m:
                    pred[k] = _line(xs[a], ys[a], xs[b], ys[b], xs[k : k + 1])[0]
                    done[k] = True
        if done.all():
            break
    return pred


def _loo_step(xs: np.ndarray, ys: np.ndarray, period: int) -> np.ndarray:
    n = xs.size
    xb = -(-xs.astype(np.int64) // period)
    last = np.empty(n, dtype=np.int64)  # index of the widest point of each point's step
    ends = np.flatnonzero(np.r_[xb[:-1] != xb[1:], True])
    last[:] = ends[np.searchsorted(ends, np.arange(n))]
    pred = np.full(n, np.nan)
    k = np.arange(1, n - 1)
    same_prev = xb[k - 1] == xb[k]
    same_next = xb[k + 1] == xb[k]
    both = same_prev & same_next
    t = (xs[k] - xs[k - 1]) / (xs[k + 1] - xs[k - 1])
    pred[k[both]] = (ys[k - 1] + (ys[k + 1] - ys[k - 1]) * t)[both]
    only_p = same_prev & ~same_next
    pred[k[only_p]] = ys[k - 1][only_p]
    only_n = same_next & ~same_prev
    pred[k[only_n]] = ys[k + 1][only_n]
    alone = ~same_prev & ~same_next
    ka = k[alone]
    e0 = (xb[ka - 1] * period).astype(float)
    e1 = (xb[ka + 1] * period).astype(float)
    r0, r1 = ys[ka - 1], ys[last[ka + 1]]
    pred[ka] = r0 + (r1 - r0) * ((xb[ka] * period) - e0) / (e1 - e0)
    return pred


def select_rule(
    lines: Sequence[tuple[np.ndarray, np.ndarray]], candidates: Sequence[AxisRule] = CANDIDATE_RULES
) -> AxisRule:
    """Pick the axis rule with the lowest leave-one-out error over ``lines`` (simplest on ties).

    Each line is the measured widths and latencies along the axis with the other width fixed. Only
    lines with >= 3 points count; at most ``_MAX_LOO_LINES`` evenly spaced lines are used.
    """
    usable = [(x, y) for x, y in lines if len(x) >= 3]
    if not usable:
        return LINEAR
    if len(usable) > _MAX_LOO_LINES:
        pick = np.linspace(0, len(usable) - 1, _MAX_LOO_LINES).round().astype(int)
        usable = [usable[i] for i in sorted(set(pick.tolist()))]
    scores = []
    for rule in candidates:
        errs = np.concatenate([loo_errors(np.asarray(x), np.asarray(y, float), rule) for x, y in usable])
        scores.append(float(errs.mean()) if errs.size else 0.0)
    best = min(scores)
    # Simplest first; plain linear keeps its place unless another rule is clearly better (noise alone
    # must not pick a staircase rule), the others need only be about as good as the best.
    for n, (rule, score) in enumerate(zip(candidates, scores)):
        margin = _LINEAR_MARGIN if (n == 0 and rule == LINEAR) else _RULE_MARGIN
        if score <= best * (1.0 + margin) + _RULE_SLACK:
            logger.debug("axis rule %s (loo error %.4f; best %.4f)", rule, score, best)
            return rule
    return candidates[int(np.argmin(scores))]


# --------------------------------------------------------------------------- 2-D surfaces


def bilinear_ms(in_axis: np.ndarray, out_axis: np.ndarray, ms: np.ndarray, x: float, y: float) -> float:
    """The paper's bilinear interpolation on a (non-uniform) rectangular grid; exact at grid points.

    For ``x`` in ``[d1, d1']`` and ``y`` in ``[d2, d2']`` (the cell containing the query, with its own
    spacing)::

        t1 = T(d1, d2)  + (T(d1', d2)  - T(d1, d2))  * (x - d1) / (d1' - d1)
        t2 = T(d1, d2') + (T(d1', d2') - T(d1, d2')) * (x - d1) / (d1' - d1)
        T(x, y) = t1 + (t2 - t1) * (y - d2) / (d2' - d2)

    Outside the grid the edge cell's formula continues linearly (not clamped here).
    """
    in_axis = np.asarray(in_axis, dtype=float)
    out_axis = np.asarray(out_axis, dtype=float)
    ms = np.asarray(ms, dtype=float)

    def cell(axis: np.ndarray, v: float) -> tuple[int, float]:
        if axis.size == 1:
            return 0, 0.0
        i = int(np.clip(np.searchsorted(axis, v, side="right") - 1, 0, axis.size - 2))
        return i, (v - axis[i]) / (axis[i + 1] - axis[i])

    i, tx = cell(in_axis, x)
    j, ty = cell(out_axis, y)
    i1 = min(i + 1, in_axis.size - 1)
    j1 = min(j + 1, out_axis.size - 1)
    t1 = ms[i, j] + (ms[i1, j] - ms[i, j]) * tx
    t2 = ms[i, j1] + (ms[i1, j1] - ms[i, j1]) * tx
    return float(t1 + (t2 - t1) * ty)


class SurfaceInterpolator:
    """Alignment-aware predictor over one context's scattered measured points.

    Args:
        points: ``(in_width, out_width, median_ms)`` triples.
        one_axis: the context has a single width axis (``in == out``); only ``in`` is used.
        in_rule, out_rule: axis rules; ``None`` selects them from the data (:func:`select_rule`).
    """

    def __init__(
        self,
        points: Sequence[tuple[int, int, float]],
        *,
        one_axis: bool,
        in_rule: AxisRule | None = None,
        out_rule: AxisRule | None = None,
    ) -> None:
        if not points:
            raise ValueError("SurfaceInterpolator needs at least one point")
        self.one_axis = one_axis
        self._calls = 0
        self._dense: np.ndarray | None = None
        rows: dict[int, dict[int, float]] = {}
        for i, o, v in points:
            rows.setdefault(int(i), {})[int(o)] = float(v)
        if one_axis:
            xs = np.array(sorted(rows), dtype=np.int64)
            ys = np.array([next(iter(rows[x].values())) for x in xs.tolist()])
            self._xs, self._ys = xs, ys
            self.in_rule = in_rule or select_rule([(xs, ys)])
            self.out_rule = self.in_rule
            return
        self._row_ins = np.array(sorted(rows), dtype=np.int64)
        self._rows = []
        for i in self._row_ins.tolist():
            outs = sorted(rows[i])
            self._rows.append((np.array(outs, dtype=np.int64), np.array([rows[i][o] for o in outs])))
        self.out_rule = out_rule or select_rule(self._rows)
        if in_rule is None:
            cols: dict[int, list[tuple[int, float]]] = {}
            for i, row in rows.items():
                for o, v in row.items():
                    cols.setdefault(o, []).append((i, v))
            lines = []
            for o in sorted(cols):
                c = sorted(cols[o])
                lines.append((np.array([p[0] for p in c]), np.array([p[1] for p in c])))
            in_rule = select_rule(lines)
        self.in_rule = in_rule
        self._out_lo = min(r[0][0] for r in self._rows)
        self._out_hi = max(r[0][-1] for r in self._rows)

    @property
    def in_range(self) -> tuple[int, int]:
        xs = self._xs if self.one_axis else self._row_ins
        return int(xs[0]), int(xs[-1])

    @property
    def out_range(self) -> tuple[int, int]:
        if self.one_axis:
            return self.in_range
        return int(self._out_lo), int(self._out_hi)

    def _rows_for(self, y: float) -> np.ndarray:
        """Rows used for output width ``y``: those whose measured range covers ``y`` when they span
        the same input range as all rows (so partial rows never extrapolate), else every row."""
        cover = np.array([r[0][0] <= y <= r[0][-1] for r in self._rows])
        if cover.any():
            ins = self._row_ins[cover]
            if ins[0] == self._row_ins[0] and ins[-1] == self._row_ins[-1]:
                return cover
        return np.ones(len(self._rows), dtype=bool)

    def predict(self, x: float, y: float) -> tuple[float, bool]:
        """``(ms, extrapolated)`` at input width ``x``, output width ``y``.

        After ``_DENSE_AFTER`` calls, integer queries inside the measured range are answered from a
        lazily built dense grid (the same values :meth:`predict_grid` gives), so search loops that
        query one context thousands of times stay fast.
        """
        self._calls += 1
        if self._calls > _DENSE_AFTER and float(x).is_integer() and float(y).is_integer():
            dense = self._dense_grid()
            if dense is not None:
                xi, yi = int(x), int(y) if not self.one_axis else 1
                if (
                    1 <= xi <= dense.shape[0]
                    and 1 <= yi <= dense.shape[1]
                    and np.isfinite(dense[xi - 1, yi - 1])
                ):
                    return float(dense[xi - 1, yi - 1]), False
        ms, ext = self.predict_grid(np.array([x]), np.array([y]))
        return float(ms[0, 0]), bool(ext[0, 0])

    def _dense_shape(self) -> tuple[int, int] | None:
        """``(inputs, outputs)`` of the dense grid (widths 1..max measured), None when too large."""
        hi_in = self.in_range[1]
        hi_out = 1 if self.one_axis else self.out_range[1]
        return None if hi_in * hi_out > _DENSE_MAX else (hi_in, hi_out)

    def _keep_dense(self, grid: np.ndarray, shape: tuple[int, int]) -> None:
        """Keep ``grid`` (predictions at widths ``1..`` on both axes, at least ``shape``) as the dense
        grid; only widths inside the measured range are served from it (never extrapolated)."""
        dense = np.array(grid[: shape[0], : shape[1]], dtype=float)  # a copy: callers own ``grid``
        lo_in, lo_out = self.in_range[0], (1 if self.one_axis else self.out_range[0])
        dense[: lo_in - 1, :] = np.nan
        dense[:, : lo_out - 1] = np.nan
        self._dense = dense

    def _dense_grid(self) -> np.ndarray | None:
        if self._dense is None:
            shape = self._dense_shape()
            if shape is None:
                return None
            # predict_grid keeps a grid over every width from 1 (_maybe_keep_dense)
            self.predict_grid(np.arange(1, shape[0] + 1), np.arange(1, shape[1] + 1))
        return self._dense

    @staticmethod
    def _counts_from_one(axis: np.ndarray, n: int) -> bool:
        return axis.size >= n and bool(np.array_equal(axis[:n], np.arange(1, n + 1)))

    def predict_grid(self, in_axis: np.ndarray, out_axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predictions on the product grid ``in_axis x out_axis``: ``(ms, extrapolated)`` arrays.

        For one-axis contexts the value depends on the input width only (``ms[i, j] = f(in[i])``).
        """
        in_axis = np.atleast_1d(np.asarray(in_axis))
        out_axis = np.atleast_1d(np.asarray(out_axis))
        if self.one_axis:
            v, e = interp_1d(self._xs, self._ys, in_axis, self.in_rule)
            self._maybe_keep_dense(in_axis, out_axis, v[:, None])
            return (
                np.repeat(v[:, None], out_axis.size, axis=1),
                np.repeat(e[:, None], out_axis.size, axis=1),
            )
        n_rows = len(self._rows)
        by_row = np.empty((n_rows, out_axis.size))
        for r, (ro, rv) in enumerate(self._rows):
            by_row[r], _ = interp_1d(ro, rv, out_axis, self.out_rule)
        ms = np.empty((in_axis.size, out_axis.size))
        for j, y in enumerate(out_axis.tolist()):
            use = self._rows_for(y)
            ms[:, j], _ = interp_1d(self._row_ins[use], by_row[use, j], in_axis, self.in_rule)
        lo_i, hi_i = self.in_range
        ext = ((in_axis < lo_i) | (in_axis > hi_i))[:, None] | (
            (out_axis < self._out_lo) | (out_axis > self._out_hi)
        )[None, :]
        self._maybe_keep_dense(in_axis, out_axis, ms)
        return ms, ext

    def _maybe_keep_dense(self, in_axis: np.ndarray, out_axis: np.ndarray, ms: np.ndarray) -> None:
        """A grid over every width from 1 (a caller's whole surface, e.g. a cost model's staircase)
        holds the dense grid already: keep it instead of computing the same values again later."""
        if self._dense is not None:
            return
        shape = self._dense_shape()
        if (
            shape is not None
            and self._counts_from_one(in_axis, shape[0])
            and (self.one_axis or self._counts_from_one(out_axis, shape[1]))
        ):
            self._keep_dense(ms, shape)


# --------------------------------------------------------------------------- envelopes


def _plateau_knots(e: np.ndarray) -> np.ndarray:
    """Index 0 plus the last index of every plateau of a non-decreasing line."""
    ends = np.flatnonzero(np.r_[e[:-1] < e[1:], True])
    return ends if ends[0] == 0 else np.r_[0, ends]


def envelope_1d(ms: np.ndarray) -> np.ndarray:
    """Monotone non-decreasing lower envelope of a latency line sampled at consecutive widths.

    ``E(w) = min_{w' >= w} ms(w')`` is the cost of the cheapest width at or above ``w`` (channels in a
    step cost the same, so keeping them is free). ``E`` is a staircase; the envelope interpolates it
    linearly between the widest width of each plateau (the fast side of every step), so it has a
    useful slope between steps instead of flat plateaus. It stays <= ``ms`` everywhere (on a plateau
    the interpolation is below the plateau's value) and equals ``E`` at the knots.
    """
    ms = np.asarray(ms, dtype=float)
    if ms.size <= 1:
        return ms.copy()
    e = np.minimum.accumulate(ms[::-1])[::-1]
    knots = _plateau_knots(e)
    return np.interp(np.arange(ms.size), knots, e[knots])


def envelope_ms(ms: np.ndarray) -> np.ndarray:
    """Lower envelope of a dense 2-D surface (rows: consecutive input widths, columns: output).

    Non-decreasing in both widths and <= ``ms`` everywhere. Built as the maximum of two candidates,
    each monotone in both axes and below the surface: (a) the cheapest-at-or-above surface
    ``E(i, j) = min_{i' >= i, j' >= j} ms`` linearised along the output axis (as in
    :func:`envelope_1d`) then made monotone along the input axis by a reverse running minimum, and
    (b) the same with the axes swapped. The maximum keeps the slope of whichever is tighter, so
    gradients flow along both axes.
    """
    ms = np.asarray(ms, dtype=float)
    if ms.ndim != 2:
        raise ValueError(f"envelope_ms expects a 2-D surface, got shape {ms.shape}")
    e = np.minimum.accumulate(np.minimum.accumulate(ms[::-1, ::-1], axis=0), axis=1)[::-1, ::-1]

    def along_cols(e2: np.ndarray) -> np.ndarray:
        rows = np.empty_like(e2)
        pos = np.arange(e2.shape[1])
        for i in range(e2.shape[0]):
            if e2.shape[1] == 1:
                rows[i] = e2[i]
                continue
            knots = _plateau_knots(e2[i])
            rows[i] = np.interp(pos, knots, e2[i, knots])
        return np.minimum.accumulate(rows[::-1], axis=0)[::-1]

    return np.maximum(along_cols(e), along_cols(e.T).T)
