"""What an export produces: the artifact file, its precision and the tensor spec a caller must feed.

Torch-free value types shared by the exporters, the parity check, the manifest and the report.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ExportFormat(enum.StrEnum):
    """Deployable file formats."""

    ONNX = "onnx"
    TFLITE = "tflite"

    @property
    def suffix(self) -> str:
        return f".{self.value}"


class Precision(enum.StrEnum):
    """Numeric precision of an artifact's weights and activations."""

    FP32 = "fp32"
    INT8 = "int8"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an artifact.

    ``shape`` uses ``-1`` for a dynamic dimension (the batch of a dynamic-batch ONNX file). For an
    int8 TFLite tensor ``scale``/``zero_point`` say how float values map to the stored integers:
    ``q = round(x / scale) + zero_point`` and ``x = (q - zero_point) * scale``.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if (self.scale is None) != (self.zero_point is None):
            raise ValueError(f"TensorSpec {self.name}: scale and zero_point must be given together")

    def matches(self, shape: tuple[int, ...]) -> bool:
        """True when a concrete ``shape`` fits this spec (``-1`` matches any size)."""
        return len(shape) == len(self.shape) and all(s == -1 or s == d for s, d in zip(self.shape, shape))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "scale": self.scale,
            "zero_point": self.zero_point,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(
            name=d["name"],
            shape=tuple(d["shape"]),
            dtype=d["dtype"],
            scale=d.get("scale"),
            zero_point=d.get("zero_point"),
        )


@dataclass(frozen=True)
class ExportArtifact:
    """One exported file and how to call it.

    ``parity`` is the :class:`edgetrim.deploy.parity.ParityReport` as a dict once checked;
    ``notes`` holds anything a reader of the manifest should know (a fallback to a static batch, ...).
    """

    path: Path
    format: ExportFormat
    precision: Precision
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int | None = None
    dynamic_batch: bool = False
    notes: tuple[str, ...] = ()
    parity: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "format", ExportFormat(self.format))
        object.__setattr__(self, "precision", Precision(self.precision))

    @property
    def label(self) -> str:
        """Short name used in reports: ``onnx-fp32``, ``tflite-int8``."""
        return f"{self.format.value}-{self.precision.value}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path.name,
            "format": self.format.value,
            "precision": self.precision.value,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "opset": self.opset,
            "dynamic_batch": self.dynamic_batch,
            "notes": list(self.notes),
            "parity": self.parity,
        }
