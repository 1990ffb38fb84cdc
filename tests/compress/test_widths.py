"""Width selection on a staircase cost (pure functions, hand-built costs with known answers)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from edgetrim.compress.widths import fast_side_widths, fit_budget, smallest_reachable
from edgetrim.errors import BudgetError


def stair(w: int) -> float:
    return float(math.ceil(w / 8))  # 1..8 cost 1, 9..16 cost 2, ...


def partial(g: int, widths) -> float:
    return stair(widths[g]) * (g + 1)  # group 1 costs twice as much per step


def total(widths) -> float:
    return sum(partial(g, widths) for g in range(len(widths)))


def test_fast_side_takes_the_widest_width_of_the_requested_step() -> None:
    assert fast_side_widths([3, 9], [1, 1], [32, 32], partial) == [8, 16]
    assert fast_side_widths([17, 32], [1, 1], [20, 32], partial) == [20, 32]  # capped at the size
    assert fast_side_widths([3], [4], [32], partial) == [8]  # whole units (heads of 4)


def test_fit_budget_moves_to_the_fast_side_of_cheaper_steps_until_it_fits() -> None:
    imp = [[1.0] * 32, [1.0] * 32]
    widths = fit_budget([32, 32], [1, 1], imp, partial, total, budget=6.0)
    assert total(widths) <= 6.0
    assert all(w % 8 == 0 for w in widths)  # never on the slow side of a step


def test_fit_budget_respects_minimum_widths_and_reports_the_floor() -> None:
    imp = [[1.0] * 32, [1.0] * 32]
    assert smallest_reachable([1, 1], [32, 32], partial, total, min_widths=[9, 1]) == pytest.approx(4.0)
    with pytest.raises(BudgetError, match="smallest reachable latency 4") as info:
        fit_budget([32, 32], [1, 1], imp, partial, total, budget=3.5, min_widths=[9, 1])
    assert info.value.smallest == pytest.approx(4.0)  # where it stopped, for a caller to aim above


def test_aligned_widths_are_multiples_of_the_block_or_the_full_size() -> None:
    # linear cost (no steps): unaligned, the fit would stop at any width; aligned, only at 8, 16, 20
    def cost(g, w):
        return float(w[g])

    def total(w):
        return float(sum(w))

    assert fast_side_widths([11], [1], [20], cost, align=[8]) == [16]
    assert fast_side_widths([17], [1], [20], cost, align=[8]) == [20]
    imp = [[1.0] * 20]
    fitted = fit_budget([20], [1], imp, cost, total, 13.0, align=[8])
    assert fitted == [8]  # 16 is over 13; the widest aligned width that fits
    assert fit_budget([20], [1], imp, cost, total, 13.0) == [13]  # unaligned for comparison
    with pytest.raises(BudgetError):
        fit_budget([20], [1], imp, cost, total, 7.0, align=[8])  # nothing aligned below 8
    assert smallest_reachable([1], [20], cost, total, align=[8]) == 8.0


def _bumpy(w: Sequence[int]) -> float:
    # a table that is not monotone in width (as a noisy profile can be): 10 at (8, 8), 12 when only
    # one side narrows, 1 when both do
    return 10.0 if tuple(w) == (8, 8) else 12.0 if 8 in w else 1.0


def test_fit_budget_gets_out_of_a_dip_by_growing_from_the_floor() -> None:
    imp = [[1.0] * 8, [1.0] * 8]
    # every single-group step down from (8, 8) costs more; the joint one costs less
    assert _bumpy([7, 8]) > _bumpy([8, 8]) and _bumpy([8, 7]) > _bumpy([8, 8])
    widths = fit_budget([8, 8], [1, 1], imp, lambda g, w: _bumpy(w), _bumpy, budget=6.0)
    assert widths == [7, 7]  # grown from (1, 1) while it fits; 8 on either side would cost 12
    with pytest.raises(BudgetError):  # below the floor's cost nothing helps
        fit_budget([8, 8], [1, 1], imp, lambda g, w: _bumpy(w), _bumpy, budget=0.5)


def test_widths_under_the_budget_grow_back_to_the_fast_side_of_steps_that_fit() -> None:
    from edgetrim.compress.widths import fit_widths, grow_to_budget

    grown = grow_to_budget([8, 8], [1, 1], [32, 32], partial, total, budget=7.0)
    assert total(grown) <= 7.0 and grown[0] > 8  # group 0's steps are cheaper: it grows first
    assert all(w % 8 == 0 for w in grown)  # every width the widest of its step
    # nothing narrower than it started, nothing wider than the group
    assert grow_to_budget([8, 8], [1, 1], [32, 32], partial, total, budget=100.0) == [32, 32]
    assert grow_to_budget([16, 16], [1, 1], [32, 32], partial, total, budget=2.0) == [16, 16]  # over: as is
    imp = [[1.0] * 32, [1.0] * 32]
    # fit_widths shrinks what is over the budget and grows what is under
    assert total(fit_widths([32, 32], [1, 1], [32, 32], imp, partial, total, 6.0)) <= 6.0
    assert fit_widths([8, 8], [1, 1], [32, 32], imp, partial, total, 7.0) == grown


def test_budget_left_by_an_overshooting_step_is_spent_again() -> None:
    # group 0: one step (10 above 8 channels, 1 at or below); group 1: 1 per channel. The descent
    # trims group 1 to 18 channels, then group 0's step (the cheapest importance per cost by then)
    # lands at 19, five under the budget: group 1 gets those five channels back.
    def cost(g: int, w: Sequence[int]) -> float:
        return (10.0 if w[0] > 8 else 1.0) if g == 0 else float(w[1])

    def whole(w: Sequence[int]) -> float:
        return cost(0, w) + cost(1, w)

    imp = [[1.0] * 16, [1.0] * 32]
    widths = fit_budget([16, 32], [1, 1], imp, cost, whole, budget=24.0)
    assert widths == [8, 23] and whole(widths) == 24.0
    # never wider than where the descent started
    assert fit_budget([16, 20], [1, 1], imp, cost, whole, budget=24.0) == [8, 20]


def test_group_weights_set_a_prior_on_what_each_group_is_worth() -> None:
    # group 1 costs three times as much per channel. Unweighted, every group's share is worth the
    # same, so the expensive group is cut first and hardest; weighted by the dense cost of each
    # group, a share of a group is worth what it costs, and both are cut to the same width.
    per_channel = (1.0, 3.0)

    def cost(g: int, w: Sequence[int]) -> float:
        return per_channel[g] * 8 * math.ceil(w[g] / 8)

    def whole(w: Sequence[int]) -> float:
        return cost(0, w) + cost(1, w)

    imp = [[1.0] * 32, [1.0] * 32]
    plain = fit_budget([32, 32], [1, 1], imp, cost, whole, budget=64.0)
    weighted = fit_budget([32, 32], [1, 1], imp, cost, whole, budget=64.0, weights=[32.0, 96.0])
    assert whole(plain) <= 64.0 and whole(weighted) <= 64.0
    assert plain[0] > plain[1]  # the expensive group goes first
    assert weighted == [16, 16]  # half of each
