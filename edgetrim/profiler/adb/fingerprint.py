"""Phone fingerprint: what a table measured on a phone must record (pure parsing + one read).

``PhoneInfo`` holds model, SoC/board, Android version, ABI, per-core max frequencies, governors and
thermal zones. Everything is read in one shell round trip (``getprop`` plus ``grep . <sysfs files>``,
which prints ``path:value`` per file) and parsed by pure functions tested on recorded text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgetrim.types import DeviceInfo

CPU_GLOB = "/sys/devices/system/cpu/cpu[0-9]*/cpufreq"
THERMAL_GLOB = "/sys/class/thermal/thermal_zone*"
FINGERPRINT_COMMAND = (
    f"getprop; echo @@ET SYSFS; grep . {CPU_GLOB}/cpuinfo_max_freq {CPU_GLOB}/scaling_governor "
    f"{THERMAL_GLOB}/type 2>/dev/null; echo @@ET END"
)
TEMPS_COMMAND = f"grep . {THERMAL_GLOB}/temp 2>/dev/null; echo @@ET END"
# Zones whose names say they measure the CPU / SoC; when a phone has any, only they count.
_CPU_ZONE = re.compile(r"cpu|soc|tsens|big|little|mtktscpu|apc|cluster", re.IGNORECASE)
# e_machine values of the ELF header per Android ABI.
ABI_MACHINE = {"arm64-v8a": 183, "armeabi-v7a": 40, "armeabi": 40, "x86_64": 62, "x86": 3}


@dataclass(frozen=True)
class PhoneInfo:
    """Static facts about one phone."""

    serial: str
    model: str
    manufacturer: str
    soc: str
    board: str
    android_release: str
    sdk: str
    abi: str
    core_max_khz: tuple[int, ...]
    governors: tuple[str, ...]
    thermal_zones: tuple[str, ...] = ()

    def describe(self) -> str:
        """One human line: ``Google Pixel 7 (Tensor G2), Android 14, arm64-v8a, 8 cores``."""
        return (
            f"{self.manufacturer} {self.model} ({self.soc}), Android {self.android_release}, {self.abi}, "
            f"{len(self.core_max_khz)} cores"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "serial": self.serial,
            "model": self.model,
            "manufacturer": self.manufacturer,
            "soc": self.soc,
            "board": self.board,
            "android_release": self.android_release,
            "sdk": self.sdk,
            "abi": self.abi,
            "core_max_khz": list(self.core_max_khz),
            "governors": list(self.governors),
            "thermal_zones": list(self.thermal_zones),
        }


def parse_getprop(text: str) -> dict[str, str]:
    """``[key]: [value]`` lines of ``getprop`` into a dict."""
    return dict(re.findall(r"^\[([^\]]+)\]: \[([^\]]*)\]", text, flags=re.MULTILINE))


def parse_grep_values(text: str) -> dict[str, str]:
    """``path:value`` lines of ``grep . FILES`` into a dict (first line per file)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        path, sep, value = line.partition(":")
        if sep and path.startswith("/") and path not in out:
            out[path] = value.strip()
    return out


def _indexed(values: dict[str, str], pattern: str) -> dict[int, str]:
    rx = re.compile(pattern)
    return {int(m.group(1)): v for p, v in values.items() if (m := rx.fullmatch(p))}


def parse_phone_info(serial: str, text: str) -> PhoneInfo:
    """Build a :class:`PhoneInfo` from the output of :data:`FINGERPRINT_COMMAND`."""
    props_text, _, sys_text = text.partition("@@ET SYSFS")
    props = parse_getprop(props_text)
    values = parse_grep_values(sys_text)
    freqs = _indexed(values, r"/sys/devices/system/cpu/cpu(\d+)/cpufreq/cpuinfo_max_freq")
    govs = _indexed(values, r"/sys/devices/system/cpu/cpu(\d+)/cpufreq/scaling_governor")
    zones = _indexed(values, r"/sys/class/thermal/thermal_zone(\d+)/type")
    n = max([*freqs, *govs, -1]) + 1
    soc = props.get("ro.soc.model") or props.get("ro.board.platform") or props.get("ro.hardware", "unknown")
    if props.get("ro.soc.manufacturer") and props.get("ro.soc.model"):
        soc = f"{props['ro.soc.manufacturer']} {props['ro.soc.model']}"
    return PhoneInfo(
        serial=serial,
        model=props.get("ro.product.model", "unknown"),
        manufacturer=props.get("ro.product.manufacturer", "unknown"),
        soc=soc,
        board=props.get("ro.board.platform") or props.get("ro.hardware", "unknown"),
        android_release=props.get("ro.build.version.release", "?"),
        sdk=props.get("ro.build.version.sdk", "?"),
        abi=props.get("ro.product.cpu.abi", "unknown"),
        core_max_khz=tuple(int(freqs.get(i, "0") or 0) for i in range(n)),
        governors=tuple(govs.get(i, "unknown") for i in range(n)),
        thermal_zones=tuple(zones[i] for i in sorted(zones)),
    )


def parse_temps_c(text: str, zone_types: tuple[str, ...] = ()) -> dict[str, float]:
    """Thermal readings (``grep . .../thermal_zone*/temp``) in °C, keyed by zone type (or zone name).

    Readings are millidegrees on most phones and degrees on a few; implausible values (sensors that
    report 0 or negative numbers when idle) are dropped.
    """
    out: dict[str, float] = {}
    for idx, raw in _indexed(parse_grep_values(text), r"/sys/class/thermal/thermal_zone(\d+)/temp").items():
        try:
            value = float(raw)
        except ValueError:
            continue
        celsius = value / 1000.0 if abs(value) >= 200 else value
        if 0.0 < celsius < 150.0:
            name = zone_types[idx] if idx < len(zone_types) else f"thermal_zone{idx}"
            out[name] = celsius
    return out


def hottest_c(temps: dict[str, float]) -> float | None:
    """The temperature that gates measurements: the hottest CPU/SoC zone, else the hottest zone."""
    cpu = [t for name, t in temps.items() if _CPU_ZONE.search(name)]
    pool = cpu or list(temps.values())
    return max(pool) if pool else None


def big_cores(core_max_khz: tuple[int, ...], threads: int = 1) -> tuple[int, ...]:
    """The fastest cluster (cores sharing the highest max frequency), widened to ``threads`` cores.

    Example:
        >>> big_cores((1803000,) * 4 + (2348000,) * 2 + (2850000,) * 2)
        (6, 7)
        >>> big_cores((1803000,) * 4 + (2348000,) * 2 + (2850000,) * 2, threads=3)
        (4, 5, 6, 7)
    """
    if not core_max_khz:
        return ()
    chosen: list[int] = []
    for khz in sorted(set(core_max_khz), reverse=True):
        chosen += [i for i, f in enumerate(core_max_khz) if f == khz]
        if len(chosen) >= threads:
            break
    return tuple(sorted(chosen))


def cpu_mask(cores: tuple[int, ...]) -> str:
    """Hex affinity mask for ``taskset`` (``(6, 7)`` -> ``c0``)."""
    return format(sum(1 << c for c in cores), "x")


def device_info(
    phone: PhoneInfo, *, threads: int, cores: tuple[int, ...], tool_version: str, tool_sha256: str
) -> DeviceInfo:
    """The table fingerprint of measurements on ``phone`` pinned to ``cores`` with ``threads``."""
    governors = sorted({phone.governors[c] for c in cores if c < len(phone.governors)})
    return DeviceInfo(
        target=f"adb:{phone.serial}",
        runtime="litert-benchmark_model",
        runtime_version=tool_version,
        device=f"{phone.manufacturer} {phone.model} ({phone.soc})",
        threads=threads,
        affinity=cores,
        governor=",".join(governors) or "unknown",
        os=f"Android {phone.android_release} (API {phone.sdk})",
        extra={
            "serial": phone.serial,
            "soc": phone.soc,
            "board": phone.board,
            "abi": phone.abi,
            "core_max_khz": ",".join(f"{i}:{f}" for i, f in enumerate(phone.core_max_khz)),
            "governors": ",".join(phone.governors),
            "benchmark_tool_sha256": tool_sha256,
        },
    )
