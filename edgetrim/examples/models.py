"""Small reference models for the sklearn digits data set (10 classes).

Every factory returns ``(module, example_inputs)`` where ``example_inputs`` is a tuple holding one
batch-1 tensor: ``(1, 1, S, S)`` digits images (S = ``image_size``, 8 by default), ``(1, 64)`` rows for
the MLPs, or ``(1, 8, 8)`` token sequences for :func:`bert_encoder_small`. Every factory takes width
keywords (``widths=``, ``width_mult=``, ``hidden=``...) so benchmarks can build varied and odd widths,
and ``num_classes``. Layers are plain ``nn.Module`` s (``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.Linear``,
``nn.Hardswish``...) with functional ``+`` / ``*`` only for residual adds and squeeze-excite products,
so tracing, pruning and export tools can follow them.

Example:
    >>> model, (x,) = build("resnet_small", widths=(16, 37, 61))
    >>> tuple(model(x).shape)
    (1, 10)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from edgetrim.errors import ModelSpecError
from edgetrim.examples._common import (
    ModelAndInputs,
    check_widths,
    conv_bn_act,
    eval_pair,
    image_input,
)
from edgetrim.examples.encoder import BertEncoderSmall, MultiHeadSelfAttention, bert_encoder_small
from edgetrim.examples.mobile import (
    EfficientNetB0Small,
    InvertedResidual,
    MobileNetV3Small,
    SqueezeExcite,
    efficientnet_b0_small,
    mobilenetv3_small,
)

logger = logging.getLogger(__name__)

__all__ = [
    "MODEL_ZOO",
    "BasicBlock",
    "BertEncoderSmall",
    "EfficientNetB0Small",
    "InvertedResidual",
    "MobileNetV3Small",
    "ModelAndInputs",
    "MultiHeadSelfAttention",
    "SqueezeExcite",
    "bert_encoder_small",
    "build",
    "cnn3",
    "digits_cnn",
    "efficientnet_b0_small",
    "lenet5",
    "lenet_300_100",
    "mlp",
    "mlp_bn",
    "mobilenetv3_small",
    "resnet_small",
]

# --- MLPs --------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """Linear-ReLU stack on flat ``(B, in_features)`` input."""

    def __init__(self, widths: Sequence[int], *, in_features: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_features
        for w in widths:
            layers += [nn.Linear(prev, w), nn.ReLU()]
            prev = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # (B, num_classes)


def mlp(*, widths: Sequence[int] = (128, 64), num_classes: int = 10, in_features: int = 64) -> ModelAndInputs:
    """MLP 64-128-64-10 on flat digits ``(1, 64)``; ``widths`` sets the hidden layers.

    Example:
        >>> m, (x,) = mlp(widths=(37,))
        >>> tuple(m(x).shape)
        (1, 10)
    """
    widths = check_widths("mlp", widths)
    return eval_pair(
        MLP(widths, in_features=in_features, num_classes=num_classes), (torch.randn(1, in_features),)
    )


def lenet_300_100(
    *, widths: Sequence[int] = (300, 100), num_classes: int = 10, in_features: int = 64
) -> ModelAndInputs:
    """LeNet-300-100 (the classic pruning benchmark MLP) on flat digits: 64-300-100-10."""
    widths = check_widths("lenet_300_100", widths, 2)
    return eval_pair(
        MLP(widths, in_features=in_features, num_classes=num_classes), (torch.randn(1, in_features),)
    )


class MLPBN(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Linear: the BN setting where an l1 gate penalty fails."""

    def __init__(self, hidden: int, *, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.bn1(self.fc1(x))))  # (B, num_classes)


def mlp_bn(*, hidden: int = 128, num_classes: int = 10, in_features: int = 64) -> ModelAndInputs:
    """``Linear(64, hidden) -> BN1d -> ReLU -> Linear(hidden, 10)`` on flat digits (l1/l2 paper, sec. 3.2)."""
    (hidden,) = check_widths("mlp_bn", (hidden,))
    return eval_pair(
        MLPBN(hidden, in_features=in_features, num_classes=num_classes), (torch.randn(1, in_features),)
    )


# --- plain CNNs --------------------------------------------------------------------------------------


class LeNet5(nn.Module):
    """LeNet-5 adapted to small images: 5x5 convs with padding 2, so 8x8 input ends at 2x2 after two pools."""

    def __init__(
        self, channels: Sequence[int], fc: Sequence[int], *, image_size: int, num_classes: int
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),  # S -> S/2
            nn.Conv2d(c1, c2, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),  # S/2 -> S/4
        )
        side = image_size // 4
        layers: list[nn.Module] = [nn.Flatten()]
        prev = c2 * side * side
        for w in fc:
            layers += [nn.Linear(prev, w), nn.ReLU()]
            prev = w
        layers.append(nn.Linear(prev, num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # (B, num_classes)


def lenet5(
    *,
    channels: Sequence[int] = (6, 16),
    fc: Sequence[int] = (120, 84),
    num_classes: int = 10,
    image_size: int = 8,
) -> ModelAndInputs:
    """LeNet-5: conv 6, conv 16 (5x5, padded), fc 120-84-10, on ``(1, 1, S, S)`` digits."""
    channels = check_widths("lenet5 channels", channels, 2)
    fc = check_widths("lenet5 fc", fc)
    example = image_input(image_size)
    return eval_pair(LeNet5(channels, fc, image_size=image_size, num_classes=num_classes), example)


class DigitsCNN(nn.Module):
    """Conv-BN-ReLU blocks, global average pool, linear classifier."""

    def __init__(self, widths: Sequence[int], strides: Sequence[int], *, num_classes: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        prev = 1
        for w, s in zip(widths, strides, strict=True):
            blocks.append(conv_bn_act(prev, w, 3, s))
            prev = w
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))  # (B, num_classes)


def digits_cnn(
    *,
    widths: Sequence[int] = (32, 64, 64),
    strides: Sequence[int] | None = None,
    num_classes: int = 10,
    image_size: int = 8,
) -> ModelAndInputs:
    """The demo CNN: 3x3 conv-BN-ReLU blocks (32-64-64), global pool, linear.

    ``strides`` defaults to 1 for the first block and 2 for the second (so 8x8 runs at 8x8 then 4x4);
    further blocks keep stride 1.

    Example:
        >>> m, (x,) = digits_cnn(widths=(37, 61), image_size=16)
        >>> tuple(x.shape), tuple(m(x).shape)
        ((1, 1, 16, 16), (1, 10))
    """
    widths = check_widths("digits_cnn", widths)
    if strides is None:
        strides = tuple(2 if i == 1 else 1 for i in range(len(widths)))
    if len(strides) != len(widths):
        raise ValueError(f"digits_cnn needs one stride per width, got {len(strides)} for {len(widths)}")
    return eval_pair(DigitsCNN(widths, strides, num_classes=num_classes), image_input(image_size))


class CNN3(nn.Module):
    """Three conv layers with bias and ReLU (no BN), one max-pool, global pool, linear: quantization-friendly."""

    def __init__(self, widths: Sequence[int], *, num_classes: int) -> None:
        super().__init__()
        c1, c2, c3 = widths
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # S -> S/2
            nn.Conv2d(c2, c3, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))  # (B, num_classes)


def cnn3(
    *, widths: Sequence[int] = (16, 32, 32), num_classes: int = 10, image_size: int = 8
) -> ModelAndInputs:
    """Three-layer CNN (conv-ReLU x3, bias, no BN) for the quantization experiments."""
    widths = check_widths("cnn3", widths, 3)
    return eval_pair(CNN3(widths, num_classes=num_classes), image_input(image_size))


# --- ResNet ------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet basic block: conv-BN-ReLU-conv-BN + shortcut (1x1 conv-BN projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))  # residual add couples conv2 and shortcut channels


class ResNetSmall(nn.Module):
    """Stem conv, stages of BasicBlocks (first block of stages 2+ downsamples), global pool, fc."""

    def __init__(self, widths: Sequence[int], blocks_per_stage: int, *, num_classes: int) -> None:
        super().__init__()
        self.stem = conv_bn_act(1, widths[0], 3, 1)
        stages: list[nn.Module] = []
        prev = widths[0]
        for i, w in enumerate(widths):
            blocks = [BasicBlock(prev, w, 1 if i == 0 else 2)]
            blocks += [BasicBlock(w, w, 1) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            prev = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.stages(self.stem(x)))))  # (B, num_classes)


def resnet_small(
    *,
    widths: Sequence[int] = (16, 32, 64),
    blocks_per_stage: int = 1,
    num_classes: int = 10,
    image_size: int = 8,
) -> ModelAndInputs:
    """ResNet-style net: one stage per width (2-3 typical), BasicBlocks, projection shortcuts on downsampling.

    On 8x8 input the stages run at 8x8, 4x4, 2x2.
    """
    widths = check_widths("resnet_small", widths)
    if blocks_per_stage < 1:
        raise ValueError(f"blocks_per_stage must be >= 1, got {blocks_per_stage}")
    return eval_pair(ResNetSmall(widths, blocks_per_stage, num_classes=num_classes), image_input(image_size))


# --- registry ----------------------------------------------------------------------------------------

MODEL_ZOO: dict[str, Callable[..., ModelAndInputs]] = {
    "mlp": mlp,
    "mlp_bn": mlp_bn,
    "lenet5": lenet5,
    "lenet_300_100": lenet_300_100,
    "digits_cnn": digits_cnn,
    "cnn3": cnn3,
    "resnet_small": resnet_small,
    "mobilenetv3_small": mobilenetv3_small,
    "efficientnet_b0_small": efficientnet_b0_small,
    "bert_encoder_small": bert_encoder_small,
}
"""Model name -> factory. Every factory returns ``(module, example_inputs)``."""


def build(name: str, **kwargs: Any) -> ModelAndInputs:
    """Build a zoo model by name, passing width keywords through to its factory.

    Raises:
        ModelSpecError: for an unknown name (lists the known ones) or keywords the factory rejects.

    Example:
        >>> m, (x,) = build("mlp", widths=(61, 37))
        >>> m.features[0].out_features
        61
    """
    try:
        factory = MODEL_ZOO[name]
    except KeyError:
        raise ModelSpecError(f"unknown model {name!r}; known: {', '.join(sorted(MODEL_ZOO))}") from None
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelSpecError(f"cannot build {name} with {kwargs}: {exc}") from exc
