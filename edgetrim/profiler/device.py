"""Fingerprint of the local machine and explicit thread / CPU-affinity settings (torch-free).

Threads and affinity are settings, never left to chance: targets take ``threads`` (default 1) and
``cores`` (default: leave the process affinity as it is) and record both in :class:`DeviceInfo`.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
from collections.abc import Sequence
from pathlib import Path

from edgetrim.errors import EdgetrimError
from edgetrim.types import DeviceInfo

logger = logging.getLogger(__name__)

_VERSIONED_PACKAGES = (
    "numpy",
    "torch",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "ai-edge-litert",
    "litert-torch",
)


def cpu_model() -> str:
    """The CPU model string from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for key in ("model name", "Hardware", "Processor", "cpu model"):
        for line in text.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == key and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown-cpu"


def cpu_vector_isa(cpuinfo: str | None = None) -> str:
    """Widest SIMD extension the CPU reports (``avx512``, ``avx2``, ``avx``, ``sve``, ``neon``), or "".

    Part of the device name because kernels are chosen by it: the same CPU model string (clouds
    often mask it, e.g. "AMD EPYC") can run onnxruntime with an 8- or a 16-channel NCHWc block.
    """
    text = cpuinfo
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return ""
    flags: set[str] = set()
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() in ("flags", "Features"):
            flags.update(value.split())
    for isa, needed in (
        ("avx512", "avx512f"),
        ("avx2", "avx2"),
        ("avx", "avx"),
        ("sve", "sve"),
        ("neon", "asimd"),
    ):
        if needed in flags:
            return isa
    return ""


def cpu_governor(core: int = 0) -> str:
    """The cpufreq scaling governor of ``core`` ("performance", "powersave", ...) or "unknown"."""
    path = Path(f"/sys/devices/system/cpu/cpu{core}/cpufreq/scaling_governor")
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def library_versions(names: Sequence[str] = _VERSIONED_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that shape latency (read from metadata, nothing imported)."""
    out: dict[str, str] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def current_affinity() -> tuple[int, ...]:
    """CPU cores this process may run on (empty where the OS cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return ()


def apply_affinity(cores: Sequence[int] | None) -> tuple[int, ...]:
    """Pin the measuring process to ``cores`` (``None``: leave as is) and return the affinity in force.

    Raises:
        EdgetrimError: a core that does not exist here, or an OS without affinity control.
    """
    if cores is None:
        return current_affinity()
    wanted = tuple(sorted({int(c) for c in cores}))
    if not wanted:
        raise EdgetrimError("--cores needs at least one core index, e.g. --cores 0")
    if not hasattr(os, "sched_setaffinity"):
        raise EdgetrimError(f"this OS ({platform.system()}) cannot pin CPU cores; drop --cores")
    count = os.cpu_count() or 1
    bad = [c for c in wanted if c < 0 or c >= count]
    if bad:
        raise EdgetrimError(f"cores {bad} do not exist on this machine (cores 0..{count - 1}); fix --cores")
    try:
        os.sched_setaffinity(0, wanted)
    except OSError as exc:
        raise EdgetrimError(f"cannot pin to cores {list(wanted)}: {exc}") from exc
    logger.info("pinned measuring process to cores %s", wanted)
    return current_affinity()


def _cpu_name() -> str:
    isa = cpu_vector_isa()
    return f"{cpu_model()} ({isa})" if isa else cpu_model()


def local_device_info(
    *,
    target: str,
    runtime: str,
    runtime_version: str,
    threads: int,
    affinity: Sequence[int] | None = None,
    device: str | None = None,
    extra: dict[str, str] | None = None,
) -> DeviceInfo:
    """Describe this machine for ``target``: CPU model, core count, governor, OS, library versions."""
    info_extra = {f"version.{k}": v for k, v in library_versions().items()}
    info_extra["cpu_count"] = str(os.cpu_count() or 0)
    info_extra["machine"] = platform.machine()
    info_extra["python"] = platform.python_version()
    info_extra.update(extra or {})
    return DeviceInfo(
        target=target,
        runtime=runtime,
        runtime_version=runtime_version,
        device=device or _cpu_name(),
        threads=threads,
        affinity=tuple(affinity) if affinity is not None else current_affinity(),
        governor=cpu_governor(),
        os=platform.platform(),
        extra=info_extra,
    )
