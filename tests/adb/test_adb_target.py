"""The adb:SERIAL target end to end against simulated phones through a real adb server."""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

import pytest
from adb_sim import fake_benchmark_binary

from edgetrim.errors import DeviceError
from edgetrim.lookup_tables import LatencyTable, load_table
from edgetrim.profiler.adb import list_phones
from edgetrim.profiler.adb.runner import RunnerConfig
from edgetrim.profiler.adb.target import AdbTarget, parse_cores
from edgetrim.profiler.adb.transport import DeviceDisconnectedError
from edgetrim.profiler.builders import build_tflite_op
from edgetrim.profiler.targets import get_target
from edgetrim.profiler.timing import TimingConfig
from edgetrim.types import OpContext, OpKind

FAST = RunnerConfig(
    batch_size=4, cooldown_poll_s=0.05, cooldown_max_s=5.0, retries=3, backoff_s=0.5
)  # quick hygiene/retries for the simulator

TIMING = TimingConfig(warmup=1, min_runs=3, max_runs=5, time_cap_s=0.2)
LIN = OpContext(OpKind.LINEAR)
GRID = [(LIN, i, o) for i in (4, 8) for o in (4, 8, 16)]


def _target(phone, **kw) -> AdbTarget:
    kw.setdefault("config", FAST)
    return AdbTarget(phone.serial, **kw)


def test_profile_table_predict_and_measure(phone, bench_binary: Path, tmp_path: Path):
    target = get_target(f"adb:{phone.serial}")
    assert isinstance(target, AdbTarget)
    target.runner.config = FAST  # registry-made target, fast hygiene for the simulator
    info = target.info()
    assert info.target == f"adb:{phone.serial}" and info.runtime == "litert-benchmark_model"
    assert info.device == "Google Pixel 7 (Tensor G2)" and info.os == "Android 14 (API 34)"
    assert info.runtime_version == "2.16.1" and info.affinity == (6, 7)
    assert info.extra["abi"] == "arm64-v8a" and info.extra["core_max_khz"].endswith("7:2850000")

    table = LatencyTable(info, meta={"batches": []})
    got = []
    for (ctx, i, o), stats in target.measure_ops(GRID, TIMING):
        table.record(ctx, i, o, stats)
        got.append((i, o))
    assert got == [(i, o) for _, i, o in GRID]  # streamed in request order
    table.meta["batches"] = target.measurement_log()
    path = table.save(tmp_path / "phone.json")
    loaded = load_table(path)
    assert loaded.device.fingerprint() == info.fingerprint()
    # 6 points in batches of 4 -> 2 batches, each with the phone's temperature recorded
    assert [b["models"] for b in loaded.meta["batches"]] == [4, 2]
    assert all(b["temp_c"] == pytest.approx(36.5) for b in loaded.meta["batches"])
    median = loaded.stats(LIN, 8, 16).median_ms
    assert loaded.predict_ms(LIN, 8, 16).ms == pytest.approx(median, rel=1e-9)

    # every batch ran as ONE device-side script, pinned with taskset to the big cores (mask c0)
    scripts = [c for c in phone.device.commands if c.startswith("sh ") and c.endswith("run.sh")]
    assert len(scripts) == 2
    script = phone.device.fs.read("/data/local/tmp/edgetrim/batch/run.sh").decode()
    assert script.count("taskset c0 /data/local/tmp/edgetrim/benchmark_model") == 2

    artifact = tmp_path / "op.tflite"
    artifact.write_bytes(build_tflite_op(LIN, 8, 16))
    stats = target.measure_artifact(artifact, TIMING)
    assert stats.n >= 1 and stats.median_ms > 0


def test_binary_pushed_once_and_repushed_when_it_changes(phone, bench_binary: Path):
    remote = "/data/local/tmp/edgetrim/benchmark_model"
    _target(phone)
    _target(phone)
    pushes = [c for c in phone.device.commands if c.startswith(f"chmod 755 {remote}")]
    assert len(pushes) == 1
    stored = phone.device.fs.read(remote + ".sha256").decode().split()[0]
    assert stored == hashlib.sha256(bench_binary.read_bytes()).hexdigest()

    bench_binary.write_bytes(fake_benchmark_binary("2.13.0"))  # the user downloads another version
    target = _target(phone)
    pushes = [c for c in phone.device.commands if c.startswith(f"chmod 755 {remote}")]
    assert len(pushes) == 2
    assert phone.device.fs.read(remote) == bench_binary.read_bytes()
    assert target.info().runtime_version == "2.13.0"
    # the 2.13 output format (INFO: prefix, no percentiles) parses too
    assert next(iter(target.measure_ops(GRID[:1], TIMING)))[1].n >= 1


def test_cores_override_and_threads(phone, bench_binary: Path):
    target = _target(phone, threads=2, cores=parse_cores("0-3"))
    assert target.info().affinity == (0, 1, 2, 3) and target.info().threads == 2
    list(target.measure_ops(GRID[:1], TIMING))
    script = phone.device.fs.read("/data/local/tmp/edgetrim/batch/run.sh").decode()
    assert "taskset f " in script and "--num_threads=2" in script
    assert _target(phone, threads=3).cores == (4, 5, 6, 7)  # big cluster widened to 3+ cores
    with pytest.raises(DeviceError, match="out of range"):
        _target(phone, cores=(9,))


def test_two_phones_at_once_keep_separate_fingerprints(make_phone, bench_binary: Path, tmp_path: Path):
    a = make_phone(model="Pixel 7", soc_model="Tensor G2")
    b = make_phone(
        model="SM-S911B",
        manufacturer="samsung",
        soc_model="SM8550",
        board="kalama",
        core_max_khz=(2016000,) * 3 + (2803200,) * 4 + (3360000,),
    )
    tables: dict[str, LatencyTable] = {}
    errors: list[BaseException] = []

    def work(phone) -> None:
        try:
            target = _target(phone)
            table = LatencyTable(target.info())
            for (ctx, i, o), stats in target.measure_ops(GRID, TIMING):
                table.record(ctx, i, o, stats)
            tables[phone.serial] = table
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    fa, fb = tables[a.serial].device.fingerprint(), tables[b.serial].device.fingerprint()
    assert fa != fb
    assert tables[b.serial].device.device == "samsung SM-S911B (SM8550)"
    assert tables[b.serial].device.affinity == (7,)
    assert all(t.n_points() == len(GRID) for t in tables.values())
    # both phones really ran: each simulator executed every model
    assert a.device.bench_runs == b.device.bench_runs == len(GRID)


def test_unplug_mid_run_is_retried(make_phone, bench_binary: Path):
    phone = make_phone(unplug_after_bench_runs=2, unplug_s=0.6)
    target = _target(phone)
    results = list(target.measure_ops(GRID, TIMING))
    assert [r[0] for r in results] == GRID  # nothing lost, nothing duplicated
    # the run cut by the unplug is redone (and the one before it when its output was still in flight)
    assert len(GRID) + 1 <= phone.device.bench_runs <= len(GRID) + 2


def test_unplugged_for_good_stops_cleanly_then_resumes(make_phone, bench_binary: Path, adb_server):
    phone = make_phone(unplug_after_bench_runs=3, unplug_s=float("inf"))
    target = _target(phone, config=RunnerConfig(batch_size=4, retries=2, backoff_s=0.2, cooldown_poll_s=0.05))
    done = []
    with pytest.raises(DeviceDisconnectedError, match="re-run with --resume"):
        for req, _stats in target.measure_ops(GRID, TIMING):
            done.append(req)
    assert done in (GRID[:1], GRID[:2])  # what finished before the cable was pulled is kept
    phone.refuse_until = 0.0  # plug it back in
    adb_server.connect(phone.serial)
    rest = [r for r in GRID if r not in done]
    again = [req for req, _ in _target(phone).measure_ops(rest, TIMING)]
    assert again == rest


def test_thermal_cooldown_waits_and_records(make_phone, bench_binary: Path):
    phone = make_phone(hot_reads=3)
    target = _target(phone)
    list(target.measure_ops(GRID[:2], TIMING))
    log = target.measurement_log()
    assert log[0]["temp_c"] == pytest.approx(36.5)  # measured only after cooling below 45 C
    assert log[0]["cooldown_s"] > 0
    assert phone.device.thermal_reads >= 4


def test_governor_warning(make_phone, bench_binary: Path, caplog: pytest.LogCaptureFixture):
    phone = make_phone(governors=("performance",) * 8)
    with caplog.at_level(logging.WARNING):
        _target(phone)
    assert not [r for r in caplog.records if "governor" in r.getMessage()]
    other = make_phone()
    with caplog.at_level(logging.WARNING):
        _target(other)
    assert any("not performance" in r.getMessage() for r in caplog.records)


def test_devices_listing(make_phone, bench_binary: Path):
    a = make_phone(model="Pixel 7")
    b = make_phone(model="Pixel 8", soc_model="Tensor G3")
    u = make_phone(connect_state="unauthorized", unauthorized=True)
    rows = {r.name: r for r in list_phones()}
    assert rows[f"adb:{a.serial}"].available and rows[f"adb:{b.serial}"].available
    assert rows[f"adb:{b.serial}"].info.device == "Google Pixel 8 (Tensor G3)"
    assert rows[f"adb:{a.serial}"].info.fingerprint() != rows[f"adb:{b.serial}"].info.fingerprint()
    assert not rows[f"adb:{u.serial}"].available and "unauthorized" in rows[f"adb:{u.serial}"].reason


@pytest.mark.parametrize("version", ["2.4.0", "2.13.0", "2.16.1"])
def test_each_tool_version_through_the_phone(phone, bench_binary: Path, version: str):
    bench_binary.write_bytes(fake_benchmark_binary(version))
    target = _target(phone)
    assert target.info().runtime_version == version
    ((req, stats),) = list(target.measure_ops(GRID[:1], TIMING))
    assert req == GRID[0] and stats.n == TIMING.max_runs and stats.warmup == TIMING.warmup


def test_op_profiling_tables_come_back(phone, bench_binary: Path):
    from edgetrim.profiler.adb.runner import BenchmarkFlags

    target = _target(phone)
    flags = BenchmarkFlags(threads=1, warmup_runs=1, num_runs=3, max_secs=0.2, op_profiling=True)
    ((key, out),) = list(target.runner.run([("fc", build_tflite_op(LIN, 8, 16))], flags, target.cores))
    assert key == "fc"
    assert [r.node_type for r in out.op_rows] == ["FULLY_CONNECTED"]
    assert [t.node_type for t in out.node_types] == ["FULLY_CONNECTED"]
    assert out.inference.count == 3


def test_adb_server_restart_mid_session_is_survived(phone, bench_binary: Path, adb_server):
    target = _target(phone)
    adb_server.stop()  # `adb kill-server` (or a crash) between two batches
    results = list(target.measure_ops(GRID[:2], TIMING))
    assert [r[0] for r in results] == GRID[:2]
