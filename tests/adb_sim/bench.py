"""The simulated ``benchmark_model``: runs the pushed .tflite with the LiteRT interpreter on the host.

Timings are real (host wall clock around ``Interpreter.invoke``); the printed text follows the tool's
output format for the version embedded in the pushed binary:

* ``2.4.x``  - bare lines, ``count=.. first=.. curr=.. min=.. max=.. avg=.. std=..``;
* ``2.13.x`` - every line prefixed ``INFO: ``;
* ``2.16.x`` and later - ``INFO: `` prefix and ``p5=.. median=.. p95=..`` appended to each statistic.

With ``--enable_op_profiling=true`` the per-op tables ("Run Order", "Top by Computation Time",
"Summary by node type") follow, one row per interpreter node named like the tool names it:
``[output tensor names]:node index`` (the model's real tensor names). The Python interpreter cannot
time single ops, so each measured run is split over the ops in proportion to a cost proxy
(:func:`op_cost`: multiply-accumulates + output elements + a fixed per-op dispatch cost). The
proxy is honest about *which* ops dominate (a conv outweighs a reshape) but not about their exact
shares; the per-op times sum to the measured run, like the tool's rows sum to (a bit less than) it.
With ``xnnpack_op_names`` the rows are named as LiteRT >= 2.16 names them under its default XNNPACK
delegate: ``Delegate/<XNNPACK op description>:N``, no tensor names (:data:`XNNPACK_OPS`; one XNNPACK
op per builtin op, whereas the real delegate may also drop or fuse some).
"avg ms" is printed with 6 decimals (the tool prints 3) so that the sub-microsecond ops of the tiny
test models keep a nonzero time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

_BOOL_TRUE = {"1", "true", "True"}
DISPATCH_COST = 256.0  # fixed cost of running one op, in units of one output element / one MAC


XNNPACK_OPS = {
    "CONV_2D": "Convolution (NHWC, F32) IGEMM",
    "DEPTHWISE_CONV_2D": "Convolution (NHWC, F32) DWConv",
    "FULLY_CONNECTED": "Fully Connected (NC, F32) GEMM",
    "MAX_POOL_2D": "Max Pooling (NHWC, F32)",
    "AVERAGE_POOL_2D": "Average Pooling (NHWC, F32)",
    "MEAN": "Global Average Pooling (NWC, F32)",
    "RESHAPE": "Copy (NC, X32)",
    "TRANSPOSE": "Transpose (ND, X32)",
    "ADD": "Add (ND, F32)",
    "MUL": "Multiply (ND, F32)",
    "BATCH_MATMUL": "Batch Matrix Multiply (NC, F32)",
    "SOFTMAX": "Softmax (NC, F32)",
}


def op_cost(op: dict, tensors: dict[int, dict]) -> float:
    """Cost proxy of one interpreter op (``_get_ops_details`` entry): MACs + output elements + dispatch."""

    def shape(i: int) -> list[int]:
        return [int(x) for x in tensors[i]["shape"]] if i in tensors else []

    ins = [i for i in op["inputs"] if i >= 0]
    out_elems = float(sum(math.prod(shape(i)) for i in op["outputs"] if i >= 0))
    name = op["op_name"]
    macs = 0.0
    if name in ("CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV") and len(ins) >= 2:
        macs = out_elems * math.prod(shape(ins[1])[1:])  # weights [out, (kh, kw,) in]
    elif name == "DEPTHWISE_CONV_2D" and len(ins) >= 2:
        macs = out_elems * math.prod(shape(ins[1])[1:3])  # weights [1, kh, kw, channels]
    elif name == "BATCH_MATMUL" and ins:
        macs = out_elems * (shape(ins[0]) or [1])[-1]
    return DISPATCH_COST + macs + out_elems


def _vkey(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:3] if p.isdigit())


class _Stat:
    def __init__(self, values: list[float]) -> None:
        self.v = [round(x) for x in values]

    def text(self, percentiles: bool) -> str:
        v = self.v
        if not v:
            return "count=0"
        n = len(v)
        if min(v) == max(v):
            s = f"count={n} curr={v[-1]}" + ("(all same)" if n > 1 else "")
        else:
            avg = sum(v) / n
            std = int(math.sqrt(max(sum((x - avg) ** 2 for x in v) / n, 0.0)))
            s = f"count={n} first={v[0]} curr={v[-1]} min={min(v)} max={max(v)} avg={avg:.6g} std={std}"
        if percentiles:
            srt = sorted(v)

            def pct(p: float) -> int:
                return srt[min(n - 1, int(p / 100.0 * n))]

            s += f" p5={pct(5)} median={pct(50)} p95={pct(95)}"
        return s


def _flags(args: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for a in args:
        if a.startswith("--") and "=" in a:
            k, v = a[2:].split("=", 1)
            out[k] = v
    return out


def run_benchmark(
    args: list[str],
    *,
    version: str,
    read_file: Callable[[str], bytes | None],
    emit: Callable[[str], None],
    xnnpack_op_names: bool = False,
) -> int:
    """Run the simulated tool with command-line ``args``; ``emit`` receives each output line."""
    new = _vkey(version) >= (2, 13)
    pct = _vkey(version) >= (2, 16)
    pre = "INFO: " if new else ""

    def out(line: str = "") -> None:
        emit((pre + line) if line else "")

    f = _flags(args)
    graph = f.get("graph", "")
    threads = int(f.get("num_threads", "-1"))
    warmup_runs = int(f.get("warmup_runs", "1"))
    num_runs = int(f.get("num_runs", "50"))
    min_secs = float(f.get("min_secs", "1"))
    warmup_min_secs = float(f.get("warmup_min_secs", "0.5"))
    op_prof = f.get("enable_op_profiling", "false") in _BOOL_TRUE
    max_secs = float(f.get("max_secs", "150"))
    out("STARTING!")
    out("Log parameter values verbosely: [0]")
    out(f"Min num runs: [{num_runs}]")
    out(f"Num threads: [{threads}]")
    out(f"Min warmup runs: [{warmup_runs}]")
    out(f"Graph: [{graph}]")
    if op_prof:
        out("Enable op profiling: [1]")
    out(f"#threads used for CPU inference: [{threads}]")
    content = read_file(graph)
    if content is None:
        emit(f"ERROR: Could not open '{graph}'.")
        emit(f"ERROR: Failed to mmap model {graph}")
        emit("ERROR: Benchmarking failed.")
        return 1
    from ai_edge_litert.interpreter import Interpreter

    t0 = time.perf_counter()
    try:
        interp = Interpreter(model_content=content, num_threads=max(threads, 1))
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        emit(f"ERROR: {str(exc).splitlines()[0] if str(exc) else 'failed to load model'}")
        emit("ERROR: Benchmarking failed.")
        return 1
    init_us = (time.perf_counter() - t0) * 1e6
    out(f"Loaded model {graph}")
    out("Created TensorFlow Lite XNNPACK delegate for CPU.")
    out(f"The input model file size (MB): {len(content) / 1e6:.6g}")
    out(f"Initialized session in {init_us / 1000:.6g}ms.")
    rng = np.random.default_rng(0)
    for d in interp.get_input_details():
        if np.issubdtype(d["dtype"], np.floating):
            data = rng.standard_normal(d["shape"]).astype(d["dtype"])
        else:
            data = np.zeros(d["shape"], d["dtype"])
        interp.set_tensor(d["index"], data)

    def timed(n_min: int, secs: float) -> list[float]:
        samples: list[float] = []
        start = time.perf_counter()
        while len(samples) < n_min or (time.perf_counter() - start) < secs:
            if time.perf_counter() - start > max_secs:
                break
            t = time.perf_counter()
            interp.invoke()
            samples.append((time.perf_counter() - t) * 1e6)
            if time.perf_counter() - start > 150:
                break
        return samples

    out(
        f"Running benchmark for at least {warmup_runs} iterations and at least {warmup_min_secs:g} seconds "
        "but terminate if exceeding 150 seconds."
    )
    warm = timed(warmup_runs, warmup_min_secs)
    out(_Stat(warm).text(pct))
    emit("")
    out(
        f"Running benchmark for at least {num_runs} iterations and at least {min_secs:g} seconds "
        "but terminate if exceeding 150 seconds."
    )
    runs = timed(num_runs, min_secs)
    out(_Stat(runs).text(pct))
    emit("")
    warm_avg = sum(warm) / len(warm) if warm else 0.0
    avg = sum(runs) / len(runs)
    first = warm[0] if warm else runs[0]
    out(
        f"Inference timings in us: Init: {int(init_us)}, First inference: {int(first)}, "
        f"Warmup (avg): {warm_avg:.6g}, Inference (avg): {avg:.6g}"
    )
    out(
        "Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE "
        "to the actual memory footprint of the model at runtime. Take the information at your discretion."
    )
    out("Memory footprint delta from the start of the tool (MB): init=2.64062 overall=2.78125")
    if op_prof:
        # builtin ops as the tool lists them without a delegate (the interpreter also lists the
        # XNNPACK DELEGATE node that replaced them; the tool's tables name the original ops)
        tensors = {t["index"]: t for t in interp.get_tensor_details()}
        ops = [
            (d["op_name"], _node_name(d, tensors), op_cost(d, tensors))
            for d in interp._get_ops_details()
            if d["op_name"] != "DELEGATE"
        ] or [("DELEGATE", "[]:0", 1.0)]
        if xnnpack_op_names:
            ops = [
                (desc, f"Delegate/{desc}:{k}", cost)
                for k, (op, _, cost) in enumerate(ops)
                for desc in [XNNPACK_OPS.get(op, f"{op.replace('_', ' ').title()} (ND, F32)")]
            ]
        for line in _op_tables(ops, runs, init_us):
            out(line) if line else emit("")
    return 0


_RUN_HEADER = (
    "\t             [node type]\t          [start]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]"
    "\t[times called]\t[Name]"
)
_TYPE_HEADER = (
    "\t             [Node type]\t  [count]\t  [avg ms]\t    [avg %]\t    [cdf %]\t  [mem KB]\t[times called]"
)


def _node_name(op: dict, tensors: dict[int, dict]) -> str:
    outs = [str(tensors[i]["name"]) for i in op["outputs"] if i in tensors]
    return f"[{', '.join(outs)}]:{op['index']}"


def _op_tables(ops: list[tuple[str, str, float]], runs: list[float], init_us: float) -> list[str]:
    n = len(ops)
    total_cost = sum(c for *_, c in ops)
    shares = [c / total_cost for *_, c in ops]
    run_ms = sum(runs) / len(runs) / 1000
    lines = ["Profiling Info for Benchmark Initialization:"]
    lines += ["============================== Run Order ==============================", _RUN_HEADER]
    row = f"\t{'AllocateTensors':>24}\t{0.0:17.3f}\t{init_us / 1000:9.3f}\t{init_us / 1000:9.3f}\t"
    row += f"{100.0:7.3f}%\t{100.0:7.3f}%\t{0.0:10.3f}\t{1:9d}\tAllocateTensors/0"
    lines += [
        row,
        "",
        "============================== Top by Computation Time ==============================",
        _RUN_HEADER,
    ]
    lines += [row, "", "Number of nodes executed: 1"]
    lines += [
        "============================== Summary by node type ==============================",
        _TYPE_HEADER,
    ]
    lines += [
        f"\t{'AllocateTensors':>24}\t{1:9d}\t{init_us / 1000:10.3f}\t{100.0:10.3f}%\t{100.0:10.3f}%\t"
        f"{0.0:10.3f}\t{1:9d}",
        "",
        f"Timings (microseconds): count=1 curr={int(init_us)}",
        "Memory (bytes): count=0",
        "1 nodes observed",
        "",
        "",
        "",
        "Operator-wise Profiling Info for Regular Benchmark Runs:",
        "============================== Run Order ==============================",
        _RUN_HEADER,
    ]
    rows = []
    start = cdf = 0.0
    for (op, name, _), share in zip(ops, shares, strict=True):
        avg_ms, first_ms = run_ms * share, runs[0] / 1000 * share
        cdf += 100.0 * share
        rows.append(
            f"\t{op:>24}\t{start:17.3f}\t{first_ms:9.3f}\t{avg_ms:9.6f}\t{100.0 * share:7.3f}%\t"
            f"{cdf:7.3f}%\t{0.0:10.3f}\t{1:9d}\t{name}"
        )
        start += avg_ms
    lines += [
        *rows,
        "",
        "============================== Top by Computation Time ==============================",
        _RUN_HEADER,
    ]
    lines += [*rows[:10], "", f"Number of nodes executed: {n}"]
    lines += [
        "============================== Summary by node type ==============================",
        _TYPE_HEADER,
    ]
    counts: dict[str, tuple[int, float]] = {}
    for (op, _, _), share in zip(ops, shares, strict=True):
        c, sh = counts.get(op, (0, 0.0))
        counts[op] = (c + 1, sh + share)
    cdf = 0.0
    for op, (c, share) in counts.items():
        cdf += 100.0 * share
        lines.append(
            f"\t{op:>24}\t{c:9d}\t{run_ms * share:10.3f}\t{100.0 * share:10.3f}%\t{cdf:10.3f}%\t"
            f"{0.0:10.3f}\t{c:9d}"
        )
    lines += ["", f"Timings (microseconds): {_Stat(runs).text(False)}", "Memory (bytes): count=0"]
    lines += [f"{n} nodes observed", ""]
    return lines
