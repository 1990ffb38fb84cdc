"""Latency-aware channel allocation on a synthetic (MAC-proportional) latency table."""

from __future__ import annotations

import pytest
import torch

from edgetrim.compress.sparse.config import SparsifyConfig
from edgetrim.compress.sparse.methods import sparsify
from edgetrim.errors import BudgetError, EdgetrimError
from edgetrim.examples.data import digits_loaders
from edgetrim.examples.models import lenet5
from edgetrim.lookup_tables import LatencyTable
from edgetrim.model_ops import extract_layer_ops, fusion_for_runtime
from edgetrim.types import DeviceInfo, LatencyStats


def _table(model, ex) -> LatencyTable:
    """Every context at every width pair up to the model's, latency = 1e-6 ms per MAC-ish unit."""
    table = LatencyTable(DeviceInfo("ort-cpu", "onnxruntime", "test", "synthetic"))
    for op in extract_layer_ops(model, ex, fusion=fusion_for_runtime("onnxruntime")):
        ctx = op.context
        scale = ctx.kernel[0] * ctx.kernel[1] * ctx.spatial[0] * ctx.spatial[1] * ctx.tokens
        ins = range(1, op.in_width + 1) if not ctx.one_axis else [None]
        for o in range(1, op.out_width + 1):
            for i in ins if not ctx.one_axis else [o]:
                ms = 1e-6 * scale * (i if not ctx.one_axis else 1) * o + 1e-4
                table.record(ctx, i, o, LatencyStats(ms, ms, ms, ms, 0.0, 5))
    return table


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model, ex = lenet5(channels=(8, 16), fc=(32, 16))
    return model, ex, _table(model, ex), digits_loaders(batch_size=32)


def test_latency_allocation_meets_budget_and_materialises(setup) -> None:
    model, ex, table, (tr, va) = setup
    dense = sparsify(
        model, SparsifyConfig(method="pai", criterion="magnitude", sparsity=0.0, epochs=0),
        train_loader=tr, val_loader=va, table=table, example_inputs=ex,
    ).predicted_ms  # fmt: skip
    assert dense is not None and dense > 0
    torch.manual_seed(0)
    model, ex = lenet5(channels=(8, 16), fc=(32, 16))
    budget = 0.5 * dense
    cfg = SparsifyConfig(
        method="gmp", granularity="channel", allocation="latency", budget_ms=budget, sparsity=0.5,
        epochs=2, batches_per_epoch=4, update_every=1, lr=0.05,
    )  # fmt: skip
    rep = sparsify(model, cfg, train_loader=tr, val_loader=va, table=table, example_inputs=ex)
    assert rep.dense_predicted_ms == pytest.approx(dense, rel=1e-6)
    assert rep.predicted_ms <= budget + 1e-9
    assert sum(p.numel() for p in rep.model.parameters()) < sum(p.numel() for p in model.parameters())
    assert all(row["predicted_ms"] is not None for row in rep.history)
    x = next(iter(va))[0]
    torch.testing.assert_close(rep.model(x), model.eval()(x), rtol=1e-4, atol=1e-4)


def test_latency_allocation_bad_input(setup) -> None:
    model, ex, table, (tr, va) = setup
    with pytest.raises(ValueError, match="latency allocation needs granularity 'channel'"):
        SparsifyConfig(method="gmp", allocation="latency", budget_ms=1.0)
    cfg = SparsifyConfig(method="gmp", granularity="channel", allocation="latency", budget_ms=1e-9, epochs=1)
    with pytest.raises(BudgetError, match="raise --budget-ms"):
        sparsify(model, cfg, train_loader=tr, val_loader=va, table=table, example_inputs=ex)
    cfg = SparsifyConfig(method="gmp", granularity="channel", allocation="latency", budget_ms=1.0, epochs=1)
    with pytest.raises(EdgetrimError, match="needs a latency table"):
        sparsify(model, cfg, train_loader=tr, val_loader=va, example_inputs=ex)
