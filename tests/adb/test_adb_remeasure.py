"""Per-layer re-measurement on a phone: op-profile parsing and scaling (pure), op row -> graph node
matching (pure), and ``edgetrim export RUN --target adb:SERIAL`` end to end on a simulated phone.

Tolerance: the per-layer rows (unattributed ops included) sum to the plain run's median minus the
invoke overhead by construction (one scale factor over the printed op times), checked to rel 1e-9
(float rounding). No timing assertions: the simulator's op shares come from a cost proxy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from edgetrim.deploy.remeasure import UNATTRIBUTED, match_op_rows, remeasure, tflite_module
from edgetrim.profiler.adb.parser import node_outputs, parse_benchmark_output
from edgetrim.profiler.adb.runner import RunnerConfig
from edgetrim.profiler.adb.target import OpTime, split_profile
from edgetrim.profiler.timing import TimingConfig
from edgetrim.types import LatencyStats

FIXTURES = Path(__file__).parent / "fixtures"
FAST = RunnerConfig(batch_size=4, cooldown_poll_s=0.05, cooldown_max_s=5.0, retries=3, backoff_s=0.5)
TIMING = TimingConfig(warmup=1, min_runs=3, max_runs=5, time_cap_s=0.2)


def _stats(median_ms: float) -> LatencyStats:
    return LatencyStats(
        median_ms=median_ms, p10_ms=median_ms, p90_ms=median_ms, mean_ms=median_ms, std_ms=0.0, n=5, warmup=1
    )


def test_node_names_give_output_tensors_and_index() -> None:
    assert node_outputs("[net/conv1;1, net/conv1;2]:7") == (("net/conv1;1", "net/conv1;2"), 7)
    assert node_outputs("Delegate/Convolution (NHWC, F32) IGEMM:0") == ((), None)
    assert node_outputs("AllocateTensors/0") == ((), None)


def test_split_profile_scales_op_times_to_the_unprofiled_total_minus_overhead() -> None:
    out = parse_benchmark_output((FIXTURES / "litert2.16_op_profiling_xnnpack.txt").read_text())
    prof = split_profile(_stats(2.0), out, overhead_ms=0.25)
    assert prof.profiled_ms == pytest.approx(1.642 + 0.032, rel=1e-12)
    assert math.fsum(op.ms for op in prof.ops) == pytest.approx(2.0 - 0.25, rel=1e-9)
    assert [op.profiled_ms for op in prof.ops] == [1.642, 0.032]
    assert all(op.delegated for op in prof.ops)  # XNNPACK's own ops: no tensor names
    assert prof.ops[0].ms / prof.ops[1].ms == pytest.approx(1.642 / 0.032, rel=1e-9)  # shares kept


def test_delegate_internal_section_is_kept_apart_from_the_interpreter_rows() -> None:
    text = (FIXTURES / "litert2.16_op_profiling_xnnpack.txt").read_text()
    # older tools print the interpreter's table (one delegate node) and then the delegate's ops
    head, _, tail = text.partition("INFO: Operator-wise Profiling Info for Regular Benchmark Runs:")
    node = "INFO: \t  TfLiteXNNPackDelegate\t  0.000\t  1.700\t  1.690\t100.000%\t100.000%\t  0.000\t  1\t[out]:2\n"
    interp_table = (
        "INFO: Operator-wise Profiling Info for Regular Benchmark Runs:\n"
        "INFO: ============================== Run Order ==============================\n" + node + "\n"
    )
    text = (
        head
        + interp_table
        + "INFO: Delegate internal: Operator-wise Profiling Info for Regular Benchmark Runs:"
        + tail
    )
    out = parse_benchmark_output(text)
    assert [r.node_type for r in out.op_rows] == ["TfLiteXNNPackDelegate"]
    assert [r.name for r in out.delegate_rows] == [
        "Delegate/Convolution (NHWC, F32) IGEMM:0",
        "Delegate/Global Average Pooling (NWC, F32):1",
    ]
    prof = split_profile(_stats(2.0), out)  # the delegate's ops stand in for its node: no double count
    assert [op.name for op in prof.ops] == [r.name for r in out.delegate_rows]
    assert math.fsum(op.ms for op in prof.ops) == pytest.approx(2.0, rel=1e-9)


def test_tensor_names_give_module_paths() -> None:
    fused = (
        "m.Net;;m.Net/torch.nn.modules.batchnorm.BatchNorm2d_bn1;;m.Net/torch.nn.modules.conv.Conv2d_conv1;2"
    )
    assert tflite_module(fused) == "conv1"
    nested = (
        "m.Net/torch.nn.modules.container.Sequential_blocks/m.Block_0/torch.nn.modules.linear.Linear_fc_u;"
    )
    assert tflite_module(nested) == "blocks.0.fc_u"
    assert tflite_module("m.Net;1") == "" and tflite_module("serving_default_output_0") == ""


def test_op_rows_match_by_tensor_names_then_index_then_delegate_order() -> None:
    nodes = [
        ("RESHAPE#0", "RESHAPE", "conv1", ["x"], ["r"]),
        ("CONV_2D#1", "CONV_2D", "conv1", ["r", "w"], ["c"]),
        ("MAX_POOL_2D#2", "MAX_POOL_2D", "pool", ["c"], ["p"]),
        ("FULLY_CONNECTED#3", "FULLY_CONNECTED", "fc", ["p", "w2"], ["y"]),
    ]
    rows = [
        OpTime("[c]:1", "CONV_2D", 1.0, 1.0, ("c",), 1),  # tensor names
        OpTime("[renamed]:3", "FULLY_CONNECTED", 1.0, 1.0, ("renamed",), 3),  # index + same type
        OpTime("[zz]:0", "ADD", 1.0, 1.0, ("zz",), 0),  # index but another type: no match
        OpTime("[y]:4", "TfLiteXNNPackDelegate", 1.0, 1.0, ("y",), 4),  # a whole subgraph: no one node
    ]
    assert match_op_rows(rows, nodes) == ["CONV_2D#1", "FULLY_CONNECTED#3", None, None]
    xnn = [
        OpTime("Delegate/Convolution (NHWC, F32) IGEMM:0", "Convolution (NHWC, F32) IGEMM", 1.0, 1.0),
        OpTime("Delegate/Max Pooling (NHWC, F32):1", "Max Pooling (NHWC, F32)", 1.0, 1.0),
        OpTime("Delegate/Fully Connected (NC, F32) GEMM:2", "Fully Connected (NC, F32) GEMM", 1.0, 1.0),
        OpTime("Delegate/Unknown Thing:3", "Unknown Thing", 1.0, 1.0),
    ]
    assert match_op_rows(xnn, nodes) == ["CONV_2D#1", "MAX_POOL_2D#2", "FULLY_CONNECTED#3", None]


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.conv(x))


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.blocks = nn.Sequential(Block())
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(x, 1))


def test_export_run_remeasures_per_layer_on_a_simulated_phone(
    make_phone, bench_binary: Path, tmp_path: Path
) -> None:
    """One export (the litert-torch conversion dominates the time), re-measured on two phones."""
    from edgetrim.compress.run_folder import save_run
    from edgetrim.deploy.bundle import ExportConfig, export_run
    from edgetrim.model_ops import extract_layer_ops
    from edgetrim.profiler.adb.target import AdbTarget
    from edgetrim.profiler.targets import get_target

    torch.manual_seed(0)
    net = TinyNet().eval()
    x = (torch.randn(1, 1, 8, 8),)
    phone = make_phone()
    run = save_run(
        tmp_path / "run", net, x, {"kind": "compress", "model_spec": "tiny", "data_spec": "digits"}
    )
    target = get_target(f"adb:{phone.serial}")
    target.runner.config = FAST

    # `edgetrim export RUN --format tflite --target adb:SERIAL`, no table: one row per module
    cfg = ExportConfig(
        formats=("tflite",), target=f"adb:{phone.serial}", timing=TIMING, check_sparsity=False, report=False
    )
    bundle = export_run(run, tmp_path / "out", cfg)
    (rep,) = bundle.remeasured
    assert rep.per_layer_method.startswith("benchmark_model op profiling")
    by_name = {r.name: r for r in rep.layers}
    assert {"conv1", "blocks.0.conv", "pool", "fc"} <= {
        n for n, r in by_name.items() if (r.measured_ms or 0) > 0
    }
    assert math.fsum(r.measured_ms or 0.0 for r in rep.layers) == pytest.approx(rep.measured_ms, rel=1e-9)
    assert any(n.startswith(("CONV_2D#", "DEPTHWISE_CONV_2D#")) for n in by_name["conv1"].nodes)
    assert any(n.startswith("FULLY_CONNECTED#") for n in by_name["fc"].nodes)
    manifest = json.loads(bundle.manifest_path.read_text())
    assert [r["name"] for r in manifest["artifacts"][0]["remeasure"]["layers"]] == list(by_name)

    # with the prediction's layer names (what a table for this phone gives), overhead kept out
    art = bundle.artifacts[0]
    layer_ops = extract_layer_ops(net, x, fusion=target.fusion)
    predicted = [(op.name, 0.001) for op in layer_ops]
    rep = remeasure(art, target, timing=TIMING, example_inputs=x, predicted=predicted, overhead_ms=0.0005)
    rows = {r.name: r for r in rep.layers}
    assert [r.name for r in rep.layers[: len(predicted)]] == [n for n, _ in predicted]
    assert math.fsum(r.measured_ms or 0.0 for r in rep.layers) == pytest.approx(
        rep.measured_ms - 0.0005, rel=1e-9
    )
    # every predicted layer (convs with folded BN + fused ReLU, the residual add, pool, flatten, fc)
    # got its ops, and every op found its layer
    assert UNATTRIBUTED not in rows
    assert all((rows[n].measured_ms or 0.0) > 0 for n, _ in predicted)
    add = next(op.name for op in layer_ops if op.context.kind.value == "add")
    assert [n.split("#")[0] for n in rows[add].nodes] == ["ADD"]
    assert rep.to_dict()["profile_scale"] > 0

    # LiteRT >= 2.16 with XNNPACK names ops "Delegate/Convolution (NHWC, F32) IGEMM:0" (no tensor
    # names): the rows are aligned in order with graph nodes of the op type they name
    xnn = AdbTarget(make_phone(xnnpack_op_names=True).serial, config=FAST)
    rep = remeasure(art, xnn, timing=TIMING, example_inputs=x, predicted=[(n, None) for n, _ in predicted])
    rows = {r.name: r for r in rep.layers}
    assert UNATTRIBUTED not in rows
    assert all((rows[n].measured_ms or 0.0) > 0 for n, _ in predicted)
    assert math.fsum(r.measured_ms or 0.0 for r in rep.layers) == pytest.approx(rep.measured_ms, rel=1e-9)
    fc = next(op.name for op in layer_ops if op.context.kind.value == "linear")
    assert [n.split("#")[0] for n in rows[fc].nodes] == ["FULLY_CONNECTED"]
    prof = xnn.measure_artifact_per_op(art.path, TIMING)
    assert prof.ops and all(op.delegated and op.name.startswith("Delegate/") for op in prof.ops)
