"""What every builder agrees on: tensor layouts, activation names, width checks (torch-free).

Layouts (NCHW here; the TFLite builder transposes to NHWC):

* LINEAR, LAYER_NORM, SOFTMAX: ``(tokens, width)``.
* CONV2D, DEPTHWISE_CONV2D, POOL: ``(tokens, C, H, W)`` with ``(H, W) = ctx.spatial`` (tokens = batch).
* ACTIVATION, ADD, MUL, BATCH_NORM, OTHER: ``(tokens, C, H, W)`` when ``ctx.spatial != (1, 1)``,
  else ``(tokens, C)``. MUL with ``variant == "bcast"`` multiplies by a ``(tokens, C, 1, 1)`` scale
  (squeeze-excite).
* MATMUL: ``(batch, tokens, in_w) @ (batch, in_w, out_w)``; ``variant == "batch<b>"`` sets the batch.
"""

from __future__ import annotations

import math

from edgetrim.errors import EdgetrimError
from edgetrim.lookup_tables.predict import NCHWC_PAIR_CHAINS, NCHWC_PRICED_FUSED_ACTS
from edgetrim.types import OpContext, OpKind

# Canonical activation names used in OpContext.activation / ACTIVATION variants.
ACTIVATIONS = frozenset(
    {"relu", "relu6", "hardswish", "hardsigmoid", "sigmoid", "silu", "gelu", "tanh", "leaky_relu"}
)
POOL_VARIANTS = frozenset({"avg", "max", "global_avg", "global_max"})
OTHER_VARIANTS = frozenset({"reshape", "transpose", "cat"})
# onnxruntime's NCHWc layout conversions (com.microsoft.nchwc ReorderInput / ReorderOutput), priced
# as their own one-axis contexts on ort targets: ``nchwc8_in`` is NCHW -> NCHWc with block 8.
NCHWC_REORDER_PREFIX = "nchwc"


def nchwc_reorder(ctx: OpContext) -> tuple[int, str] | None:
    """(block, direction) of an NCHWc layout context (``variant == "nchwc<B>_<direction>"``).

    Directions: ``in`` / ``out`` (one ReorderInput / ReorderOutput), ``pair<k>`` (a chain of ``k``
    pairs), ``fuse_none`` / ``fuse_<act>`` (a blocked 1x1 conv ``w -> w``, alone or with ``act`` after
    it, which onnxruntime fuses into the conv: their difference prices the fused activation).
    """
    v = ctx.variant
    if ctx.kind is not OpKind.OTHER or not v.startswith(NCHWC_REORDER_PREFIX) or "_" not in v:
        return None
    block, _, direction = v[len(NCHWC_REORDER_PREFIX) :].partition("_")
    pairs = {f"pair{k}" for k in NCHWC_PAIR_CHAINS}
    fused = {f"fuse_{a}" for a in ("none", *NCHWC_PRICED_FUSED_ACTS)}
    if not block.isdigit() or int(block) < 1 or direction not in ("in", "out", *pairs, *fused):
        return None
    return int(block), direction


LEAKY_RELU_SLOPE = 0.01
LAYER_NORM_EPS = 1e-5


class UnsupportedOpError(EdgetrimError):
    """No one-op model can be built for this context on this runtime."""


def check_widths(ctx: OpContext, in_w: int, out_w: int) -> None:
    """Validate the two table widths for ``ctx`` (one-axis kinds need ``in_w == out_w``)."""
    if in_w < 1 or out_w < 1:
        raise ValueError(f"widths must be >= 1, got in_w={in_w} out_w={out_w} for {ctx.key()}")
    if ctx.one_axis and in_w != out_w:
        raise ValueError(f"{ctx.kind.value} has one width axis: in_w ({in_w}) must equal out_w ({out_w})")
    if ctx.activation != "none" and ctx.activation not in ACTIVATIONS:
        raise UnsupportedOpError(
            f"activation {ctx.activation!r} in {ctx.key()} is not supported; known: {sorted(ACTIVATIONS)}"
        )


def activation_of(ctx: OpContext) -> str:
    """The activation an op applies: the variant for ACTIVATION contexts, else the fused one."""
    if ctx.kind is OpKind.ACTIVATION:
        if ctx.variant not in ACTIVATIONS:
            raise UnsupportedOpError(
                f"activation {ctx.variant!r} ({ctx.key()}) is not supported; known: {sorted(ACTIVATIONS)}"
            )
        return ctx.variant
    return ctx.activation


def elementwise_shape(ctx: OpContext, width: int) -> tuple[int, ...]:
    """NCHW shape of the tensor an elementwise op (activation, add, mul, BN, other) sees."""
    if ctx.spatial == (1, 1):
        return (ctx.tokens, width)
    return (ctx.tokens, width, *ctx.spatial)


def conv_out_hw(ctx: OpContext) -> tuple[int, int]:
    """Output (H, W) of a conv / pool context (floor mode, like torch)."""
    if ctx.kind is OpKind.POOL and ctx.variant in ("global_avg", "global_max"):
        return (1, 1)
    out = []
    for size, k, s, p in zip(ctx.spatial, ctx.kernel, ctx.stride, ctx.padding):
        n = (size + 2 * p - k) // s + 1
        if n < 1:
            raise UnsupportedOpError(
                f"{ctx.key()}: kernel {k} stride {s} padding {p} leaves no output on {size}"
            )
        out.append(n)
    return (out[0], out[1])


def matmul_batch(ctx: OpContext) -> int:
    """Batch count of a MATMUL context (``variant == "batch<b>"``; default 1)."""
    if not ctx.variant:
        return 1
    if ctx.variant.startswith("batch") and ctx.variant[5:].isdigit():
        return max(1, int(ctx.variant[5:]))
    raise UnsupportedOpError(f"matmul variant {ctx.variant!r} ({ctx.key()}) must look like 'batch8'")


def output_shape(ctx: OpContext, in_w: int, out_w: int) -> tuple[int, ...]:
    """NCHW output shape every builder's model must produce (used by tests and checks)."""
    kind = ctx.kind
    if kind is OpKind.LINEAR:
        return (ctx.tokens, out_w)
    if kind in (OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D, OpKind.POOL):
        return (ctx.tokens, out_w, *conv_out_hw(ctx))
    if kind is OpKind.LAYER_NORM and ctx.variant == "skip":
        return (1, ctx.tokens, out_w)  # (batch, sequence, hidden): onnxruntime fuses Add+LN only in 3-D
    if kind in (OpKind.LAYER_NORM, OpKind.SOFTMAX):
        return (ctx.tokens, out_w)
    if kind is OpKind.MATMUL:
        return (matmul_batch(ctx), ctx.tokens, out_w)
    if kind is OpKind.OTHER:
        shape = elementwise_shape(ctx, in_w)
        if ctx.variant == "reshape":
            return (ctx.tokens, math.prod(shape[1:]))
        if ctx.variant == "transpose":
            return (shape[0], *shape[2:], shape[1])
        if ctx.variant == "cat":
            return (shape[0], 2 * in_w, *shape[2:])
        reorder = nchwc_reorder(ctx)
        if reorder is not None:
            block, direction = reorder
            padded = -(-in_w // block) * block
            return (ctx.tokens, padded if direction == "in" else in_w, *ctx.spatial)  # pair: NCHW again
        raise UnsupportedOpError(
            f"OTHER op {ctx.variant!r} ({ctx.key()}) has no one-op model; known: {sorted(OTHER_VARIANTS)}"
        )
    return elementwise_shape(ctx, out_w)


def tf_padding(ctx: OpContext) -> str | None:
    """ "VALID" / "SAME" when TFLite's padding reproduces torch's explicit padding, else None (needs PAD)."""
    if ctx.padding == (0, 0):
        return "VALID"
    out = conv_out_hw(ctx)
    for size, k, s, p, o in zip(ctx.spatial, ctx.kernel, ctx.stride, ctx.padding, out):
        same_out = -(-size // s)
        total = max((same_out - 1) * s + k - size, 0)
        # TF SAME puts the extra pixel at the end; it matches torch only when padding is symmetric.
        if same_out != o or total != 2 * p:
            return None
    return "SAME"


def validate_context(ctx: OpContext) -> None:
    """Raise :class:`UnsupportedOpError` when no builder can make a one-op model for ``ctx``."""
    check_widths(ctx, 1, 1)
    if ctx.kind is OpKind.POOL and ctx.variant not in POOL_VARIANTS:
        raise UnsupportedOpError(f"pool variant {ctx.variant!r} ({ctx.key()}) has no one-op model")
    activation_of(ctx)
    output_shape(ctx, 1, 1)
