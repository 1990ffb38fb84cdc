"""The fusion rules match what the runtimes really do to a conv-BN-act / linear-act / add-act model.

onnxruntime: the optimised graph (ORT_ENABLE_ALL, ``optimized_model_filepath``) is read back and its
compute nodes counted; LiteRT: the op list of a litert-torch conversion. In both, the number of compute
kernels must equal the number of LayerOps ``extract_layer_ops`` emits under that runtime's rules.

Known difference: inside a model, onnxruntime's NCHWc transformer also fuses a HardSwish (decomposed to
HardSigmoid+Mul) into the preceding conv, which it does not do when the activation feeds the graph
output, as in a one-op graph. Tables measure conv and HardSwish apart, so the rules keep them apart too
and predictions for hardswish convs on ORT carry one activation's cost too much.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgetrim.model_ops import LITERT, ONNXRUNTIME, extract_layer_ops
from edgetrim.profiler.builders.onnx_ops import build_onnx_op
from edgetrim.profiler.targets.onnxruntime_target import export_onnx_for_timing
from edgetrim.types import OpKind

# layout plumbing that neither the runtime's kernels nor the tables count
LAYOUT_ONNX = {"ReorderInput", "ReorderOutput", "Reshape", "Flatten", "Identity"}
LAYOUT_TFLITE = {"TRANSPOSE", "RESHAPE"}


class Mixed(nn.Module):
    """Fusable and unfusable neighbours for both runtimes."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.b = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.GELU()
        )
        self.c = nn.Sequential(nn.Conv2d(8, 8, 1), nn.Sigmoid())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Sequential(nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU())
        self.fc2 = nn.Sequential(nn.Linear(16, 8), nn.ReLU6())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        y = torch.relu(self.c(self.b(y)) + y)
        return self.fc2(self.fc1(torch.flatten(self.pool(y), 1)))


def _counted(ops) -> list:
    return [o for o in ops if o.context.kind is not OpKind.OTHER]


def test_onnxruntime_rules_match_the_optimised_graph(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    model, x = Mixed().eval(), torch.randn(1, 3, 8, 8)
    src, opt = tmp_path / "m.onnx", tmp_path / "opt.onnx"
    export_onnx_for_timing(model, (x,), src)  # the export ort-cpu's measure_model uses (dynamo)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(opt)
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    nodes = [n.op_type for n in onnx.load(str(opt)).graph.node if n.op_type not in LAYOUT_ONNX]
    ops = _counted(extract_layer_ops(model, (x,), fusion=ONNXRUNTIME))
    assert len(nodes) == len(ops), (nodes, [o.context.key() for o in ops])
    # spot checks: no BatchNormalization survives; relu6 after a Gemm stays a Clip node
    assert "BatchNormalization" not in nodes and "Clip" in nodes
    assert [o.context.activation for o in ops if o.context.kind is OpKind.LINEAR] == ["relu", "none"]


@pytest.mark.filterwarnings("ignore")
def test_litert_rules_match_the_converted_model(tmp_path) -> None:
    litert_torch = pytest.importorskip("litert_torch")
    from ai_edge_litert import schema_py_generated as s

    model, x = Mixed().eval(), torch.randn(1, 3, 8, 8)
    path = tmp_path / "m.tflite"
    litert_torch.convert(model, (x,)).export(str(path))
    tfl = s.ModelT.InitFromObj(s.Model.GetRootAsModel(path.read_bytes(), 0))
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    kernels = []
    for op in tfl.subgraphs[0].operators:
        code = tfl.operatorCodes[op.opcodeIndex]
        name = names[max(code.builtinCode, code.deprecatedBuiltinCode)]
        if name not in LAYOUT_TFLITE:
            kernels.append(name)
    ops = _counted(extract_layer_ops(model, (x,), fusion=LITERT))
    assert len(kernels) == len(ops), (kernels, [o.context.key() for o in ops])
    add = next(o for o in ops if o.context.kind is OpKind.ADD)
    assert add.context.activation == "relu"  # ADD with fused RELU


def test_onnxruntime_attention_fusions_match_the_optimised_graph(tmp_path) -> None:
    """Residual Add -> LayerNorm is one SkipLayerNormalization; K^T -> MatMul is one FusedMatMul."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from edgetrim.examples.models import build

    model, inputs = build("bert_encoder_small")
    src = tmp_path / "m.onnx"
    export_onnx_for_timing(model.eval(), inputs, src)
    nodes = [t for t in _optimised_ops_of(str(src), tmp_path, ort, onnx) if t != "Reshape"]
    ops = [o for o in extract_layer_ops(model, inputs, fusion=ONNXRUNTIME) if o.context.variant != "reshape"]
    assert "SkipLayerNormalization" in nodes and "FusedMatMul" in nodes
    skip_norms = [o for o in ops if o.context.kind is OpKind.LAYER_NORM and o.context.variant == "skip"]
    assert len(skip_norms) == nodes.count("SkipLayerNormalization")  # priced as the fused kernel
    fused = _optimised_ops_of(build_onnx_op(skip_norms[0].context, 64, 64), tmp_path, ort, onnx)
    assert fused == ["SkipLayerNormalization"]  # its one-op model runs the same fused kernel
    assert len(nodes) == len(ops), (nodes, [o.context.key() for o in ops])
    kinds = [o.context.kind for o in ops]
    assert kinds.count(OpKind.ADD) == nodes.count("Add")
    assert sum(o.context.variant == "transpose" for o in ops) == nodes.count("Transpose")


def _optimised_ops_of(model: bytes | str, tmp_path, ort, onnx) -> list[str]:  # type: ignore[no-untyped-def]
    """Node types of onnxruntime's optimised graph of ``model`` (bytes, or a path: weights may sit beside it)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
