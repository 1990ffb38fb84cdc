"""Latency price of an activation chromosome.

ReLU and ReLU6 right after a conv / linear / BN fuse into it on onnxruntime, XNNPACK and TFLite, so they
cost nothing extra. Every other operator is an unfused elementwise pass priced in this order:

1. a table ``OpKind.ACTIVATION`` context for that operator and spatial size (``variant`` = operator
   name), predicted at the site's channel count;
2. otherwise a calibrated per-element cost: ``elements * primitives(op) * ms_per_primitive_element``,
   where ``ms_per_primitive_element`` is the median over the table's ACTIVATION entries of
   ``ms / (elements * primitives)``, or, for a table without any, ``DEFAULT_MS_PER_PRIMITIVE_ELEMENT``
   (reported as assumed).
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgetrim.compress.safs.activations import get_op
from edgetrim.compress.safs.surgery import ActivationSite
from edgetrim.types import OpContext, OpKind

logger = logging.getLogger(__name__)

DEFAULT_MS_PER_PRIMITIVE_ELEMENT = 1e-6  # 1 ns per element per primitive op: a single-core CPU ballpark


@dataclass(frozen=True)
class SiteShape:
    channels: int
    spatial: tuple[int, int]

    @property
    def elements(self) -> int:
        return self.channels * self.spatial[0] * self.spatial[1]

    @classmethod
    def from_shape(cls, shape: Sequence[int]) -> SiteShape:
        """From an activation input shape: (B, C, H, W), (B, C) or (B, T, C)."""
        if len(shape) == 4:
            return cls(int(shape[1]), (int(shape[2]), int(shape[3])))
        if len(shape) == 3:
            return cls(int(shape[2]), (1, 1)) if shape[1] == 1 else cls(int(shape[2]) * int(shape[1]), (1, 1))
        return cls(int(shape[-1]), (1, 1))


class ActivationLatencyModel:
    """Predicts ``base_ms + sum of activation costs`` for a chromosome.

    Args:
        sites: activation sites from surgery (fusability comes from ``after_linear``).
        shapes: per-site input shape (see :func:`~edgetrim.compress.safs.surgery.activation_shapes`).
        table: a ``LatencyTable`` (duck-typed: ``contexts()``, ``points(ctx)``, ``predict_ms``) or None.
        base_ms: latency of the rest of the model (convs with fused ReLU), e.g. from ``predict_model``.
    """

    def __init__(
        self,
        sites: Sequence[ActivationSite],
        shapes: dict[str, Sequence[int]],
        *,
        table: Any | None = None,
        base_ms: float = 0.0,
    ) -> None:
        self.sites = list(sites)
        self.shapes = [SiteShape.from_shape(shapes[s.name]) for s in self.sites]
        self.table = table
        self.base_ms = float(base_ms)
        self._act_contexts: dict[tuple[str, tuple[int, int]], OpContext] = {}
        if table is not None:
            for ctx in table.contexts():
                if ctx.kind is OpKind.ACTIVATION and ctx.variant:
                    self._act_contexts[(ctx.variant, ctx.spatial)] = ctx
        self.ms_per_primitive_element, self.calibrated = self._calibrate()

    def _calibrate(self) -> tuple[float, bool]:
        ratios: list[float] = []
        for (variant, spatial), ctx in self._act_contexts.items():
            try:
                prims = get_op(variant).primitives
            except ValueError:
                continue
            for in_w, _out_w, stats in self.table.points(ctx):  # type: ignore[union-attr]
                elements = in_w * spatial[0] * spatial[1]
                if elements > 0:
                    ratios.append(stats.median_ms / (elements * prims))
        if ratios:
            return statistics.median(ratios), True
        return DEFAULT_MS_PER_PRIMITIVE_ELEMENT, False

    def site_ms(self, index: int, op_name: str) -> float:
        """Extra latency of operator ``op_name`` at site ``index``."""
        op = get_op(op_name)
        site, shape = self.sites[index], self.shapes[index]
        if op.fuses and site.after_linear:
            return 0.0
        ctx = self._act_contexts.get((op.name, shape.spatial))
        if ctx is not None:
            return float(self.table.predict_ms(ctx, shape.channels, shape.channels).ms)  # type: ignore[union-attr]
        return shape.elements * op.primitives * self.ms_per_primitive_element

    def total_ms(self, chromosome: Sequence[str]) -> float:
        return self.base_ms + sum(self.site_ms(i, op) for i, op in enumerate(chromosome))

    def describe(self) -> dict[str, Any]:
        return {
            "base_ms": self.base_ms,
            "ms_per_primitive_element": self.ms_per_primitive_element,
            "per_element_cost": "calibrated from table" if self.calibrated else "assumed default",
            "tabled_activation_contexts": sorted(f"{v}@{s[0]}x{s[1]}" for v, s in self._act_contexts),
        }
