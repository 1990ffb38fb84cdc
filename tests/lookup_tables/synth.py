"""Synthetic latency surfaces with the two staircase patterns the tables must resolve."""

from __future__ import annotations

from edgetrim.lookup_tables import LatencyTable
from edgetrim.types import DeviceInfo, LatencyStats, OpContext, OpKind

DEVICE = DeviceInfo(target="ort-cpu", runtime="onnxruntime", runtime_version="1.32.0", device="test-cpu")
CONV = OpContext(OpKind.CONV2D, kernel=(1, 1), spatial=(8, 8), activation="relu")
DW = OpContext(OpKind.DEPTHWISE_CONV2D, kernel=(3, 3), padding=(1, 1), spatial=(8, 8))
LIN = OpContext(OpKind.LINEAR, tokens=4)


def stats(ms: float, n: int = 9) -> LatencyStats:
    return LatencyStats(
        median_ms=ms, p10_ms=ms * 0.95, p90_ms=ms * 1.1, mean_ms=ms * 1.01, std_ms=ms * 0.03, n=n
    )


def alignment_factor(w: int) -> float:
    """onnxruntime depthwise pattern: odd widths ~3x a multiple of 8, multiples of 4 in between."""
    if w % 8 == 0:
        return 1.0
    if w % 4 == 0:
        return 1.5
    return 3.0


def residue_surface(i: int, o: int) -> float:
    """Cost grows with i*o and depends on the output width's alignment class."""
    return 0.01 * (1.0 + i * o / 64.0) * alignment_factor(o)


def step_surface(i: int, o: int) -> float:
    """XNNPACK pointwise pattern: cost is flat within each block of 8 output channels."""
    return 0.01 * (1.0 + i * (-(-o // 8) * 8) / 64.0)


def smooth_surface(i: int, o: int) -> float:
    return 0.005 + 0.001 * i + 0.002 * o + 0.0001 * i * o


def table_from(fn, ctx: OpContext, points) -> LatencyTable:  # type: ignore[no-untyped-def]
    t = LatencyTable(DEVICE, meta={"source": "synthetic"})
    for i, o in points:
        t.record(ctx, i, o, stats(fn(i, o)))
    return t
