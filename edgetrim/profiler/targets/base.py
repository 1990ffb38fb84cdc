"""The ``Target`` protocol and what local targets share."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from edgetrim.profiler.device import apply_affinity
from edgetrim.profiler.timing import TimingConfig
from edgetrim.types import DeviceInfo, LatencyStats, OpContext

if TYPE_CHECKING:
    from edgetrim.model_ops import FusionRules

logger = logging.getLogger(__name__)

OpRequest = tuple[OpContext, int, int]


@runtime_checkable
class Target(Protocol):
    """A place where models run and get timed (a runtime on a device).

    Every measurement goes through :func:`edgetrim.profiler.timing.time_callable` with one runtime
    invoke per call, for one-op models and whole models alike.
    """

    name: str

    def info(self) -> DeviceInfo:
        """Fingerprint of device + runtime + threads (stored in every table)."""
        ...

    @property
    def fusion(self) -> FusionRules:
        """Which neighbouring ops this runtime fuses (drives ``extract_layer_ops``)."""
        ...

    def measure_ops(
        self, requests: Sequence[OpRequest], timing: TimingConfig
    ) -> Iterator[tuple[OpRequest, LatencyStats]]:
        """Build and time one one-op model per request, yielding results as they finish."""
        ...

    def measure_model(
        self, module: Any, example_inputs: tuple[Any, ...], timing: TimingConfig
    ) -> LatencyStats:
        """Convert a torch module to this runtime and time it."""
        ...

    def measure_artifact(self, path: str | Path, timing: TimingConfig) -> LatencyStats:
        """Time an exported artifact (.onnx / .tflite / ...)."""
        ...


@dataclass(frozen=True)
class TargetStatus:
    """One line of ``edgetrim devices``."""

    name: str
    available: bool
    reason: str = ""
    info: DeviceInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "available": self.available,
            "reason": self.reason,
            "fingerprint": self.info.fingerprint() if self.info else None,
            "info": self.info.to_dict() if self.info else None,
        }


class LocalTarget:
    """Shared plumbing of the in-process targets: threads, affinity, fingerprint caching."""

    name: str = ""
    runtime: str = ""

    def __init__(self, name: str, *, threads: int = 1, cores: Sequence[int] | None = None) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.name = name
        self.threads = threads
        self.affinity = apply_affinity(cores)
        self._info: DeviceInfo | None = None

    def _make_info(self) -> DeviceInfo:  # pragma: no cover - overridden
        raise NotImplementedError

    def info(self) -> DeviceInfo:
        if self._info is None:
            self._info = self._make_info()
        return self._info

    @property
    def fusion(self) -> FusionRules:
        from edgetrim.model_ops import fusion_for_runtime

        return fusion_for_runtime(self.runtime)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, threads={self.threads})"
