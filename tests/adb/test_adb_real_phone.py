"""Tests on a real phone (marker ``device``; skipped unless EDGETRIM_TEST_SERIAL names one).

Run them with a phone attached (USB debugging on, the prompt accepted) and LiteRT's
``benchmark_model`` for android_aarch64 downloaded::

    EDGETRIM_TEST_SERIAL=$(adb get-serialno) EDGETRIM_BENCHMARK_MODEL=~/Downloads/benchmark_model \\
        .venv/bin/pytest -m device tests/adb/test_real_phone.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgetrim.lookup_tables import LatencyTable
from edgetrim.profiler.adb.target import AdbTarget
from edgetrim.profiler.builders import build_tflite_op
from edgetrim.profiler.timing import TimingConfig
from edgetrim.types import OpContext, OpKind

SERIAL = os.environ.get("EDGETRIM_TEST_SERIAL")
pytestmark = [
    pytest.mark.device,
    pytest.mark.skipif(not SERIAL, reason="set EDGETRIM_TEST_SERIAL to a phone's adb serial"),
    pytest.mark.skipif(not os.environ.get("EDGETRIM_BENCHMARK_MODEL"), reason="set EDGETRIM_BENCHMARK_MODEL"),
]
TIMING = TimingConfig(warmup=5, min_runs=20, max_runs=50, time_cap_s=2.0)


def test_real_phone_fingerprint_and_ops(tmp_path: Path):
    target = AdbTarget(SERIAL)
    info = target.info()
    assert info.extra["abi"] == "arm64-v8a" and info.runtime_version
    assert target.cores and all(0 <= c < len(target.phone.core_max_khz) for c in target.cores)
    ctx = OpContext(OpKind.CONV2D, kernel=(3, 3), padding=(1, 1), spatial=(16, 16))
    table = LatencyTable(info)
    for (c, i, o), stats in target.measure_ops([(ctx, 16, 16), (ctx, 16, 32), (ctx, 32, 32)], TIMING):
        table.record(c, i, o, stats)
    assert table.n_points() == 3
    # more output channels cost more (generous: a 2x bigger conv is not faster than the small one)
    assert table.stats(ctx, 32, 32).median_ms >= 0.8 * table.stats(ctx, 16, 16).median_ms


def test_real_phone_prediction_within_20_percent(tmp_path: Path):
    """Predicted-vs-measured on a fixed one-op model: the only latency assertion allowed (generous)."""
    target = AdbTarget(SERIAL)
    ctx = OpContext(OpKind.LINEAR, tokens=64)
    stats = dict(target.measure_ops([(ctx, 256, 256)], TIMING))
    artifact = tmp_path / "linear.tflite"
    artifact.write_bytes(build_tflite_op(ctx, 256, 256))
    measured = target.measure_artifact(artifact, TIMING)
    predicted = stats[(ctx, 256, 256)]
    assert abs(predicted.median_ms - measured.median_ms) / measured.median_ms <= 0.2


def test_real_phone_per_op_profile_sums_to_the_total(tmp_path: Path):
    """The tool's per-op table on the phone: rows present, scaled to the plain total (rel 1e-9)."""
    import math

    ctx = OpContext(OpKind.CONV2D, kernel=(3, 3), padding=(1, 1), spatial=(16, 16))
    artifact = tmp_path / "conv.tflite"
    artifact.write_bytes(build_tflite_op(ctx, 16, 32))
    prof = AdbTarget(SERIAL).measure_artifact_per_op(artifact, TIMING, overhead_ms=0.0)
    assert prof.ops and prof.profiled_ms > 0
    assert math.fsum(op.ms for op in prof.ops) == pytest.approx(prof.total.median_ms, rel=1e-9)
