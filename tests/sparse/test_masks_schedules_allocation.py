"""Weight masks, schedules and allocation: the pure parts of sparse training."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from edgetrim.compress.sparse import allocation as alloc
from edgetrim.compress.sparse.schedules import (
    cosine_death_rate,
    cubic_sparsity,
    exponential_density,
    imp_rounds,
    rigl_drop_fraction,
)
from edgetrim.compress.weight_masks import MaskMode, WeightMasks, check_nm, nm_mask
from edgetrim.errors import EdgetrimError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 4)
    )


# ----------------------------------------------------------------------------- schedules
def test_cubic_schedule_endpoints_and_monotone() -> None:
    vals = [cubic_sparsity(t, s_i=0.1, s_f=0.95, t0=100, tf=1100) for t in range(0, 1300, 7)]
    assert cubic_sparsity(100, s_i=0.1, s_f=0.95, t0=100, tf=1100) == 0.1
    assert cubic_sparsity(1100, s_i=0.1, s_f=0.95, t0=100, tf=1100) == pytest.approx(0.95, abs=1e-12)
    assert cubic_sparsity(5000, s_i=0.1, s_f=0.95, t0=100, tf=1100) == pytest.approx(0.95, abs=1e-12)
    assert cubic_sparsity(0, s_i=0.1, s_f=0.95, t0=100, tf=1100) == 0.1
    assert all(b >= a for a, b in itertools.pairwise(vals))
    # denominator is tf - t0 (not Δt): halfway, 1 - 0.5**3 of the way
    assert cubic_sparsity(600, s_i=0.0, s_f=0.8, t0=100, tf=1100) == pytest.approx(0.8 * (1 - 0.125))


def test_death_rate_and_rigl_fraction_endpoints() -> None:
    assert cosine_death_rate(0, total=1000) == pytest.approx(0.5)
    assert cosine_death_rate(1000, total=1000) == pytest.approx(0.005)
    assert rigl_drop_fraction(0, alpha=0.3, t_end=100) == pytest.approx(0.3)
    assert rigl_drop_fraction(100, alpha=0.3, t_end=100) == 0.0
    assert exponential_density(100, n=100, density=0.01) == pytest.approx(0.01)
    assert imp_rounds(0.9) == 11  # survey Eq. 18: ceil(log 0.1 / log 0.8) = 11 (+1 final training)


# ----------------------------------------------------------------------------- allocation
def test_global_topk_exact_keep_count_with_ties() -> None:
    scores = {"a": torch.ones(10, 10), "b": torch.ones(7, 3), "c": torch.zeros(5)}  # all tied
    for density in (0.01, 0.3, 0.333, 0.5, 0.999):
        masks = alloc.global_topk(scores, density)
        total = sum(s.numel() for s in scores.values())
        assert sum(int(m.sum()) for m in masks.values()) == round(density * total)


def test_global_topk_keeps_highest_and_guard() -> None:
    scores = {"a": torch.arange(10.0), "b": torch.arange(10.0) - 100}
    masks = alloc.global_topk(scores, 0.25)  # 5 of 20: all from "a"
    assert masks["a"].tolist() == [False] * 5 + [True] * 5 and not masks["b"].any()
    guarded = alloc.global_topk(scores, 0.25, min_keep_per_layer=1)
    assert int(guarded["b"].sum()) == 1 and sum(int(m.sum()) for m in guarded.values()) == 5


def test_erk_densities_capped_and_sum_to_target() -> None:
    shapes = {"conv1": (16, 3, 3, 3), "conv2": (32, 16, 3, 3), "fc1": (128, 512), "fc2": (10, 128)}
    numel = {n: math.prod(s) for n, s in shapes.items()}
    for kernel in (True, False):
        for density in (0.02, 0.1, 0.5, 0.9):
            d = alloc.erk_densities(shapes, density, kernel=kernel)
            assert all(0.0 <= v <= 1.0 for v in d.values())
            kept = sum(d[n] * numel[n] for n in shapes)
            assert kept == pytest.approx(density * sum(numel.values()), rel=1e-9)
            counts = alloc.counts_from_densities(d, numel)
            assert abs(sum(counts.values()) - density * sum(numel.values())) <= 1  # exact budget ±1 weight
    assert alloc.erk_densities(shapes, 0.5)["conv1"] == 1.0  # small first layer capped dense


def test_sparsity_outside_range_is_rejected() -> None:
    for bad in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(EdgetrimError, match="sparsity must be in"):
            alloc.check_sparsity(bad)


# ----------------------------------------------------------------------------- N:M
@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4)])
def test_nm_every_block_obeys_pattern(n: int, m: int) -> None:
    torch.manual_seed(0)
    for shape in ((8, 16), (6, 8, 3, 3)):
        scores = torch.randn(shape)
        mask = nm_mask(scores, n, m)
        assert check_nm(mask, n, m)
        blocks = mask.movedim(1, -1).reshape(-1, m)
        assert (blocks.sum(-1) == n).all()
        # the kept entries are the block's largest scores
        sb = scores.movedim(1, -1).reshape(-1, m)
        kept_min = torch.where(blocks, sb, torch.full_like(sb, math.inf)).min(-1).values
        drop_max = torch.where(~blocks, sb, torch.full_like(sb, -math.inf)).max(-1).values
        assert (kept_min >= drop_max).all()


def test_nm_incompatible_shape_one_line_error() -> None:
    with pytest.raises(EdgetrimError, match=r"fc: input dimension 6 is not a multiple of M=4") as exc:
        nm_mask(torch.randn(3, 6), 2, 4, name="fc")
    assert "\n" not in str(exc.value)


# ----------------------------------------------------------------------------- masks through optimisers
OPTIMISERS = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-4),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("opt_name", list(OPTIMISERS))
def test_masked_weights_and_state_stay_zero(opt_name: str) -> None:
    model = _net()
    masks = WeightMasks(model)
    gen = torch.Generator().manual_seed(1)
    masks.set_masks({n: torch.rand(p.shape, generator=gen) < 0.3 for n, p in masks.params.items()})
    opt = OPTIMISERS[opt_name](model.parameters())
    masks.attach(opt)
    x, y = torch.randn(16, 4, 6, 6), torch.randint(0, 4, (16,))
    nnz_before = masks.nnz()
    for step in range(12):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if step == 5:  # regrow some positions mid-run: they must start at 0 with zeroed state
            new = {n: m.clone() for n, m in masks.masks.items()}
            name = next(iter(new))
            inactive = torch.nonzero(~new[name].reshape(-1)).flatten()[:5]
            new[name].view(-1)[inactive] = True
            grown = masks.set_masks(new, opt)
            assert grown[name] == 5
            p = masks.params[name]
            assert (p.view(-1)[inactive] == 0).all()
            for v in opt.state[p].values():
                if isinstance(v, torch.Tensor) and v.shape == p.shape:
                    assert (v.view(-1)[inactive] == 0).all()
    for n, p in masks.params.items():
        off = ~masks.masks[n]
        assert (p[off] == 0).all(), f"{n} masked weights moved under {opt_name}"
        for key, v in opt.state[p].items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape:
                assert (v[off] == 0).all(), f"{n} optimiser state {key} nonzero at masked positions"
    assert masks.weight_nnz() == masks.nnz()  # exact nnz: only active weights are nonzero
    assert masks.total_nnz() == sum(nnz_before.values()) + 5


def test_freeze_mode_holds_initial_values() -> None:
    model = _net()
    masks = WeightMasks(model, mode=MaskMode.FREEZE)
    init = {n: p.detach().clone() for n, p in masks.params.items()}
    masks.set_masks({n: torch.rand(p.shape) < 0.1 for n, p in masks.params.items()})
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    masks.attach(opt)
    x, y = torch.randn(8, 4, 6, 6), torch.randint(0, 4, (8,))
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for n, p in masks.params.items():
        frozen = ~masks.masks[n]
        assert torch.equal(p[frozen], init[n][frozen])
        assert not torch.equal(p[~frozen], init[n][~frozen])


def test_collapse_is_reported_by_name() -> None:
    model = _net()
    masks = WeightMasks(model)
    masks.set_masks({"3.weight": torch.zeros_like(masks.masks["3.weight"])})
    assert masks.collapsed() == ["3.weight"]


def test_gale_uniform_keeps_classifier_at_point_two_and_total() -> None:
    shapes = {"a": (300, 64), "b": (100, 300), "fc": (10, 100)}
    numel = {n: math.prod(s) for n, s in shapes.items()}
    d = alloc.gale_uniform_densities(shapes, 0.95, classifier="fc")
    assert d["fc"] == 0.2 and d["a"] == d["b"] < 0.05
    assert sum(d[n] * numel[n] for n in shapes) == pytest.approx(0.05 * sum(numel.values()))
    assert alloc.gale_uniform_densities(shapes, 0.5, classifier="fc") == {n: 0.5 for n in shapes}
