"""One-op model builders, one per runtime; every builder covers every ``OpKind``.

``build_onnx_op`` and ``build_tflite_op`` write their formats directly (no torch, ~1 ms per point);
``build_torch_op`` imports torch lazily so the ONNX / TFLite builders work without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgetrim.profiler.builders._common import (
    ACTIVATIONS,
    OTHER_VARIANTS,
    POOL_VARIANTS,
    UnsupportedOpError,
    output_shape,
    validate_context,
)
from edgetrim.profiler.builders.onnx_ops import build_onnx_op
from edgetrim.profiler.builders.tflite_ops import build_tflite_op

if TYPE_CHECKING:
    from torch import Tensor, nn

    from edgetrim.types import OpContext


def build_torch_op(ctx: OpContext, in_w: int, out_w: int) -> tuple[nn.Module, tuple[Tensor, ...]]:
    """An eval-mode torch module for one op plus its inputs (see ``builders.torch_ops``)."""
    from edgetrim.profiler.builders.torch_ops import build_torch_op as _build

    return _build(ctx, in_w, out_w)


__all__: list[Any] = [
    "ACTIVATIONS",
    "OTHER_VARIANTS",
    "POOL_VARIANTS",
    "UnsupportedOpError",
    "build_onnx_op",
    "build_tflite_op",
    "build_torch_op",
    "output_shape",
    "validate_context",
]
