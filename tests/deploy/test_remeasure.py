"""Re-measurement: node -> layer attribution (pure), the per-layer split on real onnxruntime profiles,
LiteRT totals, and the sparse-vs-dense-twin comparison (no timing assertions: only consistency)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from edgetrim.deploy.remeasure import (
    UNATTRIBUTED,
    attribute_nodes,
    dense_twin,
    per_layer_onnx,
    remeasure,
    sparsity_payoff,
    weight_sparsity,
)

X = (torch.randn(1, 1, 8, 8),)


def test_attribution_follows_modules_then_producers_then_consumers() -> None:
    nodes = [
        ("q_in", "QuantizeLinear", "", ["x"], ["xq"]),
        ("w_dq", "DequantizeLinear", "", ["w"], ["wd"]),
        ("conv", "Conv", "bn1", ["xq", "wd"], ["c"]),  # folded conv+BN lands under "bn1"
        ("relu", "Relu", "", ["c"], ["r"]),  # unfused activation: goes with its producer
        ("add", "Add", "block", ["r", "r"], ["a"]),
        ("fc", "Gemm", "head.fc", ["a"], ["y"]),
        ("stray", "Identity", "", ["other"], ["z"]),
    ]
    got = attribute_nodes(nodes, ["conv1", "block:add", "head.fc"])
    assert got == {
        "q_in": "conv1",
        "w_dq": "conv1",
        "conv": "conv1",
        "relu": "conv1",
        "add": "block:add",
        "fc": "head.fc",
        "stray": UNATTRIBUTED,
    }


def test_functional_ops_go_to_their_call_named_layers_in_order() -> None:
    # x + y inside a block and torch.flatten are named after the call ("add", "add_1", "flatten"),
    # not a module: the k-th unattributed Add node gets the k-th "add*" layer
    nodes = [
        ("layout", "Reshape", "", ["in"], ["x"]),  # before the first layer: not the "flatten"
        ("conv_a", "Conv", "blocks.0.conv", ["x"], ["a"]),
        ("add_a", "Add", "blocks.0", ["x", "a"], ["s"]),
        ("conv_b", "Conv", "blocks.1.conv", ["s"], ["b"]),
        ("add_b", "Add", "blocks.1", ["s", "b"], ["t"]),
        ("flat", "Reshape", "", ["t", "shape"], ["f"]),
        ("fc", "Gemm", "fc", ["f"], ["y"]),
    ]
    layers = ["blocks.0.conv", "add", "blocks.1.conv", "add_1", "flatten", "fc"]
    got = attribute_nodes(nodes, layers)
    assert got == {
        "layout": "blocks.0.conv",  # by its consumer
        "conv_a": "blocks.0.conv",
        "add_a": "add",
        "conv_b": "blocks.1.conv",
        "add_b": "add_1",
        "flat": "flatten",
        "fc": "fc",
    }
    # without such layers the adds still follow their producer, as before
    assert attribute_nodes(nodes, ["blocks.0.conv", "blocks.1.conv", "fc"])["add_a"] == "blocks.0.conv"


@pytest.fixture(scope="module")
def onnx_art(tmp_path_factory: pytest.TempPathFactory, trained_net):
    from edgetrim.deploy.onnx_export import export_onnx

    return export_onnx(trained_net[0], X, tmp_path_factory.mktemp("rm") / "m.onnx")


def test_per_layer_split_sums_to_the_unprofiled_total(onnx_art) -> None:
    rows, scale = per_layer_onnx(
        onnx_art.path,
        [X[0].numpy()],
        total_ms=0.5,
        overhead_ms=0.1,
        predicted=[("conv1", 0.1), ("fc_v", 0.2)],
    )
    assert scale > 0
    assert sum(r.measured_ms or 0.0 for r in rows) == pytest.approx(0.4, rel=1e-9)
    assert [r.name for r in rows[:2]] == ["conv1", "fc_v"] and rows[0].measured_ms > 0


def test_remeasure_on_ort_cpu_gives_per_layer_rows(onnx_art) -> None:
    from edgetrim.profiler.targets import get_target
    from edgetrim.profiler.timing import TimingConfig

    rep = remeasure(
        onnx_art, get_target("ort-cpu"), timing=TimingConfig.quick(), example_inputs=X, profile_runs=5
    )
    assert rep.measured_ms > 0 and rep.device.runtime == "onnxruntime"
    assert {"conv2", "fc_u", "fc_v"} <= {r.name for r in rep.layers if r.measured_ms}
    assert rep.to_dict()["error_rel"] is None  # no prediction given


def test_remeasure_tflite_on_litert_cpu_reports_the_total(trained_net, tmp_path: Path) -> None:
    from edgetrim.deploy.tflite_export import export_tflite
    from edgetrim.profiler.targets import get_target
    from edgetrim.profiler.timing import TimingConfig

    art = export_tflite(trained_net[0], X, tmp_path / "m.tflite")
    rep = remeasure(
        art,
        get_target("litert-cpu"),
        timing=TimingConfig.quick(),
        example_inputs=X,
        predicted=[("conv1", 0.01)],
    )
    assert rep.measured_ms > 0 and rep.per_layer_method == "total only"
    assert rep.layers[0].predicted_ms == 0.01 and rep.layers[0].measured_ms is None


def test_dense_twin_keeps_shapes_and_fills_zeros() -> None:
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        net[0].weight[:, :4] = 0
    assert weight_sparsity(net) == pytest.approx(32 / 96)
    twin = dense_twin(net)
    assert weight_sparsity(twin) == 0.0
    assert [p.shape for p in twin.parameters()] == [p.shape for p in net.parameters()]
    assert torch.equal(twin[2].weight, net[2].weight)  # nonzero weights untouched


def test_sparsity_payoff_measures_both_twins(trained_net, tmp_path: Path) -> None:
    import copy

    from edgetrim.deploy.onnx_export import export_onnx
    from edgetrim.profiler.targets import get_target
    from edgetrim.profiler.timing import TimingConfig

    net = copy.deepcopy(trained_net[0])
    with torch.no_grad():
        for m in (net.conv1, net.conv2):
            m.weight[m.weight.abs() < m.weight.abs().median()] = 0  # ~50% unstructured zeros
    check = sparsity_payoff(
        net,
        lambda m, stem: export_onnx(m, X, stem.with_suffix(".onnx")),
        get_target("ort-cpu"),
        timing=TimingConfig.quick(),
        rounds=2,
    )
    assert 0.2 < check.weight_sparsity < 0.5  # half of the conv weights; the linears stay dense
    assert check.sparse_ms > 0 and check.dense_ms > 0
    assert check.speedup == pytest.approx(check.dense_ms / check.sparse_ms)
    assert ("paid off" in check.verdict) == check.paid_off


def test_artifact_whose_input_spec_does_not_match_is_one_line_error(onnx_art) -> None:
    from edgetrim.deploy.artifact import TensorSpec
    from edgetrim.errors import ExportError
    from edgetrim.profiler.targets import get_target
    from edgetrim.profiler.timing import TimingConfig

    nhwc = replace(onnx_art, inputs=(TensorSpec("input_0", (1, 8, 8, 1), "float32"),))  # channel-last
    with pytest.raises(
        ExportError, match=r"has shape \(1, 8, 8, 1\) but the model's example input is"
    ) as err:
        remeasure(nhwc, get_target("ort-cpu"), timing=TimingConfig.quick(), example_inputs=X)
    assert "\n" not in str(err.value)


def test_per_layer_tflite_keeps_op_times_when_the_graph_cannot_be_read(tmp_path: Path) -> None:
    from edgetrim.deploy.remeasure import per_layer_tflite
    from edgetrim.profiler.adb.target import OpTime

    bad = tmp_path / "custom.tflite"
    bad.write_bytes(b"not a flatbuffer")
    ops = [OpTime("[a]:0", "CONV_2D", 0.3, 0.4, ("a",), 0), OpTime("[b]:1", "ADD", 0.1, 0.2, ("b",), 1)]
    rows = per_layer_tflite(bad, ops, predicted=[("conv1", 0.25)])
    assert [(r.name, r.measured_ms) for r in rows] == [("conv1", None), (UNATTRIBUTED, pytest.approx(0.4))]
    assert rows[1].nodes == ("[a]:0", "[b]:1")
