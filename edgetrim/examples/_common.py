"""Helpers shared by the example model factories (not public API)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ModelAndInputs = tuple[nn.Module, tuple[torch.Tensor, ...]]
"""What every factory returns: the module (eval mode) and a batch-1 example input tuple."""


def image_input(image_size: int) -> tuple[torch.Tensor, ...]:
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8 (digits are 8x8), got {image_size}")
    return (torch.randn(1, 1, image_size, image_size),)


def check_widths(name: str, widths: Sequence[int], n: int | None = None) -> tuple[int, ...]:
    widths = tuple(int(w) for w in widths)
    if n is not None and len(widths) != n:
        raise ValueError(f"{name} needs {n} widths, got {len(widths)}: {widths}")
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"{name} widths must be a non-empty sequence of positive ints, got {widths}")
    return widths


def scaled_channels(channels: float, width_mult: float, divisor: int) -> int:
    """Scale a channel count and round it to a multiple of ``divisor`` (1 keeps odd widths)."""
    if width_mult <= 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    if divisor < 1:
        raise ValueError(f"divisor must be >= 1, got {divisor}")
    scaled = channels * width_mult
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:  # never round down by more than 10% (MobileNet convention)
        rounded += divisor
    return rounded


def eval_pair(model: nn.Module, example: tuple[torch.Tensor, ...]) -> ModelAndInputs:
    """Put ``model`` in eval mode and pair it with its example inputs."""
    return model.eval(), example


def conv_bn_act(
    cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU
) -> nn.Sequential:
    """``Conv2d`` (no bias, "same" padding) -> ``BatchNorm2d`` -> optional activation."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)
