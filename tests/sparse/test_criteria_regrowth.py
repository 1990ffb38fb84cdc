"""Pruning criteria (SNIP, GraSP, SynFlow) and drop/regrow, checked against autograd and by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from edgetrim.compress.sparse.criteria import (
    Criterion,
    gradients,
    grasp_scores,
    hessian_gradient_product,
    keep_scores,
    snip_scores,
    synflow_scores,
)
from edgetrim.compress.sparse.loop import Growth, MaskScheduler, regrow_layer
from edgetrim.compress.weight_masks import WeightMasks


def _mlp(bias: bool = True, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(12, 20, bias=bias),
        nn.ReLU(),
        nn.Linear(20, 16, bias=bias),
        nn.ReLU(),
        nn.Linear(16, 5, bias=bias),
    ).to(dtype)


def _batch(dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    return torch.randn(32, 12, generator=g, dtype=dtype), torch.randint(0, 5, (32,), generator=g)


def test_snip_scores_equal_mask_gradient_by_autograd() -> None:
    model = _mlp()
    x, y = _batch()
    params = WeightMasks(model).params
    scores = snip_scores(model, params, [(x, y)], nn.functional.cross_entropy)
    # |dL/dc| at c = 1 for a multiplicative mask c on each weight
    cs = {n: torch.ones_like(p, requires_grad=True) for n, p in params.items()}
    full = dict(model.named_parameters())
    loss = nn.functional.cross_entropy(
        functional_call(model, {k: (v * cs[k] if k in cs else v) for k, v in full.items()}, (x,)), y
    )
    grads = torch.autograd.grad(loss, list(cs.values()))
    for (n, _), g in zip(cs.items(), grads):
        torch.testing.assert_close(scores[n], g.abs(), rtol=0, atol=1e-6)


def test_grasp_hg_agrees_with_finite_differences() -> None:
    model = _mlp(dtype=torch.float64)
    x, y = _batch(torch.float64)
    params = WeightMasks(model).params
    loss_fn = nn.functional.cross_entropy
    T = 200.0
    g, hg = hessian_gradient_product(model, params, [(x, y)], loss_fn, temperature=T)
    eps = 1e-3
    scale = 1.0 / max(float(torch.cat([v.reshape(-1) for v in g.values()]).norm()), 1e-12)

    def grad_at(sign: float) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            for n, p in params.items():
                p.add_(sign * eps * scale * g[n])
        out = gradients(model, params, [(x, y)], lambda o, t: loss_fn(o / T, t))
        with torch.no_grad():
            for n, p in params.items():
                p.sub_(sign * eps * scale * g[n])
        return out

    plus, minus = grad_at(1.0), grad_at(-1.0)
    fd = torch.cat([((plus[n] - minus[n]) / (2 * eps * scale)).reshape(-1) for n in params])
    exact = torch.cat([hg[n].reshape(-1) for n in params])
    rel = float((fd - exact).norm() / exact.norm())
    assert rel < 1e-2, f"Hg finite-difference relative error {rel}"


def test_grasp_sign_convention_follows_reference_code() -> None:
    model = _mlp()
    batch = [_batch()]
    params = WeightMasks(model).params
    s = grasp_scores(model, params, batch, nn.functional.cross_entropy)
    keep = keep_scores(Criterion.GRASP, model, params, batches=batch)
    for n in params:  # the reference removes the highest S = -θ Hg, so "keep the highest" uses -S
        torch.testing.assert_close(keep[n], -s[n])
    total = float(sum(v.sum() for v in s.values()))
    assert abs(abs(total) - 1.0) < 1e-4  # normalised by |Σ S|


def test_synflow_conserves_per_layer_saliency_bias_free() -> None:
    model = _mlp(bias=False)
    params = WeightMasks(model).params
    scores = synflow_scores(model, params, (1, 12))
    sums = torch.tensor([float(s.double().sum()) for s in scores.values()])
    assert float((sums.max() - sums.min()) / sums.mean()) < 1e-5
    assert all(p.min() < 0 for p in params.values())  # the real weights keep their signs


def test_synflow_zero_bias_conserves_with_biases() -> None:
    model = _mlp(bias=True)
    params = WeightMasks(model).params
    sums = [float(s.double().sum()) for s in synflow_scores(model, params, (1, 12), zero_bias=True).values()]
    assert (max(sums) - min(sums)) / (sum(sums) / len(sums)) < 1e-5
    biased = [float(s.double().sum()) for s in synflow_scores(model, params, (1, 12)).values()]
    assert (max(biased) - min(biased)) / (sum(biased) / len(biased)) > 1e-3  # biases break conservation


def test_synflow_needs_no_data_but_snip_does() -> None:
    from edgetrim.errors import EdgetrimError

    model = _mlp()
    params = WeightMasks(model).params
    keep_scores(Criterion.SYNFLOW, model, params, input_shape=(1, 12))
    with pytest.raises(EdgetrimError, match="needs training data"):
        keep_scores(Criterion.SNIP, model, params, batches=None)


def test_regrown_indices_are_top_grad_inactive() -> None:
    torch.manual_seed(0)
    w = torch.randn(10, 10)
    mask = torch.rand(10, 10) < 0.3
    w = w * mask
    grad = torch.randn(10, 10)
    rate = 0.4
    new = regrow_layer(w, mask, rate, growth=Growth.GRADIENT, grad=grad)
    nnz = int(mask.sum())
    k = math.ceil(rate * nnz)
    assert int(new.sum()) == nnz
    # expected: drop k smallest |w| among active, then grow k largest |g| among inactive-after-drop
    active = torch.nonzero(mask.reshape(-1)).flatten()
    dropped = active[w.reshape(-1)[active].abs().argsort()[:k]]
    after = mask.reshape(-1).clone()
    after[dropped] = False
    inactive = torch.nonzero(~after).flatten()
    grown = set(inactive[grad.reshape(-1)[inactive].abs().argsort(descending=True)[:k]].tolist())
    kept = set(torch.nonzero(after).flatten().tolist())
    assert set(torch.nonzero(new.reshape(-1)).flatten().tolist()) == kept | grown


def test_regeneration_preserves_per_layer_nnz_and_zero_init() -> None:
    model = _mlp()
    masks = WeightMasks(model)
    gen = torch.Generator().manual_seed(0)
    masks.set_masks({n: torch.rand(p.shape, generator=gen) < 0.2 for n, p in masks.params.items()})
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    masks.attach(opt)
    sched = MaskScheduler(total_steps=100, update_every=1, regrow=Growth.GRADIENT, r0=0.5)
    x, y = _batch()
    for step in range(1, 6):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        grads = {n: p.grad.clone() for n, p in masks.params.items()}
        opt.step()
        before = masks.nnz()
        old = masks.state_dict()
        values = {n: p.detach().clone() for n, p in masks.params.items()}
        sched.update(step, masks, grads, opt)
        assert masks.nnz() == before
        if step == 1:  # later updates may re-pick just-dropped positions (allowed, as in the reference)
            assert sum(int((masks.masks[n] & ~old[n]).sum()) for n in old) > 0
        for n, p in masks.params.items():
            grown = masks.masks[n] & ~old[n]
            assert (p[grown] == 0).all() and (opt.state[p]["momentum_buffer"][grown] == 0).all()
            stayed = masks.masks[n] & old[n]
            assert torch.equal(p[stayed], values[n][stayed])  # survivors keep their values


def test_cost_tracker_counts_dense_gradient_steps() -> None:
    from edgetrim.compress.sparse.loop import CostTracker, layer_macs

    model = _mlp()
    macs = layer_macs(model, (torch.randn(1, 12),))
    assert macs == {"0.weight": 12 * 20, "2.weight": 20 * 16, "4.weight": 16 * 5}
    cost = CostTracker(macs=macs, masked=list(macs))
    dens = {n: 0.1 for n in macs}
    f_d = 2.0 * sum(macs.values())
    f_s = 0.1 * f_d
    cost.add_step(8, dens)
    assert cost.train_flops == pytest.approx(8 * 3 * f_s)
    cost.add_step(8, dens, dense_grad=True)  # RigL update step: weight gradient is dense
    assert cost.train_flops == pytest.approx(8 * 3 * f_s + 8 * (2 * f_s + f_d))
    assert cost.dense_grad_steps == 1
