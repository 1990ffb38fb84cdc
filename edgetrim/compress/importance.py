"""How much each mask entry is worth: the scores the final width fit spends and materialisation keeps.

Two kinds, chosen by ``CompressConfig.unit_importance``:

* ``"magnitude"``: ``|alpha| x`` the consumers' input-column norm. Column norms of different layers
  are on different scales, so :func:`~edgetrim.compress.widths.fit_budget` compares groups by the
  *share* of a group's remaining score a step removes (``relative=True``).
* ``"taylor"``: the first-order Taylor estimate of the loss change when a unit is removed,
  ``(alpha_u x dCE/dalpha_u)^2`` averaged over training batches (Molchanov et al., CVPR 2019, on the
  gates). A unit's gate multiplies every consumer of its channel, so a coupled group (a residual
  stream) is scored by what removing the channel does to all of them at once. The scores are in loss
  units, comparable across groups: the fit spends them as they are (``relative=False``) and takes
  channels from whichever group loses least per millisecond saved.

Independently of how units are ranked, ``CompressConfig.allocation="distortion"`` weighs groups
against each other by measurement (:func:`distortion_importance`): each group alone is cut to a ladder
of its allowed widths (units dropped in rank order) and the shift of the model's class distribution on
training batches (KL divergence from the uncut model's) is recorded. A score share says nothing about
how much a group matters to the outputs; a cut stem or a cut residual stream moves them far more than
the same share of a late, redundant layer, and the curve says so in one unit for every group.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from edgetrim.compress.config import IMPORTANCE_KINDS
from edgetrim.compress.gates import ChannelGates

logger = logging.getLogger(__name__)

__all__ = [
    "IMPORTANCE_KINDS",
    "curve_importance",
    "distortion_curves",
    "distortion_importance",
    "ladder_counts",
    "magnitude_scores",
    "taylor_scores",
]


def magnitude_scores(gates: ChannelGates, model: nn.Module) -> list[Tensor]:
    """Per group, one score per mask entry: ``|alpha| x`` its consumers' input-column norm.

    With untrained gates ``|alpha|`` alone cannot tell units apart; the column norm can.
    """
    modules = dict(model.named_modules())
    out = []
    for gi, (g, a) in enumerate(zip(gates.groups, gates.alphas)):
        score = torch.zeros(g.num_units)
        for name, entries in gates._plan.items():
            w = modules[name].weight.detach()
            w = w.reshape(w.shape[0], w.shape[1], -1)  # (out, in, k)
            col = w.pow(2).sum(dim=(0, 2)).sqrt()  # (in,)
            for egi, local, root in entries:
                if egi == gi:
                    score.index_add_(0, root, col[local])
        out.append(a.detach().abs() * score)
    return out


def taylor_scores(
    gates: ChannelGates, model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *, max_batches: int = 32
) -> list[Tensor]:
    """Per group, per mask entry: the mean over batches of ``(alpha x dCE/dalpha)^2``.

    The model runs in eval mode (batch-norm statistics and dropout as at inference, nothing updated);
    only the gates' gradients are computed. Raises ValueError when ``batches`` is empty.
    """
    alphas = list(gates.alphas)
    sums = [torch.zeros_like(a, dtype=torch.float64) for a in alphas]
    was_training = model.training
    model.eval()
    loss_fn = nn.CrossEntropyLoss()
    n = 0
    try:
        for xb, yb in batches:
            if n >= max_batches:
                break
            grads = torch.autograd.grad(loss_fn(model(xb), yb), alphas, allow_unused=True)
            for s, a, g in zip(sums, alphas, grads):
                if g is not None:
                    s += (a.detach() * g).double().pow(2)
            n += 1
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("taylor_scores needs at least one batch of training data")
    return [(s / n).float() for s in sums]


def ladder_counts(
    num_units: int, unit: int, min_width: int, align: int, *, max_points: int = 24
) -> list[int]:
    """Unit counts worth measuring for one group: its allowed widths (multiples of ``align`` from
    ``min_width``, and the full size), at most about ``max_points`` of them evenly spread, always the
    narrowest and the full count."""
    size = num_units * unit
    ladder = [w // unit for w in range(min_width, size + 1) if w % align == 0 or w == size]
    if not ladder:
        ladder = [num_units]
    stride = max(1, -(-len(ladder) // max_points))
    return sorted({*ladder[::stride], ladder[-1]})


@torch.no_grad()
def distortion_curves(
    gates: ChannelGates,
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    ranks: Sequence[Tensor],
    counts: Sequence[Sequence[int]],
    *,
    max_batches: int = 8,
    batch_stats: bool = False,
) -> list[list[float]]:
    """Per group, per entry of ``counts[g]``: the output distortion with only that many units kept.

    Units are kept in the order of ``ranks[g]`` (the scores materialisation keeps them by), one group
    at a time with every other gate as it is. The distortion is the mean KL divergence of the model's
    class distribution from what it is with the gates as they are, on up to ``max_batches`` batches
    (eval mode). It is in one unit (nats) for every group, so a width fit can set a step in one group
    against a step in another. The gates are restored afterwards.

    With ``batch_stats`` the batch-norm layers normalise with each batch's own statistics (reference
    and cut alike; running statistics untouched): a cut shifts the mean and variance every later
    batch norm sees; with the stored statistics the outputs of the example ResNet, cut jointly, move
    3-24x further than with batch statistics (1-50x on the example MobileNetV3), a shift the first
    steps of fine-tuning re-estimate away.
    Batches of one sample are left out then (they have no statistics).
    """
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    saved = [a.detach().clone() for a in gates.alphas]
    inputs = [_to(xb, device) for xb, _ in itertools.islice(batches, max_batches)]
    if batch_stats:
        inputs = [xb for xb in inputs if not isinstance(xb, Tensor) or xb.shape[0] > 1]
    if not inputs:
        raise ValueError("distortion_curves needs at least one batch of training data")
    try:
        with batch_statistics(model, batch_stats):
            refs = [torch.log_softmax(model(xb).float(), dim=-1) for xb in inputs]
            samples = sum(ref.shape[0] for ref in refs)

            def distortion() -> float:
                total = 0.0
                for xb, ref in zip(inputs, refs):
                    out = torch.log_softmax(model(xb).float(), dim=-1)
                    total += float((ref.exp() * (ref - out)).sum())
                return total / samples

            curves = []
            for gi, (alpha, rank) in enumerate(zip(gates.alphas, ranks)):
                order = torch.argsort(rank.detach().cpu(), descending=True, stable=True).to(alpha.device)
                row = []
                for u in counts[gi]:
                    alpha.copy_(saved[gi])
                    alpha[order[int(u) :]] = 0.0
                    row.append(distortion())
                alpha.copy_(saved[gi])
                curves.append(row)
    finally:
        for a, s in zip(gates.alphas, saved):
            a.copy_(s)
        model.train(was_training)
    return curves


@contextlib.contextmanager
def batch_statistics(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Inside the block the model's batch norms normalise with each batch's own statistics; their
    running statistics and modes are put back afterwards (``enabled=False``: nothing changes)."""
    norms = _batch_norms(model) if enabled else []
    saved = [({k: v.clone() for k, v in bn.named_buffers()}, bn.training) for bn in norms]
    for bn in norms:
        bn.train()
    try:
        yield
    finally:
        for bn, (buffers, mode) in zip(norms, saved):
            for k, v in bn.named_buffers():
                v.copy_(buffers[k])
            bn.train(mode)


def _batch_norms(model: nn.Module) -> list[nn.Module]:
    """The model's batch-norm layers that keep running statistics."""
    return [
        m for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]  # fmt: skip


def curve_importance(counts: Sequence[int], curve: Sequence[float], num_units: int) -> list[float]:
    """Per-unit importances, in rank order, whose partial sums follow a measured distortion curve.

    ``curve[i]`` is the distortion with ``counts[i]`` units kept; between counts it is interpolated
    linearly, below the smallest count held, at the full count 0, and made non-increasing in the count
    (keeping more units never counts as worse). Units ``u..v-1`` then sum to the distortion saved by
    keeping ``v`` units instead of ``u``: what :func:`~edgetrim.compress.widths.fit_budget` spends with
    ``relative=False``.

    Example:
        >>> curve_importance([2, 4], [1.0, 0.5], 4)
        [0.0, 0.0, 0.25, 0.25]
    """
    pts = sorted(zip(counts, curve))
    if pts[0][0] > 0:
        pts.insert(0, (0, pts[0][1]))
    if pts[-1][0] < num_units:
        pts.append((num_units, 0.0))
    d = []
    j = 0
    for u in range(num_units + 1):
        while pts[j + 1][0] < u:
            j += 1
        (u0, d0), (u1, d1) = pts[j], pts[j + 1]
        d.append(d0 + (d1 - d0) * (u - u0) / (u1 - u0) if u1 > u0 else d1)
    for u in range(num_units - 1, -1, -1):
        d[u] = max(d[u], d[u + 1])
    return [d[u] - d[u + 1] for u in range(num_units)]


def distortion_importance(
    gates: ChannelGates,
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    ranks: Sequence[Tensor],
    min_widths: Sequence[int],
    align: Sequence[int],
    *,
    max_batches: int = 8,
    max_points: int = 24,
    time_budget_s: float = 60.0,
    batch_stats: bool = False,
) -> list[list[float]]:
    """Per group, per-unit importances in ``ranks`` order from the group's measured distortion curve.

    What a width fit spends when it weighs groups by what cutting them does to the outputs
    (``CompressConfig.allocation="distortion"``): a step's loss is the distortion it adds, in nats,
    comparable across groups (``fit_budget(relative=False)``). Each group is measured alone at up to
    ``max_points`` of its allowed widths (:func:`ladder_counts`) on up to ``max_batches`` batches.
    When one pass over those batches says the whole measurement would take longer than
    ``time_budget_s`` (a large model with many groups), it uses fewer batches (down to 2), then fewer
    widths per group (down to 6), and logs what it kept. ``batch_stats``: batch norms normalise with
    each batch's own statistics (see :func:`distortion_curves`).
    """
    inputs = list(itertools.islice(batches, max_batches))
    if not inputs:
        raise ValueError("distortion_importance needs at least one batch of training data")

    def ladders(points: int) -> list[list[int]]:
        return [
            ladder_counts(g.num_units, g.unit, lo, a, max_points=points)
            for g, lo, a in zip(gates.groups, min_widths, align)
        ]

    counts = ladders(max_points)
    per_batch = _forward_seconds(model, [xb for xb, _ in inputs]) / len(inputs)
    passes = sum(len(c) for c in counts)
    n_batches, points = len(inputs), max_points
    if passes * n_batches * per_batch > time_budget_s:
        n_batches = max(2, min(n_batches, int(time_budget_s / (passes * per_batch))))
        if passes * n_batches * per_batch > time_budget_s:
            points = max(6, int(max_points * time_budget_s / (passes * n_batches * per_batch)))
            counts = ladders(points)
        logger.info(
            "output distortion measured on %d batches at up to %d widths per group (a pass over %d "
            "batches takes %.2f s, %d groups)",
            n_batches, points, len(inputs), per_batch * len(inputs), len(counts),
        )  # fmt: skip
    curves = distortion_curves(
        gates, model, inputs, ranks, counts, max_batches=n_batches, batch_stats=batch_stats
    )
    return [curve_importance(c, d, g.num_units) for c, d, g in zip(counts, curves, gates.groups)]


@torch.no_grad()
def _forward_seconds(model: nn.Module, inputs: Sequence[Tensor]) -> float:
    """Seconds for one eval-mode pass over ``inputs`` (the mode is restored)."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        t0 = time.perf_counter()
        for xb in inputs:
            model(_to(xb, device))
        return time.perf_counter() - t0
    finally:
        model.train(was_training)


def _to(xb: Any, device: torch.device) -> Any:
    """A batch's inputs on the model's device (tensors only; other inputs go to the model as they are)."""
    return xb.to(device) if isinstance(xb, Tensor) else xb
