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
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from edgetrim.compress.config import IMPORTANCE_KINDS
from edgetrim.compress.gates import ChannelGates

__all__ = ["IMPORTANCE_KINDS", "magnitude_scores", "taylor_scores"]


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
