"""Latency lookup tables: storage, alignment-aware interpolation, whole-model prediction.

Torch-free by design (tests enforce it): tables are read on machines without torch.
"""

from edgetrim.lookup_tables.table import LatencyTable, PointPrediction, check_target, load_table, merge

__all__ = ["LatencyTable", "PointPrediction", "check_target", "load_table", "merge"]
