"""How faithful one-op measurements are, and how cheap they are to build.

Measured side by side in one process, 1 thread:

1. build time per grid point: ``build_onnx_op`` / ``build_tflite_op`` (written directly) against the
   torch route (``torch.onnx.export`` of the same layer; one litert-torch conversion unless ``--quick``);
2. the runtimes' empty-invoke overhead (what profiling subtracts from every table point);
3. one-op fidelity: a 3x3 conv+ReLU (c -> c, 8x8) timed as a one-op graph (minus the invoke overhead)
   against its in-model cost, taken from chains of 2 and 4 identical convs: ``(t4 - t2) / 2``.
   Rounds interleave every graph in a shuffled order; each figure is the median of round medians,
   with the min..max of the round medians as spread.

Usage::

    .venv/bin/python benchmarks/profiler_fidelity.py [--quick] [--out benchmarks/results/profiler_fidelity.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from edgetrim.profiler.builders import build_onnx_op, build_tflite_op
from edgetrim.profiler.builders.tflite_ops import _conv, _Model
from edgetrim.profiler.targets import get_target
from edgetrim.profiler.timing import TimingConfig
from edgetrim.types import OpContext, OpKind

CONV = OpContext(OpKind.CONV2D, kernel=(3, 3), padding=(1, 1), spatial=(8, 8), activation="relu")


def onnx_chain(c: int, k: int) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for j in range(k):
        inits += [
            numpy_helper.from_array((rng.standard_normal((c, c, 3, 3)) * 0.1).astype(np.float32), f"w{j}"),
            numpy_helper.from_array(np.zeros(c, np.float32), f"b{j}"),
        ]
        nodes.append(
            helper.make_node("Conv", [prev, f"w{j}", f"b{j}"], [f"c{j}"], kernel_shape=[3, 3], pads=[1] * 4)
        )
        nodes.append(helper.make_node("Relu", [f"c{j}"], [f"a{j}"]))
        prev = f"a{j}"
    shape = [1, c, 8, 8]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, shape)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def tflite_chain(c: int, k: int) -> bytes:
    m = _Model()
    # the first conv creates the input; chain the rest onto its output
    y = _conv(m, CONV, c, c)
    for _ in range(k - 1):
        s = m.s
        opt = s.Conv2DOptionsT()
        opt.padding, opt.strideH, opt.strideW = s.Padding.SAME, 1, 1
        opt.fusedActivationFunction = m.fused("relu")
        filt = m.const((np.random.default_rng(0).standard_normal((c, 3, 3, c)) * 0.1).astype(np.float32))
        y = m.op("CONV_2D", [y, filt, m.const(np.zeros(c, np.float32))], (1, 8, 8, c), opt)
    return m.to_bytes(y, f"chain{k}")


def time_builders(quick: bool) -> dict:
    widths = list(range(1, 21))
    out: dict = {}
    for label, fn in (("onnx_direct", build_onnx_op), ("tflite_direct", build_tflite_op)):
        fn(CONV, 64, 8)
        samples = []
        for w in widths:
            t0 = time.perf_counter()
            fn(CONV, 64, w)
            samples.append((time.perf_counter() - t0) * 1e3)
        out[label] = {"median_ms": statistics.median(samples), "max_ms": max(samples), "n": len(samples)}
    import torch

    from edgetrim.profiler.builders import build_torch_op

    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in widths[:3]:
            module, inputs = build_torch_op(CONV, 64, w)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, inputs, f"{tmp}/m.onnx", dynamo=False, opset_version=17)
            samples.append((time.perf_counter() - t0) * 1e3)
        out["torch_onnx_export_legacy"] = {"median_ms": statistics.median(samples), "n": len(samples)}
        if not quick:
            import litert_torch

            module, inputs = build_torch_op(CONV, 64, 8)
            t0 = time.perf_counter()
            litert_torch.convert(module, inputs).export(f"{tmp}/m.tflite")
            out["litert_torch_convert"] = {"median_ms": (time.perf_counter() - t0) * 1e3, "n": 1}
    return out


def fidelity(target_name: str, widths: list[int], rounds: int, timing: TimingConfig) -> dict:
    target = get_target(target_name, threads=1)
    is_ort = target_name.startswith("ort")

    def timer(data: bytes):
        if is_ort:
            sess = target.session(data)
            return lambda: target.time_session(sess, timing).median_ms
        interp = target.interpreter(content=data)
        return lambda: target.time_interpreter(interp, timing).median_ms

    jobs = {"overhead": lambda: target.invoke_overhead(timing).median_ms}
    for c in widths:
        single = build_onnx_op(CONV, c, c) if is_ort else build_tflite_op(CONV, c, c)
        jobs[f"single_{c}"] = timer(single)
        for k in (2, 4):
            jobs[f"chain{k}_{c}"] = timer(onnx_chain(c, k) if is_ort else tflite_chain(c, k))
    results: dict[str, list[float]] = {k: [] for k in jobs}
    rng = random.Random(0)
    for _ in range(rounds):
        order = list(jobs)
        rng.shuffle(order)
        for k in order:
            results[k].append(jobs[k]())
    med = {k: statistics.median(v) for k, v in results.items()}
    rows = []
    for c in widths:
        one_op = med[f"single_{c}"] - med["overhead"]
        in_model = (med[f"chain4_{c}"] - med[f"chain2_{c}"]) / 2
        rows.append(
            {
                "width": c,
                "one_op_minus_overhead_ms": one_op,
                "in_model_ms": in_model,
                "ratio": one_op / in_model if in_model > 0 else None,
                "single_spread_ms": [min(results[f"single_{c}"]), max(results[f"single_{c}"])],
            }
        )
    return {
        "target": target_name,
        "fingerprint": target.info().fingerprint(),
        "invoke_overhead_ms": med["overhead"],
        "invoke_overhead_spread_ms": [min(results["overhead"]), max(results["overhead"])],
        "conv3x3_relu_8x8": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer widths and rounds (smoke run)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path("benchmarks/results") / (
        "profiler_fidelity_quick.json" if args.quick else "profiler_fidelity.json"
    )
    widths = [13, 16, 32] if args.quick else [8, 13, 16, 24, 32, 57, 64]
    rounds = 3 if args.quick else 7
    timing = TimingConfig(warmup=10, min_runs=20, max_runs=300, rel_ci=0.01, time_cap_s=0.5)
    t0 = time.perf_counter()
    report = {
        "benchmark": "profiler_fidelity",
        "quick": args.quick,
        "git_sha": subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "rounds": rounds,
        "builders": time_builders(args.quick),
        "targets": [fidelity(name, widths, rounds, timing) for name in ("ort-cpu", "litert-cpu")],
    }
    report["wall_s"] = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"out": str(out), "wall_s": round(report["wall_s"], 1)}), file=sys.stderr)


if __name__ == "__main__":
    main()
