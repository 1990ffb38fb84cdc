"""Helpers shared by the sparse-training benchmarks."""

from __future__ import annotations

import statistics


def summary(values: list[float]) -> dict[str, float]:
    """Mean, spread and the raw values of one metric over seeds."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": values,
    }
