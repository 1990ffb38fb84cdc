"""Pure parser for the output of LiteRT's ``benchmark_model`` (no I/O, no adb, no torch).

The tool prints, per run phase, one statistics line in microseconds::

    count=50 first=2990275 curr=2913402 min=2727568 max=3189954 avg=2.95034e+06 std=109798

Older releases (TF <= 2.12) print bare lines (TF 1.14-2.1 end with "Average inference timings"); later ones prefix every line with ``INFO: `` (or a
logcat tag such as ``I tflite  : ``); from 2.16 the line ends with ``p5=.. median=.. p95=..``. A phase
whose runs were all equal prints ``count=N curr=X(all same)``. With ``--enable_op_profiling=true`` the
tool adds tables ("Run Order", "Top by Computation Time", "Summary by node type") for initialization
and for the regular runs; releases that print a delegate's own ops in a separate "Delegate internal"
table get those rows in :attr:`BenchmarkOutput.delegate_rows`. Rows are named ``[outputs]:INDEX``
(interpreter nodes, see :func:`node_outputs`) or ``Delegate/<op>:N``. The tool never prints
individual samples, so :func:`to_latency_stats` builds the distribution from the printed summary
(see its docstring for how).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from edgetrim.types import LatencyStats

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_STAT_RE = re.compile(rf"\bcount=(\d+)((?:\s*\(all same\)|\s+\w+={_NUM}|(?<=\d)\(all same\))*)")
_FIELD_RE = re.compile(rf"(\w+)=({_NUM})")
_SUMMARY_RE = re.compile(
    rf"Inference timings in us: Init: ({_NUM}), First inference: ({_NUM}), "
    rf"Warmup \(avg\): ({_NUM}), Inference \(avg\): ({_NUM})"
)
# TF 1.14-2.1: "Average inference timings in us: Warmup: 63120.4, Init: 45603, Inference: 62619.1"
_LEGACY_SUMMARY_RE = re.compile(
    rf"Average inference timings in us: Warmup: ({_NUM}), Init: ({_NUM}), Inference: ({_NUM})"
)
_PREFIX_RE = re.compile(r"^(?:INFO: |WARNING: |ERROR: |[VDIWEF] tflite\s*: )")
_ERROR_RE = re.compile(r"(?:^|\s)(?:ERROR: .*|Benchmarking failed\.?)$")
_Z10 = 1.2815515655446004  # standard normal quantile of 0.9
_Z05 = 1.6448536269514722  # ... of 0.95


@dataclass(frozen=True)
class RunStat:
    """One ``count=..`` statistics line (microseconds)."""

    count: int
    first_us: float
    curr_us: float
    min_us: float
    max_us: float
    avg_us: float
    std_us: float
    p5_us: float | None = None
    median_us: float | None = None
    p95_us: float | None = None


@dataclass(frozen=True)
class OpRow:
    """One row of a "Run Order" table: a node of the graph and its time per run."""

    node_type: str
    start_ms: float
    first_ms: float
    avg_ms: float
    percent: float
    name: str
    times_called: int = 1


@dataclass(frozen=True)
class NodeTypeRow:
    """One row of a "Summary by node type" table."""

    node_type: str
    count: int
    avg_ms: float
    percent: float
    times_called: int = 1


@dataclass(frozen=True)
class BenchmarkOutput:
    """Everything edgetrim uses from one ``benchmark_model`` run."""

    init_ms: float
    first_ms: float
    warmup_avg_ms: float
    inference_avg_ms: float
    warmup: RunStat | None
    inference: RunStat
    op_rows: tuple[OpRow, ...] = ()
    node_types: tuple[NodeTypeRow, ...] = ()
    init_rows: tuple[OpRow, ...] = field(default=())
    delegate_rows: tuple[OpRow, ...] = ()


class BenchmarkParseError(ValueError):
    """The text is not a successful ``benchmark_model`` run; the message quotes the tool's error."""


def _clean(line: str) -> str:
    return _PREFIX_RE.sub("", line.rstrip("\r"))


def parse_run_stat(line: str) -> RunStat | None:
    """Parse one ``count=...`` line (any prefix), or None when the line holds none."""
    m = _STAT_RE.search(line)
    if not m:
        return None
    count = int(m.group(1))
    f = {k: float(v) for k, v in _FIELD_RE.findall(m.group(0))}
    if count == 0 or "curr" not in f:
        return None
    curr = f["curr"]
    if "min" not in f:  # "(all same)" form: every run took `curr`
        return RunStat(count, curr, curr, curr, curr, curr, 0.0, f.get("p5"), f.get("median"), f.get("p95"))
    return RunStat(
        count=count,
        first_us=f.get("first", curr),
        curr_us=curr,
        min_us=f["min"],
        max_us=f["max"],
        avg_us=f["avg"],
        std_us=f.get("std", 0.0),
        p5_us=f.get("p5"),
        median_us=f.get("median"),
        p95_us=f.get("p95"),
    )


def _split_row(line: str) -> list[str]:
    return [c.strip() for c in line.split("\t") if c.strip()]


def _pct(text: str) -> float:
    return float(text.rstrip("%"))


def _parse_tables(
    lines: list[str],
) -> tuple[tuple[OpRow, ...], tuple[OpRow, ...], tuple[NodeTypeRow, ...], tuple[OpRow, ...]]:
    """(init run order, regular-run run order, regular-run summary by node type, delegate-internal
    run order of the regular runs)."""
    init_rows: list[OpRow] = []
    run_rows: list[OpRow] = []
    delegate_rows: list[OpRow] = []
    types: list[NodeTypeRow] = []
    section = ""  # "init" | "runs" | "delegate" (a delegate's own ops, e.g. XNNPACK's)
    table = ""  # "order" | "top" | "types"
    for raw in lines:
        line = _clean(raw)
        if "Profiling Info for Benchmark Initialization" in line:
            section, table = ("" if "Delegate internal" in line else "init"), ""
            continue
        if "Profiling Info for Regular Benchmark Runs" in line:
            section, table = ("delegate" if "Delegate internal" in line else "runs"), ""
            continue
        if line.startswith("====="):
            table = {
                "Run Order": "order",
                "Top by Computation Time": "top",
                "Summary by node type": "types",
            }.get(line.strip("= ").strip(), "")
            continue
        cells = _split_row(line)
        if not section or not table or not cells or cells[0].startswith("["):
            continue
        try:
            if table == "order" and len(cells) >= 9:
                row = OpRow(
                    node_type=cells[0],
                    start_ms=float(cells[1]),
                    first_ms=float(cells[2]),
                    avg_ms=float(cells[3]),
                    percent=_pct(cells[4]),
                    times_called=int(cells[7]),
                    name=cells[8],
                )
                {"init": init_rows, "runs": run_rows, "delegate": delegate_rows}[section].append(row)
            elif table == "types" and section == "runs" and len(cells) >= 7:
                types.append(
                    NodeTypeRow(
                        node_type=cells[0],
                        count=int(cells[1]),
                        avg_ms=float(cells[2]),
                        percent=_pct(cells[3]),
                        times_called=int(cells[6]),
                    )
                )
        except ValueError:
            continue
    return tuple(init_rows), tuple(run_rows), tuple(types), tuple(delegate_rows)


def parse_benchmark_output(text: str) -> BenchmarkOutput:
    """Parse the complete stdout (+stderr) of one ``benchmark_model`` run.

    Args:
        text: the tool's output, any supported version, ``\\r\\n`` or ``\\n`` line ends.

    Returns:
        the summary timings (ms), the warm-up and regular-run statistics (µs, as printed) and, when
        op profiling was on, the per-op and per-node-type tables of the regular runs.

    Raises:
        BenchmarkParseError: the run failed or the text holds no regular-run statistics; the message
            quotes the tool's first error line.

    Example:
        >>> out = parse_benchmark_output(
        ...     "count=3 first=10 curr=9 min=9 max=10 avg=9.5 std=0\\n"
        ...     "Inference timings in us: Init: 100, First inference: 10, Warmup (avg): 10, Inference (avg): 9.5\\n")
        >>> out.inference_avg_ms
        0.0095
    """
    lines = text.replace("\r\n", "\n").split("\n")
    phases: list[RunStat] = []
    summary = None
    errors: list[str] = []
    profile_start = len(lines)
    for i, raw in enumerate(lines):
        line = _clean(raw)
        if "Profiling Info for" in line and profile_start == len(lines):
            profile_start = i
        if i >= profile_start:
            continue
        if line.lstrip().startswith("count="):  # one per run phase: warm-up, then regular runs
            stat = parse_run_stat(line)
            if stat is not None:
                phases.append(stat)
            continue
        m = _SUMMARY_RE.search(line)
        if m:
            summary = tuple(float(g) for g in m.groups())
            continue
        m = _LEGACY_SUMMARY_RE.search(line)
        if m:  # no "First inference" field: the warm-up phase's first run stands in for it
            warm_us, init_us, inf_us = (float(g) for g in m.groups())
            first_us = phases[0].first_us if phases else warm_us
            summary = (init_us, first_us, warm_us, inf_us)
            continue
        if raw.startswith("ERROR") or "Benchmarking failed" in line or "Failed to" in line:
            errors.append(line.strip())
    if summary is None or not phases:
        detail = errors[0] if errors else "no 'Inference timings' line found"
        raise BenchmarkParseError(f"benchmark_model did not complete: {detail}")
    inference = phases[-1]
    warmup = phases[-2] if len(phases) >= 2 else None
    init_rows, run_rows, types, delegate_rows = _parse_tables(lines[profile_start:])
    init_us, first_us, warm_us, inf_us = summary
    return BenchmarkOutput(
        init_ms=init_us / 1000.0,
        first_ms=first_us / 1000.0,
        warmup_avg_ms=warm_us / 1000.0,
        inference_avg_ms=inf_us / 1000.0,
        warmup=warmup,
        inference=inference,
        op_rows=run_rows,
        node_types=types,
        init_rows=init_rows,
        delegate_rows=delegate_rows,
    )


def to_latency_stats(out: BenchmarkOutput) -> LatencyStats:
    """The regular-run distribution of a parsed run as a :class:`LatencyStats` (milliseconds).

    The tool prints count/min/max/avg/std (and, from 2.16, p5/median/p95), not the samples. The
    median is the printed median when present, else the mean clipped to [min, max]; a printed median
    of 0 (under the one-microsecond tick) with a positive mean is replaced by the mean. p10/p90 are
    interpolated from p5/p95 when printed, else mean -/+ 1.2816 std (the normal 10th/90th
    percentiles); both are clipped to [min, max] and ordered around the median.
    """
    s = out.inference
    median = s.median_us if s.median_us is not None else min(max(s.avg_us, s.min_us), s.max_us)
    if median <= 0 < s.avg_us:
        # the printed median counts whole microseconds, so an op under one reads 0; the mean, printed
        # with decimals over every run, still resolves it
        median = s.avg_us
    if s.p5_us is not None and s.p95_us is not None and s.median_us is not None:
        p10 = median - (median - s.p5_us) * _Z10 / _Z05
        p90 = median + (s.p95_us - median) * _Z10 / _Z05
    else:
        p10 = s.avg_us - _Z10 * s.std_us
        p90 = s.avg_us + _Z10 * s.std_us
    p10 = min(max(p10, s.min_us), median)
    p90 = max(min(p90, s.max_us), median)
    return LatencyStats(
        median_ms=median / 1000.0,
        p10_ms=p10 / 1000.0,
        p90_ms=p90 / 1000.0,
        mean_ms=s.avg_us / 1000.0,
        std_ms=max(s.std_us, 0.0) / 1000.0,
        n=max(s.count, 1),
        warmup=out.warmup.count if out.warmup is not None else 0,
    )


_NODE_NAME_RE = re.compile(r"^\[(.*)\]:(\d+)$")


def node_outputs(name: str) -> tuple[tuple[str, ...], int | None]:
    """The output tensor names and node index in a "Run Order" row's name, ``([], None)`` if none.

    The tool names an interpreter node ``[out_0, out_1]:INDEX`` (its output tensors, comma-space
    separated, then the node's index in the execution plan); a delegate's internal ops are named
    ``Delegate/<op description>:N`` and carry no tensor names.

    Example:
        >>> node_outputs("[net/conv1;1]:3")
        (('net/conv1;1',), 3)
        >>> node_outputs("Delegate/Convolution (NHWC, F32) IGEMM:0")
        ((), None)
    """
    m = _NODE_NAME_RE.match(name.strip())
    if not m:
        return (), None
    outs = tuple(t.strip() for t in m.group(1).split(", ") if t.strip())
    return outs, int(m.group(2))


def parse_latency_stats(text: str) -> LatencyStats:
    """``to_latency_stats(parse_benchmark_output(text))``."""
    return to_latency_stats(parse_benchmark_output(text))


def op_latency_ms(out: BenchmarkOutput, *, node_types: tuple[str, ...] = ()) -> float:
    """Average per-run time (ms) of the profiled ops, optionally only those of ``node_types``.

    Useful to separate the op itself from the invoke overhead: the op tables exclude the
    interpreter's per-invoke bookkeeping that the whole-run statistics include.
    """
    rows = [r for r in out.op_rows if not node_types or r.node_type in node_types]
    if not rows:
        raise BenchmarkParseError("no op profiling rows: run with --enable_op_profiling=true")
    return math.fsum(r.avg_ms for r in rows)
