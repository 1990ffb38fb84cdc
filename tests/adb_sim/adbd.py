"""Device side of the adb transport protocol over TCP (what ``adbd`` speaks), on loopback.

Implements CNXN (and AUTH for an unauthorized phone, which never accepts a key), OPEN ``shell:``
(legacy, no shell_v2: stdout and stderr share the stream, output is streamed as produced), OPEN
``sync:`` with STAT, SEND/DATA/DONE (push, honouring the free space of /data) and RECV (pull).
The banner advertises neither ``stat_v2`` nor ``shell_v2``, so clients use the v1 forms.

Each simulator runs its own asyncio loop in a daemon thread; shell commands run in worker threads so
a long benchmark never blocks the transport.
"""

from __future__ import annotations

import asyncio
import os
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .device import Shell, SimDevice, Unplugged

A_SYNC, A_CNXN, A_OPEN, A_OKAY = 0x434E5953, 0x4E584E43, 0x4E45504F, 0x59414B4F
A_CLSE, A_WRTE, A_AUTH = 0x45534C43, 0x45545257, 0x48545541
VERSION, MAXDATA = 0x01000001, 256 * 1024
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3


def _pack(cmd: int, a0: int, a1: int, data: bytes = b"") -> bytes:
    return struct.pack("<6I", cmd, a0, a1, len(data), sum(data) & 0xFFFFFFFF, cmd ^ 0xFFFFFFFF) + data


class _Conn:
    def __init__(self, sim: SimAdbd, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.sim, self.r, self.w = sim, r, w
        self.next_id = 1
        self.streams: dict[int, list] = {}
        self.pending: dict[int, dict] = {}
        self.closed = False

    def send(self, cmd: int, a0: int, a1: int, data: bytes = b"") -> None:
        if not self.closed:
            self.w.write(_pack(cmd, a0, a1, data))

    def write_stream(self, lid: int, data: bytes, close_after: bool = False) -> None:
        st = self.streams.get(lid)
        if st is None and lid not in self.pending:
            return
        rid = st[1] if st else self.pending[lid]["rid"]
        q = self.pending.setdefault(lid, {"rid": rid, "chunks": [], "inflight": False, "close": False})
        q["chunks"] += [data[i : i + MAXDATA] for i in range(0, len(data), MAXDATA)]
        q["close"] = q["close"] or close_after
        self.pump(lid)

    def pump(self, lid: int) -> None:
        q = self.pending.get(lid)
        if not q or q["inflight"]:
            return
        if q["chunks"]:
            data = q["chunks"].pop(0)
            while q["chunks"] and len(data) + len(q["chunks"][0]) <= MAXDATA:  # coalesce small writes
                data += q["chunks"].pop(0)
            self.send(A_WRTE, lid, q["rid"], data)
            q["inflight"] = True
        elif q["close"]:
            self.send(A_CLSE, lid, q["rid"])
            self.pending.pop(lid)
            self.streams.pop(lid, None)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                head = await self.r.readexactly(24)
                cmd, a0, a1, n, _crc, _magic = struct.unpack("<6I", head)
                data = await self.r.readexactly(n) if n else b""
                if cmd == A_CNXN:
                    if self.sim.device.spec.unauthorized:
                        self.send(A_AUTH, AUTH_TOKEN, 0, os.urandom(20))
                    else:
                        self.send(A_CNXN, VERSION, MAXDATA, self.sim.banner())
                elif cmd == A_AUTH:
                    if a0 == AUTH_SIGNATURE:  # never accept: ask for another signature / the key
                        self.send(A_AUTH, AUTH_TOKEN, 0, os.urandom(20))
                    # AUTH_RSAPUBLICKEY: the phone would show the "Allow USB debugging?" prompt; nobody taps it
                elif cmd == A_OPEN:
                    svc = data.rstrip(b"\0").decode()
                    lid, rid = self.next_id, a0
                    self.next_id += 1
                    self.send(A_OKAY, lid, rid)
                    if svc.startswith("shell:"):
                        self.streams[lid] = ["shell", rid]
                        self.sim.device.commands.append(svc[6:])
                        loop.run_in_executor(self.sim.pool, self.run_shell, loop, lid, svc[6:])
                    elif svc.startswith("sync:"):
                        self.streams[lid] = ["sync", rid, b"", None]
                    else:
                        self.send(A_CLSE, lid, rid)
                elif cmd == A_OKAY:
                    if a1 in self.pending:
                        self.pending[a1]["inflight"] = False
                        self.pump(a1)
                elif cmd == A_WRTE:
                    st = self.streams.get(a1)
                    self.send(A_OKAY, a1, a0)
                    if st and st[0] == "sync":
                        st[2] += data
                        self.handle_sync(a1, st)
                elif cmd == A_CLSE and (a1 in self.streams or a1 in self.pending):
                    self.streams.pop(a1, None)
                    self.pending.pop(a1, None)
                    self.send(A_CLSE, a1, a0)
                await self.w.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.streams.clear()
            self.w.close()
            self.sim.conns.discard(self)

    def run_shell(self, loop: asyncio.AbstractEventLoop, lid: int, command: str) -> None:
        """Worker thread: interpret ``command``, streaming output back through the loop."""

        def emit(data: bytes) -> None:
            if self.closed or lid not in self.streams:
                raise Unplugged
            loop.call_soon_threadsafe(self.write_stream, lid, data)

        try:
            Shell(self.sim.device, emit).run(command)
        except Unplugged:
            return
        except Exception as exc:  # a simulator bug must be visible in the test output, not hang
            loop.call_soon_threadsafe(self.write_stream, lid, f"simulator error: {exc!r}\n".encode())
        loop.call_soon_threadsafe(self.write_stream, lid, b"", True)

    def handle_sync(self, lid: int, st: list) -> None:
        fs = self.sim.device.fs
        while len(st[2]) >= 8:
            buf = st[2]
            tag, n = buf[:4], struct.unpack("<I", buf[4:8])[0]
            if tag == b"DATA":
                if len(buf) < 8 + n:
                    return
                st[3][2] += buf[8 : 8 + n]
                st[2] = buf[8 + n :]
            elif tag in (b"SEND", b"STAT", b"RECV", b"LIST"):
                if len(buf) < 8 + n:
                    return
                arg = buf[8 : 8 + n].decode()
                st[2] = buf[8 + n :]
                if tag == b"SEND":
                    path, _, mode = arg.rpartition(",")
                    st[3] = [path, int(mode or "33188") & 0o7777, b""]
                elif tag == b"STAT":
                    f = fs.files.get(arg)
                    if f is not None:
                        mode, size = 0o100000 | f[1], len(f[0])
                    elif fs.isdir(arg):
                        mode, size = 0o040755, 4096
                    else:
                        mode, size = 0, 0
                    self.write_stream(
                        lid, b"STAT" + struct.pack("<3I", mode, size, int(time.time()) if mode else 0)
                    )
                elif tag == b"RECV":
                    data = fs.read(arg)
                    if data is None:
                        msg = b"No such file or directory"
                        self.write_stream(lid, b"FAIL" + struct.pack("<I", len(msg)) + msg)
                    else:
                        out = b"".join(
                            b"DATA" + struct.pack("<I", len(data[i : i + 65536])) + data[i : i + 65536]
                            for i in range(0, len(data), 65536)
                        )
                        self.write_stream(lid, out + b"DONE" + struct.pack("<I", 0))
                else:
                    self.write_stream(lid, b"DONE" + bytes(16))
            elif tag == b"DONE":
                st[2] = buf[8:]
                path, mode, content = st[3]
                spec = self.sim.device.spec
                old = len(fs.read(path) or b"")
                if path.startswith("/data/") and fs.data_used() - old + len(content) > spec.data_free_bytes:
                    msg = f"couldn't write {path}: No space left on device".encode()
                    self.write_stream(lid, b"FAIL" + struct.pack("<I", len(msg)) + msg)
                else:
                    fs.write(path, content, mode)
                    self.write_stream(lid, b"OKAY" + struct.pack("<I", 0))
            elif tag == b"QUIT":
                st[2] = b""
                q = self.pending.get(lid)
                if q:
                    q["close"] = True
                    self.pump(lid)
                else:
                    self.send(A_CLSE, lid, st[1])
                    self.streams.pop(lid, None)
                return
            else:
                return


class SimAdbd:
    """One simulated phone listening on ``127.0.0.1:port`` (serial ``127.0.0.1:port`` once connected)."""

    def __init__(self, device: SimDevice, port: int) -> None:
        self.device, self.port = device, port
        self.conns: set[_Conn] = set()
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"simshell-{port}")
        self.refuse_until = 0.0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name=f"simadbd-{port}")
        device.on_unplug = self.unplug

    @property
    def serial(self) -> str:
        return f"127.0.0.1:{self.port}"

    def banner(self) -> bytes:
        p = self.device.props()
        return (
            f"device::ro.product.name={p['ro.product.model'].replace(' ', '_').lower()};"
            f"ro.product.model={p['ro.product.model']};ro.product.device={p['ro.board.platform']};"
            "features=cmd"
        ).encode()

    def start(self) -> SimAdbd:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        fut.result(timeout=10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if time.monotonic() < self.refuse_until:
            w.close()
            return
        conn = _Conn(self, r, w)
        self.conns.add(conn)
        await conn.run()

    def unplug(self, seconds: float) -> None:
        """Pull the cable: drop every connection and refuse new ones for ``seconds``."""
        self.device.unplugged.set()
        self.refuse_until = time.monotonic() + seconds

        async def drop() -> None:
            # output already written by the phone reaches the host (up to 1 s), then the link dies
            for _ in range(100):
                if not any(q["chunks"] or q["inflight"] for c in self.conns for q in c.pending.values()):
                    break
                await asyncio.sleep(0.01)
            for c in list(self.conns):
                c.close()
            self.device.unplugged.clear()

        asyncio.run_coroutine_threadsafe(drop(), self._loop)

    def stop(self) -> None:
        async def _stop() -> None:
            if self._server is not None:
                self._server.close()
            for c in list(self.conns):
                c.close()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self.pool.shutdown(wait=False, cancel_futures=True)
