"""run_safs end to end on a tiny MLP (all four ablation arms), the latency model, and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edgetrim.compress.run_folder import load_run
from edgetrim.compress.safs import SafsConfig, SearchConfig, pretrain_dense_, run_safs
from edgetrim.compress.safs.hpo import HPOConfig
from edgetrim.compress.safs.latency import ActivationLatencyModel
from edgetrim.compress.safs.surgery import activation_shapes, replace_activations
from edgetrim.compress.safs.train import FinetuneConfig
from edgetrim.errors import BudgetError
from edgetrim.examples.data import digits_arrays


@pytest.fixture(scope="module")
def digits_small():
    a = digits_arrays(flat=True)
    train = (torch.from_numpy(a.x_train[:400]), torch.from_numpy(a.y_train[:400]))
    test = (torch.from_numpy(a.x_val[:200]), torch.from_numpy(a.y_val[:200]))
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))
    pretrain_dense_(dense, train, FinetuneConfig(epochs=5, lr=1e-2), seed=0)
    return dense.eval(), train, test


def _cfg(stage1: bool, stage2: bool, **kw) -> SafsConfig:
    kw.setdefault("sparsity", 0.9)
    return SafsConfig(
        stage1=stage1,
        stage2=stage2,
        search=SearchConfig(max_evals=3, min_steps=2, space=("relu", "symlog", "swish")),
        stage1_epochs=1,
        hpo=HPOConfig(trials=2, folds=2, backend="random"),
        finetune=FinetuneConfig(epochs=2, lr=1e-2),
        **kw,
    )


@pytest.mark.parametrize(
    "arms", [(False, False), (True, False), (False, True), (True, True)], ids=["relu", "s1", "s2", "safs"]
)
def test_ablation_arms_run_and_keep_masks(digits_small, arms) -> None:
    dense, train, test = digits_small
    model, rep = run_safs(dense, (torch.zeros(1, 64),), train, test, _cfg(*arms))
    assert rep.masks_intact
    assert rep.sparsity == pytest.approx(0.9, abs=0.01)
    assert len(rep.chromosome) == 2 and 0.0 <= rep.test_accuracy <= 1.0
    assert (rep.stage1 is not None) == arms[0] and (rep.stage2 is not None) == arms[1]
    if arms[1]:
        assert rep.stage2["best_kfold_accuracy"] >= rep.stage2["default_kfold_accuracy"]
    assert not [p for p in model.parameters() if p.requires_grad and p.dim() == 0]  # scalars baked
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    kept = sum(int((w != 0).sum()) for w in weights)
    assert kept <= rep.kept_weights


def test_latency_model_prices_fused_relu_free_and_others_per_element() -> None:
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    res = replace_activations(net)
    lat = ActivationLatencyModel(res.sites, activation_shapes(res.model, (torch.zeros(1, 8),)), base_ms=1.0)
    assert lat.total_ms(["relu"]) == 1.0  # fused into the linear
    assert lat.total_ms(["symlog"]) > lat.total_ms(["swish"]) > 1.0  # more primitives cost more
    assert not lat.calibrated


def test_latency_budget_is_enforced(digits_small) -> None:
    dense, train, test = digits_small
    with pytest.raises(BudgetError):
        run_safs(
            dense, (torch.zeros(1, 64),), train, test, _cfg(True, False, latency_budget_ms=0.5), base_ms=1.0
        )
    # a budget that only ReLU meets keeps every site ReLU
    _, rep = run_safs(
        dense, (torch.zeros(1, 64),), train, test, _cfg(True, False, latency_budget_ms=1.0), base_ms=1.0
    )
    assert rep.chromosome == ["relu", "relu"]


def test_safs_cli_writes_a_run_folder(tmp_path) -> None:
    from edgetrim.cli import app

    out = tmp_path / "run"
    args = [
        "safs", "--model", "mlp", "--data", "digits_flat", "--out", str(out), "--sparsity", "0.9",
        "--stage1-evals", "2", "--stage2-trials", "2", "--folds", "2", "--stage1-epochs", "1",
        "--finetune-epochs", "1", "--pretrain-epochs", "1", "--hpo", "random", "--json",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    run = load_run(out)
    assert run.info["kind"] == "safs" and run.info["accuracy"] == summary["accuracy"]
    assert (out / "stage1_state.json").is_file()
    y = run.model(*run.example_inputs)
    assert y.shape == (1, 10)


def test_safs_cli_one_line_error_on_bad_scope(tmp_path) -> None:
    from edgetrim.cli import app

    result = CliRunner().invoke(
        app, ["safs", "--model", "mlp", "--data", "digits_flat", "--out", str(tmp_path), "--scope", "bogus"]
    )
    assert result.exit_code == 2
    assert "error: --scope must be one of" in result.output


def _stats(ms: float):
    from edgetrim.types import LatencyStats

    return LatencyStats(median_ms=ms, p10_ms=ms, p90_ms=ms, mean_ms=ms, std_ms=0.0, n=1)


def test_latency_model_uses_table_activation_contexts_and_calibrates_the_rest() -> None:
    from edgetrim.lookup_tables import LatencyTable
    from edgetrim.types import DeviceInfo, OpContext, OpKind

    table = LatencyTable(
        DeviceInfo(target="ort-cpu", runtime="onnxruntime", runtime_version="x", device="cpu")
    )
    ctx = OpContext(kind=OpKind.ACTIVATION, variant="symlog")
    for w in (8, 16, 32):
        table.record(ctx, w, w, _stats(0.001 * w))  # 1 us per channel at spatial 1x1
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    res = replace_activations(net)
    lat = ActivationLatencyModel(res.sites, activation_shapes(res.model, (torch.zeros(1, 8),)), table=table)
    assert lat.site_ms(0, "symlog") == pytest.approx(0.016, rel=1e-6)  # read from the table at 16 channels
    assert lat.calibrated
    # swish has no context: per-element cost calibrated from symlog's ms / (elements * primitives)
    per = 0.001 / 6  # symlog lowers to 6 primitives
    assert lat.ms_per_primitive_element == pytest.approx(per)
    assert lat.site_ms(0, "swish") == pytest.approx(16 * 3 * per)
    assert lat.site_ms(0, "relu") == 0.0


def test_external_mask_from_a_sparse_model_is_kept(digits_small) -> None:
    import copy

    from edgetrim.compress.safs.train import magnitude_masks, masks_from_weights

    dense, train, test = digits_small
    sparse = copy.deepcopy(dense)
    given = magnitude_masks(sparse, 0.8, scope="global")
    with torch.no_grad():
        for name, p in sparse.named_parameters():
            if name in given:
                p.mul_(given[name])
    masks = masks_from_weights(sparse)
    assert all(torch.equal(masks[n], given[n]) for n in given)
    _, rep = run_safs(
        sparse, (torch.zeros(1, 64),), train, test, _cfg(False, False, sparsity=0.99), masks=masks
    )
    assert rep.kept_weights == sum(int(m.sum()) for m in given.values())
    assert rep.sparsity == pytest.approx(0.8, abs=0.01)  # the given mask, not the 0.99 magnitude ratio
    assert rep.masks_intact


def test_kfold_fitness_breaks_accuracy_ties_by_loss() -> None:
    from edgetrim.compress.safs.pipeline import kfold_fitness

    assert kfold_fitness([0.1, 0.1], [2.0, 2.0]) > kfold_fitness([0.1, 0.1], [2.3, 2.3])
    assert kfold_fitness([0.3, 0.3], [9.0, 9.0]) > kfold_fitness([0.2, 0.2], [0.1, 0.1])  # accuracy decides
    assert kfold_fitness([0.1], [float("nan")]) == kfold_fitness([0.1], [None]) == 0.1 - 0.1


def test_chance_floor_is_the_majority_share_plus_three_sigma() -> None:
    from edgetrim.compress.safs.pipeline import chance_floor

    y = torch.arange(10).repeat(100)  # 1000 samples, 10 balanced classes
    assert chance_floor(y) == pytest.approx(0.1 + 3 * math.sqrt(0.1 * 0.9 / 1000))
    assert chance_floor(torch.zeros(50, dtype=torch.long)) == pytest.approx(
        1.0
    )  # one class: nothing beats it


def _fake_finetune(monkeypatch, score, diverges=None):
    """Replace the masked fine-tune in the pipeline by ``score(ops, learnable, cfg) -> val accuracy``.

    Weights are left as they are (the masks stay exact); only the validation report is scripted, so the
    tests pin down which configuration each stage selection keeps.
    """
    from edgetrim.compress.safs import pipeline
    from edgetrim.compress.safs.activations import ParametricActivation
    from edgetrim.compress.safs.train import FinetuneReport

    def fake(model, masks, x, y, cfg, *, seed=0, val=None):
        acts = [m for m in model.modules() if isinstance(m, ParametricActivation)]
        ops = tuple(m.op_name for m in acts)
        learnable = any(p.requires_grad for m in acts for p in m.scalars.values())
        acc = score(ops, learnable, cfg) if val is not None else None
        diverged = diverges is not None and diverges(ops, learnable, cfg, val is not None)
        return FinetuneReport(0.0, acc, None if acc is None else 1.0, cfg.epochs, diverged=diverged)

    monkeypatch.setattr(pipeline, "finetune_", fake)


def _selection_cfg(stage1: bool, stage2: bool, check: bool) -> SafsConfig:
    return SafsConfig(
        sparsity=0.9,
        stage1=stage1,
        stage2=stage2,
        search=SearchConfig(max_evals=3, min_steps=2, space=("symlog", "swish")),  # never the original
        stage1_epochs=1,
        hpo=HPOConfig(trials=3, folds=2, backend="random"),
        stage2_epochs=2,
        finetune=FinetuneConfig(epochs=6),
        incumbent_check=check,
    )


@pytest.mark.parametrize("check", [True, False])
def test_stage1_winner_must_beat_the_original_at_final_length(digits_small, monkeypatch, check) -> None:
    dense, train, test = digits_small

    def score(ops, learnable, cfg):  # the new operators look better after 1 epoch, worse after 6
        if all(op == "relu" for op in ops):
            return 0.8
        return 0.9 if cfg.epochs == 1 else 0.7

    _fake_finetune(monkeypatch, score)
    _, rep = run_safs(dense, (torch.zeros(1, 64),), train, test, _selection_cfg(True, False, check))
    assert rep.stage1["best"] != ["relu", "relu"]  # the search itself picked new operators
    if check:
        assert rep.chromosome == ["relu", "relu"]  # ... which lose at the final length: original kept
        assert rep.stage1["incumbent_check"]["accepted"] is False
        assert rep.stage1["incumbent_check"]["incumbent"]["kfold_accuracy"] == pytest.approx(0.8)
        # final length in optimiser steps: each of the 2 folds trains on half the data, so 2 x 6 epochs
        assert rep.stage1["incumbent_check"]["candidate"]["fold_epochs"] == [12, 12]
    else:
        assert rep.chromosome == rep.stage1["best"] and rep.stage1["incumbent_check"] is None


def test_stage1_winner_that_wins_at_final_length_is_kept(digits_small, monkeypatch) -> None:
    dense, train, test = digits_small
    _fake_finetune(monkeypatch, lambda ops, learnable, cfg: 0.8 if all(op == "relu" for op in ops) else 0.85)
    _, rep = run_safs(dense, (torch.zeros(1, 64),), train, test, _selection_cfg(True, False, True))
    assert rep.chromosome == rep.stage1["best"] != ["relu", "relu"]
    assert rep.stage1["incumbent_check"]["accepted"] is True


@pytest.mark.parametrize("final_winner", ["tuned", "incumbent"])
def test_stage2_recipe_must_beat_frozen_scalars_and_default_at_final_length(
    digits_small, monkeypatch, final_winner
) -> None:
    dense, train, test = digits_small
    default = FinetuneConfig(epochs=6)

    def score(ops, learnable, cfg):
        tuned = cfg.lr != default.lr
        if cfg.epochs == 2:  # HPO trials: every sampled recipe beats the default
            return 0.9 if tuned else 0.5
        if not learnable and not tuned:
            return 0.8  # the incumbent at the final length
        return 0.85 if final_winner == "tuned" else 0.6  # e.g. a recipe that diverges after the trials

    _fake_finetune(monkeypatch, score)
    _, rep = run_safs(dense, (torch.zeros(1, 64),), train, test, _selection_cfg(False, True, True))
    assert rep.stage2["best"]["lr"] != default.lr  # HPO chose a tuned recipe on its short trials
    if final_winner == "tuned":
        assert rep.stage2["learned_scalars"] and rep.finetune["lr"] == rep.stage2["best"]["lr"]
        assert rep.finetune["epochs"] == 6
    else:
        assert not rep.stage2["learned_scalars"] and rep.finetune == default.to_dict()
        assert rep.stage2["incumbent_check"]["candidate"]["kfold_accuracy"] == pytest.approx(0.6)


def test_a_diverged_final_finetune_falls_back_to_stage2s_incumbent(digits_small, monkeypatch) -> None:
    dense, train, test = digits_small
    default = FinetuneConfig(epochs=6)

    def score(ops, learnable, cfg):  # the tuned recipe wins every validation, trials and check alike
        return 0.9 if cfg.lr != default.lr else 0.5

    def diverges(ops, learnable, cfg, has_val):  # ... but diverges in the final fine-tune on all data
        return not has_val and cfg.lr != default.lr

    _fake_finetune(monkeypatch, score, diverges)
    _, rep = run_safs(dense, (torch.zeros(1, 64),), train, test, _selection_cfg(False, True, True))
    assert rep.stage2["incumbent_check"]["accepted"] is True
    assert rep.stage2["final_diverged_fallback"] is True and rep.stage2["learned_scalars"] is False
    assert rep.finetune == default.to_dict()
    assert rep.masks_intact
