"""Runs LiteRT's ``benchmark_model`` on a phone: binary install, batched device-side scripts, hygiene.

One batch = the one-op models pushed together plus ONE shell script that runs the tool on each of
them under ``taskset`` (the chosen CPU cluster) and frames each output with marker lines, so results
stream back while the phone works through the batch. Before a batch the runner reads the thermal
zones, waits for the phone to cool below a threshold and records the temperature with the batch.
A dropped connection is retried with exponential backoff; after the last retry the runner stops
cleanly, having yielded every finished measurement.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shlex
import struct
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from edgetrim.errors import DeviceError
from edgetrim.profiler.adb.fingerprint import (
    ABI_MACHINE,
    FINGERPRINT_COMMAND,
    TEMPS_COMMAND,
    PhoneInfo,
    cpu_mask,
    hottest_c,
    parse_phone_info,
    parse_temps_c,
)
from edgetrim.profiler.adb.parser import BenchmarkOutput, BenchmarkParseError, parse_benchmark_output
from edgetrim.profiler.adb.transport import AdbTransport, DeviceDisconnectedError, NoSpaceError

logger = logging.getLogger(__name__)

BENCHMARK_ENV = "EDGETRIM_BENCHMARK_MODEL"
K = TypeVar("K")
_MACHINE_NAMES = {183: "aarch64", 40: "arm", 62: "x86-64", 3: "x86"}


@dataclass(frozen=True)
class RunnerConfig:
    """How the phone is driven.

    Args:
        remote_dir: working directory on the phone.
        batch_size: one-op models per pushed batch / device-side script.
        thermal_limit_c: wait before a batch while the hottest CPU/SoC zone is above this.
        cooldown_poll_s: seconds between temperature reads while cooling down.
        cooldown_max_s: give up waiting (and measure anyway, with a warning) after this long.
        retries: reconnection attempts after the phone drops off, with exponential backoff.
        backoff_s: first backoff; attempt k waits up to ``backoff_s * 2**(k-1)`` for the phone.
        op_profiling: pass ``--enable_op_profiling=true`` (keeps the per-op tables in the output).
        min_free_mb: refuse to push a batch when /data has less than this plus the batch size free.
    """

    remote_dir: str = "/data/local/tmp/edgetrim"
    batch_size: int = 16
    thermal_limit_c: float = 45.0
    cooldown_poll_s: float = 10.0
    cooldown_max_s: float = 600.0
    retries: int = 4
    backoff_s: float = 2.0
    op_profiling: bool = False
    min_free_mb: float = 4.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RunnerConfig:
        """Defaults overridden by ``EDGETRIM_ADB_<FIELD>`` variables (e.g. ``EDGETRIM_ADB_RETRIES=8``).

        The CLI's adb knobs: the profile/measure commands are shared with local targets, so the
        phone-only settings (batching, thermal limit, retries) come from the environment.
        """
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"EDGETRIM_ADB_{f.name.upper()}")
            if raw is None:
                continue
            try:
                if f.type in ("bool", bool):
                    kwargs[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
                elif f.type in ("int", int):
                    kwargs[f.name] = int(raw)
                elif f.type in ("float", float):
                    kwargs[f.name] = float(raw)
                else:
                    kwargs[f.name] = raw
            except ValueError:
                raise DeviceError(f"EDGETRIM_ADB_{f.name.upper()}={raw!r} is not a valid {f.type}") from None
        try:
            return cls(**kwargs)
        except ValueError as exc:
            raise DeviceError(f"bad EDGETRIM_ADB_* setting: {exc}") from None

    def __post_init__(self) -> None:
        if not self.remote_dir.startswith("/"):
            raise ValueError(f"remote_dir must be an absolute path on the phone, got {self.remote_dir!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.retries < 0 or self.backoff_s < 0 or self.cooldown_poll_s <= 0 or self.cooldown_max_s < 0:
            raise ValueError(
                f"retries/backoff_s/cooldown_max_s must be >= 0 and cooldown_poll_s > 0, got {self.retries}/"
                f"{self.backoff_s}/{self.cooldown_max_s}/{self.cooldown_poll_s}"
            )


@dataclass(frozen=True)
class BenchmarkBinary:
    """The host copy of ``benchmark_model`` (checked once, pushed when the phone's copy differs)."""

    path: Path
    content: bytes = field(repr=False)
    sha256: str
    machine: int
    version: str

    @property
    def short(self) -> str:
        return self.sha256[:12]


@dataclass(frozen=True)
class BenchmarkFlags:
    """Per-run flags of the tool (from the profiling session's ``TimingConfig``)."""

    threads: int = 1
    warmup_runs: int = 5
    num_runs: int = 50
    max_secs: float = 10.0
    op_profiling: bool = False

    def __post_init__(self) -> None:
        if self.threads < 1 or self.warmup_runs < 0 or self.num_runs < 1 or self.max_secs <= 0:
            raise ValueError(
                f"need threads >= 1, warmup_runs >= 0, num_runs >= 1, max_secs > 0; got {self.threads}, "
                f"{self.warmup_runs}, {self.num_runs}, {self.max_secs}"
            )

    def args(self) -> list[str]:
        """The tool's command-line flags."""
        return [
            f"--num_threads={self.threads}",
            f"--warmup_runs={self.warmup_runs}",
            "--warmup_min_secs=0",
            f"--num_runs={self.num_runs}",
            "--min_secs=0",
            f"--max_secs={self.max_secs:g}",
            f"--enable_op_profiling={'true' if self.op_profiling else 'false'}",
        ]

    @classmethod
    def from_timing(cls, timing: Any, *, threads: int, op_profiling: bool = False) -> BenchmarkFlags:
        """Map a ``TimingConfig``: its warm-up, at most ``max_runs`` runs within ``time_cap_s``."""
        return cls(
            threads=threads,
            warmup_runs=int(getattr(timing, "warmup", 5)),
            num_runs=int(getattr(timing, "max_runs", 50)),
            max_secs=float(getattr(timing, "time_cap_s", 10.0)),
            op_profiling=op_profiling,
        )


def _tool_version(content: bytes) -> str:
    m = re.search(rb"(?:LiteRT|TensorFlow Lite|TfLite)[ A-Za-z]*?[ v](\d+\.\d+\.\d+[\w.-]*)", content)
    return m.group(1).decode() if m else ""


def load_binary(path: str | Path | None) -> BenchmarkBinary:
    """Read and check the host copy of ``benchmark_model`` (``--benchmark-binary`` or the env var)."""
    if path is None or str(path) == "":
        path = os.environ.get(BENCHMARK_ENV) or None
    if path is None:
        raise DeviceError(
            f"no benchmark binary: download LiteRT's benchmark_model for android_aarch64 and pass "
            f"--benchmark-binary PATH (or set {BENCHMARK_ENV})"
        )
    p = Path(path).expanduser()
    if not p.is_file():
        raise DeviceError(f"benchmark binary {p} does not exist: pass the path of LiteRT's benchmark_model")
    content = p.read_bytes()
    if len(content) < 20 or not content.startswith(b"\x7fELF"):
        raise DeviceError(
            f"{p} is not an executable (no ELF header): pass LiteRT's benchmark_model binary for "
            "android_aarch64, not a script or archive"
        )
    machine = struct.unpack_from("<H", content, 18)[0]
    sha = hashlib.sha256(content).hexdigest()
    version = _tool_version(content[: 1 << 22]) or f"sha256:{sha[:12]}"
    return BenchmarkBinary(path=p, content=content, sha256=sha, machine=machine, version=version)


def batch_script(binary_remote: str, models: Sequence[str], flags: BenchmarkFlags, mask: str) -> str:
    """The device-side script of one batch (POSIX sh; ``@@ET`` lines frame each run)."""
    args = " ".join(shlex.quote(a) for a in flags.args())
    lines = []
    for i, model in enumerate(models):
        lines.append(f"echo '@@ET BEGIN {i}'")
        lines.append(f"taskset {mask} {shlex.quote(binary_remote)} --graph={shlex.quote(model)} {args} 2>&1")
        lines.append(f'echo "@@ET END {i} $?"')
    lines.append("echo '@@ET DONE'")
    return "\n".join(lines) + "\n"


def parse_df_available_kb(text: str) -> int | None:
    """Available 1K-blocks from ``df`` (toybox layout: Filesystem 1K-blocks Used Available Use% Mounted)."""
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 6 and parts[3].isdigit():
            return int(parts[3])
    return None


@dataclass
class BatchRecord:
    """What the runner logs per batch (goes into the table's metadata)."""

    batch: int
    models: int
    temp_c: float | None
    cooldown_s: float
    started_unix: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "models": self.models,
            "temp_c": self.temp_c,
            "cooldown_s": round(self.cooldown_s, 3),
            "started_unix": round(self.started_unix, 3),
        }


class PhoneRunner:
    """Drives ``benchmark_model`` on one phone. Not thread-safe: one runner per phone and thread."""

    def __init__(
        self,
        transport: AdbTransport,
        binary: BenchmarkBinary,
        *,
        config: RunnerConfig | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.transport = transport
        self.binary = binary
        self.config = config or RunnerConfig()
        self._sleep = sleep
        self.phone: PhoneInfo | None = None
        self.batches: list[BatchRecord] = []
        self._installed = False

    @property
    def binary_remote(self) -> str:
        return f"{self.config.remote_dir}/benchmark_model"

    # ---- set-up -------------------------------------------------------------------------------
    def open(self) -> PhoneInfo:
        """Connect, fingerprint the phone, check the binary's ABI and install it (once)."""
        self.transport.connect()
        out = self.transport.shell(FINGERPRINT_COMMAND)
        self.phone = parse_phone_info(self.transport.serial, out)
        want = ABI_MACHINE.get(self.phone.abi)
        if want is not None and self.binary.machine != want:
            have = _MACHINE_NAMES.get(self.binary.machine, f"e_machine {self.binary.machine}")
            raise DeviceError(
                f"{self.binary.path.name} is built for {have} but {self.transport.serial} is {self.phone.abi}: "
                f"download benchmark_model for android_{'aarch64' if want == 183 else self.phone.abi}"
            )
        self.install_binary()
        return self.phone

    def install_binary(self) -> None:
        """Push the binary unless the phone already has this exact content (sha256 stored next to it)."""
        cfg, remote = self.config, self.binary_remote
        stored = self.transport.shell(f"mkdir -p {cfg.remote_dir}; cat {remote}.sha256 2>/dev/null; echo")
        if stored.split() and stored.split()[0] == self.binary.sha256:
            check = self.transport.shell(f"test -x {remote} && echo @@ET OK")
            if "@@ET OK" in check:
                self._installed = True
                return
        self.ensure_space(len(self.binary.content))
        logger.info("pushing %s (%s) to %s", self.binary.path.name, self.binary.short, self.transport.serial)
        self.transport.push(self.binary.content, remote, mode=0o755)
        out = self.transport.shell(
            f"chmod 755 {remote}; sha256sum {remote}; test -x {remote} && echo @@ET EXEC"
        )
        if self.binary.sha256 not in out:
            if re.search(r"sha256sum: (?:inaccessible or )?not found", out):  # very old toybox
                logger.info("%s has no sha256sum; push not verified on the phone", self.transport.serial)
            else:
                raise DeviceError(
                    f"push of {self.binary.path.name} to {self.transport.serial} was corrupted: retry"
                )
        if "@@ET EXEC" not in out:
            raise DeviceError(
                f"{remote} is not executable on {self.transport.serial} (/data/local/tmp mounted noexec?): "
                "check `adb shell ls -l /data/local/tmp`"
            )
        self.transport.shell(f"echo {self.binary.sha256} > {remote}.sha256")
        self._installed = True

    def ensure_space(self, nbytes: int) -> None:
        need_kb = math.ceil(nbytes / 1024 + self.config.min_free_mb * 1024)
        out = self.transport.shell(f"df {self.config.remote_dir} 2>/dev/null || df /data")
        avail = parse_df_available_kb(out)
        if avail is not None and avail < need_kb:
            raise NoSpaceError(
                f"/data/local/tmp on {self.transport.serial} is full ({avail // 1024} MB free, need "
                f"{math.ceil(need_kb / 1024)} MB): free space on the phone and retry"
            )

    def governor_warning(self, cores: Sequence[int]) -> str | None:
        """A warning line when a chosen core is not on a fixed-frequency governor."""
        if self.phone is None:
            return None
        govs = {self.phone.governors[c] for c in cores if c < len(self.phone.governors)}
        loose = sorted(g for g in govs if g not in ("performance", "userspace"))
        if loose:
            return (
                f"{self.transport.serial}: CPU governor is {','.join(loose)} (not performance); latencies may "
                "vary with DVFS. On a rooted phone: echo performance > /sys/devices/system/cpu/cpuN/cpufreq/"
                "scaling_governor"
            )
        return None

    # ---- hygiene ------------------------------------------------------------------------------
    def read_temp_c(self) -> float | None:
        zones = self.phone.thermal_zones if self.phone else ()
        return hottest_c(parse_temps_c(self.transport.shell(TEMPS_COMMAND), zones))

    def cool_down(self) -> tuple[float | None, float]:
        """Wait while the phone is above the thermal limit; returns (temperature, seconds waited)."""
        cfg = self.config
        start = time.monotonic()
        temp = self.read_temp_c()
        while temp is not None and temp > cfg.thermal_limit_c:
            waited = time.monotonic() - start
            if waited >= cfg.cooldown_max_s:
                logger.warning(
                    "%s still at %.1f C after %.0f s of cool-down; measuring anyway",
                    self.transport.serial,
                    temp,
                    waited,
                )
                break
            logger.info(
                "%s at %.1f C > %.1f C: cooling down", self.transport.serial, temp, cfg.thermal_limit_c
            )
            self._sleep(cfg.cooldown_poll_s)
            temp = self.read_temp_c()
        return temp, time.monotonic() - start

    # ---- measurement --------------------------------------------------------------------------
    def run(
        self, items: Sequence[tuple[K, bytes]], flags: BenchmarkFlags, cores: Sequence[int]
    ) -> Iterator[tuple[K, BenchmarkOutput]]:
        """Benchmark each (key, .tflite bytes); yields as results arrive, in order.

        Raises:
            DeviceDisconnectedError: the phone did not come back after ``retries`` attempts; every
                result before the drop has been yielded.
            DeviceError: the tool failed on a model, or storage is full.
        """
        if self.phone is None:
            self.open()
        remaining = list(items)
        attempt = 0
        while remaining:
            batch = remaining[: self.config.batch_size]
            try:
                for key, out in self._run_batch(batch, flags, cores):
                    remaining.pop(0)
                    attempt = 0
                    yield key, out
            except DeviceDisconnectedError as exc:
                attempt += 1
                if attempt > self.config.retries:
                    raise DeviceDisconnectedError(
                        f"phone {self.transport.serial} disconnected and did not come back after "
                        f"{self.config.retries} retries: reconnect it and re-run with --resume "
                        "(measured points are kept)"
                    ) from exc
                wait = self.config.backoff_s * 2 ** (attempt - 1)
                logger.warning("%s; retry %d/%d within %.1f s", exc, attempt, self.config.retries, wait)
                if self.transport.wait_until_back(wait):
                    self.install_binary()

    def _run_batch(
        self, batch: Sequence[tuple[K, bytes]], flags: BenchmarkFlags, cores: Sequence[int]
    ) -> Iterator[tuple[K, BenchmarkOutput]]:
        cfg, tr = self.config, self.transport
        temp, waited = self.cool_down()
        record = BatchRecord(len(self.batches), len(batch), temp, waited, time.time())
        self.batches.append(record)
        bdir = f"{cfg.remote_dir}/batch"
        tr.shell(f"rm -r {bdir} 2>/dev/null; mkdir -p {bdir}")
        self.ensure_space(sum(len(b) for _, b in batch))
        files: list[tuple[bytes, str, int]] = []
        remote_models = []
        for i, (_, content) in enumerate(batch):
            remote = f"{bdir}/m{i:03d}_{hashlib.sha256(content).hexdigest()[:10]}.tflite"
            files.append((content, remote, 0o644))
            remote_models.append(remote)
        script = batch_script(self.binary_remote, remote_models, flags, cpu_mask(tuple(cores)))
        files.append((script.encode(), f"{bdir}/run.sh", 0o644))
        tr.push_many(files)  # models + script over one sync connection
        logger.debug("%s: batch %d, %d models, %.1f C", tr.serial, record.batch, len(batch), temp or -1)
        current: int | None = None
        lines: list[str] = []
        finished = False
        for line in tr.shell_lines(f"sh {bdir}/run.sh"):
            if line.startswith("@@ET BEGIN "):
                current, lines = int(line.split()[2]), []
            elif line.startswith("@@ET END ") and current is not None:
                _, _, idx, rc = line.split()
                text = "\n".join(lines)
                key = batch[int(idx)][0]
                try:
                    out = parse_benchmark_output(text)
                except BenchmarkParseError as exc:
                    raise DeviceError(self._failure(key, int(rc), text, exc)) from None
                yield key, out
                current = None
            elif line == "@@ET DONE":
                finished = True
            elif current is not None:
                lines.append(line)
        if not finished:
            raise DeviceDisconnectedError(f"lost phone {tr.serial} in the middle of batch {record.batch}")

    def _failure(self, key: object, rc: int, text: str, exc: Exception) -> str:
        if "No space left on device" in text:
            return f"/data/local/tmp on {self.transport.serial} is full: free space on the phone and retry"
        if rc in (126, 127):
            first = next((ln for ln in text.splitlines() if ln.strip()), "")
            return (
                f"benchmark_model cannot run on {self.transport.serial} ({first.strip()}): pass the "
                "android_aarch64 build of LiteRT's benchmark_model with --benchmark-binary"
            )
        return f"benchmark_model failed on {key} (exit {rc}): {exc}"
