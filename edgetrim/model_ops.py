"""Which operators a model runs, as the latency tables see them.

:func:`extract_layer_ops` walks a torch model (torch.fx symbolic trace; forward hooks plus a torch
function-mode capture when the model cannot be traced) and emits one :class:`~edgetrim.types.LayerOp`
per operator latency is predicted for: convs and linears with the BN folding and fused activation the
target runtime really applies (:class:`FusionRules`), depthwise convs, unfused activations, residual
adds, squeeze-excite multiplies, pooling, layer/batch norm, softmax, attention matmuls and data
movement (reshape / transpose / cat as ``OTHER``).

Fusion rules were read off the optimised graphs the runtimes produce for conv-BN-act, linear-act
and add-act models (onnxruntime 1.32 ``optimized_model_filepath`` with ORT_ENABLE_ALL; LiteRT op lists
of litert-torch 0.10 conversions) and are re-checked by ``tests/profiler/test_fusion.py``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from edgetrim.types import LayerOp, OpContext, OpKind

logger = logging.getLogger(__name__)

_ALL_ACTS = frozenset(
    {"relu", "relu6", "hardswish", "hardsigmoid", "sigmoid", "silu", "gelu", "tanh", "leaky_relu"}
)


@dataclass(frozen=True)
class FusionRules:
    """Which neighbours a runtime merges into one kernel.

    Args:
        name: label stored in reports.
        fold_bn: BatchNorm right after a conv is folded into the conv's weights (no BN cost).
        fold_bn_linear: BatchNorm1d right after a linear layer (2-D activations) is folded into it.
        conv_activations: activations fused into conv / depthwise conv kernels.
        linear_activations: activations fused into linear (Gemm / FULLY_CONNECTED) kernels.
        add_activations: activations fused into elementwise ADD kernels.
        linear_nd_reshapes: a linear layer with bias on a >2-D input runs as Reshape -> Gemm ->
            Reshape (onnxruntime's MatMulAddFusion); the two reshapes are emitted as ``OTHER`` ops.
        add_into_layer_norm: a residual Add whose only consumer is a LayerNorm runs inside it
            (onnxruntime's SkipLayerNormalization); the Add is not emitted and the LayerNorm's context
            gets ``variant="skip"`` (its one-op model adds the residual first, as the fused kernel does).
        transpose_into_matmul: a transpose of the last two axes whose only consumer is a matmul
            (as its second operand) runs inside it (onnxruntime's FusedMatMul, transB); not emitted.
        pad_into_conv: a zero constant pad whose only consumer is a conv or pooling layer becomes that
            layer's padding (onnxruntime's PadFusion; TensorFlow-style "same" padding written as
            ``F.pad`` before every conv); not emitted.
        oversized_pool_is_global: a pool whose one window covers its whole map (kernel >= map, as in
            ``AvgPool2d(1280, ceil_mode=True)`` on a 7x7 map) runs as a global pool. LiteRT does not:
            litert-torch pads the map to the window, and such a model measured 1,000x slower there.
        sdpa_guarded_softmax: ``scaled_dot_product_attention`` with a boolean mask runs its softmax
            as torch's ONNX exporter writes it: the mask added as 0 / -inf first, rows of NaN set to
            zero after (Add, Softmax, IsNaN, Where); the softmax context gets ``variant="sdpa"``,
            profiled as those four nodes. Without a mask, or with a float one, the exporter writes a
            plain Softmax (the float mask's Add is not priced).
    """

    name: str
    fold_bn: bool = False
    fold_bn_linear: bool = False
    conv_activations: frozenset[str] = field(default_factory=frozenset)
    linear_activations: frozenset[str] = field(default_factory=frozenset)
    add_activations: frozenset[str] = field(default_factory=frozenset)
    linear_nd_reshapes: bool = False
    add_into_layer_norm: bool = False
    transpose_into_matmul: bool = False
    pad_into_conv: bool = False
    oversized_pool_is_global: bool = True
    sdpa_guarded_softmax: bool = False

    def __post_init__(self) -> None:
        for attr in ("conv_activations", "linear_activations", "add_activations"):
            value = frozenset(getattr(self, attr))
            unknown = value - _ALL_ACTS
            if unknown:
                raise ValueError(f"FusionRules.{attr} has unknown activations {sorted(unknown)}")
            object.__setattr__(self, attr, value)


# torch eager runs every module as written.
TORCH_EAGER = FusionRules(name="torch-eager")
# onnxruntime CPU EP, ORT_ENABLE_ALL, on torch's dynamo ONNX export (which already folds BatchNorm1d
# after a Linear into the Gemm): Conv+BN folded; Conv fuses Relu/Clip/Sigmoid/Tanh/HardSigmoid/
# LeakyRelu; Gemm fuses the same except Clip (relu6 stays a Clip node); Add fuses nothing here (the
# NCHWc layout fuses a residual Add and a HardSwish into blocked convs, which depends on the widths:
# the predictor applies it, see lookup_tables.predict). A biased MatMul on a 3-D input becomes
# Reshape -> Gemm -> Reshape. An Add feeding only a LayerNorm becomes SkipLayerNormalization, and a
# last-two-axes transpose feeding only a MatMul (K^T in attention) becomes FusedMatMul, and a zero
# Pad feeding only a Conv / pool becomes its pads (PadFusion). scaled_dot_product_attention arrives
# from the dynamo exporter as MatMul, Add (mask), Softmax, IsNaN, Where, MatMul.
ONNXRUNTIME = FusionRules(
    name="onnxruntime",
    pad_into_conv=True,
    sdpa_guarded_softmax=True,
    fold_bn=True,
    fold_bn_linear=True,
    linear_nd_reshapes=True,
    add_into_layer_norm=True,
    transpose_into_matmul=True,
    conv_activations=frozenset({"relu", "relu6", "sigmoid", "tanh", "hardsigmoid", "leaky_relu"}),
    linear_activations=frozenset({"relu", "sigmoid", "tanh", "hardsigmoid", "leaky_relu"}),
)
# LiteRT (litert-torch + converter): BN folded (after convs and linears); RELU/RELU6 fused into CONV_2D, DEPTHWISE_CONV_2D,
# FULLY_CONNECTED and ADD; HARD_SWISH, LOGISTIC, TANH, GELU stay separate ops.
LITERT = FusionRules(
    name="litert",
    oversized_pool_is_global=False,
    fold_bn=True,
    fold_bn_linear=True,
    conv_activations=frozenset({"relu", "relu6"}),
    linear_activations=frozenset({"relu", "relu6"}),
    add_activations=frozenset({"relu", "relu6"}),
)

FUSION_BY_RUNTIME: dict[str, FusionRules] = {
    "torch": TORCH_EAGER,
    "onnxruntime": ONNXRUNTIME,
    "litert": LITERT,
    "litert-benchmark_model": LITERT,
}


def fusion_for_runtime(runtime: str) -> FusionRules:
    """The fusion rules of a runtime name as stored in ``DeviceInfo.runtime`` (default: none fused)."""
    rules = FUSION_BY_RUNTIME.get(runtime)
    if rules is None:
        logger.warning("no fusion rules known for runtime %r; assuming nothing is fused", runtime)
        return TORCH_EAGER
    return rules


# ---------------------------------------------------------------------------------------------
# Extraction: trace (torch.fx, else eager hooks + function mode) -> calls -> one classifier
# ---------------------------------------------------------------------------------------------


@dataclass
class _T:
    """A tensor the tracer saw: identity, shape, whether it is a parameter/buffer."""

    id: Any
    shape: tuple[int, ...]
    param: bool = False
    dtype: torch.dtype | None = None


@dataclass
class _Call:
    """One call in execution order: a leaf module or a torch function / tensor method."""

    name: str
    op: str  # normalised function name, or "module"
    module: nn.Module | None
    args: list[Any]
    kwargs: dict[str, Any]
    out: _T | None
    # computed from parameters and constants only (a mask built from ``arange``): the exporters fold
    # it into a constant, so the exported model does not run it
    constant: bool = False


_ACT_MODULES: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.Hardswish: "hardswish",
    nn.Hardsigmoid: "hardsigmoid",
    nn.Sigmoid: "sigmoid",
    nn.SiLU: "silu",
    nn.GELU: "gelu",
    nn.Tanh: "tanh",
    nn.LeakyReLU: "leaky_relu",
}
_ACT_FUNCS: dict[str, str] = {
    "relu": "relu",
    "relu6": "relu6",
    "hardswish": "hardswish",
    "hardsigmoid": "hardsigmoid",
    "sigmoid": "sigmoid",
    "silu": "silu",
    "gelu": "gelu",
    "tanh": "tanh",
    "leaky_relu": "leaky_relu",
}
_RESHAPES = frozenset({"view", "reshape", "flatten", "squeeze", "unsqueeze", "unflatten"})
_TRANSPOSES = frozenset({"permute", "transpose", "t"})
_SKIP = frozenset(
    {"contiguous", "size", "dim", "getitem", "getattr", "dropout", "to", "float", "clone", "detach",
     "type_as", "expand", "expand_as", "numel", "__get__", "identity", "chunk", "split", "unbind"}
)  # fmt: skip
_ATOMIC_MODULES: tuple[type[nn.Module], ...] = (nn.MultiheadAttention,)
# torch.nn modules that only compose other modules: torch.fx keeps every torch.nn module whole, which
# would price a whole nn.TransformerEncoder as one OTHER op of fixed cost; they are traced through.
_COMPOSITE_TORCH_MODULES: tuple[type[nn.Module], ...] = (
    nn.Transformer, nn.TransformerEncoder, nn.TransformerDecoder, nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)  # fmt: skip
_SKIP_MODULES: tuple[type[nn.Module], ...] = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)


def _norm_name(fn: Any) -> str:
    """Normalised op name of a function / method / operator (``__iadd__`` -> ``add``)."""
    if isinstance(fn, str):
        name = fn
    else:
        name = getattr(fn, "__name__", type(fn).__name__)
    name = name.strip("_")
    if name in ("iadd", "radd"):
        return "add"
    if name in ("imul", "rmul"):
        return "mul"
    if name in ("truediv", "itruediv", "rtruediv"):
        return "div"
    if name in ("rmatmul",):
        return "matmul"
    if name.endswith("_") and name[:-1] in _ACT_FUNCS:  # relu_ (in place)
        return name[:-1]
    return name


# Parameter-free modules the classifier prices as modules; any other parameter-free module (a zoo's own
# activation class such as transformers' GELUActivation) is traced through, so the functions it calls
# (F.gelu) are priced instead of one unknown OTHER op.
_PRICED_PARAMETER_FREE: tuple[type[nn.Module], ...] = (
    *_ACT_MODULES, *_SKIP_MODULES, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d,
    nn.Softmax, nn.Flatten, nn.Unflatten,
)  # fmt: skip


def is_transposed_linear(module: nn.Module) -> bool:
    """A transformers-style ``Conv1D``: ``nf`` outputs, a 2-D ``(in, nf)`` weight and an ``(nf,)`` bias."""
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(getattr(module, "nf", None), int)
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 2
        and weight.shape[1] == module.nf
        and isinstance(bias, torch.Tensor)
        and tuple(bias.shape) == (module.nf,)
        and not list(module.children())
    )


def _is_leaf(m: nn.Module) -> bool:
    if isinstance(m, _ATOMIC_MODULES):
        return True
    if any(True for _ in m.children()):
        return False
    stateless = (
        next(m.parameters(recurse=False), None) is None and next(m.buffers(recurse=False), None) is None
    )
    return not stateless or isinstance(m, _PRICED_PARAMETER_FREE)


# --- front end 1: torch.fx --------------------------------------------------------------------


def _calls_fx(module: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> list[_Call]:
    from torch.fx import GraphModule, Node, Tracer
    from torch.fx.passes.shape_prop import ShapeProp

    class _LeafTracer(Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            if isinstance(m, _COMPOSITE_TORCH_MODULES):
                return False
            return _is_leaf(m) or super().is_leaf_module(m, qualname)

    graph = _LeafTracer().trace(module)
    gm = GraphModule(module, graph)
    ShapeProp(gm).propagate(*example_inputs)
    env: dict[Node, _T] = {}
    calls: list[_Call] = []
    constant: set[Node] = set()  # nodes that do not depend on a model input

    def conv(a: Any) -> Any:
        if isinstance(a, Node):
            return env.get(a)
        if isinstance(a, (list, tuple)):
            return type(a)(conv(v) for v in a)
        return a

    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        shape = tuple(int(d) for d in meta.shape) if meta is not None and hasattr(meta, "shape") else None
        dtype = getattr(meta, "dtype", None)
        t = _T(node.name, shape, param=node.op == "get_attr", dtype=dtype) if shape is not None else None
        if (
            node.op == "get_attr"
            or _reads_shape(node)
            or (node.op not in ("placeholder", "output") and all(n in constant for n in node.all_input_nodes))
        ):
            constant.add(node)
        if node.op in ("placeholder", "get_attr"):
            if t is not None:
                env[node] = t
            continue
        if node.op == "output":
            continue
        if t is not None:
            env[node] = t
        args = [conv(a) for a in node.args]
        kwargs = {k: conv(v) for k, v in node.kwargs.items()}
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            calls.append(_Call(str(node.target), "module", module, args, kwargs, t, node in constant))
        else:
            op = _norm_name(node.target)
            if node.target is operator.getitem:
                op = "getitem"
            calls.append(_Call(node.name, op, None, args, kwargs, t, node in constant))
    return calls


def _reads_shape(node: Any) -> bool:
    """``x.shape`` / ``x.size()`` / ``x.dim()``: static in the exported model, so what is computed
    from them alone is a constant there (as in eager mode, where they are plain ints)."""
    if node.op == "call_method":
        return node.target in ("size", "dim", "numel")
    return node.op == "call_function" and node.target is getattr and node.args[1:2] == ("shape",)


# --- front end 2: eager forward hooks + torch function mode ----------------------------------


class _Recorder(TorchFunctionMode):
    def __init__(self, calls: list[_Call], keep: list[torch.Tensor], scope: list[str]) -> None:
        super().__init__()
        self.calls, self.keep, self.scope = calls, keep, scope
        self.depth = 0  # > 0 while inside a leaf module
        self.counter = 0
        # ids of parameters and of what was computed from them and constants alone; a model input,
        # a buffer or a tensor whose origin was not recorded counts as depending on the input
        self.constant_ids: set[int] = set()

    def is_constant(self, args: Any, kwargs: dict[str, Any]) -> bool:
        tensors = [v for v in _flat(args) + _flat(list(kwargs.values())) if isinstance(v, torch.Tensor)]
        return all(isinstance(v, nn.Parameter) or id(v) in self.constant_ids for v in tensors)

    def wrap(self, v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            self.keep.append(v)  # keep alive so id() stays unique
            return _T(id(v), tuple(v.shape), param=isinstance(v, nn.Parameter), dtype=v.dtype)
        if isinstance(v, (list, tuple)):
            return type(v)(self.wrap(x) for x in v)
        return v

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth == 0:
            op = _norm_name(func)
            constant = self.is_constant(args, kwargs)
            if constant:  # views and indexing of constants too, though they are not recorded
                outs = [v for v in _flat([out]) if isinstance(v, torch.Tensor)]
                self.constant_ids.update(id(v) for v in outs)
                self.keep.extend(outs)  # keep alive so id() stays unique
            if op not in _SKIP and isinstance(out, torch.Tensor):
                self.counter += 1
                name = f"{self.scope[-1] if self.scope else ''}:{op}{self.counter}"
                wrapped_args = [self.wrap(a) for a in args]
                wrapped_kwargs = {k: self.wrap(v) for k, v in kwargs.items()}
                self.calls.append(
                    _Call(name, op, None, wrapped_args, wrapped_kwargs, self.wrap(out), constant)
                )
        return out


def _flat(values: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        out.extend(_flat(v) if isinstance(v, (list, tuple)) else [v])
    return out


def _calls_eager(module: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> list[_Call]:
    calls: list[_Call] = []
    keep: list[torch.Tensor] = []
    scope: list[str] = []
    recorder = _Recorder(calls, keep, scope)
    handles = []
    leaves = {id(m) for m in module.modules() if _is_leaf(m)}

    for path, m in module.named_modules():

        def pre(mod: nn.Module, args: Any, path: str = path) -> None:
            scope.append(path)
            if id(mod) in leaves:
                recorder.depth += 1

        def post(mod: nn.Module, args: Any, out: Any, path: str = path) -> None:
            scope.pop()
            if id(mod) in leaves:
                recorder.depth -= 1
                if recorder.depth == 0:
                    first = out[0] if isinstance(out, tuple) else out
                    t = recorder.wrap(first) if isinstance(first, torch.Tensor) else None
                    calls.append(_Call(path, "module", mod, [recorder.wrap(a) for a in args], {}, t))

        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    try:
        with torch.no_grad(), recorder:
            module(*example_inputs)
    finally:
        for h in handles:
            h.remove()
    return calls


# --- the classifier ---------------------------------------------------------------------------


def _tensors(values: Sequence[Any]) -> list[_T]:
    return [v for v in _flat(values) if isinstance(v, _T)]


def _layout(shape: tuple[int, ...]) -> tuple[int, tuple[int, int], int] | None:
    """(tokens, spatial, width) of an elementwise tensor: NCHW for 4-D, (tokens..., width) else."""
    if len(shape) == 0:
        return None
    if len(shape) == 4:
        return shape[0], (shape[2], shape[3]), shape[1]
    if len(shape) == 1:
        return 1, (1, 1), shape[0]
    return max(1, math.prod(shape[:-1])), (1, 1), shape[-1]


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


class _Extractor:
    def __init__(self, calls: list[_Call], fusion: FusionRules) -> None:
        self.calls = calls
        self.fusion = fusion
        self.consumers: dict[Any, list[int]] = {}
        for i, c in enumerate(calls):
            for t in _tensors([*c.args, *c.kwargs.values()]):
                self.consumers.setdefault(t.id, []).append(i)
        self.consumed: set[int] = set()
        self.skip_layer_norms: set[int] = set()  # LayerNorm calls that absorbed a residual Add
        self.current = -1  # index of the call being handled
        self.ops: list[LayerOp] = []

    # fusion look-ahead: the only consumer of ``out``, if it is a call whose first input is ``out``
    def _sole_next(self, out: _T | None) -> int | None:
        if out is None:
            return None
        users = self.consumers.get(out.id, [])
        if len(set(users)) != 1:
            return None
        j = users[0]
        return None if j in self.consumed else j

    def _activation_name(self, c: _Call) -> str | None:
        if c.op == "module":
            return _ACT_MODULES.get(type(c.module))
        if c.op == "hardtanh":  # F.relu6 lowers to hardtanh(0, 6) in some torch versions
            return "relu6"
        return _ACT_FUNCS.get(c.op)

    def _take_activation(self, out: _T | None, allowed: frozenset[str]) -> tuple[str, _T | None]:
        j = self._sole_next(out)
        if j is None:
            return "none", out
        act = self._activation_name(self.calls[j])
        if act is None or act not in allowed:
            return "none", out
        self.consumed.add(j)
        return act, self.calls[j].out

    def _take_bn(self, out: _T | None, *, linear: bool = False) -> tuple[bool, _T | None]:
        if not (self.fusion.fold_bn_linear if linear else self.fusion.fold_bn):
            return False, out
        if linear and (out is None or len(out.shape) != 2):  # BN1d over (N, C, L) is not per-feature
            return False, out
        j = self._sole_next(out)
        if j is None:
            return False, out
        c = self.calls[j]
        bn_type = nn.BatchNorm1d if linear else nn.BatchNorm2d
        if (c.op == "module" and isinstance(c.module, bn_type)) or c.op == "batch_norm":
            self.consumed.add(j)
            return True, c.out
        return False, out

    def emit(self, name: str, ctx: OpContext, in_w: int, out_w: int, macs: int = 0) -> None:
        self.ops.append(
            LayerOp(name=name, context=ctx, in_width=int(in_w), out_width=int(out_w), macs=int(macs))
        )

    def elementwise(self, name: str, kind: OpKind, shape: tuple[int, ...], **kw: Any) -> None:
        lay = _layout(shape)
        if lay is None:
            return
        tokens, spatial, width = lay
        self.emit(name, OpContext(kind, spatial=spatial, tokens=tokens, **kw), width, width)

    def layer_norm(self, name: str, shape: tuple[int, ...]) -> None:
        variant = "skip" if self.current in self.skip_layer_norms else ""
        self.elementwise(name, OpKind.LAYER_NORM, (max(1, math.prod(shape[:-1])), shape[-1]), variant=variant)

    # -- per op family ---------------------------------------------------------------------
    def conv(self, c: _Call, x: _T, *, cin: int, cout: int, groups: int, kernel: Any, stride: Any,
             padding: Any, dilation: Any, bias: bool) -> None:  # fmt: skip
        n, h, w = (x.shape[0], x.shape[2], x.shape[3]) if len(x.shape) == 4 else (1, x.shape[1], x.shape[2])
        k = _pair(kernel)
        if isinstance(padding, str):
            padding = (0, 0) if padding == "valid" else ((k[0] - 1) // 2, (k[1] - 1) // 2)
        if _pair(dilation) != (1, 1) or (groups != 1 and not (groups == cin == cout)):
            kind_name = "dilated_conv" if _pair(dilation) != (1, 1) else "grouped_conv"
            lay = _layout(c.out.shape) if c.out else None
            if lay is not None:
                self.emit(
                    c.name, OpContext(OpKind.OTHER, spatial=(h, w), tokens=n, variant=kind_name), cin, cin
                )
            return
        folded, out = self._take_bn(c.out)
        act, _ = self._take_activation(out, self.fusion.conv_activations)
        depthwise = groups != 1
        ctx = OpContext(
            OpKind.DEPTHWISE_CONV2D if depthwise else OpKind.CONV2D,
            kernel=k,
            stride=_pair(stride),
            padding=_pair(padding),
            spatial=(h, w),
            tokens=n,
            activation=act,
            bias=bias or folded,
        )
        oh, ow = (c.out.shape[-2], c.out.shape[-1]) if c.out else (h, w)
        macs = n * cout * oh * ow * (cin // groups) * k[0] * k[1]
        self.emit(c.name, ctx, cin, cout, macs)

    def linear(self, c: _Call, x: _T, in_f: int, out_f: int, bias: bool) -> None:
        tokens = max(1, math.prod(x.shape[:-1]))
        folded, out = self._take_bn(c.out, linear=True)
        act, _ = self._take_activation(out, self.fusion.linear_activations)
        ctx = OpContext(OpKind.LINEAR, tokens=tokens, activation=act, bias=bias or folded)
        nd = self.fusion.linear_nd_reshapes and bias and len(x.shape) > 2
        if nd:
            reshape = OpContext(OpKind.OTHER, tokens=tokens, variant="reshape")
            self.emit(f"{c.name}:reshape_in", reshape, in_f, in_f)
        self.emit(c.name, ctx, in_f, out_f, tokens * in_f * out_f)
        if nd:
            self.emit(f"{c.name}:reshape_out", reshape, out_f, out_f)

    def matmul(self, name: str, a: _T, b: _T) -> None:
        if len(a.shape) < 1 or len(b.shape) < 2:
            return
        if b.param and len(b.shape) == 2:  # x @ W: a linear layer without bias
            tokens = max(1, math.prod(a.shape[:-1]))
            self.emit(name, OpContext(OpKind.LINEAR, tokens=tokens, bias=False), b.shape[0], b.shape[1],
                      tokens * b.shape[0] * b.shape[1])  # fmt: skip
            return
        batch = max(1, math.prod(a.shape[:-2])) if len(a.shape) > 2 else 1
        m = a.shape[-2] if len(a.shape) >= 2 else 1
        k, n_out = b.shape[-2], b.shape[-1]
        ctx = OpContext(OpKind.MATMUL, tokens=m, variant=f"batch{batch}" if batch > 1 else "")
        self.emit(name, ctx, k, n_out, batch * m * k * n_out)

    def pool(
        self, name: str, x: _T, variant: str, kernel: Any = 1, stride: Any = None, padding: Any = 0
    ) -> None:
        if len(x.shape) != 4:
            return self.elementwise(name, OpKind.OTHER, x.shape, variant=f"pool_{variant}")
        n, cch, h, w = x.shape
        kh, kw = _pair(kernel)
        if not variant.startswith("global") and kh >= h and kw >= w and (kh, kw) != (h, w):
            if self.fusion.oversized_pool_is_global and _pair(padding) == (0, 0):
                variant = f"global_{variant}"  # one window over the whole map (ceil_mode): a global pool
            elif not self.fusion.oversized_pool_is_global:
                logger.warning(
                    "%s: a %dx%d pooling window on a %dx%d map runs as a padded %dx%d pool on %s (1,000x "
                    "slower measured on LiteRT); use nn.AdaptiveAvgPool2d(1) / AdaptiveMaxPool2d(1)",
                    name, kh, kw, h, w, kh, kw, self.fusion.name,
                )  # fmt: skip
        glob = variant.startswith("global")
        ctx = OpContext(
            OpKind.POOL,
            kernel=(1, 1) if glob else _pair(kernel),
            stride=(1, 1) if glob else _pair(stride if stride not in (None, []) else kernel),
            padding=(0, 0) if glob else _pair(padding),
            spatial=(h, w),
            tokens=n,
            variant=variant,
        )
        self.emit(name, ctx, cch, cch)
        return None

    def attention(
        self, name: str, b: int, heads: int, s_q: int, s_k: int, d: int, *, softmax_variant: str = ""
    ) -> None:
        bh = b * heads
        variant = f"batch{bh}" if bh > 1 else ""
        self.emit(
            f"{name}:scores",
            OpContext(OpKind.MATMUL, tokens=s_q, variant=variant),
            d,
            s_k,
            bh * s_q * d * s_k,
        )
        softmax = OpContext(OpKind.SOFTMAX, tokens=bh * s_q, variant=softmax_variant)
        self.emit(f"{name}:softmax", softmax, s_k, s_k)
        self.emit(
            f"{name}:context",
            OpContext(OpKind.MATMUL, tokens=s_q, variant=variant),
            s_k,
            d,
            bh * s_q * s_k * d,
        )

    def module_call(self, c: _Call) -> None:
        m = c.module
        ins = _tensors(c.args)
        if isinstance(m, _SKIP_MODULES) or not ins:
            return
        x = ins[0]
        if isinstance(m, nn.Conv2d):
            self.conv(c, x, cin=m.in_channels, cout=m.out_channels, groups=m.groups, kernel=m.kernel_size,
                      stride=m.stride, padding=m.padding, dilation=m.dilation, bias=m.bias is not None)  # fmt: skip
        elif isinstance(m, nn.Linear):
            self.linear(c, x, m.in_features, m.out_features, m.bias is not None)
        elif is_transposed_linear(m):  # GPT's Conv1D: a linear with its weight stored transposed
            self.linear(c, x, m.weight.shape[0], m.weight.shape[1], True)
        elif type(m) in _ACT_MODULES:
            self.elementwise(c.name, OpKind.ACTIVATION, x.shape, variant=_ACT_MODULES[type(m)])
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            act, _ = self._take_activation(c.out, frozenset())
            self.elementwise(c.name, OpKind.BATCH_NORM, x.shape, activation=act)
        elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            avg = isinstance(m, nn.AdaptiveAvgPool2d)
            if c.out is not None and tuple(c.out.shape[-2:]) == (1, 1):
                self.pool(c.name, x, "global_avg" if avg else "global_max")
            else:
                self.elementwise(c.name, OpKind.OTHER, x.shape, variant="adaptive_pool")
        elif isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)):
            variant = "avg" if isinstance(m, nn.AvgPool2d) else "max"
            self.pool(c.name, x, variant, m.kernel_size, m.stride, m.padding)
        elif isinstance(m, nn.LayerNorm):
            self.layer_norm(c.name, x.shape)
        elif isinstance(m, nn.Softmax):
            self.elementwise(c.name, OpKind.SOFTMAX, (max(1, math.prod(x.shape[:-1])), x.shape[-1]))
        elif isinstance(m, (nn.Flatten, nn.Unflatten)):
            self.elementwise(c.name, OpKind.OTHER, x.shape, variant="reshape")
        elif isinstance(m, nn.MultiheadAttention):
            self.mha(c, m, x)
        elif isinstance(m, nn.ConstantPad2d) and self._pad_folds_into_next(c, ("constant", m.value), {}):
            return
        else:
            logger.info("no latency model for module %s (%s); recorded as OTHER", c.name, type(m).__name__)
            self.elementwise(c.name, OpKind.OTHER, x.shape, variant=type(m).__name__.lower())

    def mha(self, c: _Call, m: nn.MultiheadAttention, x: _T) -> None:
        if len(x.shape) != 3:
            return
        b, s = (x.shape[0], x.shape[1]) if m.batch_first else (x.shape[1], x.shape[0])
        e, h = m.embed_dim, m.num_heads
        tokens = b * s
        bias = m.in_proj_bias is not None
        self.emit(
            f"{c.name}:in_proj",
            OpContext(OpKind.LINEAR, tokens=tokens, bias=bias),
            e,
            3 * e,
            tokens * e * 3 * e,
        )
        self.attention(c.name, b, h, s, s, e // h)
        self.emit(f"{c.name}:out_proj", OpContext(OpKind.LINEAR, tokens=tokens), e, e, tokens * e * e)

    def function_call(self, c: _Call) -> None:
        op = c.op
        ins = _tensors(c.args)
        if op in _SKIP or c.out is None:
            return
        out_shape = c.out.shape
        if op in _ACT_FUNCS or op == "hardtanh":
            act = self._activation_name(c) or "relu"
            self.elementwise(c.name, OpKind.ACTIVATION, out_shape, variant=act)
        elif op in ("add", "sub"):
            if len(ins) < 2:
                logger.debug("%s: %s with a scalar is not tabled", c.name, op)
                return
            if self.fusion.add_into_layer_norm and op == "add" and self._feeds_layer_norm(c):
                self.skip_layer_norms.add(self._sole_next(c.out))  # type: ignore[arg-type]
                return
            act, _ = self._take_activation(c.out, self.fusion.add_activations)
            self.elementwise(c.name, OpKind.ADD, out_shape, activation=act)
        elif op in ("mul", "div"):
            if len(ins) < 2:
                return
            small = min(ins, key=lambda t: math.prod(t.shape))
            bcast = len(out_shape) == 4 and len(small.shape) == 4 and tuple(small.shape[2:]) == (1, 1)
            bcast = bcast and tuple(out_shape[2:]) != (1, 1)
            self.elementwise(c.name, OpKind.MUL, out_shape, variant="bcast" if bcast else "")
        elif op in ("matmul", "bmm", "mm"):
            if len(ins) >= 2:
                self.matmul(c.name, ins[0], ins[1])
        elif op == "linear" and len(ins) >= 2:
            w = ins[1]
            self.linear(c, ins[0], w.shape[1], w.shape[0], len(ins) > 2)
        elif op == "conv2d" and len(ins) >= 2:
            w = ins[1]
            groups = c.args[6] if len(c.args) > 6 else c.kwargs.get("groups", 1)
            self.conv(c, ins[0], cin=w.shape[1] * groups, cout=w.shape[0], groups=groups, kernel=w.shape[2:],
                      stride=c.args[3] if len(c.args) > 3 else c.kwargs.get("stride", 1),
                      padding=c.args[4] if len(c.args) > 4 else c.kwargs.get("padding", 0),
                      dilation=c.args[5] if len(c.args) > 5 else c.kwargs.get("dilation", 1),
                      bias=len(ins) > 2)  # fmt: skip
        elif op == "softmax":
            self.elementwise(c.name, OpKind.SOFTMAX, (max(1, math.prod(out_shape[:-1])), out_shape[-1]))
        elif op == "layer_norm":
            self.layer_norm(c.name, out_shape)
        elif op == "batch_norm" and ins:
            self.elementwise(c.name, OpKind.BATCH_NORM, ins[0].shape)
        elif op in ("adaptive_avg_pool2d", "adaptive_max_pool2d") and ins:
            variant = "global_avg" if "avg" in op else "global_max"
            if tuple(out_shape[-2:]) == (1, 1):
                self.pool(c.name, ins[0], variant)
        elif op in ("avg_pool2d", "max_pool2d") and ins:
            a = c.args
            self.pool(c.name, ins[0], op.split("_")[0], a[1] if len(a) > 1 else c.kwargs.get("kernel_size", 1),
                      a[2] if len(a) > 2 else c.kwargs.get("stride"), a[3] if len(a) > 3 else c.kwargs.get("padding", 0))  # fmt: skip
        elif (
            op == "mean"
            and ins
            and len(ins[0].shape) == 4
            and math.prod(out_shape) == math.prod(ins[0].shape[:2])
        ):
            self.pool(c.name, ins[0], "global_avg")
        elif op == "mean" and ins and len(ins[0].shape) == 3 and self._mean_dims(c) == (1,):
            # token pooling (B, S, H) -> (B, H): priced as a global average pool over an S x 1 map
            b, s, h = ins[0].shape
            ctx = OpContext(OpKind.POOL, spatial=(s, 1), tokens=b, variant="global_avg")
            self.emit(c.name, ctx, h, h)
        elif op == "scaled_dot_product_attention" and len(ins) >= 3:
            q, k = ins[0], ins[1]
            b = max(1, math.prod(q.shape[:-2]))
            mask = c.args[3] if len(c.args) > 3 else c.kwargs.get("attn_mask")
            boolean = isinstance(mask, _T) and mask.dtype == torch.bool
            guarded = "sdpa" if self.fusion.sdpa_guarded_softmax and boolean else ""
            self.attention(c.name, b, 1, q.shape[-2], k.shape[-2], q.shape[-1], softmax_variant=guarded)
        elif op == "pad" and self._pad_folds_into_next(c, c.args[2:4], c.kwargs):
            return
        elif op in _RESHAPES:
            if ins:
                self.elementwise(c.name, OpKind.OTHER, ins[0].shape, variant="reshape")
        elif op in _TRANSPOSES:
            if self.fusion.transpose_into_matmul and self._feeds_matmul_transposed(c):
                return
            if ins:
                self.elementwise(c.name, OpKind.OTHER, ins[0].shape, variant="transpose")
        elif op in ("cat", "stack"):
            lay = _layout(out_shape)
            if lay is not None:
                tokens, spatial, width = lay
                ctx = OpContext(OpKind.OTHER, spatial=spatial, tokens=tokens, variant="cat")
                self.emit(c.name, ctx, max(1, width // 2), max(1, width // 2))
        elif ins:
            logger.info("no latency model for %s (%s); recorded as OTHER", c.name, op)
            self.elementwise(c.name, OpKind.OTHER, out_shape, variant=op)

    def _pad_folds_into_next(self, c: _Call, mode_value: Sequence[Any], kwargs: dict[str, Any]) -> bool:
        """``c`` pads with zeros and its output goes only to a conv or pooling layer that takes it in."""
        if not self.fusion.pad_into_conv:
            return False
        mode = mode_value[0] if len(mode_value) > 0 else kwargs.get("mode", "constant")
        value = mode_value[1] if len(mode_value) > 1 else kwargs.get("value")
        if mode != "constant" or value not in (None, 0, 0.0):
            return False
        j = self._sole_next(c.out)
        if j is None:
            return False
        n = self.calls[j]
        if n.op == "module":
            return isinstance(n.module, (nn.Conv2d, nn.AvgPool2d, nn.MaxPool2d))
        return n.op in ("conv2d", "avg_pool2d", "max_pool2d")

    def _feeds_layer_norm(self, c: _Call) -> bool:
        """``c``'s output goes only to a LayerNorm over its last axis (shapes of both inputs equal)."""
        ins = _tensors(c.args)
        if len(ins) != 2 or ins[0].shape != ins[1].shape:
            return False
        j = self._sole_next(c.out)
        if j is None:
            return False
        n = self.calls[j]
        return (n.op == "module" and isinstance(n.module, nn.LayerNorm)) or n.op == "layer_norm"

    def _feeds_matmul_transposed(self, c: _Call) -> bool:
        """``c`` swaps only the last two axes and its output is only the second operand of a matmul."""
        ins = _tensors(c.args)
        if not ins or c.out is None:
            return False
        rank = len(ins[0].shape)
        if c.op == "t" or c.op == "transpose":
            dims = [d for d in c.args[1:3] if isinstance(d, int)] if c.op == "transpose" else [0, 1]
            if len(dims) != 2 or rank < 2 or sorted(d % rank for d in dims) != [rank - 2, rank - 1]:
                return False
        else:  # permute
            perm = c.args[1:] if len(c.args) > 1 else c.kwargs.get("dims", ())
            if len(perm) == 1 and isinstance(perm[0], (list, tuple)):
                perm = perm[0]
            expected = [*range(rank - 2), rank - 1, rank - 2]
            if rank < 2 or [int(d) % rank for d in perm] != expected:
                return False
        j = self._sole_next(c.out)
        if j is None:
            return False
        n = self.calls[j]
        operands = _tensors(n.args)
        return n.op in ("matmul", "bmm", "mm") and len(operands) >= 2 and operands[1].id == c.out.id

    @staticmethod
    def _mean_dims(c: _Call) -> tuple[int, ...] | None:
        """The reduced dims of a ``mean`` call (normalised non-negative for a 3-D input), or None."""
        dims = c.args[1] if len(c.args) > 1 else c.kwargs.get("dim")
        if dims is None:
            return None
        dims = dims if isinstance(dims, (list, tuple)) else (dims,)
        try:
            return tuple(sorted(int(d) % 3 for d in dims))
        except (TypeError, ValueError):
            return None

    def run(self) -> list[LayerOp]:
        for i, c in enumerate(self.calls):
            if i in self.consumed or c.constant:
                continue
            self.consumed.add(i)
            self.current = i
            if c.op == "module":
                self.module_call(c)
            else:
                self.function_call(c)
        return self.ops


def _with_split_attention(module: nn.Module) -> nn.Module:
    """``module``, or a copy with every convertible ``nn.MultiheadAttention`` split into q/k/v/out
    Linears (:mod:`edgetrim.compress.attention`). The packed module's exported graph splits its
    one in-projection with reshapes, transposes and gathers that pricing it as one atomic op leaves
    out (a 2-layer encoder predicted 0.226 ms, measured 0.28 ms); the split form, which measured the
    same as the packed one, is priced op by op, and is what ``compress`` prunes."""
    if not any(isinstance(m, nn.MultiheadAttention) for m in module.modules()):
        return module
    from edgetrim.compress.attention import convert_multihead_attention  # torch-only module

    try:
        copy_ = copy.deepcopy(module)
    except Exception as exc:  # a module holding non-leaf tensors cannot be copied: priced packed
        logger.info("cannot copy %s to price its attention split (%s)", type(module).__name__, exc)
        return module
    convert_multihead_attention(copy_)
    return copy_


@contextlib.contextmanager
def _as_exported() -> Iterator[None]:
    """Run the model down the branch the exporter traces: code that asks
    ``torch.compiler.is_exporting()`` (transformers builds the boolean attention mask it skips in
    eager mode; torch's attention leaves its fused fast path) takes the export branch, so the ops
    extracted are the ops the exported model runs. A no-op where torch has no such flag."""
    compiler = torch.compiler
    if not hasattr(compiler, "_is_exporting_flag"):
        yield
        return
    before = compiler._is_exporting_flag
    compiler._is_exporting_flag = True
    try:
        yield
    finally:
        compiler._is_exporting_flag = before


def extract_layer_ops(
    module: nn.Module,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    *,
    fusion: FusionRules | None = None,
) -> list[LayerOp]:
    """Every operator of ``module`` that latency is predicted for, in execution order.

    Args:
        module: the model (put in eval mode for tracing; its mode is restored).
        example_inputs: inputs that define every shape.
        fusion: the target runtime's fusion rules (``target.fusion``); ``None`` fuses nothing
            (torch eager).

    Returns:
        One ``LayerOp`` per op: convs/linears with folded BN and fused activation as the runtime
        runs them, and everything else (activations, adds, SE multiplies, pooling, norms, softmax,
        attention matmuls, reshapes as ``OTHER``).

    Example:
        >>> from torch import nn
        >>> ops = extract_layer_ops(nn.Sequential(nn.Linear(8, 4), nn.ReLU()), (torch.randn(2, 8),))
        >>> [(o.context.kind.value, o.in_width, o.out_width) for o in ops]
        [('linear', 8, 4), ('activation', 4, 4)]
    """
    rules = fusion or TORCH_EAGER
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    module = _with_split_attention(module)
    was_training = module.training
    module.eval()
    try:
        with _as_exported():
            try:
                calls = _calls_fx(module, inputs)
            except Exception as exc:  # data-dependent control flow, shape unpacking, ...
                logger.info("torch.fx cannot trace %s (%s); using eager hooks", type(module).__name__, exc)
                calls = _calls_eager(module, inputs)
    finally:
        module.train(was_training)
    return _Extractor(calls, rules).run()
