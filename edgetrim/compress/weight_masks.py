"""Binary weight masks held exactly through optimisers: the one weight-mask mechanism of edgetrim.

A ``WeightMasks`` object owns one boolean mask per masked parameter (by default every conv / linear
weight; biases and normalisation layers stay dense, as in the GraNet and RigL reference code). Once
``attach(optimizer)``-ed it

* zeroes the gradient at masked positions *before* every ``optimizer.step()`` (so momentum and Adam
  moments never accumulate there), and
* re-applies the mask to the weights and to every optimiser state tensor shaped like the weight
  (SGD ``momentum_buffer``, Adam/AdamW ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``) *after* it.

Pruned weights and their optimiser state are therefore exactly zero under SGD (momentum, weight decay,
Nesterov), Adam and AdamW. Masks are applied in place on the real weight tensor (not through a
``weight_orig * mask`` re-parametrisation), so ``weight.grad`` stays *dense*: gradient regrowth (RigL,
GraNet) sees dL/dW at zero weights. Read it before ``optimizer.step()``.

``set_masks`` changes masks (drop / regrow): positions that become active start at zero with zeroed
optimiser state; positions kept across the change keep their value.

Freezing uses the same mechanism (``MaskMode.FREEZE``): masked-out positions are held at their initial
values instead of zero, Θ = m ⊙ ϑ + (1 - m) ⊙ Θ0 (FreezeNet).

N:M masks (``nm_mask``) keep N of every M consecutive weights along the *input* (reduction) dimension:
2:4 keeps two nonzeros in each block of four input channels, 1:4 keeps one. (The survey's "at least N
zeros per block of M" convention coincides with this only for 2:4.)
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from edgetrim.errors import EdgetrimError

log = logging.getLogger(__name__)

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class MaskMode(enum.StrEnum):
    """What masked-out positions hold: zero (pruning) or their initial value (freezing)."""

    PRUNE = "prune"
    FREEZE = "freeze"


def prunable_weights(model: nn.Module, *, exclude: Iterable[str] = ()) -> dict[str, nn.Parameter]:
    """Every conv / linear weight of ``model`` by parameter name (``"features.0.weight"``), in order.

    ``exclude`` holds module names (``"features.0"``) or parameter names to leave dense.
    """
    skip = set(exclude)
    out: dict[str, nn.Parameter] = {}
    for mod_name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES) and module.weight is not None:
            pname = f"{mod_name}.weight" if mod_name else "weight"
            if mod_name in skip or pname in skip:
                continue
            out[pname] = module.weight
    return out


def nm_mask(scores: torch.Tensor, n: int, m: int, *, name: str = "weight") -> torch.Tensor:
    """Keep the ``n`` highest-scoring of every ``m`` consecutive entries along dim 1 (the input dim).

    Works for linear (out, in) and conv (out, in, *kernel) weights: for a conv the blocks run along
    input channels at each kernel position. Raises a one-line ``EdgetrimError`` when the input dim is
    not a multiple of ``m``.
    """
    if not (0 < n <= m):
        raise ValueError(f"N:M needs 0 < N <= M, got {n}:{m}")
    if scores.dim() < 2:
        raise EdgetrimError(
            f"{name}: N:M sparsity needs a weight with an input dimension, got shape {tuple(scores.shape)}"
        )
    cin = scores.shape[1]
    if cin % m != 0:
        raise EdgetrimError(
            f"{name}: input dimension {cin} is not a multiple of M={m}, so {n}:{m} sparsity cannot apply; "
            f"exclude this layer or use unstructured sparsity"
        )
    moved = scores.detach().movedim(1, -1)  # (out, *k, in)
    blocks = moved.reshape(*moved.shape[:-1], cin // m, m)
    idx = blocks.topk(n, dim=-1).indices
    keep = torch.zeros_like(blocks, dtype=torch.bool).scatter_(-1, idx, True)
    return keep.reshape(moved.shape).movedim(-1, 1).contiguous()


def check_nm(mask: torch.Tensor, n: int, m: int) -> bool:
    """True when every block of ``m`` along dim 1 holds exactly ``n`` kept entries."""
    moved = mask.movedim(1, -1)
    blocks = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    return bool((blocks.sum(-1) == n).all())


class WeightMasks:
    """Boolean masks for named parameters of one model, enforced through an optimiser.

    Typical use::

        masks = WeightMasks(model)                 # all-ones masks for every conv/linear weight
        masks.set_masks(new_masks)                 # e.g. from allocation.global_topk
        masks.attach(optimizer)                    # grads masked before, weights/state after each step
        ...
        masks.nnz(), masks.density(), masks.collapsed()
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        names: Iterable[str] | None = None,
        exclude: Iterable[str] = (),
        mode: MaskMode = MaskMode.PRUNE,
    ) -> None:
        self.model = model
        self.mode = MaskMode(mode)
        all_params = dict(model.named_parameters())
        if names is None:
            self.params: dict[str, nn.Parameter] = prunable_weights(model, exclude=exclude)
        else:
            missing = [n for n in names if n not in all_params]
            if missing:
                raise EdgetrimError(
                    f"the model has no parameter(s) {missing}; masks cannot be built for them"
                )
            self.params = {n: all_params[n] for n in names}
        if not self.params:
            raise EdgetrimError("the model has no conv or linear weights to mask")
        self.masks: dict[str, torch.Tensor] = {
            n: torch.ones_like(p, dtype=torch.bool) for n, p in self.params.items()
        }
        self.frozen: dict[str, torch.Tensor] = {}
        if self.mode is MaskMode.FREEZE:
            self.frozen = {n: p.detach().clone() for n, p in self.params.items()}
        self._optimizers: list[torch.optim.Optimizer] = []
        self._handles: list[Any] = []

    # ------------------------------------------------------------------ enforcement
    def attach(self, optimizer: torch.optim.Optimizer) -> WeightMasks:
        """Mask grads before and weights + optimiser state after every ``optimizer.step()``."""
        self._optimizers.append(optimizer)
        self._handles.append(optimizer.register_step_pre_hook(lambda opt, a, k: self.mask_grads()))
        self._handles.append(optimizer.register_step_post_hook(lambda opt, a, k: self.apply(opt)))
        self.apply(optimizer)
        return self

    def detach(self) -> None:
        """Remove the optimiser hooks (the masks stay as they are)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._optimizers.clear()

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Zero gradients at masked positions (call after reading any dense gradient you need)."""
        for n, p in self.params.items():
            if p.grad is not None:
                p.grad.mul_(self.masks[n].to(p.grad.dtype))

    @torch.no_grad()
    def apply(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Force weights (and optimiser state) to respect the masks now."""
        for n, p in self.params.items():
            mask = self.masks[n]
            if self.mode is MaskMode.PRUNE:
                p.mul_(mask.to(p.dtype))
            else:
                p.copy_(torch.where(mask, p, self.frozen[n]))
        for opt in [optimizer] if optimizer is not None else self._optimizers:
            self._mask_state(opt, zero=None)

    @torch.no_grad()
    def _mask_state(self, optimizer: torch.optim.Optimizer, zero: Mapping[str, torch.Tensor] | None) -> None:
        """Multiply weight-shaped optimiser state by the mask; also zero it where ``zero`` says."""
        for n, p in self.params.items():
            state = optimizer.state.get(p)
            if not state:
                continue
            keep = self.masks[n]
            if zero is not None and n in zero:
                keep = keep & ~zero[n]
            for value in state.values():
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    value.mul_(keep.to(value.dtype))

    @torch.no_grad()
    def set_masks(
        self, new: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer | None = None
    ) -> dict[str, int]:
        """Replace some masks. Newly active positions start at 0 (pruning) with zeroed optimiser state.

        Returns the number of newly active (regrown) positions per parameter.
        """
        grown: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        for n, mask in new.items():
            if n not in self.masks:
                raise KeyError(f"no mask named {n!r}; known: {list(self.masks)}")
            mask = mask.to(device=self.masks[n].device, dtype=torch.bool)
            if mask.shape != self.masks[n].shape:
                raise ValueError(
                    f"mask for {n} has shape {tuple(mask.shape)}, expected {tuple(self.masks[n].shape)}"
                )
            g = mask & ~self.masks[n]
            grown[n] = g
            counts[n] = int(g.sum())
            p = self.params[n]
            if self.mode is MaskMode.PRUNE:
                p[g] = 0.0
            self.masks[n] = mask.clone()
        opts = [optimizer] if optimizer is not None else self._optimizers
        for opt in opts:
            self._mask_state(opt, zero=grown)
        self.apply(None)
        for opt in opts:
            self._mask_state(opt, zero=None)
        return counts

    # ------------------------------------------------------------------ accounting
    def nnz(self) -> dict[str, int]:
        """Active (unmasked) entries per parameter, exactly."""
        return {n: int(m.sum()) for n, m in self.masks.items()}

    def weight_nnz(self) -> dict[str, int]:
        """Nonzero entries of the actual weights per parameter (<= ``nnz()`` in pruning mode)."""
        return {n: int((p != 0).sum()) for n, p in self.params.items()}

    def numel(self) -> dict[str, int]:
        return {n: m.numel() for n, m in self.masks.items()}

    def total_nnz(self) -> int:
        return sum(self.nnz().values())

    def total_numel(self) -> int:
        return sum(self.numel().values())

    def density(self) -> float:
        """Global fraction of active entries over all masked parameters."""
        return self.total_nnz() / self.total_numel()

    def layer_densities(self) -> dict[str, float]:
        return {n: int(m.sum()) / m.numel() for n, m in self.masks.items()}

    def collapsed(self) -> list[str]:
        """Names of parameters left with no active entry (layer collapse)."""
        return [n for n, m in self.masks.items() if not bool(m.any())]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: m.clone() for n, m in self.masks.items()}

    def load_state_dict(self, masks: Mapping[str, torch.Tensor]) -> None:
        self.set_masks(masks)
