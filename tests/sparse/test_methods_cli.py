"""sparsify presets end to end on tiny digits runs, and the CLI through typer's CliRunner."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from edgetrim.cli import app
from edgetrim.compress.run_folder import load_run
from edgetrim.compress.sparse.config import SparsifyConfig
from edgetrim.compress.sparse.methods import sparsify
from edgetrim.compress.weight_masks import check_nm
from edgetrim.errors import EdgetrimError
from edgetrim.examples.data import digits_loaders
from edgetrim.examples.models import lenet5, mlp

QUICK = {"epochs": 2, "batches_per_epoch": 4, "update_every": 1, "lr": 0.05}


@pytest.fixture(scope="module")
def flat():
    return digits_loaders(flat=True, batch_size=32)


@pytest.fixture(scope="module")
def images():
    return digits_loaders(batch_size=32)


def _mlp():
    torch.manual_seed(0)
    return mlp(widths=(32, 16))


def test_granet_without_regeneration_is_gmp_exactly(flat) -> None:
    tr, va = flat
    m1, _ = _mlp()
    r1 = sparsify(m1, SparsifyConfig(method="gmp", sparsity=0.9, **QUICK), train_loader=tr, val_loader=va)
    m2, _ = _mlp()
    r2 = sparsify(
        m2,
        SparsifyConfig(method="granet", regrow=False, sparsity=0.9, **QUICK),
        train_loader=tr,
        val_loader=va,
    )
    for (n, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), n
    assert r1.history == r2.history
    m3, _ = _mlp()
    r3 = sparsify(m3, SparsifyConfig(method="granet", sparsity=0.9, **QUICK), train_loader=tr, val_loader=va)
    assert r3.cost["dense_gradient_steps"] > 0 and r1.cost["dense_gradient_steps"] == 0
    assert any(not torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m3.state_dict().values()))


@pytest.mark.parametrize(
    "kw",
    [
        {"method": "gmp"},
        {"method": "gmp", "allocation": "uniform"},
        {"method": "granet", "init_sparsity": 0.5},
        {"method": "rigl"},
        {"method": "set"},
        {"method": "static"},
        {"method": "pai", "criterion": "synflow", "pai_rounds": 5},
        {"method": "pai", "criterion": "grasp"},
        {"method": "lottery", "imp_rounds": 2, "rewind": "iteration", "rewind_iteration": 2},
        {"method": "freeze", "criterion": "snip"},
    ],
    ids=lambda kw: "-".join(str(v) for v in kw.values()),
)
def test_every_method_hits_exact_density(flat, kw) -> None:
    tr, va = flat
    model, _ = _mlp()
    cfg = SparsifyConfig(sparsity=0.8, **{**QUICK, **kw})
    report = sparsify(model, cfg, train_loader=tr, val_loader=va)
    assert report.total_nnz == round(0.2 * report.total_numel)
    assert 0.0 <= report.accuracy <= 1.0 and len(report.history) >= cfg.epochs
    if kw["method"] != "freeze":
        weights = dict(model.named_parameters())
        for name, mask in report.masks.items():
            assert (weights[name][~mask] == 0).all()
    if kw["method"] == "rigl":
        assert report.cost["dense_gradient_steps"] > 0
    if kw["method"] == "lottery":
        assert report.trainings == 3


def test_nm_gmp_ends_in_exact_pattern(flat) -> None:
    tr, va = flat
    model, _ = _mlp()
    cfg = SparsifyConfig(method="gmp", granularity="2:4", sparsity=0.5, exclude=("classifier",), **QUICK)
    report = sparsify(model, cfg, train_loader=tr, val_loader=va)
    for name, mask in report.masks.items():
        assert check_nm(mask, 2, 4), name


def test_nm_incompatible_layer_is_named(images) -> None:
    tr, va = images
    torch.manual_seed(0)
    model, _ = lenet5()
    with pytest.raises(EdgetrimError, match=r"features.0.weight: input dimension 1 is not a multiple of M=4"):
        sparsify(
            model,
            SparsifyConfig(method="static", granularity="1:4", sparsity=0.75, **QUICK),
            train_loader=tr,
            val_loader=va,
        )


def test_bad_input_errors(flat) -> None:
    model, _ = _mlp()
    with pytest.raises(ValueError, match="sparsity must be in"):
        SparsifyConfig(sparsity=1.0)
    with pytest.raises(EdgetrimError, match="needs training data"):
        sparsify(model, SparsifyConfig(method="gmp"), train_loader=None, val_loader=None)
    with pytest.raises(EdgetrimError, match="needs training data"):
        sparsify(
            model,
            SparsifyConfig(method="pai", criterion="snip", epochs=0),
            train_loader=None,
            val_loader=None,
        )
    # data-free pruning at init works without data
    x = torch.randn(1, 64)
    report = sparsify(
        model, SparsifyConfig(method="pai", criterion="synflow", epochs=0, sparsity=0.9, pai_rounds=10),
        train_loader=None, val_loader=None, example_inputs=(x,),
    )  # fmt: skip
    assert report.total_nnz == round(0.1 * report.total_numel)


def test_layer_collapse_named(flat) -> None:
    tr, va = flat
    model, _ = _mlp()
    name = next(n for n, _ in model.named_parameters() if n.endswith("weight"))
    cfg = SparsifyConfig(
        method="static", allocation="map", layer_densities={name: 0.0}, sparsity=0.5, **QUICK
    )
    with pytest.raises(EdgetrimError, match=f"layer collapse: {name}"):
        sparsify(model, cfg, train_loader=tr, val_loader=va)


def test_channel_granularity_materialises_equivalent_smaller_model(images) -> None:
    tr, va = images
    torch.manual_seed(0)
    model, ex = lenet5()
    cfg = SparsifyConfig(method="gmp", granularity="channel", sparsity=0.5, **QUICK)
    report = sparsify(model, cfg, train_loader=tr, val_loader=va, example_inputs=ex)
    small = report.model
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    x = next(iter(va))[0]
    torch.testing.assert_close(small.eval()(x), model.eval()(x), rtol=1e-4, atol=1e-4)
    assert all(len(v) >= 1 for v in report.kept_channels.values())


def test_cli_sparsify_writes_run_folder(tmp_path) -> None:
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["sparsify", "--model", "mlp", "--data", "digits_flat", "--method", "granet", "--sparsity", "0.9",
            "--epochs", "1", "--batches-per-epoch", "3", "--out", str(out)]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "epoch   1/1" in res.output and "density 0.1000" in res.output
    run = load_run(out)
    assert run.info["kind"] == "sparsify" and run.info["sparsity"]["total_nnz"] > 0
    assert (out / "sparse_cost.json").is_file() and (out / "sparse_density.png").read_bytes()[
        :4
    ] == b"\x89PNG"
    cost = json.loads((out / "sparse_cost.json").read_text())
    assert cost["train_flops"] > 0 and cost["density_over_time"]
    res = runner.invoke(app, [*args[:-2], "--out", str(tmp_path / "r2"), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["density"] == pytest.approx(0.1, abs=1e-3)


def test_cli_bad_sparsity_and_method(tmp_path) -> None:
    runner = CliRunner()
    base = ["sparsify", "--model", "mlp", "--data", "digits_flat", "--out", str(tmp_path / "x")]
    res = runner.invoke(app, [*base, "--sparsity", "1.0"])
    assert res.exit_code == 2 and "error: --sparsity must be in [0, 1)" in res.output
    res = runner.invoke(app, [*base, "--method", "magic"])
    assert res.exit_code == 2 and "error: --method must be one of" in res.output


def test_cli_sparsity_check_json() -> None:
    res = CliRunner().invoke(
        app, ["sparsity-check", "--target", "torch-cpu", "--densities", "1,0.1", "--width", "64", "--tokens", "4",
              "--quick", "--rounds", "1", "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [r["density"] for r in out["rows"]] == [1.0, 0.1] and out["rows"][1]["zeros_in_dense_ms"] > 0
    assert "verdict" in out
