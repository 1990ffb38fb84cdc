"""Every user-facing adb fault ends in a one-line DeviceError saying what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from adb_sim import EM_X86_64, fake_benchmark_binary, free_port

from edgetrim.errors import DeviceError
from edgetrim.profiler.adb.runner import RunnerConfig
from edgetrim.profiler.adb.target import AdbTarget, make_adb_target
from edgetrim.profiler.adb.transport import NoSpaceError
from edgetrim.profiler.targets import get_target
from edgetrim.profiler.timing import TimingConfig
from edgetrim.types import OpContext, OpKind

FAST = RunnerConfig(
    batch_size=4, cooldown_poll_s=0.05, cooldown_max_s=5.0, retries=3, backoff_s=0.5
)  # quick hygiene/retries for the simulator

TIMING = TimingConfig(warmup=1, min_runs=3, max_runs=5, time_cap_s=0.2)


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text.strip(), text
    return text


def test_missing_binary(phone, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("EDGETRIM_BENCHMARK_MODEL", raising=False)
    with pytest.raises(DeviceError) as exc:
        AdbTarget(phone.serial)
    assert "--benchmark-binary" in _one_line(exc) and "EDGETRIM_BENCHMARK_MODEL" in str(exc.value)
    with pytest.raises(DeviceError, match="does not exist"):
        AdbTarget(phone.serial, benchmark_binary=tmp_path / "nope")


def test_non_executable_binary(phone, tmp_path: Path):
    script = tmp_path / "benchmark_model"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(DeviceError) as exc:
        AdbTarget(phone.serial, benchmark_binary=script)
    assert "not an executable" in _one_line(exc)


def test_wrong_abi_binary(phone, tmp_path: Path):
    x86 = tmp_path / "benchmark_model"
    x86.write_bytes(fake_benchmark_binary(machine=EM_X86_64))
    with pytest.raises(DeviceError) as exc:
        AdbTarget(phone.serial, benchmark_binary=x86)
    msg = _one_line(exc)
    assert "x86-64" in msg and "arm64-v8a" in msg and "android_aarch64" in msg
    assert not phone.device.fs.read("/data/local/tmp/edgetrim/benchmark_model")  # nothing pushed


def test_adb_not_found(bench_binary: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(free_port()))  # no server there
    monkeypatch.setenv("EDGETRIM_ADB", "/nonexistent/adb")
    with pytest.raises(DeviceError) as exc:
        get_target("adb:SOMESERIAL")
    assert "adb not found" in _one_line(exc) and "EDGETRIM_ADB" in str(exc.value)


def test_unauthorized_phone(make_phone, bench_binary: Path):
    u = make_phone(connect_state="unauthorized", unauthorized=True)
    with pytest.raises(DeviceError) as exc:
        AdbTarget(u.serial)
    assert "unauthorized" in _one_line(exc) and "Allow USB debugging" in str(exc.value)
    with pytest.raises(DeviceError, match="unauthorized"):
        make_adb_target("adb:")  # the only phone attached is unauthorized


def test_several_phones_and_no_serial(make_phone, bench_binary: Path):
    a, b = make_phone(), make_phone()
    with pytest.raises(DeviceError) as exc:
        make_adb_target("adb:")
    msg = _one_line(exc)
    assert "several phones" in msg and f"adb:{a.serial}" in msg and f"adb:{b.serial}" in msg


def test_one_phone_and_no_serial_picks_it(phone, bench_binary: Path):
    target = make_adb_target("adb:", config=FAST)
    assert target.serial == phone.serial


def test_unknown_serial(phone, bench_binary: Path):
    with pytest.raises(DeviceError, match="not attached"):
        AdbTarget("R58M000NOPE")


def test_full_storage_before_install(make_phone, bench_binary: Path):
    full = make_phone(data_free_bytes=64 * 1024)
    with pytest.raises(NoSpaceError) as exc:
        AdbTarget(full.serial)
    assert "full" in _one_line(exc) and "free space" in str(exc.value)


def test_full_storage_during_batches(make_phone, bench_binary: Path):
    # room for the binary and headroom, not for a batch of large models
    phone = make_phone(data_free_bytes=len(bench_binary.read_bytes()) + 4 * 1024 * 1024 + 200 * 1024)
    target = AdbTarget(phone.serial, config=FAST)
    ctx = OpContext(OpKind.LINEAR)
    with pytest.raises(NoSpaceError) as exc:
        list(target.measure_ops([(ctx, 256, 256), (ctx, 256, 255)], TIMING))
    assert "/data/local/tmp" in _one_line(exc)


def test_push_rejected_for_space_gives_the_same_message(make_phone, bench_binary: Path):
    phone = make_phone(data_free_bytes=1024)
    target_cfg = RunnerConfig(min_free_mb=0.0)
    with pytest.raises(NoSpaceError, match=r"No space left on device|full"):
        AdbTarget(phone.serial, config=target_cfg)


def test_non_executable_on_phone(make_phone, bench_binary: Path):
    """A phone whose /data/local/tmp is mounted noexec: chmod cannot make the binary executable."""
    phone = make_phone(noexec=True)
    with pytest.raises(DeviceError) as exc:
        AdbTarget(phone.serial)
    assert "not executable" in _one_line(exc) and "noexec" in str(exc.value)


def test_listing_without_a_server_says_so_and_starts_nothing(monkeypatch: pytest.MonkeyPatch):
    from edgetrim.profiler.adb import list_phones

    port = free_port()
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(port))
    (row,) = list_phones()
    assert not row.available and "adb start-server" in row.reason
    import socket

    with socket.socket() as s:  # nothing listens there afterwards
        assert s.connect_ex(("127.0.0.1", port)) != 0
