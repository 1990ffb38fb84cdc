"""Grid planning and adaptive refinement (pure functions over synthetic surfaces)."""

from __future__ import annotations

import numpy as np
import pytest

from edgetrim.lookup_tables.grid import axis_widths, plan_points, refine_points
from edgetrim.types import OpContext, OpKind

from .synth import CONV, DW, LIN, residue_surface, smooth_surface, stats, table_from


def test_one_axis_kinds_get_every_width() -> None:
    for kind in (OpKind.DEPTHWISE_CONV2D, OpKind.ACTIVATION, OpKind.ADD, OpKind.POOL, OpKind.LAYER_NORM):
        pts = plan_points(OpContext(kind), 40, 7)
        assert pts == [(w, w) for w in range(1, 41)]


def test_two_axis_plan_is_dense_small_and_around_alignment() -> None:
    ws = axis_widths(300)
    assert set(range(1, 17)) <= set(ws)
    for m in (24, 32, 40, 48, 56, 64):  # both sides of every multiple of 8 up to 64, and its classes
        assert {m - 2, m - 1, m, m + 1, m + 4} <= set(ws) | {m + 4} and {m - 1, m, m + 1} <= set(ws)
    for m in (80, 96, 128, 256):
        assert {m - 1, m, m + 1} <= set(ws)
    assert set(range(293, 301)) <= set(ws)  # top classes
    assert max(ws) == 300 and ws == sorted(set(ws))
    # every residue class mod 4 is present above 16 (odd widths too, not only round ones)
    assert {w % 4 for w in ws if 16 < w <= 64} == {0, 1, 2, 3}
    pts = plan_points(CONV, 50, 30)
    assert (50, 30) in pts and (1, 1) in pts
    assert {i for i, _ in pts} == set(axis_widths(50)) and {o for _, o in pts} == set(axis_widths(30))


def test_budget_and_include() -> None:
    full = plan_points(LIN, 512, 512)
    assert len(full) > 10_000
    capped = plan_points(LIN, 512, 512, budget=2000)
    assert len(capped) <= 2000 and (512, 512) in capped and (1, 1) in capped
    with_extra = plan_points(LIN, 64, 64, include=[(57, 61)])
    assert (57, 61) in with_extra
    assert len(plan_points(DW, 300, 300, budget=100)) <= 100
    with pytest.raises(ValueError, match="max widths"):
        plan_points(LIN, 0, 4)


def _refine_until_done(fn, ctx, table, *, tol: float, rounds: int = 12) -> int:  # type: ignore[no-untyped-def]
    added = 0
    for _ in range(rounds):
        new = refine_points(table, ctx, tol=tol)
        if not new:
            return added
        for i, o in new:
            assert not table.has(ctx, i, o)
            table.record(ctx, i, o, stats(fn(i, o)))
        added += len(new)
    raise AssertionError(f"refinement did not converge in {rounds} rounds")


def test_refinement_is_silent_on_linear_surfaces() -> None:
    t = table_from(smooth_surface, LIN, [(i, o) for i in (1, 9, 33, 64) for o in (1, 9, 33, 64)])
    # bilinear surface with an i*o term: exact along rows and columns -> nothing to refine
    assert refine_points(t, LIN, tol=0.01) == []


def test_refinement_resolves_a_step_in_a_coarse_one_axis_grid() -> None:
    fn = lambda i, o: 1.0 if i <= 37 else 2.0  # noqa: E731 - one step between 37 and 38
    t = table_from(fn, DW, [(w, w) for w in (1, 16, 32, 48, 64)])
    first = refine_points(t, DW, tol=0.05)
    assert first == [(24, 24), (40, 40), (56, 56)]  # gaps beside 32 and 48, the points that miss
    _refine_until_done(fn, DW, t, tol=0.05)
    ws = [i for i, _, _ in t.points(DW)]
    assert 37 in ws and 38 in ws  # both sides of the step measured
    for w in range(1, 65):
        assert t.predict_ms(DW, w, w).ms == pytest.approx(fn(w, w), rel=1e-9)


def test_refinement_on_a_2d_surface_converges_and_lowers_the_error() -> None:
    fn = lambda i, o: 0.01 * (1 + i * o / 64) * (1.0 if o <= 20 else 1.6)  # noqa: E731
    coarse = [(i, o) for i in (1, 12, 24, 36, 48) for o in (1, 12, 24, 36, 48)]
    t = table_from(fn, CONV, coarse)

    def worst() -> float:
        return max(
            abs(t.predict_ms(CONV, i, o).ms - fn(i, o)) / fn(i, o)
            for i in range(1, 49, 5)
            for o in range(1, 49)
        )

    before = worst()
    added = _refine_until_done(fn, CONV, t, tol=0.05)
    assert added > 0 and worst() < before
    outs = {o for i, o, _ in t.points(CONV) if i == 24}
    assert {20, 21} <= outs  # the step edge is now measured on that row


def test_refine_cap_and_validation() -> None:
    t = table_from(residue_surface, CONV, [(i, o) for i in (1, 16, 32) for o in (1, 13, 32, 45, 64)])
    capped = refine_points(t, CONV, tol=0.01, max_new=3)
    assert len(capped) <= 3 and all(not t.has(CONV, i, o) for i, o in capped)
    with pytest.raises(ValueError, match="tol"):
        refine_points(t, CONV, tol=0)
    assert np.all(np.array(capped) >= 1)
