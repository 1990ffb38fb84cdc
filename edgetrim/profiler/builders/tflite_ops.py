"""One-op TFLite models written directly as flatbuffers (object API of ``schema_py_generated``).

No converter runs per point (a litert-torch conversion costs ~1.5 s; this costs ~1 ms). The graphs
mirror what litert-torch + the LiteRT converter emit for the same torch layer (checked in
``tests/profiler/test_builders.py``): NHWC tensors, BN folded into the conv weights, RELU / RELU6
fused into CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED / ADD (``fusedActivationFunction``), every
other activation its own op (HARD_SWISH, LOGISTIC, TANH, GELU, LEAKY_RELU, LOGISTIC+MUL for SiLU).
Explicit torch padding that TFLite's SAME cannot express becomes a PAD op before a VALID conv, as the
converter does.
"""

from __future__ import annotations

import logging

import numpy as np

from edgetrim.profiler.builders._common import (
    LAYER_NORM_EPS,
    LEAKY_RELU_SLOPE,
    UnsupportedOpError,
    activation_of,
    check_widths,
    conv_out_hw,
    elementwise_shape,
    matmul_batch,
    output_shape,
    tf_padding,
)
from edgetrim.types import OpContext, OpKind

logger = logging.getLogger(__name__)

# Activations TFLite fuses into conv / FC / add kernels (fusedActivationFunction).
FUSABLE = {"none": "NONE", "relu": "RELU", "relu6": "RELU6"}


def _schema():  # lazy: ai-edge-litert is an optional dependency
    try:
        import flatbuffers
        from ai_edge_litert import schema_py_generated as schema
    except ImportError as exc:  # pragma: no cover - environment dependent
        raise UnsupportedOpError("ai-edge-litert is missing: pip install 'edgetrim[tflite]'") from exc
    return flatbuffers, schema


def _nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    """NCHW -> NHWC for 4-D shapes; other ranks unchanged."""
    if len(shape) == 4:
        n, c, h, w = shape
        return (n, h, w, c)
    return shape


class _Model:
    """Accumulates tensors, buffers and operators of one subgraph."""

    def __init__(self) -> None:
        self.fb, self.s = _schema()
        self.buffers = [self.s.BufferT()]  # buffer 0 is the conventional empty buffer
        self.tensors: list = []
        self.ops: list = []
        self.codes: list[int] = []
        self.inputs: list[int] = []

    def tensor(
        self, shape: tuple[int, ...], *, data: np.ndarray | None = None, dtype: str = "float32"
    ) -> int:
        t = self.s.TensorT()
        t.shape = list(int(v) for v in shape)
        t.type = self.s.TensorType.FLOAT32 if dtype == "float32" else self.s.TensorType.INT32
        t.name = f"t{len(self.tensors)}"
        if data is not None:
            buf = self.s.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        else:
            self.buffers.append(self.s.BufferT())
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def input(self, shape: tuple[int, ...]) -> int:
        idx = self.tensor(shape)
        self.inputs.append(idx)
        return idx

    def const(self, array: np.ndarray) -> int:
        dtype = "int32" if array.dtype == np.int32 else "float32"
        return self.tensor(array.shape, data=array, dtype=dtype)

    def op(self, name: str, inputs: list[int], out_shape: tuple[int, ...], options: object = None) -> int:
        code = getattr(self.s.BuiltinOperator, name)
        if code not in self.codes:
            self.codes.append(code)
        out = self.tensor(out_shape)
        op = self.s.OperatorT()
        op.opcodeIndex = self.codes.index(code)
        op.inputs = list(inputs)
        op.outputs = [out]
        if options is not None:
            op.builtinOptionsType = getattr(self.s.BuiltinOptions, type(options).__name__[:-1])
            op.builtinOptions = options
        self.ops.append(op)
        return out

    def fused(self, act: str) -> int:
        return getattr(self.s.ActivationFunctionType, FUSABLE[act])

    def activation(self, x: int, shape: tuple[int, ...], act: str) -> int:
        """Unfused activation op(s) on tensor ``x`` of (NHWC) ``shape``."""
        s = self.s
        if act == "none":
            return x
        if act in ("relu", "relu6"):
            return self.op("RELU" if act == "relu" else "RELU6", [x], shape)
        if act == "hardswish":
            return self.op("HARD_SWISH", [x], shape)
        if act == "sigmoid":
            return self.op("LOGISTIC", [x], shape)
        if act == "tanh":
            return self.op("TANH", [x], shape)
        if act == "gelu":
            return self.op("GELU", [x], shape, s.GeluOptionsT())
        if act == "leaky_relu":
            opt = s.LeakyReluOptionsT()
            opt.alpha = LEAKY_RELU_SLOPE
            return self.op("LEAKY_RELU", [x], shape, opt)
        if act == "silu":  # LOGISTIC + MUL, as the converter emits for SiLU
            sig = self.op("LOGISTIC", [x], shape)
            return self.op("MUL", [x, sig], shape, s.MulOptionsT())
        if act == "hardsigmoid":  # converter: ADD(x, 3) with RELU6 fused, then MUL by 1/6
            add = s.AddOptionsT()
            add.fusedActivationFunction = self.fused("relu6")
            shifted = self.op("ADD", [x, self.const(np.array([3.0], np.float32))], shape, add)
            return self.op(
                "MUL", [shifted, self.const(np.array([1.0 / 6.0], np.float32))], shape, s.MulOptionsT()
            )
        raise UnsupportedOpError(f"activation {act!r} has no TFLite builder")

    def fused_or_separate(self, act: str) -> tuple[int, str]:
        """(fusedActivationFunction for the main op, activation still to apply after it)."""
        if act in FUSABLE:
            return self.fused(act), "none"
        return self.fused("none"), act

    def to_bytes(self, output: int, description: str) -> bytes:
        s = self.s
        sub = s.SubGraphT()
        sub.tensors = self.tensors
        sub.inputs = self.inputs
        sub.outputs = [output]
        sub.operators = self.ops
        sub.name = "main"
        model = s.ModelT()
        model.version = 3
        model.description = description
        model.buffers = self.buffers
        model.subgraphs = [sub]
        codes = []
        for code in self.codes:
            oc = s.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, s.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
            oc.version = 1
            codes.append(oc)
        model.operatorCodes = codes
        builder = self.fb.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def _weights(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape, dtype=np.float32) * 0.1).astype(np.float32)


def _conv(m: _Model, ctx: OpContext, in_w: int, out_w: int) -> int:
    s = m.s
    depthwise = ctx.kind is OpKind.DEPTHWISE_CONV2D
    n = ctx.tokens
    h, w = ctx.spatial
    x = m.input((n, h, w, in_w))
    padding = tf_padding(ctx)
    if padding is None:  # explicit symmetric padding: PAD then VALID, like the converter
        pads = np.array([[0, 0], [ctx.padding[0]] * 2, [ctx.padding[1]] * 2, [0, 0]], np.int32)
        h, w = h + 2 * ctx.padding[0], w + 2 * ctx.padding[1]
        x = m.op("PAD", [x, m.const(pads)], (n, h, w, in_w), s.PadOptionsT())
        padding = "VALID"
    oh, ow = conv_out_hw(ctx)
    out_shape = (n, oh, ow, out_w)
    fused, rest = m.fused_or_separate(ctx.activation)
    kh, kw = ctx.kernel
    # a conv from one input channel is what the converter emits as a depthwise conv with a depth
    # multiplier (litert-torch: Conv2d(1, C) -> DEPTHWISE_CONV_2D, multiplier C), a different kernel
    one_to_many = ctx.kind is OpKind.CONV2D and in_w == 1 and out_w > 1
    if depthwise or one_to_many:
        filt = m.const(_weights((1, kh, kw, out_w)))
        opt = s.DepthwiseConv2DOptionsT()
        opt.depthMultiplier = out_w if one_to_many else 1
        name = "DEPTHWISE_CONV_2D"
    else:
        filt = m.const(_weights((out_w, kh, kw, in_w)))
        opt = s.Conv2DOptionsT()
        name = "CONV_2D"
    opt.padding = getattr(s.Padding, padding)
    opt.strideH, opt.strideW = ctx.stride
    opt.fusedActivationFunction = fused
    bias = m.const(_weights((out_w,), 1) if ctx.bias else np.zeros(out_w, np.float32))
    y = m.op(name, [x, filt, bias], out_shape, opt)
    return m.activation(y, out_shape, rest)


def build_tflite_op(ctx: OpContext, in_w: int, out_w: int) -> bytes:
    """Serialized TFLite model computing one op of ``ctx`` at widths (``in_w``, ``out_w``).

    Tensors are NHWC (4-D) or as in :mod:`edgetrim.profiler.builders._common` otherwise; inputs in
    order ``x`` (, ``x2``); one output.

    Raises:
        UnsupportedOpError: no TFLite equivalent (unknown activation / variant).
        ValueError: widths out of range.

    Example:
        >>> from edgetrim.types import OpContext, OpKind
        >>> data = build_tflite_op(OpContext(OpKind.LINEAR, tokens=4, activation="relu"), 16, 8)
        >>> data[4:8]
        b'TFL3'
    """
    check_widths(ctx, in_w, out_w)
    m = _Model()
    s = m.s
    kind = ctx.kind
    out_nhwc = _nhwc(output_shape(ctx, in_w, out_w))
    if kind is OpKind.LINEAR:
        x = m.input((ctx.tokens, in_w))
        fused, rest = m.fused_or_separate(ctx.activation)
        opt = s.FullyConnectedOptionsT()
        opt.fusedActivationFunction = fused
        inputs = [x, m.const(_weights((out_w, in_w)))]
        inputs.append(m.const(_weights((out_w,), 1)) if ctx.bias else -1)
        y = m.op("FULLY_CONNECTED", inputs, out_nhwc, opt)
        y = m.activation(y, out_nhwc, rest)
    elif kind in (OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D):
        y = _conv(m, ctx, in_w, out_w)
    elif kind is OpKind.ACTIVATION:
        shape = _nhwc(elementwise_shape(ctx, in_w))
        y = m.activation(m.input(shape), shape, activation_of(ctx))
    elif kind in (OpKind.ADD, OpKind.MUL):
        shape = _nhwc(elementwise_shape(ctx, in_w))
        x = m.input(shape)
        if kind is OpKind.MUL and ctx.variant == "bcast":
            other = (
                m.input((shape[0],) + (1,) * (len(shape) - 2) + (shape[-1],))
                if len(shape) == 4
                else m.input(shape)
            )
        else:
            other = m.input(shape)
        if kind is OpKind.ADD:
            fused, rest = m.fused_or_separate(ctx.activation)
            opt = s.AddOptionsT()
        else:
            fused, rest = m.fused("none"), ctx.activation
            opt = s.MulOptionsT()
        opt.fusedActivationFunction = fused
        y = m.op("ADD" if kind is OpKind.ADD else "MUL", [x, other], shape, opt)
        y = m.activation(y, shape, rest)
    elif kind is OpKind.POOL:
        n, (h, w) = ctx.tokens, ctx.spatial
        x = m.input((n, h, w, in_w))
        if ctx.variant in ("global_avg", "global_max"):
            opt = s.ReducerOptionsT()
            opt.keepDims = True
            axes = m.const(np.array([1, 2], np.int32))
            y = m.op("MEAN" if ctx.variant == "global_avg" else "REDUCE_MAX", [x, axes], out_nhwc, opt)
        elif ctx.variant in ("avg", "max"):
            padding = tf_padding(ctx)
            if padding is None:
                pads = np.array([[0, 0], [ctx.padding[0]] * 2, [ctx.padding[1]] * 2, [0, 0]], np.int32)
                padded = (n, h + 2 * ctx.padding[0], w + 2 * ctx.padding[1], in_w)
                x = m.op("PAD", [x, m.const(pads)], padded, s.PadOptionsT())
                padding = "VALID"
            opt = s.Pool2DOptionsT()
            opt.padding = getattr(s.Padding, padding)
            opt.strideH, opt.strideW = ctx.stride
            opt.filterHeight, opt.filterWidth = ctx.kernel
            y = m.op("AVERAGE_POOL_2D" if ctx.variant == "avg" else "MAX_POOL_2D", [x], out_nhwc, opt)
        else:
            raise UnsupportedOpError(f"pool variant {ctx.variant!r} ({ctx.key()}) has no TFLite builder")
    elif kind is OpKind.LAYER_NORM:
        shape = output_shape(ctx, in_w, in_w)
        stat = (*shape[:-1], 1)
        x = m.input(shape)
        if ctx.variant == "skip":  # the residual Add it absorbed
            x = m.op("ADD", [x, m.input(shape)], shape, s.AddOptionsT())
        red = s.ReducerOptionsT()
        red.keepDims = True
        axis = m.const(np.array([-1], np.int32))
        mean = m.op("MEAN", [x, axis], stat, red)
        centred = m.op("SUB", [x, mean], shape, s.SubOptionsT())
        var = m.op("MEAN", [m.op("MUL", [centred, centred], shape, s.MulOptionsT()), axis], stat, red)
        eps = m.const(np.array([LAYER_NORM_EPS], np.float32))
        inv = m.op("RSQRT", [m.op("ADD", [var, eps], stat, s.AddOptionsT())], stat)
        normed = m.op("MUL", [centred, inv], shape, s.MulOptionsT())
        scaled = m.op("MUL", [normed, m.const(np.ones(in_w, np.float32))], shape, s.MulOptionsT())
        y = m.op("ADD", [scaled, m.const(np.zeros(in_w, np.float32))], shape, s.AddOptionsT())
    elif kind is OpKind.BATCH_NORM:  # unfolded BN = per-channel scale and shift on the last (C) axis
        shape = _nhwc(elementwise_shape(ctx, in_w))
        x = m.input(shape)
        scaled = m.op("MUL", [x, m.const(np.ones(in_w, np.float32))], shape, s.MulOptionsT())
        fused, rest = m.fused_or_separate(ctx.activation)
        add = s.AddOptionsT()
        add.fusedActivationFunction = fused
        y = m.op("ADD", [scaled, m.const(np.zeros(in_w, np.float32))], shape, add)
        y = m.activation(y, shape, rest)
    elif kind is OpKind.SOFTMAX:
        opt = s.SoftmaxOptionsT()
        opt.beta = 1.0
        y = m.op("SOFTMAX", [m.input((ctx.tokens, in_w))], out_nhwc, opt)
    elif kind is OpKind.MATMUL:
        b = matmul_batch(ctx)
        x = m.input((b, ctx.tokens, in_w))
        x2 = m.input((b, in_w, out_w))
        y = m.op("BATCH_MATMUL", [x, x2], out_nhwc, s.BatchMatMulOptionsT())
    elif kind is OpKind.OTHER:
        shape = _nhwc(elementwise_shape(ctx, in_w))
        x = m.input(shape)
        if ctx.variant == "reshape":
            if len(shape) == 4 and shape[1] * shape[2] > 1:
                # flattening an NHWC map in torch's (channel-major) order: the converter moves the
                # channels first with a TRANSPOSE, then reshapes
                x = m.op(
                    "TRANSPOSE",
                    [x, m.const(np.array([0, 3, 1, 2], np.int32))],
                    (shape[0], shape[3], shape[1], shape[2]),
                    s.TransposeOptionsT(),
                )
            opt = s.ReshapeOptionsT()
            opt.newShape = list(out_nhwc)
            y = m.op("RESHAPE", [x, m.const(np.array(out_nhwc, np.int32))], out_nhwc, opt)
        elif ctx.variant == "transpose":
            # NHWC -> NCHW-like move of the channel axis (the converter's layout transposes)
            perm = [0, len(shape) - 1, *range(1, len(shape) - 1)]
            y = m.op(
                "TRANSPOSE",
                [x, m.const(np.array(perm, np.int32))],
                tuple(shape[p] for p in perm),
                s.TransposeOptionsT(),
            )
        elif ctx.variant == "cat":
            opt = s.ConcatenationOptionsT()
            opt.axis = len(shape) - 1
            y = m.op("CONCATENATION", [x, m.input(shape)], (*shape[:-1], 2 * in_w), opt)
        else:
            raise UnsupportedOpError(f"OTHER op {ctx.variant!r} has no TFLite builder")
    else:  # pragma: no cover - every OpKind is handled above
        raise UnsupportedOpError(f"op kind {kind.value} has no TFLite builder")
    return m.to_bytes(y, ctx.key())
