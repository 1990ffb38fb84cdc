"""Several phones profiled at once: one worker thread per phone, one table per phone fingerprint.

The work per phone is I/O bound on the host (adb pushes, waiting for the phone's script), so plain
threads suffice; each thread owns its target, transport and runner. A phone that fails (unplugged
for good, full storage) stops on its own with its finished points saved; the others carry on.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetrim.errors import EdgetrimError
from edgetrim.profiler.adb.runner import RunnerConfig
from edgetrim.profiler.adb.target import AdbTarget
from edgetrim.profiler.adb.transport import list_devices
from edgetrim.types import DeviceInfo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PhoneResult:
    """Outcome for one phone: its table file, or the one-line error that stopped it."""

    target: str
    table_path: Path | None
    points: int
    fingerprint: str
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "table": str(self.table_path) if self.table_path else None,
            "points": self.points,
            "fingerprint": self.fingerprint,
            "error": self.error,
        }


def table_filename(info: DeviceInfo) -> str:
    """A file name unique per fingerprint: ``<model>_<serial>_t<threads>.json`` (filesystem-safe)."""
    serial = info.extra.get("serial", info.target.removeprefix("adb:"))
    raw = f"{info.device.split(' (')[0]}_{serial}_t{info.threads}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-") + ".json"


def attached_targets() -> list[str]:
    """``adb:SERIAL`` of every phone ready for use."""
    return [f"adb:{d.serial}" for d in list_devices() if d.state == "device"]


def profile_phones(
    targets: Sequence[str],
    plan: Sequence[Any],
    *,
    out_dir: str | Path,
    threads: int = 1,
    cores: Sequence[int] | None = None,
    benchmark_binary: str | Path | None = None,
    runner_config: RunnerConfig | None = None,
    resume: bool = False,
    profile: Callable[..., Any] | None = None,
    **session_kwargs: Any,
) -> list[PhoneResult]:
    """Profile ``plan`` on every phone in ``targets`` at once, one table per phone in ``out_dir``.

    Args:
        targets: ``adb:SERIAL`` names (``attached_targets()`` for all).
        plan: what ``edgetrim.profiler.session.profile_table`` takes (context plans or layer ops).
        out_dir: directory of the tables, named by :func:`table_filename`.
        resume: continue each phone's table.
        profile: the session function (default ``profile_table``); ``session_kwargs`` go to it.

    Returns:
        one :class:`PhoneResult` per target, in the order given.
    """
    if not targets:
        raise EdgetrimError(
            "no phones to profile: attach one (see `edgetrim devices`) or pass --target adb:SERIAL"
        )
    if profile is None:
        from edgetrim.profiler.session import profile_table as profile
    targets = list(dict.fromkeys(targets))  # the same phone twice would write one table twice
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, PhoneResult] = {}

    def work(name: str) -> None:
        fingerprint, path, points = "", None, 0
        try:
            target = AdbTarget(
                name.removeprefix("adb:") or None,
                threads=threads,
                cores=cores,
                benchmark_binary=benchmark_binary,
                config=runner_config,
            )
            fingerprint = target.info().fingerprint()
            path = out / table_filename(target.info())
            table = profile(target, plan, out=path, resume=resume, **session_kwargs)
            results[name] = PhoneResult(name, path, table.n_points(), fingerprint)
        except EdgetrimError as exc:
            logger.error("%s: %s", name, exc)
            if path is not None and path.exists():
                from edgetrim.lookup_tables import load_table

                points = load_table(path).n_points()
            results[name] = PhoneResult(name, path, points, fingerprint, error=str(exc).splitlines()[0])
        except Exception as exc:  # a bug: keep the other phones going, report it with its type
            logger.exception("%s failed", name)
            results[name] = PhoneResult(name, path, points, fingerprint, error=f"{type(exc).__name__}: {exc}")

    workers = [threading.Thread(target=work, args=(t,), name=f"edgetrim-{t}", daemon=True) for t in targets]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return [results[t] for t in targets]
