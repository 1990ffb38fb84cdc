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
from edgetrim.compress.importance import (
    batch_statistics,
    curve_importance,
    distortion_curves,
    distortion_importance,
    ladder_counts,
    magnitude_scores,
    taylor_scores,
)
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


def test_ladder_counts_are_the_allowed_widths_spread_evenly() -> None:
    assert ladder_counts(32, 1, 1, 8) == [8, 16, 24, 32]
    assert ladder_counts(30, 1, 1, 8) == [8, 16, 24, 30]  # the full size is always allowed
    assert ladder_counts(4, 16, 16, 16) == [1, 2, 3, 4]  # heads: one unit is 16 channels
    many = ladder_counts(576, 1, 2, 8, max_points=24)
    assert many[0] == 8 and many[-1] == 576 and len(many) <= 25  # the narrowest aligned width first
    assert all(c % 8 == 0 for c in many[:-1])


def test_curve_importance_partial_sums_follow_the_measured_curve() -> None:
    counts, curve = [2, 4, 8], [3.0, 1.0, 0.2]
    imp = curve_importance(counts, curve, 10)
    assert len(imp) == 10 and min(imp) >= 0
    level = {0: 3.0, 2: 3.0, 4: 1.0, 8: 0.2, 10: 0.0}  # below 2 held, 0 at the full count
    for u, v in [(0, 2), (2, 4), (4, 8), (8, 10), (0, 10)]:
        assert sum(imp[u:v]) == pytest.approx(level[u] - level[v])
    assert sum(imp[3:6]) == pytest.approx(2.0 - 0.6)  # interpolated: D(3) = 2.0, D(6) = 0.6
    # a measured curve that rises with the count kept (noise) is flattened, never negative
    bumpy = curve_importance([2, 4, 8], [1.0, 1.5, 0.0], 8)
    assert min(bumpy) >= 0 and sum(bumpy[2:8]) == pytest.approx(1.5)


class _TwoBranch(nn.Module):
    """Two hidden layers side by side; the second branch's head is scaled to barely count."""

    def __init__(self) -> None:
        super().__init__()
        self.fc_a, self.fc_b = nn.Linear(16, 32), nn.Linear(16, 32)
        self.head_a, self.head_b = nn.Linear(32, 4), nn.Linear(32, 4)
        with torch.no_grad():
            self.head_b.weight.mul_(0.01)
            self.head_b.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_a(torch.relu(self.fc_a(x))) + self.head_b(torch.relu(self.fc_b(x)))


def _branch_data(n: int = 256) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 16, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    return [(x[i : i + 64], y[i : i + 64]) for i in range(0, n, 64)]


def test_distortion_curves_measure_what_cutting_one_group_does() -> None:
    torch.manual_seed(0)
    model, example = _TwoBranch(), (torch.randn(1, 16),)
    groups = find_channel_groups(model, example)
    hidden = {g.members[0].name.split(".")[0]: i for i, g in enumerate(groups) if g.size == 32}
    gates = ChannelGates(model, groups)
    with torch.no_grad():
        gates.alphas[hidden["fc_a"]][5] = 0.0  # a gate already at zero stays zero in every measurement
    ranks = magnitude_scores(gates, model)
    counts = [[1, 8, 16, 31, 32] if g.size == 32 else [g.num_units] for g in groups]
    model.train()
    curves = distortion_curves(gates, model, _branch_data(), ranks, counts, max_batches=3)
    assert model.training  # mode restored, and the gates
    assert float(gates.alphas[hidden["fc_a"]][5].detach()) == 0.0
    assert all(float(a.detach().min()) == 1.0 for i, a in enumerate(gates.alphas) if i != hidden["fc_a"])
    a, b = curves[hidden["fc_a"]], curves[hidden["fc_b"]]
    assert a[-1] == 0.0 and b[-1] == 0.0  # every unit kept: the outputs do not move
    assert a[3] == pytest.approx(0.0, abs=1e-7)  # 31 kept: the unit cut is the one already at zero
    assert a[0] > a[1] > a[2] > 0  # fewer units kept, further from the outputs
    assert b[0] < 0.01 * a[0]  # the branch whose head barely counts barely moves them
    # the same numbers by hand for one entry: KL of the class distribution, mean over samples
    xb = torch.cat([x for x, _ in _branch_data()[:3]])
    model.eval()
    with torch.no_grad():
        ref = torch.log_softmax(model(xb), -1)
        order = torch.argsort(ranks[hidden["fc_a"]], descending=True, stable=True)
        gates.alphas[hidden["fc_a"]][order[8:]] = 0.0
        out = torch.log_softmax(model(xb), -1)
        gates.alphas[hidden["fc_a"]].fill_(1.0)
        gates.alphas[hidden["fc_a"]][5] = 0.0
    assert a[1] == pytest.approx(float((ref.exp() * (ref - out)).sum(-1).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="at least one batch"):
        distortion_curves(gates, model, [], ranks, counts)


class _ConstantUnits(nn.Module):
    """fc1 -> relu -> fc2 -> batch norm -> head; fc1's first four units output a constant 1."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.bn, self.head = (
            nn.Linear(16, 32),
            nn.Linear(32, 8),
            nn.BatchNorm1d(8),
            nn.Linear(8, 4),
        )
        with torch.no_grad():
            self.fc1.weight[:4] = 0.0
            self.fc1.bias[:4] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.fc2(torch.relu(self.fc1(x))))))


def test_distortion_curves_with_batch_statistics_do_not_charge_a_cut_for_stale_norm_statistics() -> None:
    torch.manual_seed(0)
    model, example = _ConstantUnits(), (torch.randn(2, 16),)
    data = [*_branch_data(), (torch.randn(1, 16), torch.zeros(1, dtype=torch.long))]  # a last batch of one
    model.bn.momentum = None
    model.train()
    with torch.no_grad():
        for xb, _ in data[:-1]:
            model(xb)  # running statistics of the uncut model
    gates = ChannelGates(model, find_channel_groups(model, example))
    g = next(i for i, grp in enumerate(gates.groups) if grp.members[0].name.startswith("fc1"))
    ranks = magnitude_scores(gates, model)
    ranks[g][:4] = -1.0  # the constant units go first
    counts = [[28, 16, 32] if i == g else [grp.num_units] for i, grp in enumerate(gates.groups)]
    buffers = {k: v.clone() for k, v in model.bn.named_buffers()}
    stale = distortion_curves(gates, model, data, ranks, counts)[g]
    fresh = distortion_curves(gates, model, data, ranks, counts, batch_stats=True)[g]
    assert model.training and model.bn.momentum is None  # the norm as it was, statistics untouched
    assert all(torch.equal(v, buffers[k]) for k, v in model.bn.named_buffers())
    # dropping the constant units only shifts what the norm sees: its own batch statistics absorb it
    assert stale[0] > 1e-3 and fresh[0] < 1e-6 and fresh[0] < 1e-3 * stale[0]
    assert fresh[1] > 1e-3 and stale[2] == fresh[2] == 0.0  # a real cut still counts; none, nothing
    # by hand: the cut to 16 with the norm on each batch's statistics, mean KL over the full batches
    model.eval()
    model.bn.train()
    model.bn.momentum = 0.0
    order = torch.argsort(ranks[g], descending=True, stable=True)
    kl, n = 0.0, 0
    with torch.no_grad():
        for xb, _ in data[:-1]:
            ref = torch.log_softmax(model(xb), -1)
            gates.alphas[g][order[16:]] = 0.0
            out = torch.log_softmax(model(xb), -1)
            gates.alphas[g].fill_(1.0)
            kl, n = kl + float((ref.exp() * (ref - out)).sum()), n + xb.shape[0]
    assert fresh[1] == pytest.approx(kl / n, rel=1e-5)


def test_distortion_importance_fits_a_time_budget_with_fewer_batches_then_fewer_widths(caplog) -> None:
    torch.manual_seed(0)
    model, example = _TwoBranch(), (torch.randn(1, 16),)
    gates = ChannelGates(model, find_channel_groups(model, example))
    ranks = magnitude_scores(gates, model)
    lows, aligns = [1] * len(gates.groups), [1] * len(gates.groups)
    full = distortion_importance(gates, model, _branch_data(), ranks, lows, aligns, max_points=32)
    with caplog.at_level("INFO", logger="edgetrim.compress.importance"):
        cheap = distortion_importance(
            gates, model, _branch_data(), ranks, lows, aligns, max_points=32, time_budget_s=1e-9
        )
    assert "on 2 batches at up to 6 widths per group" in caplog.text
    for f, c, g in zip(full, cheap, gates.groups):
        assert len(f) == len(c) == g.num_units and min(c) >= 0
        # the same total from the narrowest measured width up: the curves agree where both measure
        assert sum(c) == pytest.approx(sum(f), rel=0.5)
    with pytest.raises(ValueError, match="at least one batch"):
        distortion_importance(gates, model, [], ranks, lows, aligns)


def test_distortion_allocation_cuts_the_group_the_outputs_need_least(make_table) -> None:
    torch.manual_seed(0)
    model, example = _TwoBranch(), (torch.randn(1, 16),)
    fusion = fusion_for_runtime("onnxruntime")
    table = make_table(extract_layer_ops(model, example, fusion=fusion))
    dense = model_latency_ms(table, extract_layer_ops(model, example, fusion=fusion))
    data = _branch_data()
    kw = {"epochs": 0, "finetune_epochs": 0, "align": 1}
    with pytest.raises(BudgetError) as floor:
        compress(model, example, CompressConfig(budget_ms=1e-6, **kw), table=table, train_loader=data,
                 val_loader=data)  # fmt: skip
    budget = floor.value.smallest + 0.75 * (dense - floor.value.smallest)
    widths = {}
    for allocation in ("share", "distortion", "distortion_bn"):
        cfg = CompressConfig(budget_ms=budget, allocation=allocation, **kw)
        rep = compress(model, example, cfg, table=table, train_loader=data, val_loader=data).report
        assert rep.predicted_ms <= budget + 1e-12
        assert rep.config["allocation"] == allocation
        widths[allocation] = rep.widths_after
    a = next(k for k in widths["share"] if k.startswith("fc_a"))
    b = next(k for k in widths["share"] if k.startswith("fc_b"))
    assert widths["distortion"][a] == 32 and widths["distortion"][b] < 32  # only the idle branch goes
    assert widths["distortion_bn"] == widths["distortion"]  # no batch norm: the same measurement
    assert widths["share"][a] < 32  # the share fit cannot tell the branches apart by their outputs
    with pytest.raises(ValueError, match="allocation must be"):
        CompressConfig(budget_ms=1.0, allocation="random")


def test_batch_statistics_normalises_per_batch_and_puts_the_norm_back_even_after_an_error() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).eval()
    x = torch.randn(16, 4) * 5 + 3
    buffers = {k: v.clone() for k, v in model[1].named_buffers()}
    with pytest.raises(RuntimeError), batch_statistics(model):
        y = model(x)
        assert model[1].training and not model[0].training
        assert torch.allclose(y.mean(0), torch.zeros(3), atol=1e-5)  # this batch's own mean
        raise RuntimeError("interrupted")
    assert not model[1].training  # its mode back
    assert all(torch.equal(v, buffers[k]) for k, v in model[1].named_buffers())  # statistics untouched
    with batch_statistics(model, enabled=False):
        assert not model[1].training
