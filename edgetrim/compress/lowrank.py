"""Low-rank factorisation ``W = U diag(alpha) V^T`` of linear and 1x1 conv layers, from the SVD.

A factorised layer is two layers: ``v`` (``d_in -> r``, no bias) then ``u`` (``r -> d_out``, with the
original bias). The rank dimension between them is an ordinary coupled channel group, so the channel
gates give it its ``alpha`` (``diag(alpha)`` gates ``u``'s input), the latency model prices it as
``T(d_in, s) + T(s, d_out)``, and materialisation slices it like any other channel, so low-rank
combines with channel pruning for free.

Example:
    >>> model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    >>> names = factorize_(model, ["0"])
    >>> type(model[0]).__name__
    'LowRank'
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["LowRank", "factorizable_layers", "factorize_"]


class LowRank(nn.Sequential):
    """``u(v(x))``: a factorised linear or 1x1 conv (``v``: d_in -> r, ``u``: r -> d_out)."""

    def __init__(self, v: nn.Module, u: nn.Module) -> None:
        super().__init__()
        self.v = v
        self.u = u

    # The replaced layer's width attributes, so code reading them (e.g. heads = q.out_features // d) works.
    @property
    def in_features(self) -> int:
        return int(self.v.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.u.weight.shape[0])

    @property
    def in_channels(self) -> int:
        return self.in_features

    @property
    def out_channels(self) -> int:
        return self.out_features

    @property
    def rank(self) -> int:
        return int(self.v.weight.shape[0])


def _svd_factors(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``w (out, in) ~= a @ b`` with ``a (out, r) = U sqrt(S)``, ``b (r, in) = sqrt(S) V^T``."""
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(w.dtype), (root[:, None] * vh[:rank]).to(w.dtype)


def _factor(module: nn.Module, rank: int | None) -> LowRank:
    if isinstance(module, nn.Linear):
        d_out, d_in = module.weight.shape
        r = min(d_in, d_out) if rank is None else rank
        a, b = _svd_factors(module.weight.detach(), r)
        v = nn.Linear(d_in, r, bias=False)
        u = nn.Linear(r, d_out, bias=module.bias is not None)
        with torch.no_grad():
            v.weight.copy_(b)
            u.weight.copy_(a)
            if module.bias is not None:
                u.bias.copy_(module.bias)
        return LowRank(v, u)
    assert isinstance(module, nn.Conv2d)
    d_out, d_in = module.out_channels, module.in_channels
    r = min(d_in, d_out) if rank is None else rank
    a, b = _svd_factors(module.weight.detach().reshape(d_out, d_in), r)
    v = nn.Conv2d(d_in, r, 1, stride=module.stride, padding=module.padding, bias=False)
    u = nn.Conv2d(r, d_out, 1, bias=module.bias is not None)
    with torch.no_grad():
        v.weight.copy_(b[:, :, None, None])
        u.weight.copy_(a[:, :, None, None])
        if module.bias is not None:
            u.bias.copy_(module.bias)
    return LowRank(v, u)


def factorizable_layers(model: nn.Module, *, exclude: Iterable[str] = (), min_width: int = 8) -> list[str]:
    """Names of linear and 1x1 (ungrouped, undilated) conv layers with both widths >= ``min_width``."""
    skip = set(exclude)
    names = []
    for name, m in model.named_modules():
        if name in skip or isinstance(m, LowRank):
            continue
        if isinstance(m, nn.Linear):
            ok = min(m.in_features, m.out_features) >= min_width
        elif isinstance(m, nn.Conv2d):
            ok = (
                m.kernel_size == (1, 1)
                and m.groups == 1
                and m.dilation == (1, 1)
                and min(m.in_channels, m.out_channels) >= min_width
            )
        else:
            ok = False
        if ok:
            names.append(name)
    return names


def factorize_(model: nn.Module, names: Iterable[str], *, rank: int | None = None) -> list[str]:
    """Replace the named layers by their SVD factorisation in place (full rank by default).

    At full rank the factorised model computes the same function (within float rounding).

    Returns:
        The names that were replaced.
    """
    done = []
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        module = getattr(parent, attr) if not attr.isdigit() else parent[int(attr)]
        factored = _factor(module, rank)
        if attr.isdigit():
            parent[int(attr)] = factored
        else:
            setattr(parent, attr, factored)
        done.append(name)
    logger.info("factorised %d layers: %s", len(done), ", ".join(done))
    return done
