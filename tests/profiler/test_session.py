"""profile -> table -> predict -> measure on ort-cpu and litert-cpu; resume; refusal to mix targets."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edgetrim.errors import EdgetrimError, TableError
from edgetrim.lookup_tables import load_table
from edgetrim.model_ops import extract_layer_ops
from edgetrim.profiler.session import (
    ContextPlan,
    ProfileConfig,
    load_spec,
    plan_from_layer_ops,
    profile_table,
)
from edgetrim.profiler.targets import get_target
from edgetrim.types import OpContext, OpKind

SMALL = ProfileConfig(points_per_context=24, save_every=5, refine_rounds=1, recheck_rounds=0)  # exact counts


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("target_name", ["ort-cpu", "litert-cpu"])
def test_profile_table_predict_measure(target_name, tiny_model, fast_timing, tmp_path) -> None:
    from edgetrim.lookup_tables import predict_model

    module, example = tiny_model
    target = get_target(target_name, threads=1)
    ops = extract_layer_ops(module, example, fusion=target.fusion)
    out = tmp_path / "table.json"
    table = profile_table(target, ops, out=out, timing=fast_timing, refine=True, config=SMALL)

    loaded = load_table(out)
    assert loaded.device.fingerprint() == target.info().fingerprint()
    assert {o.context for o in ops} <= set(loaded.contexts())
    for op in ops:  # each layer's exact widths are measured, not interpolated
        assert loaded.has(op.context, op.in_width, op.out_width)
    assert loaded.n_points() == table.n_points() > len(ops)
    assert loaded.meta["build_time_s"] > 0 and loaded.meta["invoke_overhead_ms"] >= 0
    pred = predict_model(loaded, ops, target=target_name)
    assert pred.total_ms > 0 and pred.uncovered_share == 0.0
    measured = target.measure_model(module, example, fast_timing)
    assert measured.median_ms > 0 and measured.n >= fast_timing.min_runs


def test_interrupted_profile_resumes_without_remeasuring(
    tiny_model, fast_timing, tmp_path, counting_target
) -> None:
    module, example = tiny_model
    ort = get_target("ort-cpu")
    ops = extract_layer_ops(module, example, fusion=ort.fusion)
    out = tmp_path / "t.json"

    full = counting_target(ort)
    reference = profile_table(
        full, ops, out=tmp_path / "ref.json", timing=fast_timing, refine=False, config=SMALL
    )
    total = reference.n_points()
    assert len(full.seen) == total == len(set(full.seen))

    broken = counting_target(ort, stop_after=7)
    with pytest.raises(KeyboardInterrupt):
        profile_table(broken, ops, out=out, timing=fast_timing, refine=False, config=SMALL)
    assert load_table(out).n_points() == 7  # everything finished before Ctrl-C was saved

    resumed = counting_target(ort)
    no_check = dataclasses.replace(SMALL, drift_tolerance=None)  # the drift probe re-times a sample
    table = profile_table(
        resumed, ops, out=out, resume=True, timing=fast_timing, refine=False, config=no_check
    )
    assert len(resumed.seen) == total - 7
    assert not set(resumed.seen) & set(broken.seen)
    assert table.n_points() == total
    assert table.meta["invoke_overhead_ms"] == load_table(out).meta["invoke_overhead_ms"]


def test_measurement_order_is_random_but_seeded(tiny_model, fast_timing, tmp_path, counting_target) -> None:
    module, example = tiny_model
    ort = get_target("ort-cpu")
    ops = extract_layer_ops(module, example, fusion=ort.fusion)
    orders = []
    for run in range(2):
        t = counting_target(ort)
        profile_table(t, ops, out=tmp_path / f"{run}.json", timing=fast_timing, refine=False, config=SMALL)
        orders.append(t.seen)
    assert orders[0] == orders[1]
    keys = [(c.key(), i, o) for c, i, o in orders[0]]
    assert keys != sorted(keys)


def test_resume_refuses_a_table_from_another_target(tiny_model, fast_timing, tmp_path) -> None:
    module, example = tiny_model
    ort = get_target("ort-cpu")
    ops = extract_layer_ops(module, example, fusion=ort.fusion)
    out = tmp_path / "t.json"
    cfg = ProfileConfig(points_per_context=4, refine_rounds=0)
    profile_table(ort, ops[:1], out=out, timing=fast_timing, refine=False, config=cfg)
    with pytest.raises(TableError, match="cannot resume"):
        profile_table(get_target("litert-cpu"), ops[:1], out=out, resume=True, timing=fast_timing, config=cfg)


def test_max_points_caps_the_table_and_unsupported_contexts_are_skipped(fast_timing, tmp_path) -> None:
    plans = [
        ContextPlan(
            OpContext(OpKind.DEPTHWISE_CONV2D, kernel=(3, 3), padding=(1, 1), spatial=(4, 4)), 30, 30
        ),
        ContextPlan(OpContext(OpKind.OTHER, variant="scatter"), 8, 8),
    ]
    table = profile_table(
        get_target("ort-cpu"),
        plans,
        out=tmp_path / "t.json",
        timing=fast_timing,
        config=ProfileConfig(max_points=10),
    )
    assert table.n_points() == 10
    assert "other/scatter" in table.meta["skipped_contexts"]


def test_plan_from_layer_ops_takes_maxima_and_exact_widths(tiny_model) -> None:
    module, example = tiny_model
    ops = extract_layer_ops(module, example)
    plans = {p.context: p for p in plan_from_layer_ops(ops)}
    for op in ops:
        p = plans[op.context]
        assert p.max_in >= op.in_width and p.max_out >= op.out_width
        assert (op.in_width, op.out_width) in p.include


def test_load_spec_round_trip_and_errors(tmp_path) -> None:
    ctx = OpContext(OpKind.LINEAR, tokens=2, activation="relu")
    good = tmp_path / "spec.json"
    good.write_text(json.dumps({"contexts": [{"context": ctx.to_dict(), "max_in": 16, "points": [[3, 5]]}]}))
    (plan,) = load_spec(good)
    assert plan.context == ctx and (plan.max_in, plan.max_out) == (16, 16) and (3, 5) in plan.include
    with pytest.raises(EdgetrimError, match="does not exist"):
        load_spec(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(EdgetrimError, match="not valid JSON"):
        load_spec(bad)
    bad.write_text(json.dumps({"contexts": [{"context": {"kind": "nope"}, "max_in": 4}]}))
    with pytest.raises(EdgetrimError, match="context #0 is invalid"):
        load_spec(bad)


def test_empty_plan_is_a_clear_error(fast_timing, tmp_path) -> None:
    with pytest.raises(EdgetrimError, match="nothing to profile"):
        profile_table(get_target("ort-cpu"), [], out=tmp_path / "t.json", timing=fast_timing)
    assert not (tmp_path / "t.json").exists()


def test_artifacts_per_target(tiny_model, fast_timing, tmp_path) -> None:
    import torch

    module, example = tiny_model
    pt2 = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(module, example), str(pt2))
    assert get_target("torch-cpu").measure_artifact(pt2, fast_timing).median_ms > 0
    with pytest.raises(EdgetrimError, match=r"runs \.onnx files"):
        get_target("ort-cpu").measure_artifact(pt2, fast_timing)
    with pytest.raises(EdgetrimError, match="does not exist"):
        get_target("litert-cpu").measure_artifact(tmp_path / "none.tflite", fast_timing)


def test_spike_points_flags_isolated_highs_only() -> None:
    from edgetrim.lookup_tables import LatencyTable
    from edgetrim.profiler.session import spike_points
    from edgetrim.types import DeviceInfo, LatencyStats, OpContext, OpKind

    def st(ms: float) -> LatencyStats:
        return LatencyStats(median_ms=ms, p10_ms=ms, p90_ms=ms, mean_ms=ms, std_ms=0.0, n=5)

    t = LatencyTable(DeviceInfo(target="ort-cpu", runtime="onnxruntime", runtime_version="1", device="x"))
    dw = OpContext(OpKind.DEPTHWISE_CONV2D, kernel=(3, 3), padding=(1, 1), spatial=(4, 4))
    for w in range(1, 17):  # odd-width staircase: aligned widths are dips, never flagged
        t.record(dw, w, w, st(1.0 if w % 8 == 0 else 3.0))
    t.record(dw, 5, 5, st(5.0))  # a disturbed point
    assert spike_points(t, dw, ratio=1.3) == [(5, 5)]
    conv = OpContext(OpKind.CONV2D, kernel=(1, 1), spatial=(4, 4))
    for i in (1, 2, 3, 4):
        for o in (1, 2, 3, 4):
            t.record(conv, i, o, st(float(i * o)))
    assert spike_points(t, conv, ratio=1.3) == []
    t.record(conv, 2, 3, st(20.0))  # spike along both its row and its column
    assert spike_points(t, conv, ratio=1.3) == [(2, 3)]
    with pytest.raises(ValueError, match="recheck_ratio"):
        ProfileConfig(recheck_ratio=1.0)


def test_spike_points_finds_an_aligned_width_hidden_among_slow_unaligned_ones() -> None:
    """A depthwise conv measured 2.7 us at 16 channels against ~1.2 us at 24: its plain neighbours 15
    and 17 are slower still (unaligned), so only the width bound shows the spike."""
    from edgetrim.lookup_tables import LatencyTable
    from edgetrim.profiler.session import spike_points
    from edgetrim.types import DeviceInfo, LatencyStats, OpContext, OpKind

    def st(ms: float) -> LatencyStats:
        return LatencyStats(median_ms=ms, p10_ms=ms, p90_ms=ms, mean_ms=ms, std_ms=0.0, n=5)

    t = LatencyTable(DeviceInfo(target="ort-cpu", runtime="onnxruntime", runtime_version="1", device="x"))
    dw = OpContext(OpKind.DEPTHWISE_CONV2D, kernel=(3, 3), padding=(1, 1), spatial=(4, 4))
    for w in range(
        1, 41
    ):  # multiples of 8 fastest, other multiples of 4 a real step slower, the rest slower still
        t.record(
            dw, w, w, st(1.0 + 0.01 * w if w % 8 == 0 else 1.8 + 0.01 * w if w % 4 == 0 else 3.0 + 0.05 * w)
        )
    assert spike_points(t, dw, ratio=1.3) == []  # the steps between alignment classes are real
    t.record(dw, 16, 16, st(2.7))  # below 15 and 17, far above 24 (wider, no more aligned)
    t.record(dw, 28, 28, st(4.0))  # below 27 and 29, far above 36 (the 4-aligned class, wider)
    assert spike_points(t, dw, ratio=1.3) == [(16, 16), (28, 28)]


def test_resume_rechecks_a_disturbed_point_and_keeps_the_lower_median(fast_timing, tmp_path) -> None:
    from edgetrim.types import LatencyStats

    ctx = OpContext(OpKind.DEPTHWISE_CONV2D, kernel=(3, 3), padding=(1, 1), spatial=(4, 4))
    plan = [ContextPlan(ctx, 12, 12)]
    out = tmp_path / "t.json"
    cfg = ProfileConfig(refine_rounds=0, recheck_rounds=0)
    profile_table(get_target("ort-cpu"), plan, out=out, timing=fast_timing, refine=False, config=cfg)
    table = load_table(out)
    fake = 1000.0  # ms: far above any real one-op time, a point hit by a burst of load
    table.record(
        ctx, 6, 6, LatencyStats(median_ms=fake, p10_ms=fake, p90_ms=fake, mean_ms=fake, std_ms=0.0, n=3)
    )
    table.save(out)
    # drift check off: the planted 1000 ms point would read as a changed host
    cfg = ProfileConfig(refine_rounds=0, recheck_rounds=1, drift_tolerance=None)
    again = profile_table(
        get_target("ort-cpu"), plan, out=out, resume=True, timing=fast_timing, refine=False, config=cfg
    )
    medians = {i: s.median_ms for i, _, s in again.points(ctx)}
    assert medians[6] < 1.0  # re-measured, the lower median kept
    assert again.meta["points_rechecked_last_run"] >= 1
    assert again.n_points() == table.n_points()  # nothing added, one point replaced


def test_spike_points_checks_the_ends_of_each_line() -> None:
    """The widest width of a context is usually a model's own layer width: a spike there matters most."""
    from edgetrim.lookup_tables import LatencyTable
    from edgetrim.profiler.session import spike_points
    from edgetrim.types import DeviceInfo, LatencyStats, OpContext, OpKind

    def st(ms: float) -> LatencyStats:
        return LatencyStats(median_ms=ms, p10_ms=ms, p90_ms=ms, mean_ms=ms, std_ms=0.0, n=5)

    t = LatencyTable(DeviceInfo(target="ort-cpu", runtime="onnxruntime", runtime_version="1", device="x"))
    lin = OpContext(OpKind.LINEAR)
    for i in (1, 64, 128, 255, 256):
        for o in (1, 60, 119, 120):
            t.record(lin, i, o, st(0.001 * i * o))  # steep but linear growth: never flagged
    assert spike_points(t, lin, ratio=1.3) == []
    t.record(lin, 256, 120, st(3 * 0.001 * 256 * 120))  # the corner hit by load
    t.record(lin, 1, 1, st(50.0))  # the narrowest point hit by load
    assert spike_points(t, lin, ratio=1.3) == [(1, 1), (256, 120)]


def test_second_pass_measures_every_point_again(fast_timing, tmp_path) -> None:
    ctx = OpContext(OpKind.DEPTHWISE_CONV2D, kernel=(3, 3), padding=(1, 1), spatial=(4, 4))
    plan = [ContextPlan(ctx, 10, 10)]
    one, two = (
        profile_table(
            get_target("ort-cpu"),
            plan,
            out=tmp_path / f"passes{n}.json",
            timing=fast_timing,
            refine=False,
            config=ProfileConfig(recheck_rounds=0, seed=3, passes=n),
        )
        for n in (1, 2)
    )
    assert len(one.points(ctx)) == len(two.points(ctx)) == 10
    assert one.meta["points_measured_last_run"] == one.n_points()  # plus layout reorder points
    assert two.meta["points_measured_last_run"] == 2 * two.n_points()
    with pytest.raises(ValueError, match="passes"):
        ProfileConfig(passes=0)


def test_overhead_inflated_by_load_is_remeasured_and_points_rebased(fast_timing, tmp_path) -> None:
    ctx = OpContext(OpKind.DEPTHWISE_CONV2D, kernel=(3, 3), padding=(1, 1), spatial=(4, 4))
    out = tmp_path / "t.json"
    cfg = ProfileConfig(refine_rounds=0, recheck_rounds=0)
    plan = [ContextPlan(ctx, 4, 4)]
    table = profile_table(get_target("ort-cpu"), plan, out=out, timing=fast_timing, refine=False, config=cfg)
    before = {i: s.median_ms for i, _, s in table.points(ctx)}
    inflated = table.meta["invoke_overhead_ms"] + 1.0  # ms: a burst of load at the first measurement
    table.meta["invoke_overhead_ms"] = inflated
    table.save(out)
    cfg = dataclasses.replace(cfg, drift_tolerance=None)  # the edited overhead would read as drift
    again = profile_table(
        get_target("ort-cpu"), plan, out=out, resume=True, timing=fast_timing, refine=False, config=cfg
    )
    now = again.meta["invoke_overhead_ms"]
    assert now < inflated - 0.5
    for i, _, s in again.points(ctx):  # every point gets the over-subtracted part back
        assert s.median_ms == pytest.approx(before[i] + inflated - now)


def _scaled(table, factor: float):
    """``table`` with every stored median (and its spread) multiplied by ``factor``."""
    from edgetrim.types import LatencyStats

    for ctx in table.contexts():
        for i, o, st in table.points(ctx):
            table.record(ctx, i, o, LatencyStats(
                median_ms=st.median_ms * factor, p10_ms=st.p10_ms * factor, p90_ms=st.p90_ms * factor,
                mean_ms=st.mean_ms * factor, std_ms=st.std_ms * factor, n=st.n,
            ))  # fmt: skip
    return table


DRIFT_PLAN = [ContextPlan(OpContext(OpKind.LINEAR), 256, 256)]
# a 10x band either way: coarse timing next to other tests on a two-core machine moves points by
# 2x and more; the drift the tests plant is 100x
DRIFT_CFG = ProfileConfig(points_per_context=12, refine_rounds=0, recheck_rounds=0, drift_tolerance=9.0)


def test_resume_keeps_a_table_whose_points_still_time_as_stored(fast_timing, tmp_path) -> None:
    out = tmp_path / "t.json"
    ort = get_target("ort-cpu", threads=1)
    first = profile_table(ort, DRIFT_PLAN, out=out, timing=fast_timing, refine=False, config=DRIFT_CFG)
    before = {(i, o): s.median_ms for i, o, s in first.points(DRIFT_PLAN[0].context)}
    again = profile_table(
        ort, DRIFT_PLAN, out=out, resume=True, timing=fast_timing, refine=False, config=DRIFT_CFG
    )
    drift = again.meta["resume_drift"]
    assert drift["restarted"] is False and 3 <= drift["points"] <= DRIFT_CFG.drift_points
    assert 0.1 <= drift["low"] <= drift["ratio"] <= drift["high"] <= 10.0
    now = {(i, o): s.median_ms for i, o, s in again.points(DRIFT_PLAN[0].context)}
    # kept: nothing measured again (a lower invoke overhead found at the end re-bases all alike)
    shifts = {round(now[k] - before[k], 7) for k in before if before[k] > 0 and now[k] > 0}
    assert now.keys() == before.keys() and len(shifts) == 1
    assert again.meta["points_measured_last_run"] == 0 and not (tmp_path / "t.stale.json").exists()


def test_resume_starts_over_when_stored_points_no_longer_time_as_they_did(fast_timing, tmp_path) -> None:
    """A table measured on a much slower host (or power mode) and resumed now: mixing its points with
    new ones would make steps out of the two speeds, so every point is measured again."""
    out = tmp_path / "t.json"
    ort = get_target("ort-cpu", threads=1)
    first = profile_table(ort, DRIFT_PLAN, out=out, timing=fast_timing, refine=False, config=DRIFT_CFG)
    ctx = DRIFT_PLAN[0].context
    slow = {(i, o): 100 * s.median_ms for i, o, s in first.points(ctx)}
    _scaled(first, 100.0).save(out)

    again = profile_table(
        ort, DRIFT_PLAN, out=out, resume=True, timing=fast_timing, refine=False, config=DRIFT_CFG
    )
    drift = again.meta["resume_drift"]
    assert drift["restarted"] is True and drift["high"] < 0.1
    assert again.meta["points_measured_last_run"] == again.n_points() == first.n_points()
    now = {(i, o): s.median_ms for i, o, s in again.points(ctx)}
    assert sorted(now[k] / slow[k] for k in slow)[len(slow) // 2] < 0.1  # re-measured, not kept
    stale = load_table(drift["stale_copy"])  # the old points are kept beside the new table
    assert {(i, o): s.median_ms for i, o, s in stale.points(ctx)} == pytest.approx(slow)
    assert load_table(out).meta["resume_drift"]["restarted"] is True

    with pytest.raises(ValueError, match="drift_tolerance"):
        ProfileConfig(drift_tolerance=0.0)
