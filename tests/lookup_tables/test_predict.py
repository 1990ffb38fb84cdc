"""Whole-model prediction on hand-built LayerOps, the FLOPs baseline, and the accuracy metrics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from edgetrim.errors import TableError, UncoveredOpError
from edgetrim.lookup_tables import flops_baseline_ms, predict_model
from edgetrim.lookup_tables.metrics import (
    holdout_errors,
    mape,
    spearman,
    summary,
    validate_table,
    within_share,
)
from edgetrim.lookup_tables.predict import elements, fit_ms_per_mac
from edgetrim.types import LayerOp, OpContext, OpKind

from .synth import CONV, DW, LIN, residue_surface, stats, step_surface, table_from

RELU = OpContext(OpKind.ACTIVATION, spatial=(8, 8), variant="hardswish")
ADD = OpContext(OpKind.ADD, spatial=(8, 8))


def _table():  # type: ignore[no-untyped-def]
    t = table_from(step_surface, CONV, [(i, o) for i in range(1, 33) for o in range(1, 33)])
    for w in range(1, 33):
        t.record(DW, w, w, stats(residue_surface(1, w)))
        t.record(RELU, w, w, stats(0.002 + 0.0001 * w * 64))
    for i in (1, 8, 16):
        for o in (1, 8, 16):
            t.record(LIN, i, o, stats(0.01 + 0.001 * i * o))
    return t


def test_prediction_sums_layers_and_marks_extrapolation() -> None:
    t = _table()
    ops = [
        LayerOp("stem", CONV, 3, 16, macs=3 * 16 * 64),
        LayerOp("dw", DW, 16, 16, macs=16 * 9 * 64),
        LayerOp("act", RELU, 16, 16),
        LayerOp("head", LIN, 16, 20, macs=16 * 20 * 4),  # out 20 > 16 measured: extrapolated
    ]
    pred = predict_model(t, ops)
    rows = {r.name: r for r in pred.rows}
    assert rows["stem"].ms == pytest.approx(step_surface(3, 16))
    assert rows["dw"].ms == pytest.approx(residue_surface(1, 16))
    assert rows["head"].extrapolated and not rows["stem"].extrapolated
    assert rows["head"].ms == pytest.approx(
        0.01 + 0.001 * 16 * 20, rel=1e-9
    )  # linear data, linear extrapolation
    assert pred.total_ms == pytest.approx(sum(r.ms for r in pred.rows))
    assert pred.uncovered_share == 0.0 and 0 < pred.extrapolated_share < 1
    d = pred.to_dict()
    assert set(d) >= {"total_ms", "layers", "uncovered_share"} and len(d["layers"]) == 4


def test_untabled_kinds_are_calibrated_or_uncovered() -> None:
    t = _table()
    other_act = OpContext(OpKind.ACTIVATION, spatial=(4, 4), variant="hardswish")  # same kind, other shape
    ops = [
        LayerOp("stem", CONV, 3, 8),
        LayerOp("act2", other_act, 24, 24),
        LayerOp("res", ADD, 8, 8),  # no ADD context at all
    ]
    pred = predict_model(t, ops)
    rows = {r.name: r for r in pred.rows}
    assert rows["act2"].method == "calibrated" and rows["act2"].covered
    # per-element fit over the hardswish points: 0.002 + 0.0001 * elements
    assert rows["act2"].ms == pytest.approx(0.002 + 0.0001 * elements(other_act, 24, 24), rel=1e-6)
    assert rows["res"].method == "uncovered" and not rows["res"].covered and rows["res"].ms == 0.0
    est = 0.002 + 0.0001 * elements(ADD, 8, 8)  # generic per-element cost of the table
    assert pred.uncovered_share == pytest.approx(est / (pred.total_ms + est), rel=1e-6)


def test_uncovered_tabled_kind_raises_naming_the_layer() -> None:
    t = _table()
    conv3 = OpContext(OpKind.CONV2D, kernel=(3, 3), padding=(1, 1), spatial=(8, 8))
    with pytest.raises(UncoveredOpError, match=r"layer 'features\.3\.conv' \(conv2d/k3x3"):
        predict_model(t, [LayerOp("stem", CONV, 3, 8), LayerOp("features.3.conv", conv3, 8, 8)])


def test_target_check_in_predict() -> None:
    t = _table()
    ops = [LayerOp("stem", CONV, 3, 8)]
    assert predict_model(t, ops, target="ort-cpu").total_ms > 0
    with pytest.raises(TableError, match="allow-other-target"):
        predict_model(t, ops, target="litert-cpu")
    assert predict_model(t, ops, target="litert-cpu", allow_other_target=True).total_ms > 0


def test_flops_baseline() -> None:
    ops = [LayerOp("a", LIN, 4, 4, macs=1000), LayerOp("b", LIN, 4, 4, macs=3000)]
    assert flops_baseline_ms(ops, 1e-4) == pytest.approx(0.4)
    assert fit_ms_per_mac([1000, 2000], [0.1, 0.2]) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="macs > 0"):
        fit_ms_per_mac([0], [1.0])


def test_metrics_against_hand_computed_values() -> None:
    pred, meas = [1.1, 2.0, 2.5, 4.0], [1.0, 2.0, 3.0, 5.0]
    assert mape(pred, meas) == pytest.approx((10 + 0 + 100 / 6 + 20) / 4)
    assert within_share(pred, meas) == pytest.approx(0.5)  # 10% sits on the boundary: counted in
    rng = np.random.default_rng(0)
    a, b = rng.random(30), rng.random(30)
    b[:5] = b[0]  # ties
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    s = summary(pred, meas)
    assert s["n"] == 4 and s["within_10pct"] == 0.5 and s["max_abs_err_pct"] == pytest.approx(20.0)
    with pytest.raises(ValueError, match="> 0"):
        mape([1.0], [0.0])


def test_holdout_errors_report_interpolation_error() -> None:
    t = table_from(step_surface, CONV, [(i, o) for i in (1, 8, 16) for o in (1, 8, 9, 16)])
    rows = holdout_errors(t, CONV, [(4, 12, step_surface(4, 12)), (8, 9, step_surface(8, 9))])
    assert rows[1]["in_table"] and rows[1]["rel_err"] == pytest.approx(0.0)
    assert not rows[0]["in_table"] and abs(rows[0]["rel_err"]) < 0.5


class _TimerTarget:
    """A target whose timer counts whole ticks, as benchmark_model's counts microseconds: an op under
    one tick comes back as 0 ms. Ops of even input width run 100x faster here, under the tick."""

    def __init__(self, resolution_ms: float = 0.001) -> None:
        self.tick = resolution_ms

    def measure_ops(self, requests, timing):  # type: ignore[no-untyped-def]
        for ctx, i, o in requests:
            ms = step_surface(i, o) * (1.0 if i % 2 else 0.01)
            yield (ctx, i, o), stats(int(ms / self.tick) * self.tick)


def test_validate_table_leaves_points_below_the_timer_resolution_out_of_the_errors() -> None:
    t = table_from(step_surface, CONV, [(i, o) for i in (1, 8, 16) for o in (1, 8, 9, 16)])
    report = validate_table(t, _TimerTarget(), n_points=8, timing=None)
    zero = [p for p in report["points"] if p["measured_ms"] == 0]
    assert zero and all(np.isnan(p["rel_err"]) for p in zero)  # even in widths: no error for them
    assert report["below_resolution"] == len(zero) and report["n"] == 8 - len(zero)
    assert np.isfinite(report["mape_pct"]) and all(
        np.isfinite(ctx["mape_pct"]) for ctx in report["by_context"].values()
    )
    with pytest.raises(ValueError, match="below the timer's resolution"):
        validate_table(t, _TimerTarget(resolution_ms=1.0), n_points=3, timing=None)


def test_invoke_overhead_is_added_once_per_model() -> None:
    t = _table()
    ops = [LayerOp("stem", CONV, 3, 8), LayerOp("dw", DW, 8, 8)]
    base = predict_model(t, ops).total_ms
    t.meta.update({"invoke_overhead_ms": 0.05, "invoke_overhead_subtracted": True})
    pred = predict_model(t, ops)
    assert pred.overhead_ms == 0.05 and pred.total_ms == pytest.approx(base + 0.05)
    t.meta["invoke_overhead_subtracted"] = False  # points still include it: nothing to add back
    assert predict_model(t, ops).total_ms == pytest.approx(base)


def test_per_op_overhead_fit_and_use() -> None:
    from edgetrim.lookup_tables.predict import fit_per_op_overhead

    t = _table()
    small = [LayerOp("stem", CONV, 3, 8), LayerOp("dw", DW, 8, 8)]
    big = [*small, LayerOp("act", RELU, 8, 8), LayerOp("dw2", DW, 8, 8), LayerOp("act2", RELU, 8, 8)]
    raw = [predict_model(t, small), predict_model(t, big)]
    truth_c = 0.0015
    measured = [p.total_ms + truth_c * (len(p.rows) - 1) for p in raw]
    c = fit_per_op_overhead(raw, measured)
    assert c == pytest.approx(truth_c, rel=1e-9)  # exact data: the fit recovers the constant
    t.meta["per_op_overhead_ms"] = c
    again = predict_model(t, big)
    assert again.dispatch_ms == pytest.approx(4 * truth_c) and again.total_ms == pytest.approx(measured[1])
    assert fit_per_op_overhead(raw, [p.total_ms * 0.5 for p in raw]) == 0.0  # never negative


def _nchwc_table():  # type: ignore[no-untyped-def]
    """Conv / depthwise points, constant reorder costs per element, onnxruntime NCHWc meta."""
    from edgetrim.lookup_tables import LatencyTable

    from .synth import DEVICE

    t = LatencyTable(DEVICE, meta={"ort_nchwc_block": 8})
    for i in range(1, 33):
        for o in range(1, 33):
            t.record(CONV, i, o, stats(0.1))
    for w in range(1, 33):
        t.record(DW, w, w, stats(0.05))
        t.record(ADD, w, w, stats(0.003))
        t.record(OpContext(OpKind.ACTIVATION, spatial=(8, 8), variant="relu"), w, w, stats(0.002))
        t.record(RELU, w, w, stats(0.004))  # hardswish
    for d in ("in", "out"):  # reorder cost = 1e-5 ms per element (w x 8 x 8), no intercept
        rctx = OpContext(OpKind.OTHER, spatial=(8, 8), variant=f"nchwc8_{d}")
        for w in (8, 16, 24, 32):
            t.record(rctx, w, w, stats(1e-5 * w * 64))
    pool = OpContext(OpKind.POOL, spatial=(8, 8), variant="global_avg")
    for w in range(1, 33):
        t.record(pool, w, w, stats(0.001))
    return t, pool


CONV_1X1 = OpContext(OpKind.CONV2D, kernel=(1, 1), spatial=(8, 8))  # no activation: adds and acts can fuse


def _record_conv_1x1(t) -> OpContext:  # type: ignore[no-untyped-def]
    for i in range(1, 33):
        for o in range(1, 33):
            t.record(CONV_1X1, i, o, stats(0.1))
    return CONV_1X1


def test_nchwc_layout_moves_reorders_to_region_boundaries_and_fuses() -> None:
    t, pool = _nchwc_table()
    conv_none = _record_conv_1x1(t)
    act_relu = OpContext(OpKind.ACTIVATION, spatial=(8, 8), variant="relu")
    ops = [
        LayerOp("c1", CONV, 16, 16),  # blocked, input reordered: region starts here
        LayerOp("c2", conv_none, 16, 16),  # blocked, no activation: the Add and relu fuse into it
        LayerOp("add", ADD, 16, 16),
        LayerOp("relu", act_relu, 16, 16),
        LayerOp("dw", DW, 16, 16),
        LayerOp("hs", RELU, 16, 16),  # hardswish after a blocked depthwise: fused
        LayerOp("pool", pool, 16, 16),  # global pool (ReduceMean): region ends before it
    ]
    pred = predict_model(t, ops)
    by_name = {r.name: r for r in pred.rows}
    reorder = 1e-5 * 16 * 64  # one reorder of a 16 x 8 x 8 tensor
    assert [r.method for r in pred.rows].count("layout") == 2
    assert by_name["c1:reorder_in"].ms == pytest.approx(reorder, rel=1e-6)
    assert by_name["pool:reorder_out"].ms == pytest.approx(reorder, rel=1e-6)
    for name in ("c1", "c2"):  # one-op graphs paid both reorders; inside the region they do not
        assert by_name[name].ms == pytest.approx(0.1 - 2 * reorder, rel=1e-6)
    assert by_name["dw"].ms == pytest.approx(0.05 - 2 * reorder, rel=1e-6)
    assert {r.name for r in pred.rows if r.method == "fused"} == {"add", "relu", "hs"}
    assert all(by_name[n].ms == 0.0 for n in ("add", "relu", "hs"))
    # odd widths: nothing is blocked, nothing moves or fuses
    odd = [LayerOp("c1", CONV, 13, 13), LayerOp("c2", conv_none, 13, 13), LayerOp("add", ADD, 13, 13)]
    plain = predict_model(t, odd)
    assert [r.method for r in plain.rows] == ["table"] * 3
    assert plain.total_ms == pytest.approx(0.1 + 0.1 + 0.003)


def test_nchwc_fused_rows_run_no_node_and_meta_off_changes_nothing() -> None:
    t, _ = _nchwc_table()
    ops = [LayerOp("c", CONV, 9, 16), LayerOp("hs", RELU, 16, 16)]  # 9 % 8 != 0 and 9 >= 8: not blocked
    t.meta["per_op_overhead_ms"] = 0.001
    pred = predict_model(t, ops)
    assert [r.method for r in pred.rows] == ["table", "table"]
    assert pred.dispatch_ms == pytest.approx(0.001)
    assert [r.method for r in predict_model(t, [LayerOp("c", CONV, 4, 16), *ops[1:]]).rows] == [
        "table",
        "table",  # the conv already has its relu: the hardswish cannot fuse
        "layout",
    ]
    conv_none = OpContext(OpKind.CONV2D, kernel=(1, 1), spatial=(8, 8))
    t.record(conv_none, 4, 16, stats(0.1))
    small = [LayerOp("c", conv_none, 4, 16), LayerOp("hs", RELU, 16, 16)]  # input below the block:
    pred = predict_model(t, small)  # blocked, no input reorder paid, output reordered at the end
    assert [r.method for r in pred.rows] == ["table", "fused", "layout"]
    assert pred.dispatch_ms == pytest.approx(0.001)  # two nodes run: conv and the final reorder
    del t.meta["ort_nchwc_block"]
    assert [r.method for r in predict_model(t, small).rows] == ["table", "table"]


def test_nchwc_boundaries_are_priced_by_reorder_chains_when_measured() -> None:
    """A blocked op's one-op graph paid a one-pair chain; layout rows take the in-graph chain price."""
    from edgetrim.lookup_tables.predict import NCHWC_PAIR_CHAINS

    t, pool = _nchwc_table()
    t.meta["per_op_overhead_ms"] = 1e-4
    in_graph_pair = 4e-6  # ms per element for ReorderInput + ReorderOutput inside a graph, dispatch included
    for k in NCHWC_PAIR_CHAINS:
        rctx = OpContext(OpKind.OTHER, spatial=(8, 8), variant=f"nchwc8_pair{k}")
        for w in (8, 16, 24, 32):
            t.record(rctx, w, w, stats(0.002 + k * in_graph_pair * w * 64))  # the intercept cancels
    ops = [LayerOp("c1", CONV, 16, 16), LayerOp("pool", pool, 16, 16)]
    by_name = {r.name: r for r in predict_model(t, ops).rows}
    one_pair = 0.002 + in_graph_pair * 16 * 64  # the one-pair chain at 16 x 8 x 8, graph-edge cost included
    # both halves (equal one-op prices), and the dispatch of the graph's third node
    assert by_name["c1"].ms == pytest.approx(0.1 - one_pair - 1e-4, rel=1e-4)
    boundary = in_graph_pair * 16 * 64 / 2 - 1e-4  # half the pair (equal one-op prices), less one dispatch
    assert by_name["c1:reorder_in"].ms == pytest.approx(boundary, rel=1e-4)
    assert by_name["pool:reorder_out"].ms == pytest.approx(boundary, rel=1e-4)


def test_calibrated_costs_ignore_points_that_load_pushed_up() -> None:
    """A per-element fit over one-axis points is not dragged up by a few hiccups (load only adds)."""
    from edgetrim.lookup_tables import LatencyTable
    from edgetrim.lookup_tables.predict import _Calibrations

    from .synth import DEVICE

    t = LatencyTable(DEVICE)
    ctx = OpContext(OpKind.OTHER, spatial=(4, 4), variant="transpose")
    for w in range(1, 41):
        ms = 1e-4 + 2e-6 * w * 16 + (2e-3 if w % 7 == 0 else 0.0)  # five points hit by a 2 us hiccup
        t.record(ctx, w, w, stats(ms))
    fit = _Calibrations(t).for_context(ctx)
    assert fit is not None
    assert fit.overhead_ms == pytest.approx(1e-4, rel=1e-3)
    assert fit.ms_per_element == pytest.approx(2e-6, rel=1e-3)


def test_activation_fused_into_a_blocked_conv_costs_what_fusing_it_measured() -> None:
    t, _ = _nchwc_table()
    conv_none = _record_conv_1x1(t)
    ops = [LayerOp("c", conv_none, 16, 16), LayerOp("hs", RELU, 16, 16)]  # RELU here is a hardswish
    assert {r.name: r for r in predict_model(t, ops).rows}["hs"].ms == 0.0  # nothing measured: free
    for w in (16, 32):  # the fused hardswish adds 3e-6 ms per element of the conv's output
        for act, extra in (("none", 0.0), ("hardswish", 3e-6)):
            t.record(OpContext(OpKind.OTHER, spatial=(8, 8), variant=f"nchwc8_fuse_{act}"), w, w,
                     stats(0.02 + (1e-5 + extra) * w * 64))  # fmt: skip
    row = {r.name: r for r in predict_model(t, ops).rows}["hs"]
    assert row.method == "fused" and row.ms == pytest.approx(3e-6 * 16 * 64, rel=1e-6)
