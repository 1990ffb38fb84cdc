"""Latency lookup tables: storage, alignment-aware interpolation, whole-model prediction.

Torch-free by design (tests enforce it): tables are read on machines without torch.
"""

from edgetrim.lookup_tables.predict import (
    LayerPrediction,
    ModelPrediction,
    ModelPredictor,
    flops_baseline_ms,
    predict_model,
)
from edgetrim.lookup_tables.table import LatencyTable, PointPrediction, check_target, load_table, merge

__all__ = [
    "LatencyTable",
    "LayerPrediction",
    "ModelPrediction",
    "ModelPredictor",
    "PointPrediction",
    "check_target",
    "flops_baseline_ms",
    "load_table",
    "merge",
    "predict_model",
]
