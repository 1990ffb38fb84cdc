"""Final widths chosen with the real (staircase) table.

Training asks for a width per group (its non-zero gates). The real table then decides:

1. :func:`fast_side_widths`: for each group take the cheapest width at or above the request, the widest
   among equally cheap ones. Channels within a latency step cost nothing extra, so they are kept.
2. :func:`fit_budget`: while the predicted cost is over budget, move the group whose next step down
   buys the most cost per importance lost (the least important units go first) to the widest width
   of that cheaper step. Importance is counted as the share of the group's remaining importance
   (``relative``, for scores on per-group scales such as weight magnitudes) or as it is (scores on one
   scale across groups, such as the Taylor estimate of the loss change or the measured output
   distortion of :func:`edgetrim.compress.importance.distortion_importance`, compress' default). A step is a whole latency
   step, so the last one can land well under the budget; what it leaves is spent again on the
   channels the descent took (most importance back per cost added first). Should no single step be
   cheaper while the cost is still over (a table that is not monotone in width, e.g. a noisy
   profile), it grows the widths back from the narrowest ones instead, as long as they fit.
   ``weights`` (per group, default 1) is a prior on what a group is worth against the others: the
   importance a step removes is multiplied by its group's weight. Weighting groups by their dense
   cost makes every step "worth" about what it saves, which cuts every group by about the same share
   and leaves the choice to the staircase (a uniform width multiplier made hardware-aware).
3. :func:`grow_to_budget`: when training asked for less than the budget pays for, widen the groups
   again, step by step on the fast side, as long as they fit (:func:`fit_widths` picks 2 or 3).

Both take cost callables, so they serve latency (ms) and FLOPs budgets alike. ``align`` (per group)
restricts the widths to multiples of it (plus the group's full size): onnxruntime's CPU convs run in
the NCHWc blocked layout only when channel counts are multiples of the block, and an unaligned conv
inside a model often measures as slow as a much wider aligned one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from edgetrim.errors import BudgetError

logger = logging.getLogger(__name__)

__all__ = [
    "fast_side_widths",
    "fit_budget",
    "fit_widths",
    "grow_to_budget",
    "narrowest_widths",
    "smallest_reachable",
]

# partial(g, widths): the part of the cost that depends on group g's width; total(widths): all of it.
PartialCost = Callable[[int, Sequence[int]], float]
TotalCost = Callable[[Sequence[int]], float]

_EPS = 1e-12


def _with(widths: Sequence[int], g: int, w: int) -> list[int]:
    out = list(widths)
    out[g] = w
    return out


def _ok(w: int, align: int, size: int) -> bool:
    return w % align == 0 or w == size


def fast_side_widths(
    requested: Sequence[int],
    units: Sequence[int],
    sizes: Sequence[int],
    partial: PartialCost,
    *,
    min_widths: Sequence[int] | None = None,
    align: Sequence[int] | None = None,
) -> list[int]:
    """Per group, the cheapest width >= the requested one (ties: the widest). Widths in channels.

    Example:
        >>> cost = lambda g, w: [1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 3.0][w[g]]  # step at 8
        >>> fast_side_widths([3], [1], [8], cost)
        [8]
    """
    floor = list(units) if min_widths is None else list(min_widths)
    widths = [max(f, min(s, -(-int(r) // u) * u)) for r, u, s, f in zip(requested, units, sizes, floor)]
    if align is not None:
        for g, a in enumerate(align):
            while not _ok(widths[g], a, sizes[g]):
                widths[g] += units[g]
    for g in range(len(widths)):
        best_w, best_c = widths[g], partial(g, widths)
        for w in range(widths[g] + units[g], sizes[g] + 1, units[g]):
            if align is not None and not _ok(w, align[g], sizes[g]):
                continue
            c = partial(g, _with(widths, g, w))
            if c <= best_c + _EPS:
                best_w, best_c = w, min(c, best_c)
        widths[g] = best_w
    return widths


def _next_step_down(
    g: int, widths: Sequence[int], unit: int, partial: PartialCost, floor: int, align: int = 1
) -> tuple[int, float] | None:
    """Widest (aligned) width in ``[floor, widths[g])`` that is strictly cheaper, and the cost it saves."""
    here = partial(g, widths)
    for w in range(widths[g] - unit, floor - 1, -unit):
        if w % align:
            continue
        c = partial(g, _with(widths, g, w))
        if c < here - _EPS:
            return w, here - c
    return None


def fit_budget(
    widths: Sequence[int],
    units: Sequence[int],
    importance: Sequence[Sequence[float]],
    partial: PartialCost,
    total: TotalCost,
    budget: float,
    *,
    what: str = "latency",
    unit_name: str = "ms",
    min_widths: Sequence[int] | None = None,
    align: Sequence[int] | None = None,
    relative: bool = True,
    weights: Sequence[float] | None = None,
) -> list[int]:
    """Shrink widths until ``total(widths) <= budget``, cheapest accuracy loss per cost saved first,
    then widen them again (never past ``widths``) into what the last step left under the budget.

    Args:
        widths: starting widths (channels), typically from :func:`fast_side_widths`.
        units: channels per mask entry per group.
        importance: per group, unit importances sorted in decreasing order (e.g. ``|alpha|``).
        partial, total: cost callables.
        budget: the cost that must not be exceeded.
        relative: a step loses the share of its group's remaining importance it removes (scores on
            per-group scales); False: the importance it removes, as is (scores comparable across groups).
        weights: per group, a factor on the importance its steps remove or add back (default 1).

    Raises:
        BudgetError: no group can shrink further, the cost is still over budget and so is every group
        at its narrowest width (says the cost where the descent stopped, also as ``smallest``).
    """
    widths = list(widths)
    start = list(widths)
    floor = list(units) if min_widths is None else list(min_widths)
    weight = [1.0] * len(widths) if weights is None else [float(w) for w in weights]
    cum = []
    for imp in importance:
        acc, c = 0.0, [0.0]
        for v in imp:
            acc += float(v)
            c.append(acc)
        cum.append(c)
    while total(widths) > budget + _EPS:
        best: tuple[float, int, int] | None = None
        for g in range(len(widths)):
            step = _next_step_down(g, widths, units[g], partial, floor[g], 1 if align is None else align[g])
            if step is None:
                continue
            w, saved = step
            u_now, u_new = widths[g] // units[g], w // units[g]
            # share of the group's *remaining* importance that would go: thinning an already thin
            # group costs more than trimming the tail of a wide one
            kept = cum[g][u_now]
            if not relative:
                lost = kept - cum[g][u_new]
            elif kept > 0:
                lost = (kept - cum[g][u_new]) / kept
            else:
                lost = (u_now - u_new) / u_now
            score = lost * weight[g] / saved
            if best is None or score < best[0]:
                best = (score, g, w)
        if best is None:
            grown = _grow_from_floor(
                widths, units, cum, partial, total, budget, floor, align, relative, weight
            )
            if grown is not None:
                return grown
            reached = total(widths)
            raise BudgetError(
                f"{what} budget {budget:.4g} {unit_name} is below the smallest reachable {what} "
                f"{reached:.4g} {unit_name} for this model and table; raise the budget",
                smallest=reached,
            )
        widths[best[1]] = best[2]
    # The last step can overshoot (a whole latency step at once): spend what it left on the channels
    # the descent took, most importance back per cost first.
    refilled = _grow_from_floor(start, units, cum, partial, total, budget, widths, align, relative, weight)
    return widths if refilled is None else refilled


def grow_to_budget(
    widths: Sequence[int],
    units: Sequence[int],
    sizes: Sequence[int],
    partial: PartialCost,
    total: TotalCost,
    budget: float,
    *,
    align: Sequence[int] | None = None,
) -> list[int]:
    """Widen ``widths`` while they fit ``budget``: the other direction of :func:`fit_budget`.

    Training can ask for fewer channels than the budget pays for (gates that reached zero). Then the
    widths grow back, one group at a time to the fast side of its next step up to its full ``size``,
    the group gaining the largest share of its channels per cost added first. Channels brought back
    had zero gates: they start dead and train in the fine-tune. Returns ``widths`` unchanged when
    they are over the budget already.
    """
    if total(widths) > budget + _EPS:
        return list(widths)
    cum = [[float(k) for k in range(size // u + 1)] for size, u in zip(sizes, units)]  # every channel alike
    grown = _grow_from_floor(sizes, units, cum, partial, total, budget, widths, align)
    return list(widths) if grown is None else grown


def fit_widths(
    widths: Sequence[int],
    units: Sequence[int],
    sizes: Sequence[int],
    importance: Sequence[Sequence[float]],
    partial: PartialCost,
    total: TotalCost,
    budget: float,
    *,
    what: str = "latency",
    unit_name: str = "ms",
    min_widths: Sequence[int] | None = None,
    align: Sequence[int] | None = None,
    relative: bool = True,
    weights: Sequence[float] | None = None,
) -> list[int]:
    """Widths within ``budget`` from ``widths``: :func:`fit_budget` when they are over it,
    :func:`grow_to_budget` when they are under (the budget is what the run may spend)."""
    if total(widths) > budget + _EPS:
        return fit_budget(
            widths, units, importance, partial, total, budget, what=what, unit_name=unit_name,
            min_widths=min_widths, align=align, relative=relative, weights=weights,
        )  # fmt: skip
    return grow_to_budget(widths, units, sizes, partial, total, budget, align=align)


def _grow_from_floor(
    ceiling: Sequence[int],
    units: Sequence[int],
    cum: Sequence[Sequence[float]],
    partial: PartialCost,
    total: TotalCost,
    budget: float,
    floor: Sequence[int],
    align: Sequence[int] | None,
    relative: bool = True,
    weights: Sequence[float] | None = None,
) -> list[int] | None:
    """Widths within ``budget`` grown from the narrowest ones, or None when even those are over.

    The fallback for a descent that stopped above the budget: on a table that is not monotone in
    width (a noisy profile) every single-group step down can cost more while a joint one costs less.
    From every group at the fast side of its narrowest (aligned) width, widen one group at a time to
    the fast side of its next step, most importance share gained per cost added first, up to
    ``ceiling``.
    """
    aligns = [1] * len(units) if align is None else list(align)
    widths = fast_side_widths(floor, units, ceiling, partial, min_widths=floor, align=align)
    if total(widths) > budget + _EPS:
        return None
    while True:
        best: tuple[float, int, int] | None = None
        for g in range(len(widths)):
            ups = [
                w
                for w in range(widths[g] + units[g], ceiling[g] + 1, units[g])
                if _ok(w, aligns[g], ceiling[g])
            ]
            if not ups:
                continue
            here = partial(g, widths)
            step = partial(g, _with(widths, g, ups[0]))
            w = ups[0]
            for u in ups[1:]:  # the fast side: the widest width of the same step
                if partial(g, _with(widths, g, u)) > step + _EPS:
                    break
                w = u
            if total(_with(widths, g, w)) > budget + _EPS:
                continue
            whole = cum[g][-1] if relative else 1.0
            u_now, u_new = widths[g] // units[g], w // units[g]
            gained = (
                (cum[g][u_new] - cum[g][u_now]) / whole
                if whole > 0
                else (u_new - u_now) / max(len(cum[g]) - 1, 1)
            )
            added = max(step - here, 0.0)
            score = gained * (1.0 if weights is None else weights[g]) / (added + _EPS)
            if best is None or score > best[0]:
                best = (score, g, w)
        if best is None:
            return widths
        widths[best[1]] = best[2]


def smallest_reachable(
    units: Sequence[int],
    sizes: Sequence[int],
    partial: PartialCost,
    total: TotalCost,
    *,
    min_widths: Sequence[int] | None = None,
    align: Sequence[int] | None = None,
) -> float:
    """The cost with every group at its narrowest fast-side width (:func:`narrowest_widths`)."""
    return total(narrowest_widths(units, sizes, partial, min_widths=min_widths, align=align))


def narrowest_widths(
    units: Sequence[int],
    sizes: Sequence[int],
    partial: PartialCost,
    *,
    min_widths: Sequence[int] | None = None,
    align: Sequence[int] | None = None,
) -> list[int]:
    """Every group at its narrowest fast-side width (``min_widths``, rounded up a step): the smallest
    structure the table allows."""
    start = list(units) if min_widths is None else list(min_widths)
    return fast_side_widths(start, units, sizes, partial, min_widths=min_widths, align=align)
