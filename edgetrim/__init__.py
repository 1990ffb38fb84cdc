"""edgetrim: on-device latency profiling and hardware-aware model compression.

Profile a target into interpolated 2-D latency tables, compress a PyTorch model to a latency budget
with the l1/l2 latency surrogate, export to ONNX / TFLite and re-measure on the same target.
"""

from __future__ import annotations

__version__ = "0.1.0"

from edgetrim.errors import EdgetrimError
from edgetrim.types import DeviceInfo, LatencyStats, LayerOp, OpContext, OpKind

__all__ = ["DeviceInfo", "EdgetrimError", "LatencyStats", "LayerOp", "OpContext", "OpKind", "__version__"]
