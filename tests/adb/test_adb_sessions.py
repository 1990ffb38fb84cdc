"""Profiling sessions on simulated phones: several phones at once, and unplug -> clean stop -> resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edgetrim.lookup_tables import load_table
from edgetrim.profiler.adb.multi import profile_phones
from edgetrim.profiler.adb.runner import RunnerConfig
from edgetrim.profiler.adb.target import AdbTarget
from edgetrim.profiler.adb.transport import DeviceDisconnectedError
from edgetrim.profiler.session import ContextPlan, ProfileConfig, profile_table
from edgetrim.profiler.timing import TimingConfig
from edgetrim.types import OpContext, OpKind

FAST = RunnerConfig(
    batch_size=4, cooldown_poll_s=0.05, cooldown_max_s=5.0, retries=3, backoff_s=0.5
)  # quick hygiene/retries for the simulator

TIMING = TimingConfig(warmup=1, min_runs=3, max_runs=5, time_cap_s=0.2)
PLAN = [ContextPlan(OpContext(OpKind.LINEAR), 8, 8)]
SESSION = ProfileConfig(points_per_context=6, refine_rounds=0, save_every=2)


def test_two_phones_profiled_at_once(make_phone, bench_binary: Path, tmp_path: Path):
    a = make_phone(model="Pixel 7")
    b = make_phone(model="Galaxy S23", manufacturer="samsung", soc_model="SM8550")
    results = profile_phones(
        [f"adb:{a.serial}", f"adb:{b.serial}"],
        PLAN,
        out_dir=tmp_path / "tables",
        runner_config=FAST,
        timing=TIMING,
        refine=False,
        config=SESSION,
    )
    assert [r.error for r in results] == [None, None]
    paths = {r.table_path for r in results}
    assert len(paths) == 2  # one file per phone
    tables = [load_table(r.table_path) for r in results]
    assert tables[0].device.fingerprint() != tables[1].device.fingerprint()
    assert tables[1].device.device == "samsung Galaxy S23 (SM8550)"
    for t, r in zip(tables, results, strict=True):
        assert t.n_points() == r.points >= 6
        assert t.meta["invoke_overhead_ms"] >= 0.0  # measured on the phone with a no-op model
        assert t.meta["measurement_log"] and all("temp_c" in b for b in t.meta["measurement_log"])
    assert a.device.bench_runs > 0 and b.device.bench_runs > 0


def test_unplugged_session_keeps_points_and_resumes(
    make_phone, bench_binary: Path, tmp_path: Path, adb_server
):
    phone = make_phone(unplug_after_bench_runs=4, unplug_s=float("inf"))
    cfg = RunnerConfig(batch_size=3, retries=1, backoff_s=0.2, cooldown_poll_s=0.05)
    out = tmp_path / "phone.json"
    target = AdbTarget(phone.serial, config=cfg)
    with pytest.raises(DeviceDisconnectedError, match="--resume"):
        profile_table(target, PLAN, out=out, timing=TIMING, refine=False, config=SESSION)
    partial = load_table(out)  # saved on the way out
    kept = partial.n_points()
    assert 1 <= kept < 6  # 1 overhead run + some points before the unplug

    phone.refuse_until = 0.0  # plugged back in
    adb_server.connect(phone.serial)
    runs_before = phone.device.bench_runs
    table = profile_table(
        AdbTarget(phone.serial, config=FAST),
        PLAN,
        out=out,
        resume=True,
        timing=TIMING,
        refine=False,
        # the count below is of missing points; the resume's drift probe is tested in tests/profiler
        config=dataclasses.replace(SESSION, drift_tolerance=None),
    )
    assert table.n_points() >= 6
    # only missing points measured, plus the spikes the session re-checks (load on a shared host)
    rechecked = table.meta.get("points_rechecked_last_run", 0)
    assert phone.device.bench_runs - runs_before == table.n_points() - kept + rechecked
    assert len(table.meta["measurement_log"]) >= 2  # batches of both runs are kept
