"""A real, isolated adb server for tests (the adb binary bundled with adbutils, on its own port)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time


def free_port() -> int:
    """A free loopback TCP port outside adb's emulator range 5555-5585 (adb probes those itself)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not 5550 <= port <= 5590:
            return port


class AdbServer:
    """``adb -P PORT start-server`` ... ``adb -P PORT kill-server``."""

    def __init__(self, port: int | None = None) -> None:
        import adbutils

        self.adb = adbutils.adb_path()
        self.port = port or free_port()
        self.env = {**os.environ, "ANDROID_ADB_SERVER_PORT": str(self.port)}
        self.env.pop("ANDROID_SERIAL", None)

    def cmd(self, *args: str, timeout: float = 20.0) -> str:
        proc = subprocess.run(
            [self.adb, "-P", str(self.port), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return proc.stdout + proc.stderr

    def start(self) -> AdbServer:
        self.cmd("start-server", timeout=30)
        return self

    def connect(self, serial: str, *, state: str = "device", timeout: float = 10.0) -> None:
        """``adb connect`` and wait until the server lists ``serial`` in ``state``."""
        self.cmd("connect", serial)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.cmd("devices").splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == serial and parts[1] == state:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{serial} did not reach state {state!r}: {self.cmd('devices')!r}")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.cmd("kill-server", timeout=10)
