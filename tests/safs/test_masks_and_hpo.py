"""One-shot magnitude masks, masks held through fine-tuning, and the stage-2 HPO interface."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from edgetrim.compress.safs.activations import ParametricActivation
from edgetrim.compress.safs.hpo import HPOBackend, HPOConfig, kfold_indices, optimise
from edgetrim.compress.safs.train import (
    FinetuneConfig,
    OptimizerKind,
    PruneScope,
    SchedulerKind,
    finetune_,
    hold_masks,
    magnitude_masks,
    mask_nnz,
)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), ParametricActivation("symlog", learnable=True), nn.Linear(32, 4))


def _data(n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 16, generator=g)
    return x, (x[:, :4].argmax(1))


def test_layerwise_masks_keep_exact_counts() -> None:
    model = _net()
    masks = magnitude_masks(model, 0.9, scope=PruneScope.LAYER)
    assert int(masks["0.weight"].sum()) == math.ceil(0.1 * 16 * 32)
    assert int(masks["2.weight"].sum()) == math.ceil(0.1 * 32 * 4)
    w = model[0].weight.detach().abs()
    assert float(w[masks["0.weight"]].min()) >= float(w[~masks["0.weight"]].max())  # the largest survive


def test_global_masks_keep_exact_total() -> None:
    model = _net()
    masks = magnitude_masks(model, 0.95, scope=PruneScope.GLOBAL)
    total = 16 * 32 + 32 * 4
    assert mask_nnz(masks) == 32 == 0.05 * total  # exactly, despite 1 - 0.95 != 0.05 in floating point


@pytest.mark.parametrize(
    "cfg",
    [
        FinetuneConfig(epochs=3, optimizer=OptimizerKind.SGD, lr=0.1, momentum=0.9, weight_decay=1e-2),
        FinetuneConfig(
            epochs=3, optimizer=OptimizerKind.ADAM, lr=1e-2, weight_decay=1e-3, scheduler=SchedulerKind.COSINE
        ),
    ],
    ids=["sgd-momentum-wd", "adam-wd-cosine"],
)
def test_masks_unchanged_after_finetuning(cfg: FinetuneConfig) -> None:
    model = _net()
    masks = magnitude_masks(model, 0.9)
    hold_masks(model, masks)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    finetune_(model, masks, *_data(), cfg, seed=0)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert bool((params[name].detach()[~mask] == 0).all()), name  # pruned stay exactly zero
        assert int((params[name].detach() != 0).sum()) <= int(mask.sum())
        assert not torch.equal(params[name].detach()[mask], before[name][mask])  # the kept ones trained
    assert not torch.equal(params["1.scalars.alpha"].detach(), before["1.scalars.alpha"])  # scalars learned


def test_diverging_finetune_rolls_back_to_finite_masked_weights() -> None:
    model = nn.Sequential(nn.Linear(16, 32), ParametricActivation("symexp", learnable=True), nn.Linear(32, 4))
    masks = magnitude_masks(model, 0.9)
    hold_masks(model, masks)
    cfg = FinetuneConfig(epochs=4, optimizer=OptimizerKind.SGD, lr=1e6, momentum=0.9, scalar_lr_scale=10.0)
    rep = finetune_(model, masks, *_data(), cfg, seed=0, val=_data(32))
    assert rep.diverged and rep.train_loss == math.inf
    params = dict(model.named_parameters())
    assert all(bool(torch.isfinite(p).all()) for p in params.values())  # rolled back, no NaN
    for name, mask in masks.items():
        assert bool((params[name].detach()[~mask] == 0).all()), name
    assert rep.val_acc is not None and 0.0 <= rep.val_acc <= 1.0


def test_kfold_partitions_the_samples() -> None:
    folds = kfold_indices(10, 3, seed=0)
    vals = torch.cat([v for _, v in folds]).sort().values
    assert torch.equal(vals, torch.arange(10))
    for tr, va in folds:
        assert not set(tr.tolist()) & set(va.tolist()) and len(tr) + len(va) == 10


@pytest.mark.parametrize("backend", [HPOBackend.RANDOM, HPOBackend.OPTUNA])
def test_optimise_tries_the_default_first_and_returns_the_best(backend: HPOBackend) -> None:
    base = FinetuneConfig(lr=1e-3)

    def objective(c: FinetuneConfig) -> float:
        return -abs(math.log10(c.lr) + 2.0)  # best at lr = 1e-2

    res = optimise(objective, base, HPOConfig(trials=8, backend=backend, seed=0))
    assert res.backend is backend
    assert res.trials[0]["config"]["lr"] == pytest.approx(1e-3)
    assert len(res.trials) == 8
    assert res.best_value == max(t["value"] for t in res.trials)
    assert res.best_value >= objective(base)


def test_random_backend_is_seeded() -> None:
    a = optimise(lambda c: c.lr, FinetuneConfig(), HPOConfig(trials=4, backend="random", seed=7))
    b = optimise(lambda c: c.lr, FinetuneConfig(), HPOConfig(trials=4, backend="random", seed=7))
    assert [t["config"] for t in a.trials] == [t["config"] for t in b.trials]
