"""onnxruntime NCHWc layout facts the predictor relies on, checked against the real runtime."""

from __future__ import annotations

import numpy as np
import pytest

from edgetrim.lookup_tables.predict import NCHWC_PAIR_CHAINS, NCHWC_PRICED_FUSED_ACTS, nchwc_eligible
from edgetrim.profiler.builders import build_onnx_op
from edgetrim.profiler.session import ContextPlan, nchwc_reorder_requests
from edgetrim.profiler.timing import TimingConfig
from edgetrim.types import OpContext, OpKind

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def target():  # type: ignore[no-untyped-def]
    from edgetrim.profiler.targets import get_target

    return get_target("ort-cpu", threads=1)


def _optimised_ops(data: bytes | str, tmp_path) -> list[str]:  # type: ignore[no-untyped-def]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    return [(n.op_type, n.domain) for n in onnx.load(so.optimized_model_filepath).graph.node]


CONV = OpContext(OpKind.CONV2D, kernel=(3, 3), padding=(1, 1), spatial=(6, 6), activation="relu")
DW = OpContext(OpKind.DEPTHWISE_CONV2D, kernel=(3, 3), padding=(1, 1), spatial=(6, 6))
POOL = OpContext(OpKind.POOL, kernel=(2, 2), stride=(2, 2), spatial=(6, 6), variant="max")
GPOOL = OpContext(OpKind.POOL, spatial=(6, 6), variant="global_avg")


@pytest.mark.parametrize(
    ("ctx", "in_w", "out_w"),
    [(CONV, 3, 8), (CONV, 8, 8), (CONV, 16, 13), (CONV, 13, 16), (CONV, 9, 8), (CONV, 24, 24),
     (CONV, 12, 16), (CONV, 10, 8), (CONV, 20, 7), (CONV, 4, 8), (CONV, 28, 9), (CONV, 17, 16), (DW, 8, 8), (DW, 13, 13), (DW, 12, 12), (DW, 20, 20),
     (DW, 6, 6), (POOL, 16, 16), (POOL, 13, 13), (POOL, 12, 12), (GPOOL, 16, 16)],
)  # fmt: skip
def test_eligibility_rules_match_the_optimised_graph(target, tmp_path, ctx, in_w, out_w) -> None:  # type: ignore[no-untyped-def]
    block = target.nchwc_block()
    if block is None:
        pytest.skip("onnxruntime does not use the NCHWc layout on this CPU")
    ops = _optimised_ops(build_onnx_op(ctx, in_w, out_w), tmp_path)
    blocked = any(d == "com.microsoft.nchwc" and t not in ("ReorderInput", "ReorderOutput") for t, d in ops)
    reordered_in = ("ReorderInput", "com.microsoft.nchwc") in ops
    align = target.nchwc_conv_alignment(block)
    assert (blocked, reordered_in) == nchwc_eligible(ctx, in_w, block, align), ops


def test_reorder_contexts_build_and_run(target) -> None:  # type: ignore[no-untyped-def]
    block = target.nchwc_block()
    if block is None:
        pytest.skip("onnxruntime does not use the NCHWc layout on this CPU")
    plans = [ContextPlan(CONV, 2 * block, 2 * block + 3), ContextPlan(GPOOL, 16, 16)]
    without = {c.variant for c, _, _ in nchwc_reorder_requests(plans, block)}
    assert not any("_fuse_" in v for v in without)  # no activation to fuse: nothing measured for it
    plans.append(ContextPlan(OpContext(OpKind.ACTIVATION, spatial=(6, 6), variant="hardswish"), 16, 16))
    reqs = nchwc_reorder_requests(plans, block)
    keys = {(c.variant, c.spatial) for c, _, _ in reqs}
    pairs = {(f"nchwc{block}_pair{k}", (6, 6)) for k in NCHWC_PAIR_CHAINS}  # in-graph reorder price
    fused = {(f"nchwc{block}_fuse_{a}", (6, 6)) for a in ("none", *NCHWC_PRICED_FUSED_ACTS)}
    assert keys == {(f"nchwc{block}_in", (6, 6)), (f"nchwc{block}_out", (6, 6)), *pairs, *fused}  # no pool
    assert all(i % block == 0 for c, i, _ in reqs if not c.variant.endswith("_out"))  # kernel needs multiples
    assert any(i % block for c, i, _ in reqs if c.variant.endswith("_out"))
    for ctx, w in ((OpContext(OpKind.OTHER, spatial=(3, 5), variant=f"nchwc{block}_out"), block + 3),
                   (OpContext(OpKind.OTHER, spatial=(3, 5), variant=f"nchwc{block}_in"), block)):  # fmt: skip
        sess = target.session(build_onnx_op(ctx, w, w))
        shape = sess.get_inputs()[0].shape
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        (y,) = sess.run(None, {"x": x})
        if ctx.variant.endswith("_in"):  # round trip through the blocked layout
            back = target.session(build_onnx_op(ctx.__class__(OpKind.OTHER, spatial=(3, 5),
                                                              variant=f"nchwc{block}_out"), w, w))  # fmt: skip
            np.testing.assert_allclose(back.run(None, {"x": y})[0], x, rtol=0, atol=0)
        else:
            assert y.shape == (1, w, 3, 5)


def test_reorder_pair_chains_round_trip(target) -> None:  # type: ignore[no-untyped-def]
    block = target.nchwc_block()
    if block is None:
        pytest.skip("onnxruntime does not use the NCHWc layout on this CPU")
    x = np.random.default_rng(2).standard_normal((1, 2 * block, 3, 5)).astype(np.float32)
    for k in NCHWC_PAIR_CHAINS:
        ctx = OpContext(OpKind.OTHER, spatial=(3, 5), variant=f"nchwc{block}_pair{k}")
        data = build_onnx_op(ctx, 2 * block, 2 * block)
        kinds = [n.op_type for n in onnx.load_from_string(data).graph.node if n.op_type.startswith("Reorder")]
        assert kinds == ["ReorderInput", "ReorderOutput"] * k
        np.testing.assert_array_equal(target.session(data).run(None, {"x": x})[0], x)


def test_fused_activation_contexts_run_one_blocked_conv(target, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``fuse_<act>`` and ``fuse_none`` differ only by the activation onnxruntime fuses into the conv."""
    block = target.nchwc_block()
    if block is None:
        pytest.skip("onnxruntime does not use the NCHWc layout on this CPU")
    for act in ("none", *NCHWC_PRICED_FUSED_ACTS):
        ctx = OpContext(OpKind.OTHER, spatial=(4, 4), variant=f"nchwc{block}_fuse_{act}")
        ops = _optimised_ops(build_onnx_op(ctx, 2 * block, 2 * block), tmp_path)
        assert [t for t, d in ops if d == "com.microsoft.nchwc" and not t.startswith("Reorder")] == ["Conv"]
        assert [t for t, d in ops if d != "com.microsoft.nchwc"] == ["Neg"], ops  # the activation fused


def test_global_avg_pool_builder_is_a_mean(target) -> None:  # type: ignore[no-untyped-def]
    sess = target.session(build_onnx_op(GPOOL, 5, 5))
    x = np.random.default_rng(1).standard_normal((1, 5, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], x.mean(axis=(2, 3), keepdims=True), atol=1e-6)


def test_table_meta_has_dispatch_cost_and_block(target) -> None:  # type: ignore[no-untyped-def]
    meta = target.table_meta(TimingConfig.quick())
    assert meta["per_op_overhead_ms"] >= 0.0
    assert meta.get("ort_nchwc_block") in (None, 8, 16)
    if meta.get("ort_nchwc_block"):  # an alignment is only recorded where it is finer than the block
        assert meta.get("ort_nchwc_conv_alignment") in (None, 1, 2, 4, 8)


def _constant_table(ops, block: int, align: int | None):  # type: ignore[no-untyped-def]
    """Every context of ``ops`` at a flat cost plus both reorder contexts: only the layout matters."""
    from edgetrim.lookup_tables import LatencyTable
    from edgetrim.types import DeviceInfo, LatencyStats

    meta = {"ort_nchwc_block": block, **({"ort_nchwc_conv_alignment": align} if align else {})}
    table = LatencyTable(DeviceInfo("ort-cpu", "onnxruntime", "test", "synthetic"), meta=meta)
    flat = LatencyStats(0.01, 0.01, 0.01, 0.01, 0.0, 5)
    for op in ops:
        widths = {(w, w) for w in (1, op.in_width, op.out_width)} if op.context.one_axis else {
            (i, o) for i in (1, op.in_width) for o in (1, op.out_width)}  # fmt: skip
        for i, o in widths:
            table.record(op.context, i, o, flat)
    for d in ("in", "out"):
        for w in (block, 4 * block):
            ms = 1e-6 * w * 16
            table.record(OpContext(OpKind.OTHER, spatial=(4, 4), variant=f"nchwc{block}_{d}"), w, w,
                         LatencyStats(ms, ms, ms, ms, 0.0, 5))  # fmt: skip
    return table


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("mobilenetv3_small", {"width_mult": 0.61, "divisor": 1, "image_size": 16}),
     ("mobilenetv3_small", {"image_size": 16}),
     ("efficientnet_b0_small", {"width_mult": 0.43, "divisor": 1, "image_size": 16}),
     ("resnet_small", {"widths": (11, 27, 53), "image_size": 16}),
     ("cnn3", {"widths": (13, 29, 27), "image_size": 16})],
)  # fmt: skip
def test_predicted_reorders_match_the_optimised_model(target, tmp_path, name, kwargs) -> None:  # type: ignore[no-untyped-def]
    """The predictor's layout walk inserts as many ReorderInput / ReorderOutput as onnxruntime does."""
    from edgetrim.examples.models import build
    from edgetrim.lookup_tables import predict_model
    from edgetrim.model_ops import extract_layer_ops
    from edgetrim.profiler.targets.onnxruntime_target import export_onnx_for_timing

    block = target.nchwc_block()
    if block is None:
        pytest.skip("onnxruntime does not use the NCHWc layout on this CPU")
    module, inputs = build(name, **kwargs)
    ops = extract_layer_ops(module, inputs, fusion=target.fusion)
    pred = predict_model(_constant_table(ops, block, target.nchwc_conv_alignment(block)), ops)
    predicted = {d: sum(r.method == "layout" and r.name.endswith(f":reorder_{d}") for r in pred.rows)
                 for d in ("in", "out")}  # fmt: skip
    path = tmp_path / "m.onnx"
    export_onnx_for_timing(module, tuple(inputs), path)
    graph_ops = _optimised_ops(str(path), tmp_path)  # a path: the export may keep weights beside it
    actual = {
        d: graph_ops.count((f"Reorder{d.capitalize()}put", "com.microsoft.nchwc")) for d in ("in", "out")
    }
    assert predicted == actual, [r.name for r in pred.rows if r.method == "layout"]
