"""The simulated phone: fingerprint, a small filesystem and a shell that interprets what edgetrim sends.

The shell is a restricted POSIX-sh interpreter: ``;``, ``&&``, ``||``, newlines, quotes, ``$?``,
globs, ``>``/``>>``/``2>/dev/null``/``2>&1`` redirections, and the commands an adb runner uses
(getprop, cat, grep, echo, ls, mkdir, rm, chmod, test/[, sha256sum, df, cd, sh FILE, taskset,
uname, exit, true/false) plus executing pushed files. Executing the simulator's benchmark binary runs
the real model on the host (see ``bench.py``); executing anything else fails like a wrong-ABI ELF.
"""

from __future__ import annotations

import fnmatch
import hashlib
import posixpath
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .bench import run_benchmark
from .binary import benchmark_version


class Unplugged(Exception):
    """Raised inside a running shell when the device goes away (cable pulled, stream closed)."""


@dataclass
class DeviceSpec:
    """What the simulated phone looks like and how it misbehaves."""

    model: str = "Pixel 7"
    manufacturer: str = "Google"
    soc_model: str = "Tensor G2"
    board: str = "gs201"
    android_release: str = "14"
    sdk: int = 34
    abi: str = "arm64-v8a"
    core_max_khz: tuple[int, ...] = (1803000, 1803000, 1803000, 1803000, 2348000, 2348000, 2850000, 2850000)
    governors: tuple[str, ...] = ("sched_util",) * 8
    thermal_c: dict[str, float] = field(default_factory=lambda: {"soc_therm": 36.5, "battery": 31.0})
    data_capacity_bytes: int = 8 * 1024**3
    data_free_bytes: int = 2 * 1024**3
    # fault injection
    unauthorized: bool = False
    noexec: bool = False  # /data mounted noexec: no file there ever gets execute permission
    hot_reads: int = 0  # the first N thermal reads report +25 C on every zone
    unplug_after_bench_runs: int | None = None  # pull the cable after this many benchmark invocations
    unplug_s: float = 2.0  # how long the phone stays away (float("inf"): for good)
    xnnpack_op_names: bool = False  # op tables name XNNPACK's ops ("Delegate/...:N"), no tensor names
    serialno: str = "SIMSERIAL"


class SimFS:
    """Path -> (bytes, mode). Directories are implied by file paths plus explicit ``mkdir``."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, int]] = {}
        self.dirs: set[str] = {"/", "/data", "/data/local", "/data/local/tmp", "/sys", "/proc"}
        self.lock = threading.Lock()

    noexec = False

    def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        if self.noexec and path.startswith("/data/"):
            mode &= ~0o111
        with self.lock:
            self.files[path] = (bytes(data), mode & 0o7777)
            d = posixpath.dirname(path)
            while d and d not in self.dirs:
                self.dirs.add(d)
                d = posixpath.dirname(d)

    def read(self, path: str) -> bytes | None:
        f = self.files.get(path)
        return None if f is None else f[0]

    def isdir(self, path: str) -> bool:
        return (
            path.rstrip("/") in self.dirs
            or path == "/"
            or any(p.startswith(path.rstrip("/") + "/") for p in self.files)
        )

    def data_used(self) -> int:
        return sum(len(d) for p, (d, _) in self.files.items() if p.startswith("/data/"))


class SimDevice:
    """State of one simulated phone (shared by every adb connection to it)."""

    def __init__(self, spec: DeviceSpec) -> None:
        self.spec = spec
        self.fs = SimFS()
        self.fs.noexec = spec.noexec
        self.bench_runs = 0
        self.thermal_reads = 0
        self.commands: list[str] = []  # every shell command received, for tests to inspect
        self.on_unplug: Callable[[float], None] = lambda seconds: None
        self.unplugged = threading.Event()
        self._populate()

    def _populate(self) -> None:
        s = self.spec
        for i, khz in enumerate(s.core_max_khz):
            base = f"/sys/devices/system/cpu/cpu{i}/cpufreq"
            self.fs.write(f"{base}/cpuinfo_max_freq", f"{khz}\n".encode())
            self.fs.write(f"{base}/scaling_governor", f"{s.governors[i % len(s.governors)]}\n".encode())
        for i, name in enumerate(s.thermal_c):
            self.fs.write(f"/sys/class/thermal/thermal_zone{i}/type", f"{name}\n".encode())
        self.fs.write(
            "/proc/cpuinfo", b"".join(f"processor\t: {i}\n".encode() for i in range(len(s.core_max_khz)))
        )

    def props(self) -> dict[str, str]:
        s = self.spec
        return {
            "ro.product.model": s.model,
            "ro.product.manufacturer": s.manufacturer,
            "ro.soc.model": s.soc_model,
            "ro.board.platform": s.board,
            "ro.hardware": s.board,
            "ro.build.version.release": s.android_release,
            "ro.build.version.sdk": str(s.sdk),
            "ro.product.cpu.abi": s.abi,
            "ro.product.cpu.abilist": s.abi,
            "ro.serialno": s.serialno,
        }

    def read_sys(self, path: str) -> bytes | None:
        m = re.fullmatch(r"/sys/class/thermal/thermal_zone(\d+)/temp", path)
        if m:
            zones = list(self.spec.thermal_c.values())
            i = int(m.group(1))
            if i >= len(zones):
                return None
            hot = self.thermal_reads < self.spec.hot_reads
            if i == 0:
                self.thermal_reads += 1
            return f"{int((zones[i] + (25.0 if hot else 0.0)) * 1000)}\n".encode()
        return self.fs.read(path)

    def paths(self) -> set[str]:
        extra = {f"/sys/class/thermal/thermal_zone{i}/temp" for i in range(len(self.spec.thermal_c))}
        return set(self.fs.files) | self.fs.dirs | extra


class Shell:
    """Interprets one ``shell:`` command line; ``emit`` receives output bytes as they are produced."""

    def __init__(self, device: SimDevice, emit: Callable[[bytes], None]) -> None:
        self.dev = device
        self._emit = emit
        self.cwd = "/"
        self.rc = 0
        self.exited = False

    # ---- output -------------------------------------------------------------------------------
    def _write(self, text: str, *, sink: list[str] | None) -> None:
        if sink is not None:
            sink.append(text)
            return
        if self.dev.unplugged.is_set():
            raise Unplugged
        self._emit(text.encode())

    # ---- parsing ------------------------------------------------------------------------------
    @staticmethod
    def tokenize(src: str) -> list[tuple[str, str, bool]]:
        """Tokens as (kind, text, globbable); kind is 'w' (word) or 'op'."""
        toks: list[tuple[str, str, bool]] = []
        i, n = 0, len(src)
        while i < n:
            c = src[i]
            if c in " \t\r":
                i += 1
                continue
            if c == "#" and (i == 0 or src[i - 1] in " \t\n;"):
                while i < n and src[i] != "\n":
                    i += 1
                continue
            for op in ("2>&1", "2>", "&&", "||", ">>", ">", ";", "\n", "|"):
                if src.startswith(op, i) and not (op.startswith("2") and i > 0 and src[i - 1] not in " \t;"):
                    toks.append(("op", op, False))
                    i += len(op)
                    break
            else:
                word, glob = "", False
                while i < n and src[i] not in " \t\r\n;&|>":
                    c = src[i]
                    if c == "'":
                        j = src.index("'", i + 1)
                        word += src[i + 1 : j]
                        i = j + 1
                    elif c == '"':
                        j = i + 1
                        while src[j] != '"':
                            if src[j] == "\\" and src[j + 1] in '"\\$':
                                j += 1
                            word += src[j]
                            j += 1
                        i = j + 1
                    elif c == "\\" and i + 1 < n:
                        word += src[i + 1]
                        i += 2
                    else:
                        glob = glob or c in "*?"
                        word += c
                        i += 1
                toks.append(("w", word, glob))
        return toks

    def run(self, src: str) -> int:
        toks = self.tokenize(src)
        cmd: list[tuple[str, bool]] = []
        redir: list[tuple[str, str]] = []
        skip = False
        i = 0
        while i <= len(toks):
            tok = toks[i] if i < len(toks) else ("op", "\n", False)
            kind, text, glob = tok
            if kind == "w":
                cmd.append((text, glob))
            elif text in (">", ">>", "2>"):
                i += 1
                redir.append((text, toks[i][1]))
            elif text == "2>&1":
                redir.append((text, ""))
            elif text == "|":
                raise NotImplementedError("pipes are not supported by the simulator shell")
            else:  # ; && || newline: end of a simple command
                if cmd and not skip:
                    self.rc = self.execute(self.expand(cmd), redir)
                    if self.exited:
                        return self.rc
                cmd, redir = [], []
                skip = (text == "&&" and self.rc != 0) or (text == "||" and self.rc == 0)
            i += 1
        return self.rc

    def expand(self, words: list[tuple[str, bool]]) -> list[str]:
        out: list[str] = []
        for w, glob in words:
            w = w.replace("$?", str(self.rc))
            if glob:
                pat = self.abspath(w)
                hits = sorted(
                    p
                    for p in self.dev.paths()
                    if fnmatch.fnmatchcase(p, pat) and p.count("/") == pat.count("/")
                )
                if hits:
                    out += hits
                    continue
            out.append(w)
        return out

    def abspath(self, p: str) -> str:
        return posixpath.normpath(posixpath.join(self.cwd, p))

    # ---- execution ----------------------------------------------------------------------------
    def execute(self, argv: list[str], redir: list[tuple[str, str]]) -> int:
        out_file = next(((op, t) for op, t in redir if op in (">", ">>")), None)
        quiet_err = any(op == "2>" and t == "/dev/null" for op, t in redir)
        sink: list[str] | None = [] if out_file else None

        def out(text: str) -> None:
            self._write(text, sink=sink)

        def err(text: str) -> None:
            if not quiet_err:
                self._write(text, sink=None)

        rc = self.command(argv, out, err)
        if out_file and out_file[1] != "/dev/null":
            path = self.abspath(out_file[1])
            if not self._has_space(len("".join(sink or [])), path):
                err(f"/system/bin/sh: can't create {out_file[1]}: No space left on device\n")
                return 1
            old = (self.dev.fs.read(path) or b"") if out_file[0] == ">>" else b""
            self.dev.fs.write(path, old + "".join(sink or []).encode())
        return rc

    def _has_space(self, n: int, path: str) -> bool:
        return not path.startswith("/data/") or self.dev.fs.data_used() + n <= self.dev.spec.data_free_bytes

    def command(self, argv: list[str], out: Callable[[str], None], err: Callable[[str], None]) -> int:
        name, args = argv[0], argv[1:]
        fs, dev = self.dev.fs, self.dev
        if name == "echo":
            nl = "\n"
            if args[:1] == ["-n"]:
                args, nl = args[1:], ""
            out(" ".join(args) + nl)
            return 0
        if name in ("true", ":"):
            return 0
        if name == "false":
            return 1
        if name == "exit":
            self.exited = True
            return int(args[0]) if args else self.rc
        if name == "cd":
            target = self.abspath(args[0] if args else "/")
            if not fs.isdir(target):
                err(f"/system/bin/sh: cd: {target}: No such file or directory\n")
                return 2
            self.cwd = target
            return 0
        if name == "getprop":
            props = dev.props()
            if args:
                out(props.get(args[0], "") + "\n")
            else:
                out("".join(f"[{k}]: [{v}]\n" for k, v in sorted(props.items())))
            return 0
        if name == "uname":
            out("aarch64\n" if "-m" in args else "Linux\n")
            return 0
        if name in ("cat", "grep", "sha256sum"):
            pattern = None
            if name == "grep":
                pattern, args = re.compile(args[0]), args[1:]
            rc = 0
            for a in args:
                p = self.abspath(a)
                data = dev.read_sys(p) if p.startswith("/sys/") else fs.read(p)
                if data is None:
                    err(f"{name}: {a}: No such file or directory\n")
                    rc = 1
                elif name == "cat":
                    out(data.decode(errors="replace"))
                elif name == "sha256sum":
                    out(f"{hashlib.sha256(data).hexdigest()}  {a}\n")
                else:
                    assert pattern is not None
                    for line in data.decode(errors="replace").splitlines():
                        if pattern.search(line):
                            out((f"{a}:" if len(args) > 1 else "") + line + "\n")
            return rc
        if name == "ls":
            rc = 0
            for a in args or ["."]:
                p = self.abspath(a)
                if p in fs.files:
                    out(a + "\n")
                elif fs.isdir(p):
                    kids = sorted({q[len(p) + 1 :].split("/")[0] for q in fs.files if q.startswith(p + "/")})
                    out("".join(k + "\n" for k in kids))
                else:
                    err(f"ls: {a}: No such file or directory\n")
                    rc = 1
            return rc
        if name == "mkdir":
            for a in args:
                if not a.startswith("-"):
                    fs.dirs.add(self.abspath(a))
            return 0
        if name == "rm":
            for a in args:
                if a.startswith("-"):
                    continue
                p = self.abspath(a)
                with fs.lock:
                    for q in [q for q in fs.files if q == p or q.startswith(p + "/")]:
                        del fs.files[q]
            return 0
        if name == "chmod":
            mode_s, paths = args[0], args[1:]
            for a in paths:
                p = self.abspath(a)
                f = fs.files.get(p)
                if f is None:
                    err(f"chmod: {a}: No such file or directory\n")
                    return 1
                mode = f[1] | 0o111 if mode_s == "+x" else int(mode_s, 8)
                fs.write(p, f[0], mode)
            return 0
        if name in ("test", "["):
            if name == "[":
                args = args[:-1]
            if len(args) == 2:
                op, p = args[0], self.abspath(args[1])
                f = fs.files.get(p)
                ok = {
                    "-e": f is not None or fs.isdir(p),
                    "-f": f is not None,
                    "-d": fs.isdir(p),
                    "-x": f is not None and bool(f[1] & 0o111),
                    "-s": f is not None and len(f[0]) > 0,
                }.get(op, False)
                return 0 if ok else 1
            return 1
        if name == "df":
            total_kb = dev.spec.data_capacity_bytes // 1024
            avail_kb = max(dev.spec.data_free_bytes - fs.data_used(), 0) // 1024
            used_kb = total_kb - avail_kb
            out("Filesystem      1K-blocks    Used Available Use% Mounted on\n")
            out(
                f"/dev/block/dm-8 {total_kb:9d} {used_kb:7d} {avail_kb:9d} {100 * used_kb // total_kb:3d}% /data\n"
            )
            return 0
        if name == "sh":
            script = fs.read(self.abspath(args[0])) if args else None
            if script is None:
                err(f"sh: {args[0] if args else ''}: No such file or directory\n")
                return 127
            sub = Shell(dev, self._emit)
            sub.cwd = self.cwd
            return sub.run(script.decode())
        if name == "taskset":
            mask = int(args[0], 16)
            if mask == 0 or mask >> len(dev.spec.core_max_khz):
                err("taskset: sched_setaffinity: Invalid argument\n")
                return 1
            return self.command(args[1:], out, err)
        if "/" in name:
            return self.exec_file(name, args, out, err)
        err(f"/system/bin/sh: {name}: inaccessible or not found\n")
        return 127

    def exec_file(
        self, name: str, args: list[str], out: Callable[[str], None], err: Callable[[str], None]
    ) -> int:
        p = self.abspath(name)
        f = self.dev.fs.files.get(p)
        if f is None:
            err(f"/system/bin/sh: {name}: inaccessible or not found\n")
            return 127
        content, mode = f
        if not mode & 0o111:
            err(f"/system/bin/sh: {name}: can't execute: Permission denied\n")
            return 126
        version = benchmark_version(content)
        if version is None or self.dev.spec.abi != "arm64-v8a":
            kind = (
                "64-bit ELF file" if content.startswith(b"\x7fELF") else f"magic {content[:4].hex().upper()}"
            )
            err(f"/system/bin/sh: {name}: not executable: {kind}\n")
            return 126
        dev = self.dev
        rc = run_benchmark(
            args,
            version=version,
            read_file=lambda g: dev.fs.read(self.abspath(g)),
            emit=lambda line: out(line + "\n"),
            xnnpack_op_names=dev.spec.xnnpack_op_names,
        )
        dev.bench_runs += 1
        if (
            dev.spec.unplug_after_bench_runs is not None
            and dev.bench_runs >= dev.spec.unplug_after_bench_runs
        ):
            dev.spec.unplug_after_bench_runs = None
            dev.on_unplug(dev.spec.unplug_s)
            raise Unplugged
        return rc
