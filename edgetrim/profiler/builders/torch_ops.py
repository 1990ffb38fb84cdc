"""One-op torch modules for the torch targets (eager: nothing is fused, so a fused activation in
the context is simply the next module of a ``Sequential``)."""

from __future__ import annotations

import logging

import torch
from torch import nn

from edgetrim.profiler.builders._common import (
    LAYER_NORM_EPS,
    LEAKY_RELU_SLOPE,
    UnsupportedOpError,
    activation_of,
    check_widths,
    elementwise_shape,
    matmul_batch,
    output_shape,
)
from edgetrim.types import OpContext, OpKind

logger = logging.getLogger(__name__)


def activation_module(act: str) -> nn.Module:
    """The torch module for a canonical activation name."""
    table: dict[str, nn.Module] = {
        "none": nn.Identity(),
        "relu": nn.ReLU(),
        "relu6": nn.ReLU6(),
        "hardswish": nn.Hardswish(),
        "hardsigmoid": nn.Hardsigmoid(),
        "sigmoid": nn.Sigmoid(),
        "silu": nn.SiLU(),
        "gelu": nn.GELU(),
        "tanh": nn.Tanh(),
        "leaky_relu": nn.LeakyReLU(LEAKY_RELU_SLOPE),
    }
    try:
        return table[act]
    except KeyError:
        raise UnsupportedOpError(f"activation {act!r} has no torch builder") from None


class _Binary(nn.Module):
    def __init__(self, op: str, act: str) -> None:
        super().__init__()
        self.op = op
        self.act = activation_module(act)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.op == "add":
            return self.act(x + y)
        if self.op == "mul":
            return self.act(x * y)
        if self.op == "matmul":
            return x @ y
        return torch.cat([x, y], dim=1)


class _SkipLayerNorm(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.norm(x + skip)


class _Unary(nn.Module):
    def __init__(self, op: str, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.op = op
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op == "softmax":
            return torch.softmax(x, dim=-1)
        if self.op == "reshape":
            return x.reshape(self.shape)
        return x.permute(0, *range(2, x.dim()), 1).contiguous()  # transpose: channels last


def build_torch_op(ctx: OpContext, in_w: int, out_w: int) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """An eval-mode module computing one op of ``ctx`` plus random inputs of the right shape.

    Example:
        >>> from edgetrim.types import OpContext, OpKind
        >>> m, (x,) = build_torch_op(OpContext(OpKind.LINEAR, tokens=4), 16, 8)
        >>> tuple(m(x).shape)
        (4, 8)
    """
    check_widths(ctx, in_w, out_w)
    kind = ctx.kind
    out_shape = output_shape(ctx, in_w, out_w)
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    module: nn.Module
    if kind is OpKind.LINEAR:
        module = nn.Sequential(nn.Linear(in_w, out_w, bias=ctx.bias), activation_module(ctx.activation))
        inputs: tuple[torch.Tensor, ...] = (rand(ctx.tokens, in_w),)
    elif kind in (OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D):
        conv = nn.Conv2d(
            in_w,
            out_w,
            ctx.kernel,
            stride=ctx.stride,
            padding=ctx.padding,
            groups=in_w if kind is OpKind.DEPTHWISE_CONV2D else 1,
            bias=ctx.bias,
        )
        module = nn.Sequential(conv, activation_module(ctx.activation))
        inputs = (rand(ctx.tokens, in_w, *ctx.spatial),)
    elif kind is OpKind.ACTIVATION:
        module = activation_module(activation_of(ctx))
        inputs = (rand(*elementwise_shape(ctx, in_w)),)
    elif kind in (OpKind.ADD, OpKind.MUL):
        shape = elementwise_shape(ctx, in_w)
        other = shape
        if kind is OpKind.MUL and ctx.variant == "bcast":
            other = (shape[0], shape[1]) + (1,) * (len(shape) - 2)
        module = _Binary(kind.value, ctx.activation)
        inputs = (rand(*shape), rand(*other))
    elif kind is OpKind.POOL:
        if ctx.variant == "global_avg":
            module = nn.AdaptiveAvgPool2d(1)
        elif ctx.variant == "global_max":
            module = nn.AdaptiveMaxPool2d(1)
        elif ctx.variant == "avg":
            module = nn.AvgPool2d(ctx.kernel, ctx.stride, ctx.padding)
        elif ctx.variant == "max":
            module = nn.MaxPool2d(ctx.kernel, ctx.stride, ctx.padding)
        else:
            raise UnsupportedOpError(f"pool variant {ctx.variant!r} ({ctx.key()}) has no torch builder")
        inputs = (rand(ctx.tokens, in_w, *ctx.spatial),)
    elif kind is OpKind.LAYER_NORM and ctx.variant == "skip":  # residual Add + LayerNorm
        module = _SkipLayerNorm(in_w)
        inputs = (rand(*out_shape), rand(*out_shape))
    elif kind is OpKind.LAYER_NORM:
        module = nn.LayerNorm(in_w, eps=LAYER_NORM_EPS)
        inputs = (rand(ctx.tokens, in_w),)
    elif kind is OpKind.BATCH_NORM:
        shape = elementwise_shape(ctx, in_w)
        bn = nn.BatchNorm2d(in_w) if len(shape) == 4 else nn.BatchNorm1d(in_w)
        module = nn.Sequential(bn, activation_module(ctx.activation))
        inputs = (rand(*shape),)
    elif kind is OpKind.SOFTMAX:
        module = _Unary("softmax", out_shape)
        inputs = (rand(ctx.tokens, in_w),)
    elif kind is OpKind.MATMUL:
        b = matmul_batch(ctx)
        module = _Binary("matmul", "none")
        inputs = (rand(b, ctx.tokens, in_w), rand(b, in_w, out_w))
    elif kind is OpKind.OTHER:
        shape = elementwise_shape(ctx, in_w)
        if ctx.variant == "cat":
            module = _Binary("cat", "none")
            inputs = (rand(*shape), rand(*shape))
        else:
            module = _Unary(ctx.variant, out_shape)
            inputs = (rand(*shape),)
    else:  # pragma: no cover - every OpKind is handled above
        raise UnsupportedOpError(f"op kind {kind.value} has no torch builder")
    return module.eval(), inputs
