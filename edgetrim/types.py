"""Core value types shared by every stage of edgetrim.

This module is torch-free on purpose: latency tables, statistics and reports must be readable on a
machine without torch (a phone farm controller, a CI box). Every latency is float milliseconds and
every field holding one ends in ``_ms``.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields
from typing import Any


class OpKind(str, enum.Enum):
    """Operator families that latency tables are indexed by.

    The two table axes are (input width, output width) for every kind; single-axis kinds (depthwise,
    pooling, activations) store their width on both axes with ``in == out``.
    """

    LINEAR = "linear"  # y = x W^T (+b); tokens/batch fixed in the context
    CONV2D = "conv2d"  # groups == 1
    DEPTHWISE_CONV2D = "depthwise_conv2d"  # groups == in == out: one width axis
    ACTIVATION = "activation"  # unfused elementwise activation, width = channels
    ADD = "add"  # residual add of two tensors, width = channels
    MUL = "mul"  # broadcast multiply (squeeze-excite scale), width = channels
    POOL = "pool"  # avg / max / global pooling, width = channels
    LAYER_NORM = "layer_norm"
    BATCH_NORM = "batch_norm"  # only when the runtime cannot fold it into a conv
    SOFTMAX = "softmax"
    MATMUL = "matmul"  # activation x activation (attention scores): widths = (head dim, seq)
    OTHER = "other"  # reshapes, concatenation, ...: calibrated cost


@dataclass(frozen=True, order=True)
class OpContext:
    """Everything about one operator except the two widths its table is indexed by.

    Frozen and hashable: it is the key of a table entry. ``spatial`` is the *input* (H, W) for
    convolutions and pooling, ``tokens`` the leading rows of a linear layer (batch x sequence).
    ``activation`` is the activation the runtime fuses into the op ("relu", "relu6", "hardswish",
    "none", ...); an unfused activation is its own ``ACTIVATION`` context.
    """

    kind: OpKind
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    spatial: tuple[int, int] = (1, 1)
    tokens: int = 1
    activation: str = "none"
    bias: bool = True
    dtype: str = "float32"
    variant: str = ""  # free qualifier: pool type, activation name for ACTIVATION, ...

    def __post_init__(self) -> None:
        if not isinstance(self.kind, OpKind):
            object.__setattr__(self, "kind", OpKind(self.kind))
        for name in ("kernel", "stride", "padding", "spatial"):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) != 2:
                raise ValueError(f"OpContext.{name} must have two entries, got {value}")
            object.__setattr__(self, name, value)
        if self.tokens < 1:
            raise ValueError(f"OpContext.tokens must be >= 1, got {self.tokens}")

    @property
    def one_axis(self) -> bool:
        """True for kinds whose input and output width are the same number."""
        return self.kind not in (OpKind.LINEAR, OpKind.CONV2D, OpKind.MATMUL)

    def key(self) -> str:
        """Stable, human-readable string form (used as a JSON key and in messages)."""
        k = self.kind.value
        parts = [k]
        if self.kind in (OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D, OpKind.POOL):
            parts += [
                f"k{self.kernel[0]}x{self.kernel[1]}",
                f"s{self.stride[0]}x{self.stride[1]}",
                f"p{self.padding[0]}x{self.padding[1]}",
            ]
        if self.spatial != (1, 1):
            parts.append(f"hw{self.spatial[0]}x{self.spatial[1]}")
        if self.tokens != 1:
            parts.append(f"t{self.tokens}")
        if self.activation != "none":
            parts.append(f"act-{self.activation}")
        if not self.bias:
            parts.append("nobias")
        if self.dtype != "float32":
            parts.append(self.dtype)
        if self.variant:
            parts.append(self.variant)
        return "/".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind.value
        for name in ("kernel", "stride", "padding", "spatial"):
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OpContext:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown OpContext fields {sorted(unknown)}")
        kwargs = dict(d)
        for name in ("kernel", "stride", "padding", "spatial"):
            if name in kwargs:
                kwargs[name] = tuple(kwargs[name])
        return cls(**kwargs)


@dataclass(frozen=True)
class LatencyStats:
    """A latency measurement as a distribution (milliseconds). Budgets compare the median."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    n: int
    warmup: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"LatencyStats needs at least one sample, got n={self.n}")
        if not (self.p10_ms <= self.median_ms <= self.p90_ms):
            raise ValueError(
                f"LatencyStats percentiles out of order: p10={self.p10_ms} median={self.median_ms} "
                f"p90={self.p90_ms}"
            )

    @property
    def spread_ms(self) -> float:
        """p90 - p10: the width of the central 80% of samples."""
        return self.p90_ms - self.p10_ms

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyStats:
        return cls(**d)


@dataclass(frozen=True)
class DeviceInfo:
    """Fingerprint of the machine + runtime a measurement came from.

    ``target`` is the target name as typed by users ("ort-cpu", "adb:SERIAL", ...). Two tables or a
    table and a measurement are comparable only when :meth:`fingerprint` agrees.
    """

    target: str
    runtime: str  # "torch", "onnxruntime", "litert", "litert-benchmark_model"
    runtime_version: str
    device: str  # CPU / GPU / phone model string
    threads: int = 1
    affinity: tuple[int, ...] = ()
    governor: str = "unknown"
    os: str = ""
    extra: dict[str, str] = field(default_factory=dict)  # SoC, ABI, freqs, library versions...

    def __post_init__(self) -> None:
        object.__setattr__(self, "affinity", tuple(int(c) for c in self.affinity))
        object.__setattr__(self, "extra", {str(k): str(v) for k, v in dict(self.extra).items()})
        if self.threads < 1:
            raise ValueError(f"DeviceInfo.threads must be >= 1, got {self.threads}")

    def fingerprint(self) -> str:
        """What must match for latencies to be comparable: target, runtime, device and threads."""
        return f"{self.target}|{self.runtime}|{self.device}|threads={self.threads}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["affinity"] = list(self.affinity)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeviceInfo:
        kwargs = dict(d)
        kwargs["affinity"] = tuple(kwargs.get("affinity", ()))
        return cls(**kwargs)


@dataclass(frozen=True)
class LayerOp:
    """One operator of a concrete model, as the tables see it.

    ``name`` is the module path ("features.3.conv") or a synthetic name for functional ops
    ("features.3:add"). ``in_width``/``out_width`` index the context's table; ``macs`` feeds the
    FLOPs baseline and regulariser.
    """

    name: str
    context: OpContext
    in_width: int
    out_width: int
    macs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "context": self.context.to_dict(),
            "in_width": self.in_width,
            "out_width": self.out_width,
            "macs": self.macs,
        }
