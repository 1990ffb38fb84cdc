"""One-op builders: every kind runs in onnxruntime, LiteRT and torch with the right output shape,
and the TFLite graphs match what litert-torch emits for the same torch layer."""

from __future__ import annotations

import numpy as np
import pytest

from edgetrim.profiler.builders import (
    UnsupportedOpError,
    build_onnx_op,
    build_tflite_op,
    build_torch_op,
    output_shape,
)
from edgetrim.types import OpContext, OpKind

ort = pytest.importorskip("onnxruntime")
litert = pytest.importorskip("ai_edge_litert.interpreter")

CASES: list[tuple[OpContext, int, int]] = [
    (OpContext(OpKind.LINEAR, tokens=3, activation="relu"), 17, 9),
    (OpContext(OpKind.LINEAR, tokens=1, activation="hardswish", bias=False), 8, 5),
    (OpContext(OpKind.CONV2D, kernel=(3, 3), padding=(1, 1), spatial=(8, 8), activation="relu6"), 3, 10),
    (OpContext(OpKind.CONV2D, kernel=(3, 3), stride=(2, 2), padding=(1, 1), spatial=(9, 9)), 4, 6),
    (OpContext(OpKind.CONV2D, kernel=(1, 1), spatial=(5, 5), activation="silu"), 6, 7),
    (
        OpContext(OpKind.DEPTHWISE_CONV2D, kernel=(3, 3), padding=(1, 1), spatial=(8, 8), activation="relu"),
        7,
        7,
    ),
    (OpContext(OpKind.DEPTHWISE_CONV2D, kernel=(5, 5), stride=(2, 2), padding=(2, 2), spatial=(8, 8)), 5, 5),
    *[
        (OpContext(OpKind.ACTIVATION, spatial=(4, 4), variant=a), 6, 6)
        for a in (
            "relu",
            "relu6",
            "hardswish",
            "hardsigmoid",
            "sigmoid",
            "silu",
            "gelu",
            "tanh",
            "leaky_relu",
        )
    ],
    (OpContext(OpKind.ACTIVATION, tokens=5, variant="gelu"), 12, 12),
    (OpContext(OpKind.ADD, spatial=(4, 4), activation="relu"), 6, 6),
    (OpContext(OpKind.ADD, tokens=4), 10, 10),
    (OpContext(OpKind.MUL, spatial=(4, 4), variant="bcast"), 6, 6),
    (OpContext(OpKind.MUL, tokens=2), 6, 6),
    (OpContext(OpKind.POOL, spatial=(6, 6), variant="global_avg"), 5, 5),
    (OpContext(OpKind.POOL, spatial=(6, 6), variant="global_max"), 5, 5),
    (OpContext(OpKind.POOL, kernel=(2, 2), stride=(2, 2), spatial=(6, 6), variant="avg"), 5, 5),
    (
        OpContext(OpKind.POOL, kernel=(3, 3), stride=(2, 2), padding=(1, 1), spatial=(7, 7), variant="max"),
        5,
        5,
    ),
    (OpContext(OpKind.LAYER_NORM, tokens=6), 16, 16),
    (OpContext(OpKind.LAYER_NORM, tokens=6, variant="skip"), 16, 16),
    (OpContext(OpKind.BATCH_NORM, spatial=(4, 4)), 6, 6),
    (OpContext(OpKind.SOFTMAX, tokens=6), 16, 16),
    (OpContext(OpKind.MATMUL, tokens=6, variant="batch2"), 8, 6),
    (OpContext(OpKind.OTHER, spatial=(3, 3), variant="reshape"), 4, 4),
    (OpContext(OpKind.OTHER, spatial=(3, 3), variant="transpose"), 4, 4),
    (OpContext(OpKind.OTHER, spatial=(3, 3), variant="cat"), 4, 4),
]
IDS = [f"{c.key()}-{i}-{o}" for c, i, o in CASES]


def _nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[0], shape[2], shape[3], shape[1]) if len(shape) == 4 else shape


def test_every_op_kind_is_covered() -> None:
    assert {c.kind for c, _, _ in CASES} == set(OpKind)


@pytest.mark.parametrize(("ctx", "in_w", "out_w"), CASES, ids=IDS)
def test_onnx_builder_runs_in_onnxruntime(ctx: OpContext, in_w: int, out_w: int) -> None:
    sess = ort.InferenceSession(build_onnx_op(ctx, in_w, out_w), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.random.rand(*i.shape).astype(np.float32) for i in sess.get_inputs()}
    (y,) = sess.run(None, feeds)
    assert y.shape == output_shape(ctx, in_w, out_w)
    assert np.all(np.isfinite(y))


@pytest.mark.parametrize(("ctx", "in_w", "out_w"), CASES, ids=IDS)
def test_tflite_builder_runs_in_litert(ctx: OpContext, in_w: int, out_w: int) -> None:
    interp = litert.Interpreter(model_content=build_tflite_op(ctx, in_w, out_w), num_threads=1)
    interp.allocate_tensors()
    for det in interp.get_input_details():
        interp.set_tensor(det["index"], np.random.rand(*det["shape"]).astype(np.float32))
    interp.invoke()
    y = interp.get_tensor(interp.get_output_details()[0]["index"])
    expected = output_shape(ctx, in_w, out_w)
    if ctx.kind is OpKind.OTHER and ctx.variant == "transpose":
        expected = (ctx.tokens, in_w, *ctx.spatial)  # NHWC -> channels-first, the mirror of NCHW's
    else:
        expected = _nhwc(expected)
    assert tuple(y.shape) == expected
    assert np.all(np.isfinite(y))


@pytest.mark.parametrize(("ctx", "in_w", "out_w"), CASES, ids=IDS)
def test_torch_builder_output_shape(ctx: OpContext, in_w: int, out_w: int) -> None:
    torch = pytest.importorskip("torch")
    module, inputs = build_torch_op(ctx, in_w, out_w)
    with torch.no_grad():
        y = module(*inputs)
    assert tuple(y.shape) == output_shape(ctx, in_w, out_w)


def test_unsupported_combinations_raise_clear_errors() -> None:
    with pytest.raises(UnsupportedOpError, match="activation 'swishy'"):
        build_onnx_op(OpContext(OpKind.ACTIVATION, variant="swishy"), 4, 4)
    with pytest.raises(UnsupportedOpError, match="OTHER op 'scatter'"):
        build_tflite_op(OpContext(OpKind.OTHER, variant="scatter"), 4, 4)
    with pytest.raises(UnsupportedOpError, match="pool variant"):
        build_onnx_op(OpContext(OpKind.POOL, spatial=(4, 4), variant="lp"), 4, 4)
    with pytest.raises(ValueError, match="one width axis"):
        build_onnx_op(OpContext(OpKind.DEPTHWISE_CONV2D, kernel=(3, 3), spatial=(4, 4)), 4, 5)
    with pytest.raises(UnsupportedOpError, match="leaves no output"):
        build_tflite_op(OpContext(OpKind.CONV2D, kernel=(5, 5), spatial=(3, 3)), 4, 5)


def _converted(net, x, path, *, transposes: bool = False) -> list[tuple[str, str, tuple[int, ...]]]:  # type: ignore[no-untyped-def]
    """The op list of ``net`` converted by litert-torch (skips without it)."""
    litert_torch = pytest.importorskip("litert_torch")
    litert_torch.convert(net.eval(), (x,)).export(str(path))
    return _tflite_ops(path.read_bytes(), transposes=transposes)


def _tflite_ops(data: bytes, *, transposes: bool = False) -> list[tuple[str, str, tuple[int, ...]]]:
    """(op name, fused activation, output shape) per operator, layout transposes dropped unless asked."""
    from ai_edge_litert import schema_py_generated as s

    model = s.ModelT.InitFromObj(s.Model.GetRootAsModel(data, 0))
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    acts = {v: k for k, v in vars(s.ActivationFunctionType).items() if not k.startswith("_")}
    sub = model.subgraphs[0]
    out = []
    for op in sub.operators:
        oc = model.operatorCodes[op.opcodeIndex]
        name = names[max(oc.builtinCode, oc.deprecatedBuiltinCode)]
        if name == "TRANSPOSE" and not transposes:
            continue
        fused = acts.get(getattr(op.builtinOptions, "fusedActivationFunction", 0), "NONE")
        out.append((name, fused, tuple(int(v) for v in sub.tensors[op.outputs[0]].shape)))
    return out


@pytest.mark.filterwarnings("ignore")
def test_tflite_builder_matches_litert_torch_conversion(tmp_path) -> None:
    """Same op list, fused activations and output shapes as litert-torch for conv-BN-act layers."""
    torch = pytest.importorskip("torch")
    litert_torch = pytest.importorskip("litert_torch")
    from torch import nn

    class Net(nn.Module):  # conv+BN+ReLU6 (strided), depthwise+BN+hardswish, linear+ReLU
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
            self.dw = nn.Sequential(
                nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8), nn.Hardswish()
            )
            self.fc = nn.Sequential(nn.Linear(8 * 4 * 4, 10), nn.ReLU())

        def forward(self, x):
            return self.fc(self.dw(self.conv(x)).permute(0, 2, 3, 1).reshape(1, -1))

    net = Net().eval()
    x = torch.randn(1, 3, 8, 8)
    path = tmp_path / "net.tflite"
    litert_torch.convert(net, (x,)).export(str(path))
    converted = [o for o in _tflite_ops(path.read_bytes()) if o[0] != "RESHAPE"]
    ours = []
    ours += _tflite_ops(
        build_tflite_op(OpContext(OpKind.CONV2D, (3, 3), (2, 2), (1, 1), (8, 8), activation="relu6"), 3, 8)
    )
    ours += _tflite_ops(
        build_tflite_op(
            OpContext(OpKind.DEPTHWISE_CONV2D, (3, 3), (1, 1), (1, 1), (4, 4), activation="hardswish"), 8, 8
        )
    )
    ours += _tflite_ops(build_tflite_op(OpContext(OpKind.LINEAR, activation="relu"), 128, 10))
    assert [(n, a) for n, a, _ in ours] == [(n, a) for n, a, _ in converted]
    assert [s for _, _, s in ours] == [s for _, _, s in converted]


@pytest.mark.filterwarnings("ignore")
def test_tflite_one_channel_conv_is_a_depthwise_conv_like_the_converter(tmp_path) -> None:
    """litert-torch turns Conv2d(1, C) into DEPTHWISE_CONV_2D with multiplier C; the one-op model must too."""
    torch = pytest.importorskip("torch")
    from torch import nn

    net = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU())
    ops = _converted(net, torch.randn(1, 1, 16, 16), tmp_path / "stem.tflite")
    converted = [o for o in ops if o[0] not in ("RESHAPE", "TRANSPOSE")]
    ctx = OpContext(OpKind.CONV2D, (5, 5), (1, 1), (2, 2), (16, 16), activation="relu")
    assert (
        _tflite_ops(build_tflite_op(ctx, 1, 6))
        == converted
        == [("DEPTHWISE_CONV_2D", "RELU", (1, 16, 16, 6))]
    )


@pytest.mark.filterwarnings("ignore")
def test_tflite_flatten_of_a_feature_map_transposes_first_like_the_converter(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten())
    ops = _converted(net, torch.randn(1, 3, 4, 4), tmp_path / "flat.tflite", transposes=True)
    converted = [n for n, _, _ in ops]
    flatten = converted[converted.index("CONV_2D") + 1 :]
    flat = OpContext(OpKind.OTHER, spatial=(4, 4), variant="reshape")
    ours = [n for n, _, _ in _tflite_ops(build_tflite_op(flat, 8, 8), transposes=True)]
    assert ours == flatten == ["TRANSPOSE", "RESHAPE"]


def test_onnx_guarded_softmax_computes_what_the_exported_attention_does() -> None:
    """The "sdpa" softmax one-op model: softmax(x + mask) with NaN rows set to 0, as the exporter
    writes scaled_dot_product_attention; four nodes, not one."""
    import onnx

    model = build_onnx_op(OpContext(OpKind.SOFTMAX, tokens=5, variant="sdpa"), 7, 7)
    nodes = [n.op_type for n in onnx.load_from_string(model).graph.node]
    assert nodes[:4] == ["Add", "Softmax", "IsNaN", "Where"] and set(nodes[4:]) <= {"Identity"}
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    x, mask = rng.standard_normal((5, 7)).astype(np.float32), rng.standard_normal((5, 7)).astype(np.float32)
    mask[2] = -np.inf  # a fully masked row: NaN out of the softmax, zeros out of the guard
    names = [i.name for i in sess.get_inputs()]
    (y,) = sess.run(None, dict(zip(names, (x, mask), strict=True)))
    want = np.zeros_like(x)
    rows = [0, 1, 3, 4]
    want[rows] = np.exp(x[rows] + mask[rows]) / np.exp(x[rows] + mask[rows]).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
