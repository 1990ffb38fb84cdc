"""Interpolation: exact at measured points, the paper's bilinear formula, staircases, extrapolation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetrim.lookup_tables.grid import axis_widths, plan_points
from edgetrim.lookup_tables.interpolation import (
    CANDIDATE_RULES,
    LINEAR,
    AxisRule,
    RuleKind,
    SurfaceInterpolator,
    bilinear_ms,
    envelope_1d,
    envelope_ms,
    interp_1d,
    loo_errors,
    select_rule,
)

from .synth import CONV, DW, alignment_factor, residue_surface, smooth_surface, step_surface, table_from

# Odd, unaligned widths next to round ones: where a blurred step would show.
QUERY_WIDTHS = [
    5,
    13,
    21,
    26,
    27,
    29,
    34,
    35,
    37,
    42,
    43,
    45,
    50,
    51,
    53,
    58,
    59,
    61,
    64,
    66,
    67,
    69,
    70,
    71,
    72,
]


def test_bilinear_matches_the_paper_formula_on_a_non_uniform_grid() -> None:
    in_axis = np.array([1.0, 4.0, 10.0])
    out_axis = np.array([2.0, 3.0, 9.0])
    ms = np.arange(9, dtype=float).reshape(3, 3) ** 1.5
    x, y = 6.0, 5.0  # cell in [4, 10] x [3, 9]
    tx, ty = (x - 4) / 6, (y - 3) / 6
    t1 = ms[1, 1] + (ms[2, 1] - ms[1, 1]) * tx
    t2 = ms[1, 2] + (ms[2, 2] - ms[1, 2]) * tx
    assert bilinear_ms(in_axis, out_axis, ms, x, y) == pytest.approx(t1 + (t2 - t1) * ty, rel=1e-12)
    for a, xa in enumerate(in_axis):
        for b, yb in enumerate(out_axis):
            assert bilinear_ms(in_axis, out_axis, ms, xa, yb) == pytest.approx(ms[a, b], rel=1e-12)


def test_separable_linear_equals_bilinear_on_a_product_grid() -> None:
    ins, outs = [1, 3, 8, 20], [2, 5, 16, 17, 40]
    ms = np.array([[smooth_surface(i, o) ** 1.3 for o in outs] for i in ins])
    pts = [(i, o, ms[a, b]) for a, i in enumerate(ins) for b, o in enumerate(outs)]
    interp = SurfaceInterpolator(pts, one_axis=False, in_rule=LINEAR, out_rule=LINEAR)
    for x, y in [(2, 3), (7, 30), (15, 16), (19, 39)]:
        assert interp.predict(x, y)[0] == pytest.approx(
            bilinear_ms(np.array(ins), np.array(outs), ms, x, y), rel=1e-12
        )


@pytest.mark.parametrize("rule", CANDIDATE_RULES, ids=str)
def test_every_rule_is_exact_at_measured_widths(rule: AxisRule) -> None:
    rng = np.random.default_rng(0)
    xs = np.unique(rng.integers(1, 120, size=40))
    ys = rng.random(xs.size) + 0.05
    v, ext = interp_1d(xs, ys, xs, rule)
    np.testing.assert_allclose(v, ys, rtol=1e-12)  # exact: a measured point is its own bracket
    assert not ext.any()


@pytest.mark.parametrize("fn", [residue_surface, step_surface, smooth_surface])
def test_table_is_exact_at_every_measured_point(fn) -> None:  # type: ignore[no-untyped-def]
    pts = plan_points(CONV, 40, 40)
    t = table_from(fn, CONV, pts)
    for i, o in pts[::7]:
        p = t.predict_ms(CONV, i, o)
        assert p.ms == pytest.approx(fn(i, o), rel=1e-12)
        assert not p.extrapolated
    interp = t.interpolator(CONV)
    for i, o in pts[::11]:  # the interpolator itself, not the stored-point shortcut
        assert interp.predict(i, o)[0] == pytest.approx(fn(i, o), rel=1e-9)


def test_rule_selection_recognises_both_staircases_and_smooth_data() -> None:
    xs = np.array(axis_widths(96))  # the planner's sparse axis: classes must be told apart
    residue = select_rule([(xs, np.array([alignment_factor(int(w)) * (1 + w / 50) for w in xs]))])
    assert residue.kind is RuleKind.RESIDUE and residue.period >= 8
    assert select_rule([(xs, np.array([step_surface(4, int(w)) for w in xs]))]) == AxisRule(RuleKind.STEP, 8)
    assert select_rule([(xs, 0.1 + 0.01 * xs)]) == LINEAR
    # With every width measured, a residue rule reproduces a step surface exactly as well.
    every = np.arange(1, 97)
    rule = select_rule([(every, np.array([step_surface(4, int(w)) for w in every]))])
    assert loo_errors(every, np.array([step_surface(4, int(w)) for w in every]), rule).max() < 1e-9


@pytest.mark.parametrize(
    ("name", "fn"),
    [("residue (onnxruntime depthwise)", residue_surface), ("step (XNNPACK pointwise)", step_surface)],
)
def test_staircase_surfaces_predicted_at_unmeasured_odd_and_round_widths(name: str, fn) -> None:  # type: ignore[no-untyped-def]
    t = table_from(fn, CONV, plan_points(CONV, 72, 72))
    errs = []
    for i in (3, 17, 33, 50, 70):
        for o in QUERY_WIDTHS:
            p = t.predict_ms(CONV, i, o)
            assert not p.extrapolated
            errs.append(abs(p.ms - fn(i, o)) / fn(i, o))
    # The synthetic surfaces are exactly representable by the chosen rule: errors are rounding only.
    assert max(errs) < 1e-6, name


def test_plain_bilinear_would_blur_the_steps() -> None:
    """Guard that the staircase test is meaningful: linear interpolation misses by >= 30%."""
    t = table_from(residue_surface, CONV, plan_points(CONV, 72, 72))
    pts = [(i, o, s.median_ms) for i, o, s in t.points(CONV)]
    naive = SurfaceInterpolator(pts, one_axis=False, in_rule=LINEAR, out_rule=LINEAR)
    worst = max(
        abs(naive.predict(33, o)[0] - residue_surface(33, o)) / residue_surface(33, o) for o in QUERY_WIDTHS
    )
    assert worst > 0.3


def test_one_axis_residue_pattern_with_missing_widths() -> None:
    fn = lambda w: 0.02 * (1 + w / 32) * alignment_factor(w)  # noqa: E731
    measured = [w for w in range(1, 97) if w % 5 != 0]  # every fifth width never measured
    t = table_from(lambda i, o: fn(i), DW, [(w, w) for w in measured])
    for w in (5, 15, 25, 35, 40, 45, 55, 60, 65, 75, 80, 85, 95):
        assert t.predict_ms(DW, w, w).ms == pytest.approx(fn(w), rel=1e-9)


def test_extrapolation_is_linear_within_the_class_flagged_and_clamped() -> None:
    xs = np.array([8, 9, 16, 17, 24, 25])
    ys = np.array([1.0, 3.0, 2.0, 4.0, 3.0, 5.0])
    v, ext = interp_1d(xs, ys, np.array([32, 33, 25]), AxisRule(RuleKind.RESIDUE, 8))
    np.testing.assert_allclose(v, [4.0, 6.0, 5.0])  # class 0: 2, 3 -> 4; class 1: 4, 5 -> 6
    assert ext.tolist() == [True, True, False]
    v, ext = interp_1d(np.array([10, 20]), np.array([1.0, 5.0]), np.array([1]), LINEAR)
    assert v[0] == 0.0 and ext[0]  # the line goes negative below 10: clamped at 0
    t = table_from(step_surface, CONV, plan_points(CONV, 40, 40))
    p = t.predict_ms(CONV, 48, 50)
    assert p.extrapolated and p.ms > 0
    assert p.ms == pytest.approx(step_surface(48, 50), rel=0.05)  # steps are linear in i*ceil(o/8)


def test_fast_leave_one_out_equals_the_direct_computation() -> None:
    rng = np.random.default_rng(1)
    for _ in range(60):
        xs = np.unique(rng.integers(1, 70, size=int(rng.integers(3, 25))))
        if xs.size < 3:
            continue
        ys = rng.random(xs.size) + 0.1
        for rule in CANDIDATE_RULES:
            direct = []
            for k in range(1, xs.size - 1):
                keep = np.arange(xs.size) != k
                direct.append(abs(interp_1d(xs[keep], ys[keep], xs[k : k + 1], rule)[0][0] - ys[k]) / ys[k])
            np.testing.assert_allclose(loo_errors(xs, ys, rule), direct, rtol=1e-9, atol=1e-12)


def test_surface_matches_point_predictions_and_envelope_is_monotone_lower() -> None:
    t = table_from(step_surface, CONV, plan_points(CONV, 48, 48)[::2])  # scattered: half the plan
    ia, oa, ms = t.surface_ms(CONV)
    assert ms.shape == (48, 48) and ia[0] == 1 and oa[-1] == 48
    for i, o in [(1, 1), (7, 33), (48, 48), (20, 41)]:
        assert ms[i - 1, o - 1] == pytest.approx(t.interpolator(CONV).predict(i, o)[0], rel=1e-12)
    env = envelope_ms(ms)
    assert (env <= ms + 1e-12).all()
    assert (np.diff(env, axis=0) >= -1e-12).all() and (np.diff(env, axis=1) >= -1e-12).all()


def test_envelope_1d_is_the_cheapest_width_at_or_above_at_step_edges() -> None:
    w = np.arange(1, 65)
    line = np.array([alignment_factor(int(x)) * (1 + x / 16) for x in w])
    env = envelope_1d(line)
    assert (env <= line + 1e-12).all() and (np.diff(env) >= 0).all()
    for m in (8, 16, 32, 64):  # fast side of every step: the envelope touches the line
        assert env[m - 1] == pytest.approx(line[m - 1])
    assert np.count_nonzero(np.diff(env) > 0) > 40  # a slope between steps, not flat plateaus
    steps = np.array([step_surface(4, int(x)) for x in w])
    env = envelope_1d(steps)
    assert (env <= steps + 1e-12).all() and env[63] == pytest.approx(steps[63])


def test_repeated_queries_use_a_dense_cache_with_identical_answers() -> None:
    t = table_from(residue_surface, CONV, plan_points(CONV, 40, 40))
    interp = t.interpolator(CONV)
    _, _, ref = t.surface_ms(CONV)
    queries = [(i, o) for i in range(1, 41, 3) for o in range(1, 41, 2)]  # > _DENSE_AFTER calls
    got = np.array([interp.predict(i, o)[0] for i, o in queries])
    np.testing.assert_allclose(got, [ref[i - 1, o - 1] for i, o in queries], rtol=1e-12)
    assert interp._dense is not None
    assert interp.predict(45, 10)[1] and interp.predict(10, 45)[1]  # outside: still flagged


@pytest.mark.parametrize("ctx", [CONV, DW])
def test_a_whole_surface_from_width_one_becomes_the_dense_cache(ctx) -> None:
    """A caller's surface over every width from 1 (a cost model's staircase) is kept as the dense grid:
    the same values a fresh interpolator builds from its own queries, NaN below the measured range."""
    pts = plan_points(ctx, 40, 1 if ctx.one_axis else 40)
    t, fresh_t = table_from(residue_surface, ctx, pts), table_from(residue_surface, ctx, pts)
    interp, fresh = t.interpolator(ctx), fresh_t.interpolator(ctx)
    interp.predict_grid(np.arange(2, 60), np.arange(1, 60))  # not from width 1: nothing kept
    assert interp._dense is None
    _, _, surface = t.surface_ms(ctx, np.arange(1, 55), np.arange(1, 50 if not ctx.one_axis else 2))
    assert interp._dense is not None
    surface[:] = -1.0  # the caller's array is its own
    expected = fresh._dense_grid()
    assert expected is not None and interp._dense.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(interp._dense), np.isnan(expected))
    np.testing.assert_allclose(interp._dense, expected, rtol=1e-12, equal_nan=True)
    assert (interp._dense[np.isfinite(interp._dense)] > 0).all()


@settings(max_examples=40, deadline=None)
@given(
    pts=st.dictionaries(
        st.tuples(st.integers(1, 40), st.integers(1, 40)), st.floats(0.001, 10.0), min_size=1, max_size=60
    )
)
def test_scattered_points_are_reproduced_exactly(pts: dict[tuple[int, int], float]) -> None:
    """Any scattered set (a partial or resumed profile): every measured point predicts itself."""
    interp = SurfaceInterpolator([(i, o, v) for (i, o), v in pts.items()], one_axis=False)
    for (i, o), v in list(pts.items())[:15]:
        ms, ext = interp.predict(i, o)
        assert ms == pytest.approx(v, rel=1e-9) and not ext
    env = envelope_ms(interp.predict_grid(np.arange(1, 41), np.arange(1, 41))[0])
    assert (np.diff(env, axis=0) >= -1e-12).all() and (np.diff(env, axis=1) >= -1e-12).all()
