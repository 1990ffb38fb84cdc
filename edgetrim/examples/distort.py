"""Seeded distortions that make the digits a harder task, one where a network's width shows in accuracy.

On the plain digits a ResNet-style net at a third of its channels scores as well as the dense one
(~99%), so compression methods cannot be told apart by accuracy. Each distorted copy of a digit is

* warped by a random affine map (rotation, anisotropic scale, shear, shift),
* overlaid with a *distractor*: another digit of the same split, warped on its own, pushed off-centre
  and dimmed, combined by pixel-wise max (touching strokes, as in cluttered scans),
* dimmed or brightened at random and given Gaussian pixel noise.

Everything is drawn from one ``torch.Generator`` seeded by the caller: the same seed gives the same
images. Nothing is downloaded; the inputs are the scikit-learn digits.

Example:
    >>> import torch
    >>> imgs = torch.zeros(3, 16, 16); imgs[:, 4:12, 7:9] = 1.0
    >>> out = distort_digits(imgs, copies=2, seed=0)
    >>> tuple(out.shape)
    (6, 16, 16)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["DistortConfig", "distort_digits"]


@dataclass(frozen=True)
class DistortConfig:
    """Ranges of the random distortion (angles in degrees, offsets in half-image units)."""

    rotate_deg: float = 25.0  # rotation drawn from +-rotate_deg
    scale: tuple[float, float] = (0.7, 1.0)  # per-axis zoom (the 8x8 digits fill their frame)
    shear: float = 0.25  # shear factor drawn from +-shear
    shift: float = 0.2  # the digit's centre moves by up to this share of the half-width
    distractor_shift: tuple[float, float] = (0.55, 0.85)  # distance of the distractor's centre
    distractor_gain: tuple[float, float] = (0.4, 0.8)  # its brightness relative to the digit
    gain: tuple[float, float] = (0.6, 1.0)  # brightness of the whole image
    noise: float = 0.1  # std of additive Gaussian pixel noise (images are in [0, 1])


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _affine(n: int, cfg: DistortConfig, gen: torch.Generator, shift: torch.Tensor) -> torch.Tensor:
    """``(n, 2, 3)`` sampling matrices: output pixel -> input location (normalised coordinates)."""
    theta = _uniform(n, -cfg.rotate_deg, cfg.rotate_deg, gen) * (math.pi / 180.0)
    sx, sy = _uniform(n, *cfg.scale, gen), _uniform(n, *cfg.scale, gen)
    sh = _uniform(n, -cfg.shear, cfg.shear, gen)
    cos, sin = torch.cos(theta), torch.sin(theta)
    # forward map A = R @ Sh @ diag(sx, sy); grid_sample wants its inverse (output -> input)
    a = torch.stack(
        [
            torch.stack([cos * sx, (cos * sh - sin) * sy], 1),
            torch.stack([sin * sx, (sin * sh + cos) * sy], 1),
        ],
        1,
    )  # (n, 2, 2)
    inv = torch.linalg.inv(a)
    offset = -(inv @ shift.unsqueeze(-1))  # the digit's centre lands at ``shift``
    return torch.cat([inv, offset], dim=2)


def _warp(images: torch.Tensor, mats: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(mats, list(images.unsqueeze(1).shape), align_corners=False)
    return F.grid_sample(
        images.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )[:, 0]


def distort_digits(
    images: torch.Tensor, *, copies: int, seed: int, config: DistortConfig | None = None
) -> torch.Tensor:
    """``copies`` distorted versions of every image, copy-major: row ``c * N + i`` is a copy of image ``i``.

    Args:
        images: ``(N, S, S)`` grey images in [0, 1] (distractors are drawn from these too, so a split
            never borrows strokes from another split).
        copies: distorted copies per image (>= 1).
        seed: seeds every random draw.
        config: the distortion ranges (defaults: :class:`DistortConfig`).

    Returns:
        ``(copies * N, S, S)`` float32.

    Raises:
        ValueError: for ``copies < 1``, fewer than two images, or images that are not ``(N, S, S)``.
    """
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    if images.dim() != 3 or len(images) < 2:
        raise ValueError(f"images must be (N, S, S) with N >= 2, got shape {tuple(images.shape)}")
    cfg = config or DistortConfig()
    gen = torch.Generator().manual_seed(seed)
    n = len(images)
    src = images.float().repeat(copies, 1, 1)  # (copies * N, S, S)
    m = len(src)
    centre = (torch.rand(m, 2, generator=gen) * 2 - 1) * cfg.shift
    digit = _warp(src, _affine(m, cfg, gen, centre))
    # the distractor: another image (never the same index), its centre at a random angle, well off-centre
    other = (torch.arange(m) % n + torch.randint(1, n, (m,), generator=gen)) % n
    angle = _uniform(m, 0.0, 2 * math.pi, gen)
    dist = _uniform(m, *cfg.distractor_shift, gen)
    where = torch.stack([torch.cos(angle), torch.sin(angle)], 1) * dist.unsqueeze(1)
    clutter = _warp(images.float()[other], _affine(m, cfg, gen, where))
    clutter = clutter * _uniform(m, *cfg.distractor_gain, gen).view(m, 1, 1)
    out = torch.maximum(digit, clutter) * _uniform(m, *cfg.gain, gen).view(m, 1, 1)
    out = out + cfg.noise * torch.randn(out.shape, generator=gen)
    return out.float()
