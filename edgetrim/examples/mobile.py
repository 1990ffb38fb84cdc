"""MobileNetV3-Small- and EfficientNet-B0-style models for digits (depthwise, squeeze-excite, residual adds).

Use them through :mod:`edgetrim.examples.models` (``build("mobilenetv3_small")``).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from edgetrim.examples._common import ModelAndInputs, conv_bn_act, eval_pair, image_input, scaled_channels

logger = logging.getLogger(__name__)

# --- MobileNetV3 / EfficientNet ----------------------------------------------------------------------


class SqueezeExcite(nn.Module):
    """avgpool -> 1x1 conv -> act -> 1x1 conv -> gate -> multiply the input channels."""

    def __init__(self, channels: int, squeeze: int, *, act: type[nn.Module], gate: type[nn.Module]) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.act = act()
        self.expand = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.expand(self.act(self.reduce(self.pool(x)))))  # (B, C, 1, 1)
        return x * s


class InvertedResidual(nn.Module):
    """MobileNetV3 / MBConv block: [1x1 expand] -> depthwise kxk -> [SE] -> 1x1 project (+ residual)."""

    def __init__(
        self,
        cin: int,
        expanded: int,
        cout: int,
        *,
        kernel: int,
        stride: int,
        act: type[nn.Module],
        se: SqueezeExcite | None,
    ) -> None:
        super().__init__()
        self.use_residual = stride == 1 and cin == cout
        self.expand = conv_bn_act(cin, expanded, 1, act=act) if expanded != cin else nn.Identity()
        self.depthwise = conv_bn_act(expanded, expanded, kernel, stride, groups=expanded, act=act)
        self.se = se if se is not None else nn.Identity()
        self.project = conv_bn_act(expanded, cout, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return out + x if self.use_residual else out


# (kernel, expanded, out, use_se, hardswish, stride): MobileNetV3-Small's pattern, shortened for 8x8 input.
_MNV3_BLOCKS: tuple[tuple[int, int, int, bool, bool, int], ...] = (
    (3, 16, 16, True, False, 2),  # 8x8 -> 4x4, no expansion
    (3, 72, 24, False, False, 2),  # 4x4 -> 2x2
    (3, 88, 24, False, False, 1),  # residual
    (5, 96, 40, True, True, 1),
    (5, 240, 40, True, True, 1),  # residual
)


class MobileNetV3Small(nn.Module):
    """Stem conv-BN-hardswish, inverted residual blocks, 1x1 head conv, pool, hardswish MLP classifier."""

    def __init__(self, *, width_mult: float, divisor: int, last_channels: int, num_classes: int) -> None:
        super().__init__()
        stem = scaled_channels(16, width_mult, divisor)
        self.stem = conv_bn_act(1, stem, 3, 1, act=nn.Hardswish)
        blocks: list[nn.Module] = []
        prev = stem
        for kernel, exp, out, use_se, hswish, stride in _MNV3_BLOCKS:
            exp_c = scaled_channels(exp, width_mult, divisor)  # equal to the input in block 1: no expand conv
            out_c = scaled_channels(out, width_mult, divisor)
            act: type[nn.Module] = nn.Hardswish if hswish else nn.ReLU
            se = (
                SqueezeExcite(
                    exp_c, scaled_channels(exp_c / 4, 1.0, divisor), act=nn.ReLU, gate=nn.Hardsigmoid
                )
                if use_se
                else None
            )
            blocks.append(InvertedResidual(prev, exp_c, out_c, kernel=kernel, stride=stride, act=act, se=se))
            prev = out_c
        self.blocks = nn.Sequential(*blocks)
        head = scaled_channels(6 * _MNV3_BLOCKS[-1][2], width_mult, divisor)
        self.head = conv_bn_act(prev, head, 1, act=nn.Hardswish)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(head, last_channels), nn.Hardswish(), nn.Linear(last_channels, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(self.flatten(self.pool(x)))  # (B, num_classes)


def mobilenetv3_small(
    *,
    width_mult: float = 1.0,
    divisor: int = 8,
    last_channels: int = 128,
    num_classes: int = 10,
    image_size: int = 8,
) -> ModelAndInputs:
    """MobileNetV3-Small-style net: depthwise inverted residuals, SE (hardsigmoid gate), hardswish.

    Channel counts are ``width_mult`` times the defaults rounded to ``divisor``; ``divisor=1`` keeps odd
    widths (e.g. ``width_mult=0.77, divisor=1``).
    """
    model = MobileNetV3Small(
        width_mult=width_mult, divisor=divisor, last_channels=last_channels, num_classes=num_classes
    )
    return eval_pair(model, image_input(image_size))


# (expand_ratio, kernel, stride, out, repeats): EfficientNet-B0's first stages, shortened for 8x8 input.
_EFFNET_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),  # 8x8 -> 4x4
    (6, 5, 2, 40, 1),  # 4x4 -> 2x2
    (6, 3, 1, 80, 2),
)


class EfficientNetB0Small(nn.Module):
    """Stem conv-BN-SiLU, MBConv stages (SE squeezes to 1/4 of the block input), 1x1 head, pool, linear."""

    def __init__(self, *, width_mult: float, divisor: int, head_channels: int, num_classes: int) -> None:
        super().__init__()
        stem = scaled_channels(32, width_mult, divisor)
        self.stem = conv_bn_act(1, stem, 3, 1, act=nn.SiLU)
        blocks: list[nn.Module] = []
        prev = stem
        for ratio, kernel, stride, out, repeats in _EFFNET_STAGES:
            out_c = scaled_channels(out, width_mult, divisor)
            for r in range(repeats):
                se = SqueezeExcite(prev * ratio, max(1, prev // 4), act=nn.SiLU, gate=nn.Sigmoid)
                blocks.append(
                    InvertedResidual(
                        prev,
                        prev * ratio,
                        out_c,
                        kernel=kernel,
                        stride=stride if r == 0 else 1,
                        act=nn.SiLU,
                        se=se,
                    )
                )
                prev = out_c
        self.blocks = nn.Sequential(*blocks)
        head = scaled_channels(head_channels, width_mult, divisor)
        self.head = conv_bn_act(prev, head, 1, act=nn.SiLU)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(self.flatten(self.pool(x)))  # (B, num_classes)


def efficientnet_b0_small(
    *,
    width_mult: float = 1.0,
    divisor: int = 8,
    head_channels: int = 256,
    num_classes: int = 10,
    image_size: int = 8,
) -> ModelAndInputs:
    """EfficientNet-B0-style net: MBConv blocks (expand ratio 1 and 6), depthwise, SE, SiLU.

    ``width_mult``/``divisor`` scale the channels as in :func:`mobilenetv3_small`.
    """
    model = EfficientNetB0Small(
        width_mult=width_mult, divisor=divisor, head_channels=head_channels, num_classes=num_classes
    )
    return eval_pair(model, image_input(image_size))
