"""Unit importances for the final width fit: weight magnitude (per group) and first-order Taylor."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgetrim.compress.api import compress, model_latency_ms
from edgetrim.compress.config import CompressConfig
from edgetrim.compress.gates import ChannelGates
from edgetrim.compress.graph import find_channel_groups
from edgetrim.compress.importance import taylor_scores
from edgetrim.compress.widths import fit_budget
from edgetrim.errors import BudgetError
from edgetrim.model_ops import extract_layer_ops, fusion_for_runtime


def test_taylor_scores_are_the_loss_change_estimate_of_each_unit(trained_mlp) -> None:
    model, example, train, _, _, _ = trained_mlp
    model = copy.deepcopy(model)
    second = [m for m in model.modules() if isinstance(m, nn.Linear)][1]
    with torch.no_grad():
        second.weight[:, 3] = 0.0  # hidden unit 3 of the first group feeds nothing
    gates = ChannelGates(model, find_channel_groups(model, example))
    model.train()
    scores = taylor_scores(gates, model, train, max_batches=4)
    assert model.training  # mode restored
    g = next(i for i, grp in enumerate(gates.groups) if grp.size == 40)
    assert scores[g][3] == 0.0 and (scores[g] >= 0).all() and scores[g].sum() > 0
    # against the loss change measured by removing each unit on one batch (the estimate is second
    # order in the gate's gradient, so it ranks, it does not equal): the best-scored units matter more
    xb, yb = next(iter(train))
    model.eval()
    loss = nn.CrossEntropyLoss()
    with torch.no_grad():
        base = loss(model(xb), yb)
        change = []
        for u in range(40):
            gates.alphas[g][u] = 0.0
            change.append(float(loss(model(xb), yb) - base))
            gates.alphas[g][u] = 1.0
    order = torch.argsort(scores[g], descending=True)
    top, bottom = order[:10], order[-10:]
    assert sum(abs(change[u]) for u in top) > 3 * sum(abs(change[u]) for u in bottom)
    gates.detach_hooks()
    with pytest.raises(ValueError, match="at least one batch"):
        taylor_scores(gates, model, [])


def test_fit_budget_compares_groups_by_share_or_by_absolute_importance() -> None:
    def partial(g, widths):
        return float(widths[g])

    def total(widths):
        return float(sum(widths))

    imp = [[10.0] * 4, [1.0] * 4]  # group 0's units matter ten times more
    # by share, both groups lose a quarter of their importance per unit: the first is cut
    assert fit_budget([4, 4], [1, 1], imp, partial, total, 7.0) == [3, 4]
    # as is, group 1 loses ten times less per unit and is cut, down to its floor
    assert fit_budget([4, 4], [1, 1], imp, partial, total, 5.0, relative=False) == [4, 1]


def test_compress_with_taylor_importance_meets_the_budget(trained_mlp) -> None:
    model, example, train, val, table, _ = trained_mlp
    dense = model_latency_ms(
        table, extract_layer_ops(model, example, fusion=fusion_for_runtime("onnxruntime"))
    )
    kw = {"epochs": 1, "finetune_epochs": 1, "lr": 3e-3, "gate_lr": 0.01, "unit_importance": "taylor"}
    with pytest.raises(BudgetError) as floor:
        compress(
            model,
            example,
            CompressConfig(budget_ms=1e-6, **kw),
            table=table,
            train_loader=train,
            val_loader=val,
        )
    budget = floor.value.smallest + 0.4 * (dense - floor.value.smallest)
    rep = compress(
        model,
        example,
        CompressConfig(budget_ms=budget, **kw),
        table=table,
        train_loader=train,
        val_loader=val,
    ).report
    assert rep.predicted_ms <= budget + 1e-12
    assert sum(rep.widths_after.values()) < sum(rep.widths_before.values())
    assert rep.config["unit_importance"] == "taylor"
    assert rep.accuracy > 0.5
    with pytest.raises(ValueError, match="unit_importance must be"):
        CompressConfig(budget_ms=1.0, unit_importance="random")
