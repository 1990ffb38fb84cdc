"""Whole-model latency prediction from a table: the sum of per-layer predictions.

Coverage policy, per :class:`~edgetrim.types.LayerOp`:

1. *table*: the layer's context is in the table -> alignment-aware prediction at its widths
   (``extrapolated`` when a width is outside the measured range).
2. *calibrated*: a kind that is not width-tabled per context (activations, adds, muls, pooling,
   norms, softmax, matmul, reshapes) whose exact context is missing, but the table holds contexts of
   the same kind: a per-element cost ``ms = a + b * elements`` fitted (least squares, ``a, b >= 0``,
   points far above the line dropped: load only adds time)
   over every measured point of that kind, preferring contexts with the same ``variant``.
   ``elements`` is width x spatial x tokens (two-axis kinds: in x out x tokens).
3. *uncovered*: anything else of those kinds: ``ms = 0`` in the total, ``covered=False``, and its
   estimated weight goes into ``uncovered_share`` (see :func:`predict_model`).

Conv / linear / depthwise layers (:data:`TABLED_KINDS`) are never estimated: with no context in the
table they raise :class:`~edgetrim.errors.UncoveredOpError` naming the layer.

Runtime structure the per-op sum would miss, applied when the table's ``meta`` records it:

* ``per_op_overhead_ms``: the in-graph dispatch cost of one node (measured by the profiler on a chain
  of trivial nodes). Every point had the empty-invoke overhead (one node's dispatch included)
  subtracted, so a model of ``n`` executed nodes adds ``(n - 1) x per_op_overhead_ms``.
* ``ort_nchwc_block``: onnxruntime's NCHWc layout (see :func:`_nchwc_layout`). A conv / depthwise /
  pool whose widths suit the block runs in the blocked layout; its one-op graph paid a
  ReorderInput / ReorderOutput that inside a model happen only where a blocked region starts or
  ends. Reorder costs come from the table's ``other/nchwc<B>_*`` contexts (per-element fits): a
  blocked op's price loses what its one-op graph paid at its edges (a one-pair chain ReorderInput ->
  ReorderOutput, ``_pair1``), and region boundaries gain a reorder's in-graph price (``_pair8``
  against ``_pair1``); tables without chains use the one-op ``_in`` / ``_out`` prices for both. Inside a region onnxruntime fuses a
  residual Add (and the activation after it) and a following HardSwish / other activation into the
  blocked conv: those rows run no node (``method == "fused"``); a fused add costs nothing, a fused
  activation what the profiler measured it to add to a blocked conv (``nchwc<B>_fuse_<act>``
  against ``nchwc<B>_fuse_none``; 0 where the table has no such contexts).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgetrim.errors import UncoveredOpError
from edgetrim.lookup_tables.table import LatencyTable, check_target
from edgetrim.types import LayerOp, OpContext, OpKind

logger = logging.getLogger(__name__)

#: onnxruntime reorder chains profiled per spatial shape: ``other/nchwc<B>_pair<k>`` runs ``k``
#: ReorderInput -> ReorderOutput pairs in one graph; the two lengths price a reorder inside a model.
NCHWC_PAIR_CHAINS = (1, 8)

#: Activations the NCHWc transformer fuses into a blocked conv that extraction leaves as their own op;
#: the profiler prices them fused (``other/nchwc<B>_fuse_<act>`` against ``_fuse_none``).
NCHWC_PRICED_FUSED_ACTS = ("hardswish",)

#: Kinds whose latency must come from their own context's table.
TABLED_KINDS = frozenset({OpKind.CONV2D, OpKind.LINEAR, OpKind.DEPTHWISE_CONV2D})


@dataclass(frozen=True)
class LayerPrediction:
    """One row of a model prediction.

    ``method``: ``"table"``, ``"calibrated"``, ``"uncovered"``, ``"fused"`` (runs inside the previous
    kernel: no node of its own) or ``"layout"`` (a layout conversion the runtime inserts, e.g. an
    NCHWc reorder).
    """

    name: str
    context_key: str
    in_width: int
    out_width: int
    ms: float
    covered: bool
    extrapolated: bool
    method: str = "table"


@dataclass(frozen=True)
class ModelPrediction:
    """Predicted latency of a whole model (median, ms) with its per-layer breakdown.

    ``uncovered_share`` is the estimated share of the model's latency that no table covers (0 when
    every layer is covered); ``extrapolated_share`` the share of ``total_ms`` predicted outside the
    measured widths. ``overhead_ms`` is the runtime's per-invoke cost, included once in ``total_ms``
    when the profiler subtracted it from every op point (``meta["invoke_overhead_subtracted"]``).
    ``dispatch_ms`` is the in-graph per-op cost (``meta["per_op_overhead_ms"]``, see
    :func:`fit_per_op_overhead`) times the number of ops beyond the first, also in ``total_ms``.
    """

    total_ms: float
    rows: list[LayerPrediction] = field(default_factory=list)
    uncovered_share: float = 0.0
    extrapolated_share: float = 0.0
    device: str = ""
    overhead_ms: float = 0.0
    dispatch_ms: float = 0.0

    @property
    def layers(self) -> list[LayerPrediction]:
        return self.rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_ms": self.total_ms,
            "uncovered_share": self.uncovered_share,
            "extrapolated_share": self.extrapolated_share,
            "device": self.device,
            "overhead_ms": self.overhead_ms,
            "dispatch_ms": self.dispatch_ms,
            "layers": [asdict(r) for r in self.rows],
        }


def elements(ctx: OpContext, in_w: int, out_w: int) -> float:
    """Work size used by calibrated costs: width x spatial x tokens (two-axis kinds: in x out)."""
    hw = ctx.spatial[0] * ctx.spatial[1]
    if ctx.one_axis:
        return float(in_w * hw * ctx.tokens)
    return float(in_w * out_w * hw * ctx.tokens)


@dataclass(frozen=True)
class _Calibration:
    overhead_ms: float
    ms_per_element: float

    def __call__(self, n_elements: float) -> float:
        return self.overhead_ms + self.ms_per_element * n_elements


def _fit_calibration(table: LatencyTable, contexts: Sequence[OpContext]) -> _Calibration | None:
    xs, ys = [], []
    for ctx in contexts:
        for i, o, s in table.points(ctx):
            xs.append(elements(ctx, i, o))
            ys.append(s.median_ms)
    if not xs:
        return None
    x, y = np.asarray(xs), np.asarray(ys)
    if np.ptp(x) == 0:
        return _Calibration(float(np.median(y)), 0.0)
    keep = np.ones(len(x), dtype=bool)
    for _ in range(3):
        fit = _line_fit(x[keep], y[keep])
        # Load on a shared machine only adds time, and tiny ops (reorders, adds) catch whole
        # scheduler hiccups: drop points far *above* the line (3 robust sigmas), then refit.
        resid = y - fit(x)
        centre = float(np.median(resid[keep]))
        mad = 1.4826 * float(np.median(np.abs(resid[keep] - centre)))
        new_keep = resid <= centre + 3.0 * max(mad, 1e-6)
        if new_keep.sum() < max(3, len(x) // 2) or (new_keep == keep).all():
            return fit
        keep = new_keep
    return _line_fit(x[keep], y[keep])


def _line_fit(x: np.ndarray, y: np.ndarray) -> _Calibration:
    """Least-squares ``a + b * x`` with ``a, b >= 0`` (through the origin when the free fit is not)."""
    if np.ptp(x) == 0:
        return _Calibration(float(np.median(y)), 0.0)
    slope, intercept = np.polyfit(x, y, 1)
    if intercept < 0 or slope < 0:  # keep costs non-negative: refit through the origin
        slope = max(float(x @ y / (x @ x)), 0.0)
        intercept = 0.0
    return _Calibration(float(intercept), float(slope))


class _Calibrations:
    """Per-kind (and per-variant) calibrated costs, fitted lazily and cached."""

    def __init__(self, table: LatencyTable) -> None:
        self.table = table
        self._by_kind: dict[OpKind, list[OpContext]] = {}
        for ctx in table.contexts():
            self._by_kind.setdefault(ctx.kind, []).append(ctx)
        self._cache: dict[tuple[OpKind, str], _Calibration | None] = {}

    def for_context(self, ctx: OpContext) -> _Calibration | None:
        key = (ctx.kind, ctx.variant)
        if key not in self._cache:
            same_kind = self._by_kind.get(ctx.kind, [])
            same_variant = [c for c in same_kind if c.variant == ctx.variant]
            self._cache[key] = _fit_calibration(self.table, same_variant or same_kind)
        return self._cache[key]

    def generic(self) -> _Calibration | None:
        """Per-element cost over every one-axis elementwise context (for uncovered estimates)."""
        key = (OpKind.OTHER, "__generic__")
        if key not in self._cache:
            ctxs = [c for c in self.table.contexts() if c.one_axis and c.kind not in TABLED_KINDS]
            self._cache[key] = _fit_calibration(self.table, ctxs)
        return self._cache[key]


#: Activations onnxruntime fuses into a blocked (NCHWc) conv, including after a fused residual Add.
_NCHWC_FUSED_ACTS = frozenset({"relu", "relu6", "hardswish", "hardsigmoid", "sigmoid", "tanh", "leaky_relu"})
#: Kinds that stay in the blocked layout when their input is blocked (elementwise on NCHWc).
_NCHWC_FOLLOWERS = frozenset({OpKind.ADD, OpKind.ACTIVATION, OpKind.BATCH_NORM})


def _out_spatial(ctx: OpContext) -> tuple[int, int]:
    if ctx.kind in (OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D, OpKind.POOL):
        if ctx.kind is OpKind.POOL and ctx.variant.startswith("global"):
            return (1, 1)
        return tuple(  # type: ignore[return-value]
            max((n + 2 * p - k) // s + 1, 1)
            for n, k, s, p in zip(ctx.spatial, ctx.kernel, ctx.stride, ctx.padding, strict=True)
        )
    return ctx.spatial


def nchwc_eligible(ctx: OpContext, in_w: int, block: int, conv_align: int | None = None) -> tuple[bool, bool]:
    """(runs blocked, its one-op graph reordered its input) for onnxruntime's NCHWc transformer.

    Rules read off onnxruntime's optimised one-op graphs: a groups=1 conv or a depthwise conv is
    blocked when its input width is a multiple of ``conv_align`` (the transformer pads channels up to
    the block; 4 with block 8 on onnxruntime 1.2x, probed by the profiler and stored as
    ``meta["ort_nchwc_conv_alignment"]``; the block itself when unknown), its input reordered; a
    groups=1 conv below the block is blocked too but reads its NCHW input directly (no reorder),
    whatever its output width. Max/avg pools are blocked when the width is a multiple of the block.
    Global pools export as ReduceMean, which is never blocked.
    """
    align = conv_align or block
    if ctx.kind is OpKind.CONV2D:
        if in_w < block:  # the transformer reads NCHW input directly below the block, aligned or not
            return True, False
        return in_w % align == 0, in_w % align == 0
    if ctx.kind is OpKind.DEPTHWISE_CONV2D:
        ok = in_w % align == 0
        return ok, ok
    if ctx.kind is OpKind.POOL and ctx.variant in ("avg", "max"):
        ok = in_w % block == 0
        return ok, ok
    return False, False


def _nchwc_layout(
    table: LatencyTable,
    cal: _Calibrations,
    ops: Sequence[LayerOp],
    rows: list[LayerPrediction],
    block: int,
    conv_align: int | None = None,
) -> list[LayerPrediction]:
    """Rows re-priced for onnxruntime's NCHWc layout (see the module docstring), in execution order.

    The ops are walked as a chain (the order torch executes them): a blocked region starts at the
    first blocked op and ends at the first op that cannot run blocked (global pool, broadcast
    multiply, reshape, linear, ...), at a conv below the block (blocked, but it reads NCHW input, so
    the region before it is reordered out and a new one starts) or at the model's end. Branches that
    re-join (residual adds) are priced as the chain sees them.
    """
    reorder_ctx = {d: OpContext(OpKind.OTHER, variant=f"nchwc{block}_{d}") for d in ("in", "out")}
    if not any(
        c.variant in (reorder_ctx["in"].variant, reorder_ctx["out"].variant) for c in table.contexts()
    ):
        return rows  # no reorder costs measured: leave the table's one-op prices as they are

    def reorder_ms(direction: str, width: int, spatial: tuple[int, int], tokens: int) -> float:
        """A reorder alone in a one-op graph."""
        c = cal.for_context(reorder_ctx[direction])
        ctx = OpContext(OpKind.OTHER, spatial=spatial, tokens=tokens, variant=reorder_ctx[direction].variant)
        return 0.0 if c is None else c(elements(ctx, width, width))

    def share(direction: str, width: int, spatial: tuple[int, int], tokens: int) -> float:
        both = reorder_ms("in", width, spatial, tokens) + reorder_ms("out", width, spatial, tokens)
        return reorder_ms(direction, width, spatial, tokens) / both if both > 0 else 0.5

    def paid_ms(direction: str, width: int, spatial: tuple[int, int], tokens: int) -> float:
        """What a blocked op's one-op graph paid for its reorder, taken off the op's price.

        A graph that starts and ends in reorders costs more than its kernels: the one-pair chain
        (ReorderInput -> ReorderOutput alone) measures exactly that, split between the directions
        as their one-op prices split. Older tables without chains: the one-op reorder price.
        """
        if short is None:
            return reorder_ms(direction, width, spatial, tokens)
        e = elements(OpContext(OpKind.OTHER, spatial=spatial, tokens=tokens), width, width)
        # the blocked op's graph runs one node more than the pair, whose dispatch the model counts
        return (short(e) + dispatch) * share(direction, width, spatial, tokens)

    variants = {c.variant for c in table.contexts()}
    short, long_ = (
        cal.for_context(OpContext(OpKind.OTHER, variant=f"nchwc{block}_pair{k}"))
        if f"nchwc{block}_pair{k}" in variants
        else None  # for_context would fall back to the other reorder points
        for k in NCHWC_PAIR_CHAINS
    )
    dispatch = float(table.meta.get("per_op_overhead_ms") or 0.0)

    def fused_act_ms(act: str, width: int, spatial: tuple[int, int], tokens: int) -> float:
        """What an activation fused into a blocked conv adds to it (0 where not measured)."""
        with_act, bare = (f"nchwc{block}_fuse_{a}" for a in (act, "none"))
        if with_act not in variants or bare not in variants:
            return 0.0
        fit_act, fit_bare = (cal.for_context(OpContext(OpKind.OTHER, variant=v)) for v in (with_act, bare))
        e = elements(OpContext(OpKind.OTHER, spatial=spatial, tokens=tokens), width, width)
        return max(fit_act(e) - fit_bare(e), 0.0) if fit_act and fit_bare else 0.0

    def boundary_ms(direction: str, width: int, spatial: tuple[int, int], tokens: int) -> float:
        """What the reorder costs inside a model, where the layout row is added.

        Alone in a graph a reorder costs more than between two kernels; a chain of ``k`` pairs
        against a chain of one prices an in-graph pair (its two node dispatches are counted with
        the other nodes), split between the directions as their one-op prices split. Without
        chain contexts (older tables) the one-op price stands.
        """
        if short is None or long_ is None:
            return reorder_ms(direction, width, spatial, tokens)
        e = elements(OpContext(OpKind.OTHER, spatial=spatial, tokens=tokens), width, width)
        pair = (long_(e) - short(e)) / (NCHWC_PAIR_CHAINS[1] - NCHWC_PAIR_CHAINS[0])
        return max(pair * share(direction, width, spatial, tokens) - dispatch, 0.0)

    out: list[LayerPrediction] = []
    blocked = False
    cur: tuple[int, tuple[int, int], int] = (0, (1, 1), 1)  # width, spatial, tokens of the last output
    fusable = False  # the previous row is a blocked conv with no activation (Add / act can fuse)
    act_fusable = False
    for op, row in zip(ops, rows, strict=True):
        ctx = op.context
        elig, paid_in = nchwc_eligible(ctx, op.in_width, block, conv_align)
        if ctx.kind in (OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D, OpKind.POOL) and elig:
            paid = paid_ms("out", op.out_width, _out_spatial(ctx), ctx.tokens)
            if paid_in:
                paid += paid_ms("in", op.in_width, ctx.spatial, ctx.tokens)
            if not blocked and paid_in:
                out.append(_layout_row(f"{op.name}:reorder_in", reorder_ctx["in"], op.in_width,
                                       boundary_ms("in", op.in_width, ctx.spatial, ctx.tokens)))  # fmt: skip
            elif blocked and not paid_in:  # a conv below the block reads NCHW: the region ends first
                w, sp, tok = cur
                out.append(_layout_row(f"{op.name}:reorder_out", reorder_ctx["out"], w,
                                       boundary_ms("out", w, sp, tok)))  # fmt: skip
            out.append(_replace_ms(row, max(row.ms - paid, 0.0)))
            blocked = True
            fusable = act_fusable = ctx.kind is not OpKind.POOL and ctx.activation == "none"
        elif blocked and ctx.kind in _NCHWC_FOLLOWERS:
            if ctx.kind is OpKind.ADD and fusable and ctx.activation == "none":
                out.append(_replace_ms(row, 0.0, method="fused"))
                fusable = False  # one Sum per conv; the activation after it may still fuse
            elif ctx.kind is OpKind.ACTIVATION and act_fusable and ctx.variant in _NCHWC_FUSED_ACTS:
                fused_ms = fused_act_ms(ctx.variant, op.in_width, ctx.spatial, ctx.tokens)
                out.append(_replace_ms(row, fused_ms, method="fused"))
                fusable = act_fusable = False
            else:
                out.append(row)
                fusable = act_fusable = False
        else:
            if blocked:
                w, sp, tok = cur
                out.append(_layout_row(f"{op.name}:reorder_out", reorder_ctx["out"], w,
                                       boundary_ms("out", w, sp, tok)))  # fmt: skip
            blocked = fusable = act_fusable = False
            out.append(row)
        cur = (op.out_width, _out_spatial(ctx), ctx.tokens)
    if blocked:
        w, sp, tok = cur
        out.append(_layout_row("output:reorder_out", reorder_ctx["out"], w, boundary_ms("out", w, sp, tok)))
    return out


def _replace_ms(row: LayerPrediction, ms: float, method: str | None = None) -> LayerPrediction:
    d = asdict(row)
    d["ms"] = float(ms)
    if method is not None:
        d["method"] = method
    return LayerPrediction(**d)


def _layout_row(name: str, ctx: OpContext, width: int, ms: float) -> LayerPrediction:
    return LayerPrediction(name, ctx.key(), width, width, float(ms), True, False, method="layout")


class ModelPredictor:
    """:func:`predict_model` for many variants of one model on one table (a width search).

    Holds what does not change between calls: the table's contexts, the calibrated per-element fits
    and a memo of every per-op table prediction, so re-pricing the model at other widths costs a
    walk over its operators (the NCHWc layout included) rather than a table interpolation per op.
    """

    def __init__(self, table: LatencyTable) -> None:
        self.table = table
        self._known = set(table.contexts())
        self._cal = _Calibrations(table)
        self._memo: dict[tuple[OpContext, int, int], tuple[float, bool, str, float]] = {}
        block = table.meta.get("ort_nchwc_block")
        align = table.meta.get("ort_nchwc_conv_alignment")
        self._block = int(block) if block else None
        self._align = int(align) if align else None
        self._overhead = (
            float(table.meta.get("invoke_overhead_ms") or 0.0)
            if table.meta.get("invoke_overhead_subtracted")
            else 0.0
        )
        self._per_op = float(table.meta.get("per_op_overhead_ms") or 0.0)

    def _price(self, op: LayerOp) -> tuple[float, bool, str, float]:
        """(ms, extrapolated, method, uncovered estimate) of one op alone, memoised."""
        ctx = op.context
        key = (ctx, op.in_width, op.out_width)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        if ctx in self._known:
            p = self.table.predict_ms(ctx, op.in_width, op.out_width)
            out = (float(p.ms), bool(p.extrapolated), "table", 0.0)
        elif ctx.kind in TABLED_KINDS:
            raise UncoveredOpError(
                f"layer {op.name!r} ({ctx.key()}, {op.in_width}->{op.out_width}) has no context in the table; "
                f"profile this model on the target (`edgetrim profile --model ...`) and predict again"
            )
        elif (c := self._cal.for_context(ctx)) is not None:
            out = (c(elements(ctx, op.in_width, op.out_width)), False, "calibrated", 0.0)
        else:
            g = self._cal.generic()
            est = g(elements(ctx, op.in_width, op.out_width)) if g is not None else float("nan")
            out = (0.0, False, "uncovered", est)
        self._memo[key] = out
        return out

    def predict(self, layer_ops: Sequence[LayerOp]) -> ModelPrediction:
        """The whole-model prediction of ``layer_ops`` (see :func:`predict_model`)."""
        rows: list[LayerPrediction] = []
        uncovered_est: list[float] = []
        for op in layer_ops:
            ms, ext, method, est = self._price(op)
            covered = method != "uncovered"
            rows.append(
                LayerPrediction(
                    op.name, op.context.key(), op.in_width, op.out_width, ms, covered, ext, method
                )
            )
            if not covered:
                uncovered_est.append(est)
        if self._block:
            rows = _nchwc_layout(self.table, self._cal, layer_ops, rows, self._block, self._align)
        layers_ms = float(sum(r.ms for r in rows))
        # A one-op model pays the runtime's per-node dispatch once, and the profiler subtracted it with
        # the invoke overhead; inside a model every further node pays it again.
        nodes = sum(1 for r in rows if r.method != "fused")
        dispatch = self._per_op * max(nodes - 1, 0)
        total = layers_ms + self._overhead + dispatch
        if not uncovered_est:
            share = 0.0
        elif all(np.isfinite(uncovered_est)) and total + sum(uncovered_est) > 0:
            share = float(sum(uncovered_est) / (total + sum(uncovered_est)))
        else:
            share = len(uncovered_est) / max(len(rows), 1)
        ext_ms = sum(r.ms for r in rows if r.extrapolated)
        return ModelPrediction(
            total_ms=total,
            rows=rows,
            uncovered_share=share,
            extrapolated_share=float(ext_ms / total) if total > 0 else 0.0,
            device=self.table.device.fingerprint(),
            overhead_ms=self._overhead,
            dispatch_ms=dispatch,
        )


def predict_model(
    table: LatencyTable,
    layer_ops: Sequence[LayerOp],
    *,
    allow_other_target: bool = False,
    target: str | None = None,
) -> ModelPrediction:
    """Predict a model's median latency as the sum of its layers' table predictions.

    Args:
        table: the latency table of the target.
        layer_ops: the model's operators (``edgetrim.model_ops.extract_layer_ops``).
        allow_other_target: predict even when ``target`` differs from the table's target.
        target: the target the prediction is for; checked against the table when given.

    Returns:
        A :class:`ModelPrediction`. ``uncovered_share`` estimates the uncovered layers' weight with
        the table's generic per-element cost (all one-axis elementwise contexts); when the table has
        none, it is the uncovered layers' share of the layer count.

    Raises:
        UncoveredOpError: a conv / linear / depthwise layer whose context the table lacks.
        TableError: ``target`` differs from the table's target and ``allow_other_target`` is off.

    Example:
        >>> pred = predict_model(table, layer_ops)  # doctest: +SKIP
        >>> pred.total_ms, pred.uncovered_share  # doctest: +SKIP
    """
    if target is not None:
        check_target(table, target, allow_other=allow_other_target)
    return ModelPredictor(table).predict(layer_ops)


def total_macs(layer_ops: Sequence[LayerOp]) -> int:
    return int(sum(op.macs for op in layer_ops))


def total_flops(layer_ops: Sequence[LayerOp]) -> float:
    """FLOPs as the FLOPs regulariser counts them: a multiply-accumulate is two."""
    return float(2 * total_macs(layer_ops))


def flops_baseline_ms(layer_ops: Sequence[LayerOp], ms_per_mac: float) -> float:
    """The FLOPs-proportional baseline predictor: ``ms_per_mac x total MACs``."""
    return float(ms_per_mac * total_macs(layer_ops))


def fit_ms_per_mac(macs: Sequence[float], measured_ms: Sequence[float]) -> float:
    """Least-squares ``ms_per_mac`` through the origin (minimising relative error, the usual
    choice when models span orders of magnitude): the mean of measured / macs ratios weighted
    towards a consistent relative fit."""
    m = np.asarray(macs, dtype=float)
    t = np.asarray(measured_ms, dtype=float)
    ok = (m > 0) & (t > 0)
    if not ok.any():
        raise ValueError("fit_ms_per_mac needs at least one model with macs > 0 and a latency > 0")
    # minimise sum((k*m/t - 1)^2): k = sum(m/t) / sum((m/t)^2)
    r = m[ok] / t[ok]
    return float(r.sum() / (r * r).sum())


def fit_per_op_overhead(predictions: Sequence[ModelPrediction], measured_ms: Sequence[float]) -> float:
    """Fit the in-graph per-op dispatch cost from models predicted *without* one and measured.

    A one-op model's time minus the empty-invoke overhead misses the cost every further node of a
    real graph pays to be dispatched (~1 us per node on onnxruntime CPU): tiny ops then predict ~0.
    This fits ``c`` in ``measured = predicted + c * (n_ops - 1)`` minimising relative squared error,
    clamped at >= 0. Store it as ``table.meta["per_op_overhead_ms"]`` to have :func:`predict_model`
    add it. Fit it on calibration models, not on the models you evaluate (the benchmark uses
    leave-one-out).
    """
    if len(predictions) != len(measured_ms) or not predictions:
        raise ValueError("need one measured latency per prediction, at least one")
    num = den = 0.0
    for p, m in zip(predictions, measured_ms, strict=True):
        if m <= 0:
            raise ValueError(f"measured latencies must be > 0, got {m}")
        k = max(sum(1 for r in p.rows if r.method != "fused") - 1, 0)
        base = p.total_ms - p.dispatch_ms
        # minimise sum(((base + c*k) - m)^2 / m^2) over c
        num += k * (m - base) / (m * m)
        den += k * k / (m * m)
    return max(num / den, 0.0) if den > 0 else 0.0
