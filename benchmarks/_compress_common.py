"""Shared helpers of the compress benchmarks (not part of the package)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from edgetrim.lookup_tables import LatencyTable
from edgetrim.lookup_tables.grid import plan_points
from edgetrim.types import DeviceInfo, LatencyStats, LayerOp, OpContext

STEP = 8


def staircase_ms(ctx: OpContext, in_w: int, out_w: int) -> float:
    """Synthetic latency with steps every 8 channels (for benchmarks whose result does not depend on it)."""
    hw = ctx.spatial[0] * ctx.spatial[1] * ctx.tokens
    if ctx.one_axis:
        return 0.002 + 1e-4 * hw * math.ceil(in_w / STEP) * STEP
    k = ctx.kernel[0] * ctx.kernel[1]
    return 0.005 + 2e-6 * hw * k * math.ceil(in_w / STEP) * math.ceil(out_w / STEP) * STEP**2


def synthetic_table(ops: Sequence[LayerOp]) -> LatencyTable:
    """A staircase table over the planner's points for every context of ``ops``."""
    table = LatencyTable(
        DeviceInfo(target="ort-cpu", runtime="onnxruntime", runtime_version="synthetic", device="synthetic")
    )
    need: dict[OpContext, tuple[int, int]] = {}
    for op in ops:
        a, b = need.get(op.context, (1, 1))
        need[op.context] = (max(a, op.in_width), max(b, op.out_width))
    for ctx, (mi, mo) in need.items():
        for i, o in plan_points(ctx, mi, mo):
            ms = staircase_ms(ctx, i, o)
            table.record(ctx, i, o, LatencyStats(ms, ms, ms, ms, 0.0, 5))
    return table


def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
