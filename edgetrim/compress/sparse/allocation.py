"""How many weights each layer keeps: global top-k, layer-wise uniform, ER / ERK, a per-layer map.

All functions are pure: score tensors / shapes in, masks / densities out. Counts are exact: a global
top-k keeps exactly ``round(density * N)`` entries even when scores tie (``torch.topk`` over the
concatenated scores picks a deterministic subset of tied entries), and per-layer densities are turned
into integer counts with largest-remainder rounding so the total matches the budget to the weight.

The latency-aware allocation (channel granularity) lives in ``edgetrim.compress.sparse.latency``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence

import torch

from edgetrim.errors import EdgetrimError


class Allocation(enum.StrEnum):
    """Layer-wise distribution of the kept weights."""

    GLOBAL = "global"  # one threshold over all layers (top-k of the pooled scores)
    UNIFORM = "uniform"  # every layer at the same density
    ER = "er"  # Erdős–Rényi: density ∝ (n_in + n_out) / (n_in * n_out)
    ERK = "erk"  # Erdős–Rényi-kernel: density ∝ sum(dims) / prod(dims)
    MAP = "map"  # explicit per-layer densities
    LATENCY = "latency"  # per-layer widths chosen from a latency table to meet a budget (channels)


def check_sparsity(sparsity: float) -> None:
    """Sparsity (fraction removed) must lie in [0, 1)."""
    if not (0.0 <= sparsity < 1.0) or math.isnan(sparsity):
        raise EdgetrimError(f"sparsity must be in [0, 1) (fraction of weights removed), got {sparsity}")


def global_topk(
    scores: Mapping[str, torch.Tensor], density: float, *, min_keep_per_layer: int | Mapping[str, int] = 0
) -> dict[str, torch.Tensor]:
    """Keep exactly ``round(density * N)`` entries with the highest scores over all layers together.

    ``min_keep_per_layer`` > 0 guards against layer collapse: each layer's best entries up to that
    count are kept first (they count against the same budget).
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    names = list(scores)
    flat = [scores[n].detach().reshape(-1).float() for n in names]
    sizes = [f.numel() for f in flat]
    total = sum(sizes)
    if isinstance(min_keep_per_layer, Mapping):
        mins = [min(int(min_keep_per_layer.get(n, 0)), s) for n, s in zip(names, sizes)]
    else:
        mins = [min(int(min_keep_per_layer), s) for s in sizes]
    k = round(density * total)
    k = max(k, min(sum(mins), total))
    pooled = torch.cat(flat).clone()
    pooled = torch.nan_to_num(pooled, nan=-math.inf)
    offset = 0
    for size, f, lo in zip(sizes, flat, mins):
        if lo > 0:
            pooled[offset + f.topk(lo).indices] = math.inf
        offset += size
    keep = torch.zeros(total, dtype=torch.bool)
    if k > 0:
        keep[pooled.topk(k, sorted=False).indices] = True
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for n, size in zip(names, sizes):
        out[n] = keep[offset : offset + size].reshape(scores[n].shape).to(scores[n].device)
        offset += size
    return out


def counts_from_densities(densities: Mapping[str, float], numels: Mapping[str, int]) -> dict[str, int]:
    """Integer keep-counts per layer whose sum is ``round(sum(d_l * N_l))`` (largest remainder)."""
    raw = {n: min(max(densities[n], 0.0), 1.0) * numels[n] for n in densities}
    target = round(sum(raw.values()))
    counts = {n: math.floor(v) for n, v in raw.items()}
    rest = target - sum(counts.values())
    order = sorted(raw, key=lambda n: raw[n] - counts[n], reverse=True)
    for n in order:
        if rest <= 0:
            break
        if counts[n] < numels[n]:
            counts[n] += 1
            rest -= 1
    return counts


def layerwise_topk(
    scores: Mapping[str, torch.Tensor], densities: Mapping[str, float]
) -> dict[str, torch.Tensor]:
    """Per layer, keep the top ``count_l`` scores, with exact integer counts from ``densities``."""
    counts = counts_from_densities(densities, {n: s.numel() for n, s in scores.items()})
    out = {}
    for n, s in scores.items():
        flat = torch.nan_to_num(s.detach().reshape(-1).float(), nan=-math.inf)
        keep = torch.zeros_like(flat, dtype=torch.bool)
        if counts[n] > 0:
            keep[flat.topk(counts[n], sorted=False).indices] = True
        out[n] = keep.reshape(s.shape)
    return out


def random_masks(
    shapes: Mapping[str, Sequence[int]],
    densities: Mapping[str, float],
    *,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Uniformly random masks with exact per-layer counts."""
    scores = {n: torch.rand(tuple(shape), generator=generator) for n, shape in shapes.items()}
    return layerwise_topk(scores, densities)


def uniform_densities(shapes: Mapping[str, Sequence[int]], density: float) -> dict[str, float]:
    return {n: density for n in shapes}


def gale_uniform_densities(
    shapes: Mapping[str, Sequence[int]], sparsity: float, *, classifier: str | None = None
) -> dict[str, float]:
    """GraNet_uniform: uniform, but from sparsity 0.8 the classifier keeps density 0.2 (Gale et al.).

    The other layers are rebalanced so the total matches: ``s' = 1 - (N(1-s) - 0.2 N_fc)/(N - N_fc)``.
    """
    dens = {n: 1.0 - sparsity for n in shapes}
    if classifier is None or sparsity < 0.8 or len(shapes) < 2:
        return dens
    numel = {n: math.prod(s) for n, s in shapes.items()}
    total, n_fc = sum(numel.values()), numel[classifier]
    rest = (total * (1.0 - sparsity) - 0.2 * n_fc) / (total - n_fc)
    if rest <= 0:
        return dens
    return {n: (0.2 if n == classifier else rest) for n in shapes}


def erk_densities(
    shapes: Mapping[str, Sequence[int]],
    density: float,
    *,
    kernel: bool = True,
    power_scale: float = 1.0,
    dense: Sequence[str] = (),
) -> dict[str, float]:
    """ER / ERK densities: ``d_l = eps * raw_l`` with raw from the shape, capped at 1 and re-solved.

    ERK: ``raw = sum(dims) / prod(dims)``; ER (``kernel=False``): ``(n_in + n_out)/(n_in * n_out)``.
    The weighted sum ``sum(d_l N_l)`` equals ``density * sum(N_l)`` and every ``d_l <= 1``.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    numel = {n: math.prod(s) for n, s in shapes.items()}
    total_keep = density * sum(numel.values())
    raw = {}
    for n, s in shapes.items():
        dims = list(s) if kernel else list(s[:2])
        raw[n] = (sum(dims) / math.prod(dims)) ** power_scale
    dense_set = set(dense)
    while True:
        dense_keep = sum(numel[n] for n in dense_set)
        rest = [n for n in shapes if n not in dense_set]
        if not rest:
            break
        eps = (total_keep - dense_keep) / sum(raw[n] * numel[n] for n in rest)
        over = [n for n in rest if eps * raw[n] > 1.0]
        if not over:
            break
        dense_set.add(max(over, key=lambda n: raw[n]))
    out = {}
    for n in shapes:
        out[n] = 1.0 if n in dense_set else max(min(eps * raw[n], 1.0), 0.0)
    if sum(numel[n] for n in dense_set) > total_keep + 1e-6:
        raise EdgetrimError(
            f"density {density} is too low for the layers kept dense ({sorted(dense_set)}); raise the density"
        )
    return out


def densities_for(
    allocation: Allocation,
    shapes: Mapping[str, Sequence[int]],
    density: float,
    *,
    layer_map: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Per-layer densities for the fixed-distribution allocations (not GLOBAL / LATENCY)."""
    if allocation is Allocation.UNIFORM:
        return uniform_densities(shapes, density)
    if allocation is Allocation.ERK:
        return erk_densities(shapes, density, kernel=True)
    if allocation is Allocation.ER:
        return erk_densities(shapes, density, kernel=False)
    if allocation is Allocation.MAP:
        if not layer_map:
            raise EdgetrimError("allocation 'map' needs a per-layer density map (layer name -> density)")
        unknown = set(layer_map) - set(shapes)
        if unknown:
            raise EdgetrimError(
                f"the density map names unknown layers {sorted(unknown)}; known: {list(shapes)}"
            )
        return {n: float(layer_map.get(n, density)) for n in shapes}
    raise ValueError(f"allocation {allocation.value} has no fixed per-layer densities")
