"""Synthetic latency tables with a known staircase, built with ``LatencyTable.record``.

The compress tests never profile: they record points of a staircase function (latency steps every
``STEP`` channels, as XNNPACK's pointwise convs and onnxruntime's depthwise convs show) for every
context the model's operators need.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pytest
import torch

from edgetrim.lookup_tables import LatencyTable
from edgetrim.lookup_tables.grid import plan_points
from edgetrim.types import DeviceInfo, LatencyStats, LayerOp, OpContext, OpKind

STEP = 8


def staircase_ms(ctx: OpContext, in_w: int, out_w: int) -> float:
    """Known latency: constant per kind + cost growing with ceil(width / STEP) on each axis."""
    hw = ctx.spatial[0] * ctx.spatial[1] * ctx.tokens
    if ctx.one_axis:
        return 0.002 + 1e-4 * hw * math.ceil(in_w / STEP) * STEP
    return (
        0.005
        + 2e-6
        * hw
        * ctx.kernel[0]
        * ctx.kernel[1]
        * math.ceil(in_w / STEP)
        * math.ceil(out_w / STEP)
        * STEP**2
    )


FULL_GRID_LIMIT = 20_000  # record every (in, out) pair up to this many points, else the planner's grid


def staircase_table(
    ops: Sequence[LayerOp],
    *,
    target: str = "ort-cpu",
    ms_of: Callable[[OpContext, int, int], float] = staircase_ms,
) -> LatencyTable:
    """A table covering every context of ``ops`` up to their widths, with ``ms_of`` values
    (:func:`staircase_ms` unless another known function is given)."""
    table = LatencyTable(
        DeviceInfo(target=target, runtime="onnxruntime", runtime_version="test", device="synthetic")
    )
    max_w: dict[OpContext, tuple[int, int]] = {}
    for op in ops:
        a, b = max_w.get(op.context, (1, 1))
        max_w[op.context] = (max(a, op.in_width), max(b, op.out_width))
    for ctx, (mi, mo) in max_w.items():
        if ctx.one_axis:
            pairs = [(w, w) for w in range(1, max(mi, mo) + 1)]
        elif mi * mo <= FULL_GRID_LIMIT:
            pairs = [(i, o) for i in range(1, mi + 1) for o in range(1, mo + 1)]
        else:
            pairs = plan_points(ctx, mi, mo)
        for i, o in pairs:
            ms = ms_of(ctx, i, o)
            table.record(ctx, i, o, LatencyStats(ms, ms, ms, ms, 0.0, 5))
    return table


def with_nchwc_layout(table: LatencyTable, per_element_ms: float, *, chains: bool = False) -> LatencyTable:
    """``table`` with onnxruntime's NCHWc layout rules on (block 8, convs blocked at multiples of 4).

    Blocked convs shed their one-op reorders and region boundaries gain reorders, all priced per
    element (width-dependent), as on a profiled ort-cpu table. ``chains``: also the reorder-pair
    chains and a hardswish fused into a blocked conv, which price in-graph reorders and fusions.
    """
    table.meta["ort_nchwc_block"] = 8
    table.meta["ort_nchwc_conv_alignment"] = 4
    variants = {"in": 1.0, "out": 1.0}
    if chains:
        variants |= {"pair1": 1.5, "pair8": 9.0, "fuse_none": 4.0, "fuse_hardswish": 4.5}
    for name, factor in variants.items():
        ctx = OpContext(OpKind.OTHER, spatial=(8, 8), variant=f"nchwc8_{name}")
        for w in (8, 16, 24, 32):
            ms = factor * per_element_ms * w * 64
            table.record(ctx, w, w, LatencyStats(ms, ms, ms, ms, 0.0, 5))
    return table


@pytest.fixture(scope="session")
def nchwc_layout():
    """The :func:`with_nchwc_layout` modifier."""
    return with_nchwc_layout


@pytest.fixture(scope="session")
def make_table():
    """The :func:`staircase_table` builder."""
    return staircase_table


@pytest.fixture(scope="session")
def mlp_trainer(make_table):
    """``mlp_trainer(**config)``: a ``PenaltyTrainer`` on a seeded MLP 64-40-24-10 over its staircase
    table, bound as compress binds it (real cost at the non-zero gates, the table's envelope as the
    soft signal), with a budget of half the dense cost; returns ``(trainer, dense cost)``."""
    from edgetrim.compress.config import CompressConfig
    from edgetrim.compress.gates import ChannelGates
    from edgetrim.compress.graph import find_channel_groups
    from edgetrim.compress.latency_model import LatencyModel, bind_layer_terms, default_extractor
    from edgetrim.compress.train import PenaltyTrainer
    from edgetrim.examples.models import mlp

    def build(**config):
        torch.manual_seed(0)
        model, example = mlp(widths=(40, 24))
        extract = default_extractor("onnxruntime")
        groups = find_channel_groups(model, example)
        terms = bind_layer_terms(model, example, groups, extract=extract)
        cost = LatencyModel(make_table(extract(model, example)), terms, [g.unit for g in groups])
        sizes = [g.size for g in groups]
        dense = cost.hard_ms(sizes)
        trainer = PenaltyTrainer(
            model, ChannelGates(model, groups), {}, cost, CompressConfig(budget_ms=0.5 * dense, **config),
            dense_widths=sizes, dense_cost=dense, cost_fn=cost.hard_ms, budget=0.5 * dense,
            soft_cost_fn=cost.soft_ms,
        )  # fmt: skip
        return trainer, dense

    return build


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark(name)`` imports ``benchmarks/<name>.py`` (not a package) for tests of its logic."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load


@pytest.fixture(scope="module")
def trained_mlp(make_table):
    """An MLP (40, 24) trained 4 epochs on flat digits, its staircase table, and a latency budget 40%
    of the way from the smallest reachable latency to the dense one."""
    from edgetrim.compress.api import model_latency_ms
    from edgetrim.examples.data import digits_loaders
    from edgetrim.examples.models import mlp
    from edgetrim.examples.training import train_classifier
    from edgetrim.model_ops import extract_layer_ops, fusion_for_runtime

    torch.manual_seed(0)
    model, example = mlp(widths=(40, 24))
    train, val = digits_loaders(flat=True, batch_size=128)
    train_classifier(model, train, val, epochs=4, lr=3e-3)
    ops = extract_layer_ops(model, example, fusion=fusion_for_runtime("onnxruntime"))
    table = make_table(ops)
    tiny, tiny_x = mlp(widths=(1, 1))
    floor_ms = model_latency_ms(
        table, extract_layer_ops(tiny, tiny_x, fusion=fusion_for_runtime("onnxruntime"))
    )
    dense_ms = model_latency_ms(table, ops)
    # a budget 40% of the way from the smallest reachable latency to the dense one
    return model, example, train, val, table, floor_ms + 0.4 * (dense_ms - floor_ms)
