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

logger = logging.getLogger(__name__)

__all__ = [
    "MODEL_ZOO",
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

ModelAndInputs = tuple[nn.Module, tuple[torch.Tensor, ...]]
"""What every factory returns: the module (eval mode) and a batch-1 example input tuple."""

_FLAT_FEATURES = 64  # 8x8 digits as a row


def _image_input(image_size: int) -> tuple[torch.Tensor, ...]:
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8 (digits are 8x8), got {image_size}")
    return (torch.randn(1, 1, image_size, image_size),)


def _check_widths(name: str, widths: Sequence[int], n: int | None = None) -> tuple[int, ...]:
    widths = tuple(int(w) for w in widths)
    if n is not None and len(widths) != n:
        raise ValueError(f"{name} needs {n} widths, got {len(widths)}: {widths}")
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"{name} widths must be a non-empty sequence of positive ints, got {widths}")
    return widths


def _scaled(channels: float, width_mult: float, divisor: int) -> int:
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


def _done(model: nn.Module, example: tuple[torch.Tensor, ...]) -> ModelAndInputs:
    return model.eval(), example


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
    widths = _check_widths("mlp", widths)
    return _done(
        MLP(widths, in_features=in_features, num_classes=num_classes), (torch.randn(1, in_features),)
    )


def lenet_300_100(
    *, widths: Sequence[int] = (300, 100), num_classes: int = 10, in_features: int = 64
) -> ModelAndInputs:
    """LeNet-300-100 (the classic pruning benchmark MLP) on flat digits: 64-300-100-10."""
    widths = _check_widths("lenet_300_100", widths, 2)
    return _done(
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
    (hidden,) = _check_widths("mlp_bn", (hidden,))
    return _done(
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
    channels = _check_widths("lenet5 channels", channels, 2)
    fc = _check_widths("lenet5 fc", fc)
    example = _image_input(image_size)
    return _done(LeNet5(channels, fc, image_size=image_size, num_classes=num_classes), example)


def _conv_bn_act(
    cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class DigitsCNN(nn.Module):
    """Conv-BN-ReLU blocks, global average pool, linear classifier."""

    def __init__(self, widths: Sequence[int], strides: Sequence[int], *, num_classes: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        prev = 1
        for w, s in zip(widths, strides, strict=True):
            blocks.append(_conv_bn_act(prev, w, 3, s))
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
    widths = _check_widths("digits_cnn", widths)
    if strides is None:
        strides = tuple(2 if i == 1 else 1 for i in range(len(widths)))
    if len(strides) != len(widths):
        raise ValueError(f"digits_cnn needs one stride per width, got {len(strides)} for {len(widths)}")
    return _done(DigitsCNN(widths, strides, num_classes=num_classes), _image_input(image_size))


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
    widths = _check_widths("cnn3", widths, 3)
    return _done(CNN3(widths, num_classes=num_classes), _image_input(image_size))


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
        self.stem = _conv_bn_act(1, widths[0], 3, 1)
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
    widths = _check_widths("resnet_small", widths)
    if blocks_per_stage < 1:
        raise ValueError(f"blocks_per_stage must be >= 1, got {blocks_per_stage}")
    return _done(ResNetSmall(widths, blocks_per_stage, num_classes=num_classes), _image_input(image_size))


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
        self.expand = _conv_bn_act(cin, expanded, 1, act=act) if expanded != cin else nn.Identity()
        self.depthwise = _conv_bn_act(expanded, expanded, kernel, stride, groups=expanded, act=act)
        self.se = se if se is not None else nn.Identity()
        self.project = _conv_bn_act(expanded, cout, 1, act=None)

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
        stem = _scaled(16, width_mult, divisor)
        self.stem = _conv_bn_act(1, stem, 3, 1, act=nn.Hardswish)
        blocks: list[nn.Module] = []
        prev = stem
        for kernel, exp, out, use_se, hswish, stride in _MNV3_BLOCKS:
            exp_c = _scaled(exp, width_mult, divisor)  # equal to the input in block 1: no expand conv
            out_c = _scaled(out, width_mult, divisor)
            act: type[nn.Module] = nn.Hardswish if hswish else nn.ReLU
            se = (
                SqueezeExcite(exp_c, _scaled(exp_c / 4, 1.0, divisor), act=nn.ReLU, gate=nn.Hardsigmoid)
                if use_se
                else None
            )
            blocks.append(InvertedResidual(prev, exp_c, out_c, kernel=kernel, stride=stride, act=act, se=se))
            prev = out_c
        self.blocks = nn.Sequential(*blocks)
        head = _scaled(6 * _MNV3_BLOCKS[-1][2], width_mult, divisor)
        self.head = _conv_bn_act(prev, head, 1, act=nn.Hardswish)
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
    return _done(model, _image_input(image_size))


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
        stem = _scaled(32, width_mult, divisor)
        self.stem = _conv_bn_act(1, stem, 3, 1, act=nn.SiLU)
        blocks: list[nn.Module] = []
        prev = stem
        for ratio, kernel, stride, out, repeats in _EFFNET_STAGES:
            out_c = _scaled(out, width_mult, divisor)
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
        head = _scaled(head_channels, width_mult, divisor)
        self.head = _conv_bn_act(prev, head, 1, act=nn.SiLU)
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
    return _done(model, _image_input(image_size))


# --- BERT-style encoder ------------------------------------------------------------------------------


class MultiHeadSelfAttention(nn.Module):
    """Self-attention with separate ``q``/``k``/``v``/``out`` Linears and an explicit head split.

    Head ``h`` owns output rows ``h*head_dim:(h+1)*head_dim`` of ``q``, ``k`` and ``v`` and the same input
    columns of ``out``. ``num_heads`` and ``head_dim`` are plain attributes: code that slices the
    projections must update them (:meth:`prune_heads_` does it for whole heads; after Torch-Pruning with
    ``num_heads={attn.q: ..., ...}`` set ``attn.num_heads = pruner.num_heads[attn.q]`` and
    ``attn.head_dim = attn.q.out_features // attn.num_heads``). ``forward`` raises if they disagree
    with the projection widths, so a forgotten update fails loudly instead of mixing heads. The softmax
    scale stays ``1/sqrt(original head_dim)``, so removing all-zero dimensions leaves outputs unchanged.
    """

    def __init__(self, hidden: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        inner = num_heads * head_dim
        self.q = nn.Linear(hidden, inner)
        self.k = nn.Linear(hidden, inner)
        self.v = nn.Linear(hidden, inner)
        self.out = nn.Linear(inner, hidden)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = self.num_heads * self.head_dim
        widths = (self.q.out_features, self.k.out_features, self.v.out_features, self.out.in_features)
        if any(w != inner for w in widths):
            raise RuntimeError(
                f"attention widths {widths} do not match num_heads*head_dim = {self.num_heads}*{self.head_dim}: "
                "update num_heads/head_dim after pruning"
            )
        b, s, _ = x.shape  # (B, S, hidden)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, s, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, S, Dh)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale  # (B, H, S, S)
        ctx = torch.matmul(self.softmax(scores), v)  # (B, H, S, Dh)
        ctx = ctx.transpose(1, 2).reshape(b, s, inner)  # (B, S, H*Dh)
        return self.out(ctx)  # (B, S, hidden)

    @torch.no_grad()
    def prune_heads_(self, keep: Sequence[int]) -> int:
        """Keep only the heads listed in ``keep`` (in that order), slicing q/k/v/out in place.

        Returns:
            The number of heads left.

        Raises:
            ValueError: if ``keep`` is empty, repeats a head or names one that does not exist.
        """
        keep = [int(h) for h in keep]
        if not keep or len(set(keep)) != len(keep) or not all(0 <= h < self.num_heads for h in keep):
            raise ValueError(f"keep must list distinct heads in 0..{self.num_heads - 1}, got {keep}")
        rows = torch.cat([torch.arange(h * self.head_dim, (h + 1) * self.head_dim) for h in keep])
        for name in ("q", "k", "v"):
            old: nn.Linear = getattr(self, name)
            new = nn.Linear(old.in_features, len(rows), bias=old.bias is not None)
            new.weight.copy_(old.weight[rows])
            if old.bias is not None:
                new.bias.copy_(old.bias[rows])
            setattr(self, name, new)
        out = nn.Linear(len(rows), self.out.out_features, bias=self.out.bias is not None)
        out.weight.copy_(self.out.weight[:, rows])
        if self.out.bias is not None:
            out.bias.copy_(self.out.bias)
        self.out = out
        self.num_heads = len(keep)
        return self.num_heads


class EncoderLayer(nn.Module):
    """Post-LN transformer encoder layer (as in BERT): x = LN(x + attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, hidden: int, num_heads: int, head_dim: int, ffn: int) -> None:
        super().__init__()
        self.attn = MultiHeadSelfAttention(hidden, num_heads, head_dim)
        self.norm1 = nn.LayerNorm(hidden)
        self.ffn_in = nn.Linear(hidden, ffn)
        self.act = nn.GELU()
        self.ffn_out = nn.Linear(ffn, hidden)
        self.norm2 = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.ffn_out(self.act(self.ffn_in(x))))  # (B, S, hidden)


class BertEncoderSmall(nn.Module):
    """Linear token embedding + learned positions, encoder layers, mean pool over tokens, classifier."""

    def __init__(
        self,
        *,
        seq_len: int,
        token_features: int,
        hidden: int,
        num_heads: int,
        head_dim: int,
        ffn: int,
        num_layers: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(token_features, hidden)
        self.pos = nn.Parameter(torch.randn(1, seq_len, hidden) * 0.02)  # (1, S, hidden)
        self.layers = nn.Sequential(
            *[EncoderLayer(hidden, num_heads, head_dim, ffn) for _ in range(num_layers)]
        )
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.pos  # (B, S, hidden)
        h = self.layers(h)
        return self.classifier(h.mean(dim=1))  # (B, num_classes)


def bert_encoder_small(
    *,
    hidden: int = 64,
    num_heads: int = 4,
    head_dim: int | None = None,
    ffn: int = 128,
    num_layers: int = 2,
    seq_len: int = 8,
    token_features: int = 8,
    num_classes: int = 10,
) -> ModelAndInputs:
    """BERT-style encoder on digits rows: input ``(1, 8, 8)`` = 8 tokens of 8 features, 10 logits.

    ``head_dim`` defaults to ``hidden // num_heads``; ``hidden`` may be odd when ``head_dim`` is given.
    Feed it :func:`edgetrim.examples.data.digits_tokens_loaders` batches.

    Example:
        >>> m, (x,) = bert_encoder_small(hidden=37, num_heads=3, head_dim=12, ffn=61)
        >>> tuple(x.shape), tuple(m(x).shape)
        ((1, 8, 8), (1, 10))
    """
    if head_dim is None:
        head_dim = hidden // num_heads
    for name, value in (("hidden", hidden), ("num_heads", num_heads), ("head_dim", head_dim), ("ffn", ffn)):
        if value < 1:
            raise ValueError(f"bert_encoder_small {name} must be >= 1, got {value}")
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    model = BertEncoderSmall(
        seq_len=seq_len,
        token_features=token_features,
        hidden=hidden,
        num_heads=num_heads,
        head_dim=head_dim,
        ffn=ffn,
        num_layers=num_layers,
        num_classes=num_classes,
    )
    return _done(model, (torch.randn(1, seq_len, token_features),))


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
