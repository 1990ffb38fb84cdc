"""The simulated ``benchmark_model``: runs the pushed .tflite with the LiteRT interpreter on the host.

Timings are real (host wall clock around ``Interpreter.invoke``); the printed text follows the tool's
output format for the version embedded in the pushed binary:

* ``2.4.x``  - bare lines, ``count=.. first=.. curr=.. min=.. max=.. avg=.. std=..``;
* ``2.13.x`` - every line prefixed ``INFO: ``;
* ``2.16.x`` and later - ``INFO: `` prefix and ``p5=.. median=.. p95=..`` appended to each statistic.

With ``--enable_op_profiling=true`` the per-op tables ("Run Order", "Top by Computation Time",
"Summary by node type") follow. The Python interpreter cannot time single ops, so the per-op rows
split each measured run evenly over the model's ops (the tables' *format* is what is under test).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

_BOOL_TRUE = {"1", "true", "True"}


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
    args: list[str], *, version: str, read_file: Callable[[str], bytes | None], emit: Callable[[str], None]
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
        ops = [d["op_name"] for d in interp._get_ops_details() if d["op_name"] != "DELEGATE"] or ["DELEGATE"]
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


def _op_tables(ops: list[str], runs: list[float], init_us: float) -> list[str]:
    n = len(ops)
    first_ms = runs[0] / 1000 / n
    avg_ms = sum(runs) / len(runs) / 1000 / n
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
    for i, op in enumerate(ops):
        pct = 100.0 / n
        rows.append(
            f"\t{op:>24}\t{i * avg_ms:17.3f}\t{first_ms:9.3f}\t{avg_ms:9.3f}\t{pct:7.3f}%\t"
            f"{pct * (i + 1):7.3f}%\t{0.0:10.3f}\t{1:9d}\t[op_{i}]:{i}"
        )
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
    counts: dict[str, int] = {}
    for op in ops:
        counts[op] = counts.get(op, 0) + 1
    cdf = 0.0
    for op, c in counts.items():
        share = 100.0 * c / n
        cdf += share
        lines.append(
            f"\t{op:>24}\t{c:9d}\t{avg_ms * c:10.3f}\t{share:10.3f}%\t{cdf:10.3f}%\t{0.0:10.3f}\t{c:9d}"
        )
    lines += ["", f"Timings (microseconds): {_Stat(runs).text(False)}", "Memory (bytes): count=0"]
    lines += [f"{n} nodes observed", ""]
    return lines
