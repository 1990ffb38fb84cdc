"""Channel gates: one non-negative mask vector per coupled channel group.

Layer ``i`` is re-parameterised as ``W_i diag(alpha)``: the gate multiplies the *inputs* of every
consumer layer of the group (the conv / linear reading the group's channels, flattened features
included). A channel whose gate is exactly zero then contributes nothing anywhere, so removing it
physically (``materialize_channels``) leaves the outputs unchanged; non-zero gates are folded into the
consumer weights when the model is materialised.

Example:
    >>> groups = find_channel_groups(model, x)                     # doctest: +SKIP
    >>> gates = ChannelGates(model, groups)                        # hooks attached
    >>> loss.backward(); opt.step(); gates.project_()              # alpha >= 0, exact zeros
    >>> small = gates.materialize(model, x)                         # a smaller dense copy
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from edgetrim.compress.graph import ChannelGroup, Role, materialize_channels

logger = logging.getLogger(__name__)

__all__ = ["ChannelGates", "fold_input_scale_"]


def fold_input_scale_(module: nn.Module, local: torch.Tensor, scale: torch.Tensor) -> None:
    """Multiply the input columns ``local`` of a conv / linear weight by ``scale`` in place."""
    with torch.no_grad():
        w = module.weight  # (out, in, ...) for Linear and Conv (groups == 1)
        shape = [1, -1] + [1] * (w.dim() - 2)
        w[:, local] *= scale.to(w.dtype).view(shape)


class ChannelGates(nn.Module):
    """Mask vectors ``alpha_g >= 0`` (one per group) applied through forward pre-hooks.

    Args:
        model: the live model; hooks are registered on its consumer layers.
        groups: from ``find_channel_groups(model, example_inputs)``.
        init: initial gate value (1.0 keeps a pre-trained model's function).
    """

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup], *, init: float = 1.0) -> None:
        super().__init__()
        self.groups = list(groups)
        self.alphas = nn.ParameterList(
            [nn.Parameter(torch.full((g.num_units,), float(init))) for g in self.groups]
        )
        # consumer name -> list of (group index, local input indices, root indices)
        plan: dict[str, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
        for gi, g in enumerate(self.groups):
            for m in g.members:
                if m.role == Role.CONSUMER:
                    root = torch.tensor(m.root, dtype=torch.long) // g.unit  # channel -> mask entry
                    plan.setdefault(m.name, []).append((gi, torch.tensor(m.local, dtype=torch.long), root))
        self._plan = plan
        # consumers fed by one group, their inputs in the group's order
        self._in_order = {
            name
            for name, entries in plan.items()
            if len(entries) == 1 and torch.equal(entries[0][1], torch.arange(entries[0][1].numel()))
        }
        # in-order consumers whose inputs are exactly the group's mask entries (unit 1, every channel):
        # the scale is alpha itself, no gather in the forward and no scatter in the backward
        self._identity = {
            name
            for name in self._in_order
            if self.groups[plan[name][0][0]].unit == 1
            and torch.equal(plan[name][0][2], torch.arange(self.groups[plan[name][0][0]].num_units))
        }
        self._pos = {g.id: i for i, g in enumerate(self.groups)}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._model_ref = [model]  # a list keeps the model out of this module's children
        self.attach()

    # ---- hooks -----------------------------------------------------------------------------------
    def _scale_for(self, name: str, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        entries = self._plan[name]
        if name in self._identity and entries[0][1].numel() == width:
            alpha = self.alphas[entries[0][0]]
            return alpha if alpha.device == device and alpha.dtype == dtype else alpha.to(device, dtype)
        if name in self._in_order and entries[0][1].numel() == width:
            # the common case, one group feeding every input in order: a gather, no scatter (this runs
            # for every consumer in every forward, so it is a visible share of a compress epoch)
            gi, _, root = entries[0]
            return self.alphas[gi][root.to(device)].to(dtype)
        scale = torch.ones(width, device=device, dtype=dtype)
        for gi, local, root in self._plan[name]:
            scale = scale.index_put((local.to(device),), self.alphas[gi][root.to(device)].to(dtype))
        return scale  # (in_features,)

    def attach(self) -> None:
        """Register the pre-hooks (idempotent)."""
        if self._handles:
            return
        modules = dict(self._model_ref[0].named_modules())
        for name in self._plan:
            module = modules[name]
            is_conv = isinstance(module, nn.Conv1d | nn.Conv2d)

            def hook(mod: nn.Module, args: tuple, name: str = name, is_conv: bool = is_conv) -> tuple:
                x = args[0]
                dim = 1 if is_conv else x.dim() - 1
                scale = self._scale_for(name, x.shape[dim], x.device, x.dtype)
                shape = [1] * x.dim()
                shape[dim] = -1
                return (x * scale.view(shape), *args[1:])

            self._handles.append(module.register_forward_pre_hook(hook))

    def detach_hooks(self) -> None:
        """Remove the pre-hooks (the model computes as if every gate were 1)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    @contextlib.contextmanager
    def detached(self) -> Iterator[None]:
        """Temporarily remove the hooks (e.g. to deep-copy the model)."""
        had = bool(self._handles)
        self.detach_hooks()
        try:
            yield
        finally:
            if had:
                self.attach()

    # ---- optimisation ----------------------------------------------------------------------------
    @torch.no_grad()
    def project_(self) -> None:
        """Project every alpha onto ``alpha >= 0`` (exact zeros, no threshold)."""
        for a in self.alphas:
            a.clamp_(min=0.0)

    def widths(self) -> list[int]:
        """Channels with a non-zero gate per group (what training asks to keep)."""
        return [int((a.detach() != 0).sum()) * g.unit for g, a in zip(self.groups, self.alphas)]

    def keep_indices(
        self, widths: Sequence[int] | None = None, *, scores: Sequence[torch.Tensor] | None = None
    ) -> dict[int, torch.Tensor]:
        """Channels to keep per group: the ``widths[g]`` channels of largest score.

        Widths are in channels (rounded up to whole heads); the default keeps the non-zero gates.
        ``scores`` (per group, one value per mask entry) rank the units; the default ranks by
        ``|alpha|``. Ties keep the lower index.
        """
        widths = self.widths() if widths is None else list(widths)
        keep: dict[int, torch.Tensor] = {}
        for gi, (g, a) in enumerate(zip(self.groups, self.alphas)):
            units = max(1, min(-(-int(widths[gi]) // g.unit), g.num_units))
            rank = a.detach().abs() if scores is None else scores[gi].detach()
            order = torch.argsort(rank, descending=True, stable=True)
            kept_units = torch.sort(order[:units]).values  # (units,)
            channels = (kept_units[:, None] * g.unit + torch.arange(g.unit)[None, :]).flatten()
            keep[g.id] = channels
        return keep

    # ---- materialisation -------------------------------------------------------------------------
    def fold_into(self, clone: nn.Module) -> None:
        """Fold the gate values into the consumer weights of ``clone`` (a copy of the gated model)."""
        modules = dict(clone.named_modules())
        for name, entries in self._plan.items():
            module = modules[name]
            for gi, local, root in entries:
                fold_input_scale_(module, local, self.alphas[gi].detach()[root])

    def materialize(
        self,
        example_inputs: Sequence[torch.Tensor],
        *,
        widths: Sequence[int] | None = None,
        prepare: Callable[[nn.Module], None] | None = None,
        scores: Sequence[torch.Tensor] | None = None,
    ) -> nn.Module:
        """A physically smaller dense copy: gates folded in, channels outside ``keep_indices`` removed.

        With the default widths (the non-zero gates) the copy computes what the gated model computes.
        ``prepare(clone)`` runs on the copy first (e.g. to remove weight parametrisations); ``scores``
        rank the units to keep (see :meth:`keep_indices`).
        """
        model = self._model_ref[0]
        with self.detached():
            clone = copy.deepcopy(model)
        if prepare is not None:
            prepare(clone)
        self.fold_into(clone)
        keep = self.keep_indices(widths, scores=scores)
        keep = {gid: idx for gid, idx in keep.items() if idx.numel() < self.groups[gid].size}
        # keep_indices is keyed by group.id; positions in self.groups are what materialize expects
        keep = {self._pos[gid]: idx for gid, idx in keep.items()}
        return materialize_channels(clone, example_inputs, keep, groups=self.groups)
