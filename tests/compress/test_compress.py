"""End-to-end compression on digits with synthetic staircase tables (no profiling)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from edgetrim.compress.api import compress, model_latency_ms
from edgetrim.compress.config import Block, CompressConfig, config_from_dict
from edgetrim.compress.gates import ChannelGates
from edgetrim.compress.graph import find_channel_groups
from edgetrim.compress.lowrank import factorize_
from edgetrim.compress.quant import BITS, attach_quant_, bake_quant_
from edgetrim.errors import BudgetError, EdgetrimError, UncoveredOpError
from edgetrim.examples.data import digits_loaders
from edgetrim.examples.models import mlp
from edgetrim.lookup_tables import LatencyTable
from edgetrim.model_ops import extract_layer_ops, fusion_for_runtime


def _fast_config(**kw) -> CompressConfig:
    base = {"epochs": 2, "finetune_epochs": 1, "lr": 3e-3, "gate_lr": 0.1, "dual_lr": 1.0}
    return CompressConfig(**(base | kw))


def test_budget_met_on_a_staircase_table_and_widths_on_the_fast_side(trained_mlp) -> None:
    model, example, train, val, table, budget = trained_mlp
    result = compress(
        model, example, _fast_config(budget_ms=budget), table=table, train_loader=train, val_loader=val
    )
    rep = result.report
    assert rep.predicted_ms <= budget + 1e-12
    # the real table's prediction of the materialised model is what the report says
    ops = extract_layer_ops(result.model, example, fusion=fusion_for_runtime("onnxruntime"))
    assert model_latency_ms(table, ops) == pytest.approx(rep.predicted_ms, rel=1e-9)
    # fast side: widening any one group within its size costs strictly more on the real table
    linears = [m for m in result.model.modules() if isinstance(m, nn.Linear)]
    widths = [m.out_features for m in linears[:-1]]
    dense = [40, 24]
    for g, w in enumerate(widths):
        for wider in range(w + 1, dense[g] + 1):
            ws = list(widths)
            ws[g] = wider
            m2, ex2 = mlp(widths=tuple(ws))
            ops2 = extract_layer_ops(m2, ex2, fusion=fusion_for_runtime("onnxruntime"))
            assert model_latency_ms(table, ops2) > rep.predicted_ms + 1e-12, (g, w, wider)
    assert rep.accuracy > 0.5
    assert json.dumps(rep.to_info())  # JSON-serialisable run.json content


def test_projection_gives_exact_zeros(trained_mlp) -> None:
    model, example, train, val, table, _ = trained_mlp
    result = compress(
        model,
        example,
        _fast_config(lam=20.0, finetune_epochs=0),
        table=table,
        train_loader=train,
        val_loader=val,
    )
    requested = result.report.widths_requested
    assert any(w < 40 for w in requested.values()) or any(w < 24 for w in requested.values())
    last = result.report.history[-1]["widths"]
    assert last == list(requested.values())


def test_projection_keeps_gates_non_negative_and_exact() -> None:
    torch.manual_seed(0)
    model, example = mlp(widths=(16, 8))
    gates = ChannelGates(model, find_channel_groups(model, example))
    with torch.no_grad():
        for a in gates.alphas:
            a.copy_(torch.linspace(-1, 1, a.numel()))
    gates.project_()
    for a in gates.alphas:
        a = a.detach()
        assert (a >= 0).all() and int((a == 0).sum()) == a.numel() // 2  # exact zeros, no threshold


def test_unreachable_budget_says_the_smallest_reachable(trained_mlp) -> None:
    model, example, train, val, table, budget = trained_mlp
    with pytest.raises(BudgetError, match="smallest reachable latency") as info:
        compress(
            model,
            example,
            _fast_config(budget_ms=budget * 1e-3),
            table=table,
            train_loader=train,
            val_loader=val,
        )
    # the floor travels with the error, in the budget's unit, matching the message
    assert info.value.smallest is not None and budget * 1e-3 < info.value.smallest < budget
    assert f"{info.value.smallest:.4g}" in str(info.value)


def test_missing_context_names_the_layer(trained_mlp) -> None:
    model, example, train, val, table, budget = trained_mlp
    partial = LatencyTable(table.device)
    ctx = table.contexts()[0]
    for i, o, s in table.points(ctx):
        partial.record(ctx, i, o, s)
    with pytest.raises(UncoveredOpError, match="needed by layer"):
        compress(
            model, example, _fast_config(budget_ms=budget), table=partial, train_loader=train, val_loader=val
        )


def test_data_that_does_not_fit_is_a_one_line_error(trained_mlp) -> None:
    model, example, _, _, table, budget = trained_mlp
    train, val = digits_loaders(flat=False)  # (N, 1, 8, 8) images for a flat MLP
    with pytest.raises(EdgetrimError, match="data does not fit the model"):
        compress(
            model, example, _fast_config(budget_ms=budget), table=table, train_loader=train, val_loader=val
        )


def test_low_rank_at_full_rank_reconstructs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Conv2d(1, 1, 1))
    net = nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 7))
    conv = nn.Sequential(nn.Conv2d(6, 9, 1, stride=2), nn.ReLU())
    x, xc = torch.randn(5, 12), torch.randn(2, 6, 5, 5)
    ref, refc = net(x), conv(xc)
    factorize_(net, ["0", "2"])
    factorize_(conv, ["0"])
    torch.testing.assert_close(net(x), ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(conv(xc), refc, rtol=0, atol=1e-5)
    assert model is not None


def test_quantised_weights_bake_to_their_integer_codes() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(10, 6)
    q = attach_quant_(layer)
    with torch.no_grad():
        q.gates.copy_(torch.tensor([1.0, 0.0, 1.0]))  # 8 and 16 dropped: 4 bits
    assert q.bits() == 4
    out_masked = layer(torch.ones(1, 10))
    (rec,) = bake_quant_(layer)
    assert rec.bits == 4 and rec.bits in BITS
    torch.testing.assert_close(layer.weight, rec.codes.float() * rec.scale)
    assert rec.codes.abs().max() <= 7
    torch.testing.assert_close(layer(torch.ones(1, 10)), out_masked, rtol=1e-5, atol=1e-6)


def test_resume_continues_from_the_checkpoint(trained_mlp, tmp_path) -> None:
    model, example, train, val, table, budget = trained_mlp
    cfg1 = _fast_config(budget_ms=budget, epochs=1, finetune_epochs=0)
    compress(model, example, cfg1, table=table, train_loader=train, val_loader=val, checkpoint_dir=tmp_path)
    assert (tmp_path / "checkpoint.pt").is_file()
    cfg2 = _fast_config(budget_ms=budget, epochs=2, finetune_epochs=0)
    res = compress(
        model,
        example,
        cfg2,
        table=table,
        train_loader=train,
        val_loader=val,
        checkpoint_dir=tmp_path,
        resume=True,
    )
    assert [h["epoch"] for h in res.report.history] == [1, 2]


def test_config_round_trip_and_validation() -> None:
    cfg = CompressConfig(budget_ms=1.5, blocks=frozenset({Block.PRUNE, Block.QUANT}), ignore=("a",))
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="exactly one"):
        CompressConfig(budget_ms=1.0, lam=0.1)
    with pytest.raises(ValueError, match="budget_ms must be > 0"):
        CompressConfig(budget_ms=-1.0)
    with pytest.raises(ValueError, match="finetune_schedule"):
        CompressConfig(budget_ms=1.0, finetune_schedule="step")
    constant = CompressConfig(budget_ms=1.0, finetune_schedule="constant")
    assert config_from_dict(json.loads(json.dumps(constant.to_dict()))) == constant


def test_batched_surrogate_matches_term_by_term(trained_mlp) -> None:
    from edgetrim.compress.latency_model import LatencyModel, bind_layer_terms

    model, example, _, _, table, _ = trained_mlp
    extract = lambda m, x: extract_layer_ops(m, x, fusion=fusion_for_runtime("onnxruntime"))  # noqa: E731
    groups = find_channel_groups(model, example)
    cost = LatencyModel(
        table, bind_layer_terms(model, example, groups, extract=extract), [g.unit for g in groups]
    )
    counts = [torch.tensor(17.3), torch.tensor(9.6)]
    torch.testing.assert_close(cost.soft_ms(counts), cost.soft_ms_reference(counts), rtol=1e-6, atol=1e-9)
    # at the dense widths the envelope never exceeds the real staircase
    assert float(cost.soft_ms([torch.tensor(40.0), torch.tensor(24.0)])) <= cost.hard_ms([40, 24]) + 1e-9


def test_all_blocks_together_save_bits_and_integer_codes(trained_mlp, tmp_path) -> None:
    from edgetrim.compress.api import QUANTIZED_FILE, save_result
    from edgetrim.compress.run_folder import load_run

    model, example, train, val, table, _ = trained_mlp
    # a factorised layer adds a second kernel's fixed cost, so use a fixed lambda rather than a budget
    cfg = _fast_config(
        lam=5.0, blocks=frozenset({Block.PRUNE, Block.LOWRANK, Block.QUANT}), bits_lambda=1.0,
        lowrank_min_width=16,
    )  # fmt: skip
    res = compress(model, example, cfg, table=table, train_loader=train, val_loader=val)
    rep = res.report
    assert rep.factorized == ["features.0", "features.2"]  # the classifier is never factorised
    assert rep.bits and set(rep.bits.values()) <= set(BITS)
    root = save_result(tmp_path / "run", res)
    codes = torch.load(root / QUANTIZED_FILE)
    run = load_run(root)
    for name, rec in codes.items():
        weight = run.model.get_submodule(name).weight
        torch.testing.assert_close(weight, rec["codes"].float() * rec["scale"])  # fp32 holds the grid values
    assert run.info["kind"] == "compress" and run.info["bits"] == rep.bits


def test_low_rank_plus_pruning_materialises_with_parity() -> None:
    torch.manual_seed(0)
    model, example = mlp(widths=(40, 24))
    factorize_(model, ["features.0", "features.2"])
    groups = find_channel_groups(model, example)
    gates = ChannelGates(model, groups)
    with torch.no_grad():
        for a in gates.alphas:
            a.copy_(torch.rand_like(a) * (torch.rand_like(a) > 0.4))
            a[0] = 1.0
    x = torch.randn(4, 64)
    with torch.no_grad():
        torch.testing.assert_close(gates.materialize(example)(x), model(x), rtol=1e-4, atol=1e-5)


def test_sparse_block_keeps_the_l1l2_count_of_weights_exactly(trained_mlp) -> None:
    model, example, train, val, table, _ = trained_mlp
    cfg = _fast_config(lam=0.0, blocks=frozenset({Block.SPARSE}), sparse_lambda=1.0)
    res = compress(model, example, cfg, table=table, train_loader=train, val_loader=val)
    assert res.report.sparsity and all(0.0 < s < 1.0 for s in res.report.sparsity.values())
    # the zeros survive the fine-tune exactly; the classifier stays dense
    first = res.model.features[0].weight
    assert float((first == 0).float().mean()) == pytest.approx(res.report.sparsity["features.0.weight"])
    assert "classifier.weight" not in res.report.sparsity


def test_untraceable_model_error_names_the_module(trained_mlp) -> None:
    from edgetrim.errors import ModelSpecError

    _, example, train, val, table, budget = trained_mlp

    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(64, 8)
            self.head = nn.Linear(9, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    with pytest.raises(ModelSpecError, match="'head'"):
        compress(
            Broken(), example, _fast_config(budget_ms=budget), table=table, train_loader=train, val_loader=val
        )


def test_kept_channels_are_the_ones_the_width_fit_counts_most_important(trained_mlp) -> None:
    """Without a penalised epoch every gate is 1, so ``|alpha|`` cannot rank the units: the channels
    kept must be those with the largest consumer column norm (the importance the fit spends)."""
    model, example, train, val, table, budget = trained_mlp
    cfg = _fast_config(budget_ms=budget, epochs=0, finetune_epochs=0)
    result = compress(model, example, cfg, table=table, train_loader=train, val_loader=val)
    dense_first, dense_second = [m for m in model.modules() if isinstance(m, nn.Linear)][:2]
    small_first = next(m for m in result.model.modules() if isinstance(m, nn.Linear))
    width = small_first.out_features
    assert width < dense_first.out_features
    col_norms = dense_second.weight.detach().norm(dim=0)  # one per hidden unit of the first layer
    expected = torch.sort(torch.argsort(col_norms, descending=True)[:width]).values
    assert torch.equal(small_first.weight.detach(), dense_first.weight.detach()[expected])
    # the default ranking (|alpha|, all equal) would have kept the first units instead
    assert not torch.equal(expected, torch.arange(width))


def test_keep_indices_follow_the_scores_given() -> None:
    torch.manual_seed(0)
    model, example = mlp(widths=(6, 4))
    gates = ChannelGates(model, find_channel_groups(model, example))
    scores = [torch.arange(g.num_units, dtype=torch.float32) for g in gates.groups]  # last units best
    keep = gates.keep_indices([2] * len(gates.groups), scores=scores)
    for g in gates.groups:
        assert keep[g.id].tolist() == [g.num_units - 2, g.num_units - 1]
    assert all(k.tolist() == [0, 1] for k in gates.keep_indices([2] * len(gates.groups)).values())
    gates.detach_hooks()


def test_masks_and_bit_gates_step_at_their_own_rates(trained_mlp) -> None:
    from edgetrim.compress.latency_model import LatencyModel, bind_layer_terms, default_extractor
    from edgetrim.compress.train import PenaltyTrainer

    model, example, _, _, table, budget = trained_mlp
    work = copy.deepcopy(model)
    groups = find_channel_groups(work, example)
    terms = bind_layer_terms(work, example, groups, extract=default_extractor("onnxruntime"))
    cost = LatencyModel(table, terms, [g.unit for g in groups])
    gates = ChannelGates(work, groups)
    quants = {n: attach_quant_(m) for n, m in work.named_modules() if isinstance(m, nn.Linear)}
    blocks = frozenset({Block.PRUNE, Block.QUANT})
    cfg = CompressConfig(budget_ms=budget, blocks=blocks, gate_lr=0.002, bits_lr=0.07)
    sizes = [g.size for g in gates.groups]
    trainer = PenaltyTrainer(
        work, gates, quants, cost, cfg, dense_widths=sizes, dense_cost=cost.hard_ms(sizes),
        cost_fn=cost.hard_ms, budget=budget,
    )  # fmt: skip
    by_param = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert {by_param[id(a)] for a in gates.alphas} == {0.002}
    assert {by_param[id(q.gates)] for q in quants.values()} == {0.07}
    gate_ids = {id(a) for a in gates.alphas} | {id(q.gates) for q in quants.values()}
    assert {lr for pid, lr in by_param.items() if pid not in gate_ids} == {cfg.lr}
    with pytest.raises(ValueError, match="bits_lr must be > 0"):
        CompressConfig(lam=0.0, bits_lr=0.0)


def test_a_table_not_monotone_in_width_still_meets_the_budget(make_table) -> None:
    # The middle layer costs 10 at (8, 8), 12 when only one side narrows and 1 when both do: no
    # single group's step down is cheaper, yet the floor fits, so the fit grows back from there.
    def ms(_ctx, i: int, o: int) -> float:
        if i > 8 or o > 8:
            return 1.0
        return 10.0 if (i, o) == (8, 8) else 12.0 if 8 in (i, o) else 1.0

    torch.manual_seed(0)
    model, example = mlp(widths=(8, 8))
    train, val = digits_loaders(flat=True, batch_size=256)
    ops = extract_layer_ops(model, example, fusion=fusion_for_runtime("onnxruntime"))
    table = make_table(ops, ms_of=ms)
    assert model_latency_ms(table, ops) == pytest.approx(12.0)
    cfg = CompressConfig(budget_ms=6.0, epochs=0, finetune_epochs=0)
    result = compress(model, example, cfg, table=table, train_loader=train, val_loader=val)
    assert result.report.predicted_ms == pytest.approx(3.0)  # 1 + 1 + 1, under the budget of 6
    assert list(result.report.widths_after.values()) == [7, 7]
