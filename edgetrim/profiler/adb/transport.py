"""adb transport: find adb, list phones, run shell commands, stream output, push files.

adb access goes through **adbutils** (a maintained pure-Python client of the adb *server* protocol;
its wheel bundles an adb binary). The adb server itself is the real one: the first one found of
``$EDGETRIM_ADB``, ``adb`` on PATH, adbutils' bundled binary starts it when none is running. The
server address follows adb's own ``ANDROID_ADB_SERVER_HOST`` / ``ANDROID_ADB_SERVER_PORT``. This is the
only module that imports adbutils.

Every failure becomes a one-line :class:`~edgetrim.errors.DeviceError` saying what to do;
:class:`DeviceDisconnectedError` marks the retryable kind (cable pulled, phone rebooting).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetrim.errors import DeviceError

logger = logging.getLogger(__name__)

_HOSTPORT = re.compile(r"^[\w.-]+:\d+$")
_SYNC_DATA_MAX = 64 * 1024  # largest DATA chunk of the sync protocol


class DeviceDisconnectedError(DeviceError):
    """The phone went away during an operation (unplugged, rebooted, adb connection dropped)."""


class NoSpaceError(DeviceError):
    """/data/local/tmp on the phone is full."""


@dataclass(frozen=True)
class AttachedDevice:
    """One line of ``adb devices``."""

    serial: str
    state: str  # "device", "unauthorized", "offline", ...


def _adbutils() -> Any:
    try:
        import adbutils
    except ImportError:
        raise DeviceError(
            "adbutils is not installed: pip install 'edgetrim[device]' to profile phones over adb"
        ) from None
    return adbutils


def server_address() -> tuple[str, int]:
    """The adb server address (adb's own environment variables, default 127.0.0.1:5037)."""
    host = os.environ.get("ANDROID_ADB_SERVER_HOST", "127.0.0.1")
    return host, int(os.environ.get("ANDROID_ADB_SERVER_PORT", "5037"))


def find_adb() -> str:
    """Path of the adb binary: ``$EDGETRIM_ADB``, else ``adb`` on PATH, else adbutils' bundled one."""
    explicit = os.environ.get("EDGETRIM_ADB")
    if explicit:
        if Path(explicit).is_file() and os.access(explicit, os.X_OK):
            return explicit
        raise DeviceError(
            f"adb not found at EDGETRIM_ADB={explicit}: point it to an adb binary or unset it "
            "(edgetrim then uses adb on PATH or the one bundled with adbutils)"
        )
    on_path = shutil.which("adb")
    if on_path:
        return on_path
    try:
        bundled = _adbutils().adb_path()
    except (DeviceError, RuntimeError, OSError):
        bundled = None
    if bundled and Path(bundled).is_file():
        return str(bundled)
    raise DeviceError(
        "adb not found: install Android platform-tools (adb on PATH), pip install 'edgetrim[device]' "
        "(bundles adb), or set EDGETRIM_ADB=/path/to/adb"
    )


def _server_running(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def ensure_server(*, start: bool = True) -> Any:
    """An ``adbutils.AdbClient`` talking to a running adb server (started when needed and ``start``)."""
    adbutils = _adbutils()
    host, port = server_address()
    if not _server_running(host, port) and not start:
        raise DeviceError(
            f"no adb server on {host}:{port}: run `adb start-server` (edgetrim profile/measure start it themselves)"
        )
    if not _server_running(host, port):
        adb = find_adb()
        logger.info("starting adb server on port %d with %s", port, adb)
        try:
            subprocess.run(
                [adb, "-P", str(port), "start-server"], capture_output=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DeviceError(
                f"could not start the adb server with {adb}: {exc}; run `adb start-server`"
            ) from None
        if not _server_running(host, port):
            raise DeviceError(
                f"no adb server on {host}:{port} and `{adb} start-server` failed: run it by hand"
            )
    return adbutils.AdbClient(host=host, port=port)


def list_devices(*, start_server: bool = True) -> list[AttachedDevice]:
    """Every phone the adb server knows, with its state (``adb devices``)."""
    client = ensure_server(start=start_server)
    try:
        return [AttachedDevice(d.serial, d.state) for d in client.list()]
    except Exception as exc:  # adbutils raises its own AdbError family and socket errors
        raise DeviceError(
            f"adb server did not answer `devices`: {exc}; restart it with `adb kill-server`"
        ) from None


def _unauthorized(serial: str) -> DeviceError:
    return DeviceError(
        f"phone {serial} is unauthorized: unlock it, accept the 'Allow USB debugging?' prompt, then retry"
    )


def resolve_serial(serial: str | None) -> str:
    """The serial to use: ``serial`` itself (checked), or the only attached phone when None."""
    devices = list_devices()
    if serial:
        for d in devices:
            if d.serial == serial:
                if d.state == "unauthorized":
                    raise _unauthorized(serial)
                return serial
        if _HOSTPORT.match(serial):  # a network phone (adb over Wi-Fi / tcpip): connect on demand
            return serial
        listed = ", ".join(d.serial for d in devices) or "none"
        raise DeviceError(
            f"phone {serial} is not attached (attached: {listed}); check the cable and `adb devices`"
        )
    ready = [d for d in devices if d.state == "device"]
    if len(ready) == 1:
        return ready[0].serial
    if not ready:
        if any(d.state == "unauthorized" for d in devices):
            raise _unauthorized(next(d.serial for d in devices if d.state == "unauthorized"))
        raise DeviceError("no phone attached: connect one with USB debugging on (see `edgetrim devices`)")
    serials = " ".join(f"adb:{d.serial}" for d in ready)
    raise DeviceError(f"several phones attached ({serials}): pick one with --target adb:SERIAL")


class AdbTransport:
    """Shell, streaming shell and push for one phone; errors become ``DeviceError``s."""

    def __init__(self, serial: str) -> None:
        self.serial = serial
        self._client = ensure_server()

    # ---- connection state ---------------------------------------------------------------------
    def state(self) -> str:
        """``device`` / ``unauthorized`` / ``offline`` / ``absent``."""
        try:
            for d in self._client.list():
                if d.serial == self.serial:
                    return str(d.state)
        except Exception:  # the server itself went away
            return "absent"
        return "absent"

    def connect(self, *, timeout_s: float = 2.0) -> None:
        """Make sure the phone is usable; ``adb connect`` first for network serials.

        Restarts the adb server when it died (``adb kill-server``, a crash) so a retry can succeed.
        """
        host, port = server_address()
        if not _server_running(host, port):
            self._client = ensure_server()
        st = self.state()
        if st != "device" and _HOSTPORT.match(self.serial):
            try:
                self._client.connect(self.serial, timeout=max(timeout_s, 0.5))
            except Exception as exc:
                logger.debug("adb connect %s failed: %s", self.serial, exc)
            deadline = time.monotonic() + timeout_s
            while True:
                st = self.state()
                if st in ("device", "unauthorized") or time.monotonic() >= deadline:
                    break
                time.sleep(0.1)
        if st == "unauthorized":
            raise _unauthorized(self.serial)
        if st != "device":
            raise DeviceDisconnectedError(
                f"phone {self.serial} is {st}: reconnect it, then re-run with --resume"
            )

    def wait_until_back(self, timeout_s: float) -> bool:
        """Poll (reconnecting network serials) until the phone is back or ``timeout_s`` passed."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.connect(timeout_s=min(2.0, max(deadline - time.monotonic(), 0.1)))
                return True
            except DeviceDisconnectedError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(min(0.2, max(deadline - time.monotonic(), 0.0)))

    def _device(self) -> Any:
        return self._client.device(self.serial)

    def _translate(self, exc: Exception, what: str) -> DeviceError:
        text = str(exc)
        if "unauthorized" in text:
            return _unauthorized(self.serial)
        return DeviceDisconnectedError(
            f"lost phone {self.serial} during {what} ({text or type(exc).__name__})"
        )

    # ---- commands -----------------------------------------------------------------------------
    def shell(self, command: str, *, timeout_s: float = 60.0) -> str:
        """Run ``command`` with the phone's sh; stdout and stderr together."""
        try:
            out = self._device().shell(command, timeout=timeout_s, rstrip=False)
        except Exception as exc:
            raise self._translate(exc, "a shell command") from None
        return str(out).replace("\r\n", "\n")

    def shell_lines(self, command: str, *, idle_timeout_s: float = 300.0) -> Iterator[str]:
        """Run ``command`` and yield output lines as the phone prints them.

        The iterator ends when the phone closes the stream. A dropped connection also looks like a
        close on this protocol, so callers end their scripts with a marker line and treat its absence
        as a disconnect.
        """
        try:
            conn = self._device().shell(command, stream=True)
            conn.conn.settimeout(idle_timeout_s)
        except Exception as exc:
            raise self._translate(exc, "a streamed shell command") from None
        buf = b""
        try:
            while True:
                try:
                    chunk = conn.conn.recv(65536)
                except (TimeoutError, OSError) as exc:
                    raise self._translate(exc, "a streamed shell command") from None
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    yield line.decode(errors="replace").rstrip("\r")
            if buf:
                yield buf.decode(errors="replace").rstrip("\r")
        finally:
            conn.close()

    def push(self, data: bytes, remote: str, *, mode: int = 0o644) -> None:
        """Write ``data`` to ``remote`` on the phone (adb sync protocol)."""
        self.push_many([(data, remote, mode)])

    def push_many(self, files: Sequence[tuple[bytes, str, int]]) -> None:
        """Write several ``(data, remote path, mode)`` files over ONE sync connection.

        Speaks the sync protocol directly (SEND / DATA <= 64 KiB / DONE, then OKAY or FAIL+message
        per file, QUIT) so a batch of small models costs one round trip each, not a connection each,
        and a device-side failure keeps its message ("No space left on device").
        """
        if not files:
            return
        try:
            with self._device().open_transport(timeout=120) as c:
                c.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # many small frames
                c.send_command("sync:")
                c.check_okay()
                for data, remote, mode in files:
                    path = f"{remote},{0o100000 | (mode & 0o7777)}".encode()
                    frames = [b"SEND" + struct.pack("<I", len(path)) + path]
                    for i in range(0, len(data), _SYNC_DATA_MAX):
                        chunk = data[i : i + _SYNC_DATA_MAX]
                        frames.append(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
                    frames.append(b"DONE" + struct.pack("<I", int(time.time())))
                    c.conn.sendall(b"".join(frames))
                    status = c.read(4)
                    length = struct.unpack("<I", c.read(4))[0]
                    if status != b"OKAY":
                        message = c.read(length).decode(errors="replace") if length else status.decode()
                        raise _SyncFailure(remote, message)
                c.conn.sendall(b"QUIT" + struct.pack("<I", 0))
        except _SyncFailure as exc:
            if "No space" in exc.message:
                raise NoSpaceError(
                    f"could not write {exc.remote} on {self.serial} (No space left on device): free space in "
                    "/data/local/tmp (adb shell rm -r /data/local/tmp/edgetrim) and retry"
                ) from None
            raise DeviceError(f"could not write {exc.remote} on {self.serial}: {exc.message}") from None
        except Exception as exc:
            raise self._translate(exc, f"push of {len(files)} file(s)") from None


class _SyncFailure(Exception):
    def __init__(self, remote: str, message: str) -> None:
        super().__init__(message)
        self.remote, self.message = remote, message
