"""adb profiling throughput: one device-side script per batch of 16 / 4 vs a batch per point.

A batch costs a fixed number of adb round trips (thermal read, df + clean-up, one sync connection
for models + script, one streamed shell), so ``per_point`` (batch size 1) pays them for every point,
which is what a one-round-trip-per-point runner with the same hygiene would pay.

Runs against the phone simulator of ``tests/adb_sim`` (real adb server, real wire protocol, the
pushed one-op models executed by the LiteRT interpreter on the host), so the figures measure
edgetrim's host/adb overhead, not a phone. Each configuration profiles the same points on the same
simulated phone, interleaved over repeats in one process; reported: median points/s with min/max.

Writes ``benchmarks/results/adb_batching.json``.

    .venv/bin/python benchmarks/adb_batching.py             # 48 points, 5 repeats
    .venv/bin/python benchmarks/adb_batching.py --reduced   # 16 points, 3 repeats
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the simulator lives with the tests

from adb_sim import AdbServer, DeviceSpec, SimAdbd, SimDevice, fake_benchmark_binary, free_port  # noqa: E402

from edgetrim.profiler.adb.runner import RunnerConfig  # noqa: E402
from edgetrim.profiler.adb.target import AdbTarget  # noqa: E402
from edgetrim.profiler.timing import TimingConfig  # noqa: E402
from edgetrim.types import OpContext, OpKind  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reduced", action="store_true", help="fewer points and repeats")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "adb_batching.json")
    args = ap.parse_args()
    n_points, repeats = (16, 3) if args.reduced else (48, 5)
    ctx = OpContext(OpKind.LINEAR)
    requests = [(ctx, 4 + i % 8, 4 + i // 8) for i in range(n_points)]
    timing = TimingConfig(warmup=1, min_runs=3, max_runs=5, time_cap_s=0.2)
    configs = {"batch_16": 16, "batch_4": 4, "per_point": 1}

    server = AdbServer().start()
    os.environ["ANDROID_ADB_SERVER_PORT"] = str(server.port)
    phone = SimAdbd(SimDevice(DeviceSpec()), free_port()).start()
    results: dict[str, list[float]] = {name: [] for name in configs}
    try:
        server.connect(phone.serial)
        with tempfile.TemporaryDirectory() as tmp:
            binary = Path(tmp) / "benchmark_model"
            binary.write_bytes(fake_benchmark_binary())
            for _ in range(repeats):
                for name, batch in configs.items():  # interleaved: drift hits every config alike
                    cfg = RunnerConfig(batch_size=batch, cooldown_poll_s=0.05)
                    target = AdbTarget(phone.serial, benchmark_binary=binary, config=cfg)
                    start = time.perf_counter()
                    done = sum(1 for _ in target.measure_ops(requests, timing))
                    assert done == n_points
                    results[name].append(done / (time.perf_counter() - start))
    finally:
        phone.stop()
        server.stop()

    rows = {
        name: {
            "batch_size": configs[name],
            "points_per_s_median": round(statistics.median(v), 2),
            "points_per_s_min": round(min(v), 2),
            "points_per_s_max": round(max(v), 2),
            "repeats": len(v),
        }
        for name, v in results.items()
    }
    report = {
        "benchmark": "adb_batching",
        "points": n_points,
        "reduced": args.reduced,
        "timing": timing.to_dict(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, simulator on loopback",
        "results": rows,
        "speedup_batch16_vs_per_point": round(
            rows["batch_16"]["points_per_s_median"] / rows["per_point"]["points_per_s_median"], 2
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
