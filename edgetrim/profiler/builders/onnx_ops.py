"""One-op ONNX graphs written directly with ``onnx.helper`` (no torch export: ~1 ms per point).

Each graph is what a torch exporter would emit for the op *after* BN folding: Conv/Gemm with bias,
followed by the activation node; onnxruntime then applies its own fusions (Conv+Relu/Clip/...,
Gemm+Relu) when the session is created with graph optimisation on, exactly as it would for the whole
model. Layouts are those of :mod:`edgetrim.profiler.builders._common`.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from edgetrim.profiler.builders._common import (
    LAYER_NORM_EPS,
    LEAKY_RELU_SLOPE,
    UnsupportedOpError,
    activation_of,
    check_widths,
    elementwise_shape,
    matmul_batch,
    nchwc_reorder,
    output_shape,
)
from edgetrim.types import OpContext, OpKind

logger = logging.getLogger(__name__)

OPSET = 20  # Gelu is an ONNX op from opset 20; LayerNormalization from 17


def _onnx():  # lazy: onnx is an optional dependency
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as exc:  # pragma: no cover - environment dependent
        raise UnsupportedOpError("the onnx package is missing: pip install 'edgetrim[onnx]'") from exc
    return onnx, helper, numpy_helper


def _weights(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape, dtype=np.float32) * 0.1).astype(np.float32)


class _Graph:
    """Tiny graph accumulator: nodes, initializers, inputs, fresh names."""

    def __init__(self) -> None:
        _, self.helper, self.numpy_helper = _onnx()
        self.nodes: list = []
        self.inits: list = []
        self.inputs: list = []
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def input(self, name: str, shape: tuple[int, ...]) -> str:
        from onnx import TensorProto

        self.inputs.append(self.helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        return name

    def const(self, array: np.ndarray, prefix: str = "w") -> str:
        name = self.name(prefix)
        self.inits.append(self.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], domain: str = "", **attrs: object) -> str:
        out = self.name(op.lower() + "_")
        self.nodes.append(self.helper.make_node(op, inputs, [out], domain=domain or None, **attrs))
        return out

    def activation(self, x: str, act: str) -> str:
        if act == "none":
            return x
        if act == "relu":
            return self.node("Relu", [x])
        if act == "relu6":
            lo = self.const(np.array(0.0, np.float32), "lo")
            hi = self.const(np.array(6.0, np.float32), "hi")
            return self.node("Clip", [x, lo, hi])
        if act == "hardswish":
            return self.node("HardSwish", [x])
        if act == "hardsigmoid":
            return self.node("HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5)
        if act == "sigmoid":
            return self.node("Sigmoid", [x])
        if act == "silu":  # torch exports SiLU as x * Sigmoid(x)
            return self.node("Mul", [x, self.node("Sigmoid", [x])])
        if act == "gelu":
            return self.node("Gelu", [x])
        if act == "tanh":
            return self.node("Tanh", [x])
        if act == "leaky_relu":
            return self.node("LeakyRelu", [x], alpha=LEAKY_RELU_SLOPE)
        raise UnsupportedOpError(f"activation {act!r} has no ONNX builder")

    def model_bytes(self, out: str, out_shape: tuple[int, ...], doc: str) -> bytes:
        from onnx import TensorProto

        y = self.helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))
        self.nodes.append(self.helper.make_node("Identity", [out], ["y"]))
        graph = self.helper.make_graph(self.nodes, "edgetrim_op", self.inputs, [y], initializer=self.inits)
        model = self.helper.make_model(
            graph,
            opset_imports=[
                self.helper.make_opsetid("", OPSET),
                self.helper.make_opsetid("com.microsoft.nchwc", 1),
            ],
            producer_name="edgetrim",
            doc_string=doc,
        )
        model.ir_version = 9
        return model.SerializeToString()


def build_onnx_op(ctx: OpContext, in_w: int, out_w: int) -> bytes:
    """Serialized ONNX model computing one op of ``ctx`` at widths (``in_w``, ``out_w``).

    Inputs are named ``x`` (and ``x2`` for binary ops), the output ``y``; shapes per
    :mod:`edgetrim.profiler.builders._common`.

    Raises:
        UnsupportedOpError: the context has no ONNX equivalent here (unknown activation / variant).
        ValueError: widths out of range.

    Example:
        >>> from edgetrim.types import OpContext, OpKind
        >>> data = build_onnx_op(OpContext(OpKind.LINEAR, tokens=4, activation="relu"), 16, 8)
        >>> len(data) > 0
        True
    """
    check_widths(ctx, in_w, out_w)
    g = _Graph()
    kind = ctx.kind
    out_shape = output_shape(ctx, in_w, out_w)
    if kind is OpKind.LINEAR:
        x = g.input("x", (ctx.tokens, in_w))
        inputs = [x, g.const(_weights((out_w, in_w)))]
        if ctx.bias:
            inputs.append(g.const(_weights((out_w,), 1)))
        y = g.activation(g.node("Gemm", inputs, transB=1), ctx.activation)
    elif kind in (OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D):
        depthwise = kind is OpKind.DEPTHWISE_CONV2D
        x = g.input("x", (ctx.tokens, in_w, *ctx.spatial))
        w_shape = (out_w, 1 if depthwise else in_w, *ctx.kernel)
        inputs = [x, g.const(_weights(w_shape))]
        if ctx.bias:
            inputs.append(g.const(_weights((out_w,), 1)))
        conv = g.node(
            "Conv",
            inputs,
            kernel_shape=list(ctx.kernel),
            strides=list(ctx.stride),
            pads=[ctx.padding[0], ctx.padding[1], ctx.padding[0], ctx.padding[1]],
            group=in_w if depthwise else 1,
        )
        y = g.activation(conv, ctx.activation)
    elif kind is OpKind.ACTIVATION:
        x = g.input("x", elementwise_shape(ctx, in_w))
        y = g.activation(x, activation_of(ctx))
    elif kind in (OpKind.ADD, OpKind.MUL):
        shape = elementwise_shape(ctx, in_w)
        x = g.input("x", shape)
        if kind is OpKind.MUL and ctx.variant == "bcast":
            other = g.input("x2", (shape[0], shape[1]) + (1,) * (len(shape) - 2))
        else:
            other = g.input("x2", shape)
        y = g.activation(g.node("Add" if kind is OpKind.ADD else "Mul", [x, other]), ctx.activation)
    elif kind is OpKind.POOL:
        x = g.input("x", (ctx.tokens, in_w, *ctx.spatial))
        pads = [ctx.padding[0], ctx.padding[1], ctx.padding[0], ctx.padding[1]]
        if ctx.variant == "global_avg":  # torch's ONNX export of mean / adaptive_avg_pool2d((1, 1))
            y = g.node("ReduceMean", [x, g.const(np.array([2, 3], np.int64), "axes")], keepdims=1)
        elif ctx.variant == "global_max":
            y = g.node("GlobalMaxPool", [x])
        elif ctx.variant == "avg":
            y = g.node("AveragePool", [x], kernel_shape=list(ctx.kernel), strides=list(ctx.stride), pads=pads)
        elif ctx.variant == "max":
            y = g.node("MaxPool", [x], kernel_shape=list(ctx.kernel), strides=list(ctx.stride), pads=pads)
        else:
            raise UnsupportedOpError(f"pool variant {ctx.variant!r} ({ctx.key()}) has no ONNX builder")
    elif kind is OpKind.LAYER_NORM:
        if ctx.variant == "skip":  # residual Add + LayerNorm: onnxruntime runs SkipLayerNormalization
            x = g.node("Add", [g.input("x", (1, ctx.tokens, in_w)), g.input("x2", (1, ctx.tokens, in_w))])
        else:
            x = g.input("x", (ctx.tokens, in_w))
        scale = g.const(np.ones(in_w, np.float32))
        bias = g.const(np.zeros(in_w, np.float32))
        y = g.node("LayerNormalization", [x, scale, bias], axis=-1, epsilon=LAYER_NORM_EPS)
    elif kind is OpKind.BATCH_NORM:
        x = g.input("x", elementwise_shape(ctx, in_w))
        params = [g.const(np.ones(in_w, np.float32)), g.const(np.zeros(in_w, np.float32))]
        params += [g.const(np.zeros(in_w, np.float32)), g.const(np.ones(in_w, np.float32))]
        y = g.activation(g.node("BatchNormalization", [x, *params], epsilon=LAYER_NORM_EPS), ctx.activation)
    elif kind is OpKind.SOFTMAX:
        x = g.input("x", (ctx.tokens, in_w))
        if ctx.variant == "sdpa":  # as the exporter writes scaled_dot_product_attention's softmax
            p = g.node("Softmax", [g.node("Add", [x, g.input("mask", (ctx.tokens, in_w))])], axis=-1)
            zero = g.const(np.zeros((), np.float32), "zero")
            y = g.node("Where", [g.node("IsNaN", [p]), zero, p])
        else:
            y = g.node("Softmax", [x], axis=-1)
    elif kind is OpKind.MATMUL:
        b = matmul_batch(ctx)
        x = g.input("x", (b, ctx.tokens, in_w))
        x2 = g.input("x2", (b, in_w, out_w))
        y = g.node("MatMul", [x, x2])
    elif kind is OpKind.OTHER and nchwc_reorder(ctx) is not None:
        block, direction = nchwc_reorder(ctx)  # type: ignore[misc]
        if direction == "in":
            x = g.input("x", (ctx.tokens, in_w, *ctx.spatial))
            y = g.node("ReorderInput", [x], domain="com.microsoft.nchwc")
        elif direction.startswith("fuse_"):  # blocked 1x1 conv w -> w, then the activation it fuses
            x = g.input("x", (ctx.tokens, in_w, *ctx.spatial))
            w = g.const(np.random.default_rng(0).standard_normal((in_w, in_w, 1, 1)).astype(np.float32) * 0.1)
            # the trailing Neg (after a ReorderOutput in both variants) is what makes onnxruntime fuse
            # the activation: one whose output is the graph's output is left as its own nodes
            y = g.node("Neg", [g.activation(g.node("Conv", [x, w]), direction[len("fuse_") :])])
        elif direction.startswith("pair"):
            y = g.input("x", (ctx.tokens, in_w, *ctx.spatial))
            for _ in range(int(direction[len("pair") :])):
                blocked = g.node("ReorderInput", [y], domain="com.microsoft.nchwc")
                y = g.node("ReorderOutput", [blocked], domain="com.microsoft.nchwc", channels=in_w)
        else:
            x = g.input("x", (ctx.tokens, -(-in_w // block) * block, *ctx.spatial))
            y = g.node("ReorderOutput", [x], domain="com.microsoft.nchwc", channels=in_w)
    elif kind is OpKind.OTHER:
        shape = elementwise_shape(ctx, in_w)
        x = g.input("x", shape)
        if ctx.variant == "reshape":
            y = g.node("Reshape", [x, g.const(np.array(out_shape, np.int64), "shape")])
        elif ctx.variant == "transpose":
            perm = [0, *range(2, len(shape)), 1]
            y = g.node("Transpose", [x], perm=perm)
        elif ctx.variant == "cat":
            y = g.node("Concat", [x, g.input("x2", shape)], axis=1)
        else:  # output_shape already raised for unknown variants
            raise UnsupportedOpError(f"OTHER op {ctx.variant!r} has no ONNX builder")
    else:  # pragma: no cover - every OpKind is handled above
        raise UnsupportedOpError(f"op kind {kind.value} has no ONNX builder")
    assert math.prod(out_shape) > 0
    return g.model_bytes(y, out_shape, ctx.key())
