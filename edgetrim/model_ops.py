"""Which operators a model runs, as the latency tables see them.

:func:`extract_layer_ops` walks a torch model (torch.fx symbolic trace; forward hooks plus a torch
function-mode capture when the model cannot be traced) and emits one :class:`~edgetrim.types.LayerOp`
per operator latency is predicted for: convs and linears with the BN folding and fused activation the
target runtime really applies (:class:`FusionRules`), depthwise convs, unfused activations, residual
adds, squeeze-excite multiplies, pooling, layer/batch norm, softmax, attention matmuls and data
movement (reshape / transpose / cat as ``OTHER``).

Fusion rules were read off the optimised graphs the runtimes produce for conv-BN-act, linear-act
and add-act models (onnxruntime 1.32 ``optimized_model_filepath`` with ORT_ENABLE_ALL; LiteRT op lists
of litert-torch 0.10 conversions) and are re-checked by ``tests/profiler/test_fusion.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

_ALL_ACTS = frozenset(
    {"relu", "relu6", "hardswish", "hardsigmoid", "sigmoid", "silu", "gelu", "tanh", "leaky_relu"}
)


@dataclass(frozen=True)
class FusionRules:
    """Which neighbours a runtime merges into one kernel.

    Args:
        name: label stored in reports.
        fold_bn: BatchNorm right after a conv is folded into the conv's weights (no BN cost).
        conv_activations: activations fused into conv / depthwise conv kernels.
        linear_activations: activations fused into linear (Gemm / FULLY_CONNECTED) kernels.
        add_activations: activations fused into elementwise ADD kernels.
    """

    name: str
    fold_bn: bool = False
    conv_activations: frozenset[str] = field(default_factory=frozenset)
    linear_activations: frozenset[str] = field(default_factory=frozenset)
    add_activations: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        for attr in ("conv_activations", "linear_activations", "add_activations"):
            value = frozenset(getattr(self, attr))
            unknown = value - _ALL_ACTS
            if unknown:
                raise ValueError(f"FusionRules.{attr} has unknown activations {sorted(unknown)}")
            object.__setattr__(self, attr, value)


# torch eager runs every module as written.
TORCH_EAGER = FusionRules(name="torch-eager")
# onnxruntime CPU EP, ORT_ENABLE_ALL: Conv+BN folded; Conv fuses Relu/Clip/Sigmoid/Tanh/HardSigmoid/
# LeakyRelu; Gemm fuses the same except Clip (relu6 stays a Clip node); Add fuses nothing.
ONNXRUNTIME = FusionRules(
    name="onnxruntime",
    fold_bn=True,
    conv_activations=frozenset({"relu", "relu6", "sigmoid", "tanh", "hardsigmoid", "leaky_relu"}),
    linear_activations=frozenset({"relu", "sigmoid", "tanh", "hardsigmoid", "leaky_relu"}),
)
# LiteRT (litert-torch + converter): BN folded; RELU/RELU6 fused into CONV_2D, DEPTHWISE_CONV_2D,
# FULLY_CONNECTED and ADD; HARD_SWISH, LOGISTIC, TANH, GELU stay separate ops.
LITERT = FusionRules(
    name="litert",
    fold_bn=True,
    conv_activations=frozenset({"relu", "relu6"}),
    linear_activations=frozenset({"relu", "relu6"}),
    add_activations=frozenset({"relu", "relu6"}),
)

FUSION_BY_RUNTIME: dict[str, FusionRules] = {
    "torch": TORCH_EAGER,
    "onnxruntime": ONNXRUNTIME,
    "litert": LITERT,
    "litert-benchmark_model": LITERT,
}


def fusion_for_runtime(runtime: str) -> FusionRules:
    """The fusion rules of a runtime name as stored in ``DeviceInfo.runtime`` (default: none fused)."""
    rules = FUSION_BY_RUNTIME.get(runtime)
    if rules is None:
        logger.warning("no fusion rules known for runtime %r; assuming nothing is fused", runtime)
        return TORCH_EAGER
    return rules
