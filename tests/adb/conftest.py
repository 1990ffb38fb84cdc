"""Fixtures for the adb tests: a real adb server on its own port and simulated phones on loopback."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("adbutils")
pytest.importorskip("ai_edge_litert")

from adb_sim import AdbServer, DeviceSpec, SimAdbd, SimDevice, fake_benchmark_binary, free_port


@pytest.fixture(scope="session")
def adb_server() -> Iterator[AdbServer]:
    server = AdbServer().start()
    old = os.environ.get("ANDROID_ADB_SERVER_PORT")
    os.environ["ANDROID_ADB_SERVER_PORT"] = str(server.port)
    yield server
    server.stop()
    if old is None:
        os.environ.pop("ANDROID_ADB_SERVER_PORT", None)
    else:
        os.environ["ANDROID_ADB_SERVER_PORT"] = old


@pytest.fixture
def make_phone(adb_server: AdbServer) -> Iterator[Callable[..., SimAdbd]]:
    """``make_phone(**DeviceSpec fields)`` starts a simulated phone and ``adb connect``s it."""
    phones: list[SimAdbd] = []

    def make(connect_state: str = "device", **spec: object) -> SimAdbd:
        phone = SimAdbd(SimDevice(DeviceSpec(**spec)), free_port()).start()
        phones.append(phone)
        adb_server.connect(phone.serial, state=connect_state)
        return phone

    yield make
    for phone in phones:
        adb_server.cmd("disconnect", phone.serial)
        phone.stop()


@pytest.fixture
def phone(make_phone: Callable[..., SimAdbd]) -> SimAdbd:
    return make_phone()


@pytest.fixture
def bench_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A benchmark_model stand-in (aarch64 ELF header) exported as $EDGETRIM_BENCHMARK_MODEL."""
    path = tmp_path / "benchmark_model"
    path.write_bytes(fake_benchmark_binary("2.16.1"))
    monkeypatch.setenv("EDGETRIM_BENCHMARK_MODEL", str(path))
    return path
