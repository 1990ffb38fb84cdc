"""The l1/l2 surrogate and the regularisers built on it (pure tensor functions, no module walking).

Reference: Nasery et al., "End-to-End Neural Network Compression via l1/l2 Regularized Latency
Surrogates" (arXiv 2306.05785). Equation numbers refer to that paper.

* ``soft_count(alpha) = sqrt(d) * ||alpha||_1 / ||alpha||_2`` replaces ``||alpha||_0``. It lies in
  ``[0, d]``, equals ``d`` when all entries are equal, and is scale invariant, so a BatchNorm cannot
  absorb a shrinking mask (which is what defeats a plain l1 penalty, Eq. 3).
* FLOPs (Eq. 4): ``sum_i c_i * s(alpha_i) * s(alpha_{i+1})`` with ``c_i = k*k*H_out*W_out`` for a conv.
* Latency (Eq. 6): ``sum_i T_i(s(alpha_i), s(alpha_{i+1}))`` where ``T_i`` is a bilinear lookup in the
  layer's table (:func:`bilinear_ms`).

Example:
    >>> a = torch.tensor([1.0, 0.0, 1.0, 0.0])
    >>> float(soft_count(a))
    2.0
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["bilinear_ms", "bilinear_ms_batched", "flops_term", "l1_penalty", "soft_count", "soft_count_dense"]


def soft_count(alpha: Tensor) -> Tensor:
    """``sqrt(d) * ||alpha||_1 / ||alpha||_2``; 0 with a zero gradient when ``alpha`` is all zeros.

    Args:
        alpha: ``(d,)`` mask (any sign; the masks are kept >= 0 by projection).
    """
    d = alpha.numel()
    l1 = alpha.abs().sum()
    l2_sq = (alpha * alpha).sum()
    alive = l2_sq > 0
    # Guard both branches: torch.where evaluates each, and 0/0 would poison the gradient with NaN.
    safe_l2 = torch.sqrt(torch.where(alive, l2_sq, torch.ones_like(l2_sq)))
    value = (d**0.5) * l1 / safe_l2
    return torch.where(alive, value, torch.zeros_like(value))


def soft_count_dense(alpha: Tensor) -> Tensor:
    """Hard count ``||alpha||_0`` as a float tensor (for reporting next to :func:`soft_count`)."""
    return (alpha != 0).sum().to(alpha.dtype if alpha.is_floating_point() else torch.float32)


def l1_penalty(alpha: Tensor) -> Tensor:
    """``||alpha||_1`` (Eq. 3): the plain l1 regulariser, kept for the ablation of section 3.2."""
    return alpha.abs().sum()


def flops_term(s_in: Tensor | float, s_out: Tensor | float, const: float) -> Tensor:
    """One term of Eq. 4: ``const * s_in * s_out`` (``const = k*k*H_out*W_out`` for a conv, tokens for a linear)."""
    return torch.as_tensor(s_in) * torch.as_tensor(s_out) * const


def _cell(axis: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Left index of the cell holding ``v`` (clamped to the grid) and the fraction inside it."""
    n = axis.numel()
    if n == 1:
        return torch.zeros((), dtype=torch.long), torch.zeros((), dtype=v.dtype)
    vc = v.clamp(axis[0], axis[-1])
    i = torch.searchsorted(axis, vc.detach().reshape(1), right=True).reshape(()) - 1
    i = i.clamp(0, n - 2)
    x0, x1 = axis[i], axis[i + 1]
    return i, (vc - x0) / (x1 - x0)


def bilinear_ms(x: Tensor, y: Tensor, in_axis: Tensor, out_axis: Tensor, ms_grid: Tensor) -> Tensor:
    """Bilinear interpolation of a latency grid at a soft (input width, output width) (Eq. 6).

    On a cell ``[x0, x1] x [y0, y1]``::

        t1 = T(x0, y0) + (T(x1, y0) - T(x0, y0)) * (x - x0) / (x1 - x0)
        t2 = T(x0, y1) + (T(x1, y1) - T(x0, y1)) * (x - x0) / (x1 - x0)
        T(x, y) = t1 + (t2 - t1) * (y - y0) / (y1 - y0)

    Exact at grid points, differentiable in ``x`` and ``y`` inside the grid. Outside it, the
    coordinates are clamped to the grid (value held, gradient zero along that axis).

    Args:
        x, y: scalar tensors (soft widths).
        in_axis: ``(n,)`` increasing widths; out_axis: ``(m,)`` increasing widths.
        ms_grid: ``(n, m)`` latency in ms.
    """
    i, tx = _cell(in_axis, x)
    j, ty = _cell(out_axis, y)
    n, m = ms_grid.shape
    i1 = (i + 1).clamp(max=n - 1)
    j1 = (j + 1).clamp(max=m - 1)
    t00, t10 = ms_grid[i, j], ms_grid[i1, j]
    t01, t11 = ms_grid[i, j1], ms_grid[i1, j1]
    t1 = t00 + (t10 - t00) * tx
    t2 = t01 + (t11 - t01) * tx
    return t1 + (t2 - t1) * ty


def bilinear_ms_batched(
    x: Tensor, y: Tensor, in_axes: Tensor, out_axes: Tensor, grids: Tensor, n_in: Tensor, n_out: Tensor
) -> Tensor:
    """:func:`bilinear_ms` for ``T`` terms at once (one kernel launch per step instead of ``T``).

    Args:
        x, y: ``(T,)`` soft widths.
        in_axes: ``(T, N)`` increasing widths, padded past ``n_in[t]`` with larger values.
        out_axes: ``(T, M)`` likewise with ``n_out``.
        grids: ``(T, N, M)`` latency in ms (padding unused).
        n_in, n_out: ``(T,)`` long, the used length of each axis (>= 1).

    Returns:
        ``(T,)`` interpolated latencies; each equals ``bilinear_ms`` on the unpadded grid.
    """
    t = torch.arange(x.numel())

    def cell(axes: Tensor, v: Tensor, n: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        lo, hi = axes[t, 0], axes[t, (n - 1).clamp(min=0)]
        vc = torch.minimum(torch.maximum(v, lo), hi)
        i = torch.searchsorted(axes, vc.detach()[:, None], right=True)[:, 0] - 1
        i = torch.minimum(i.clamp(min=0), (n - 2).clamp(min=0))
        i1 = torch.minimum(i + 1, n - 1)
        a0, a1 = axes[t, i], axes[t, i1]
        span = torch.where(i1 > i, a1 - a0, torch.ones_like(a0))
        frac = torch.where(i1 > i, (vc - a0) / span, torch.zeros_like(vc))
        return i, i1, frac

    i, i1, tx = cell(in_axes, x, n_in)
    j, j1, ty = cell(out_axes, y, n_out)
    t00, t10 = grids[t, i, j], grids[t, i1, j]
    t01, t11 = grids[t, i, j1], grids[t, i1, j1]
    t1 = t00 + (t10 - t00) * tx
    t2 = t01 + (t11 - t01) * tx
    return t1 + (t2 - t1) * ty
