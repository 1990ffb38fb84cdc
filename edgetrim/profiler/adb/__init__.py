"""Android phones over adb: the ``adb:SERIAL`` target, phone listing and multi-phone profiling.

Split per the style guide into transport (:mod:`.transport`, adbutils), runner (:mod:`.runner`,
device-side batch scripts, thermal hygiene, retries), a pure output parser (:mod:`.parser`) and the
phone fingerprint (:mod:`.fingerprint`). Importing this package registers the ``adb:`` target prefix.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from edgetrim.errors import DeviceError
from edgetrim.profiler.adb.fingerprint import PhoneInfo, big_cores, device_info, parse_phone_info
from edgetrim.profiler.adb.parser import BenchmarkOutput, parse_benchmark_output, to_latency_stats
from edgetrim.profiler.adb.runner import BENCHMARK_ENV, RunnerConfig
from edgetrim.profiler.adb.target import AdbTarget, OpProfile, OpTime, make_adb_target, split_profile
from edgetrim.profiler.adb.transport import DeviceDisconnectedError, list_devices

if TYPE_CHECKING:
    from edgetrim.profiler.targets import TargetStatus

logger = logging.getLogger(__name__)


def register_targets() -> None:
    """Register the ``adb:`` prefix with the target registry (idempotent)."""
    from edgetrim.profiler.targets import register_target

    register_target("adb:", make_adb_target)


def list_phones() -> list[TargetStatus]:
    """One ``TargetStatus`` per attached phone (``adb:SERIAL``), with its fingerprint when usable.

    Never raises for a missing adb or server: the listing then holds one unavailable ``adb:`` line
    saying why. Listing does not start an adb server (no daemon left behind by a status query).
    """
    from edgetrim.profiler.adb.fingerprint import FINGERPRINT_COMMAND
    from edgetrim.profiler.adb.runner import load_binary
    from edgetrim.profiler.adb.transport import AdbTransport
    from edgetrim.profiler.targets import TargetStatus

    try:
        devices = list_devices(start_server=False)
    except DeviceError as exc:
        return [TargetStatus(name="adb:", available=False, reason=str(exc))]
    tool_version, tool_sha = "not set", ""
    if os.environ.get(BENCHMARK_ENV):
        try:
            binary = load_binary(None)
            tool_version, tool_sha = binary.version, binary.sha256
        except DeviceError as exc:
            logger.warning("%s", exc)
    out = []
    for d in devices:
        name = f"adb:{d.serial}"
        if d.state != "device":
            hint = (
                "accept the USB debugging prompt on the phone"
                if d.state == "unauthorized"
                else "reconnect it"
            )
            out.append(TargetStatus(name=name, available=False, reason=f"{d.state}: {hint}"))
            continue
        try:
            phone = parse_phone_info(d.serial, AdbTransport(d.serial).shell(FINGERPRINT_COMMAND))
        except DeviceError as exc:
            out.append(TargetStatus(name=name, available=False, reason=str(exc)))
            continue
        cores = big_cores(phone.core_max_khz)
        info = device_info(phone, threads=1, cores=cores, tool_version=tool_version, tool_sha256=tool_sha)
        out.append(TargetStatus(name=name, available=True, reason=phone.describe(), info=info))
    return out


register_targets()

__all__ = [
    "AdbTarget",
    "BenchmarkOutput",
    "DeviceDisconnectedError",
    "OpProfile",
    "OpTime",
    "PhoneInfo",
    "RunnerConfig",
    "list_phones",
    "make_adb_target",
    "parse_benchmark_output",
    "register_targets",
    "split_profile",
    "to_latency_stats",
]
