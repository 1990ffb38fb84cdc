"""Pruning criteria: one score tensor per masked weight, *higher = more worth keeping*.

Every function takes the model, the named weights to score (``WeightMasks.params``) and, where the
criterion needs data, an iterable of ``(inputs, targets)`` batches. None of them changes the model.

Sign conventions (see the reference notes, Part D):
* SNIP: ``|g ⊙ θ|`` (= |dL/dc| at c = 1 for a multiplicative mask c).
* GraSP: the reference code's score is ``S = -θ ⊙ Hg`` and it *removes the highest S* (keeps the
  lowest). ``grasp_scores`` returns that ``S``; ``keep_scores(GRASP)`` returns ``-S`` so that the shared
  "keep the highest" allocation keeps exactly what the reference code keeps.
* SynFlow: ``|θ ⊙ dR/dθ|`` with ``R = 1ᵀ (Π_l |θ_l|) 1`` evaluated on an all-ones input in eval mode
  on a float64 copy whose every parameter and buffer is replaced by its absolute value (data-free).
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from edgetrim.errors import EdgetrimError

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Criterion(enum.StrEnum):
    """Pruning / pruning-at-init score."""

    MAGNITUDE = "magnitude"
    RANDOM = "random"
    GRADIENT = "gradient"
    SNIP = "snip"
    GRASP = "grasp"
    SYNFLOW = "synflow"

    @property
    def needs_data(self) -> bool:
        return self in (Criterion.GRADIENT, Criterion.SNIP, Criterion.GRASP)


def _batches(batches: Iterable[Batch] | None, what: str) -> list[Batch]:
    out = list(batches) if batches is not None else []
    if not out:
        raise EdgetrimError(
            f"criterion {what} needs training data; pass a train loader (or use synflow/magnitude/random)"
        )
    return out


def magnitude_scores(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: p.detach().abs().clone() for n, p in params.items()}


def random_scores(
    params: Mapping[str, torch.Tensor], *, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    return {n: torch.rand(p.shape, generator=generator).to(p.device) for n, p in params.items()}


def _param_names(model: nn.Module, params: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Map each scored tensor to its parameter name inside ``model`` (identity when names match)."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for n, p in params.items():
        if id(p) not in by_id:
            raise ValueError(f"tensor {n} is not a parameter of the model")
        out[n] = by_id[id(p)]
    return out


def gradients(
    model: nn.Module, params: Mapping[str, torch.Tensor], batches: Iterable[Batch], loss_fn: LossFn
) -> dict[str, torch.Tensor]:
    """Mean loss gradient over the batches w.r.t. each weight (the weights as they are, zeros included)."""
    data = _batches(batches, "gradient")
    names = list(params)
    tensors = [params[n] for n in names]
    acc = [torch.zeros_like(t) for t in tensors]
    for x, y in data:
        loss = loss_fn(model(x), y)
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        for a, g in zip(acc, grads):
            if g is not None:
                a.add_(g.detach(), alpha=1.0 / len(data))
    return dict(zip(names, acc))


def gradient_scores(model, params, batches, loss_fn) -> dict[str, torch.Tensor]:
    return {n: g.abs() for n, g in gradients(model, params, batches, loss_fn).items()}


def snip_scores(
    model: nn.Module, params: Mapping[str, torch.Tensor], batches: Iterable[Batch], loss_fn: LossFn
) -> dict[str, torch.Tensor]:
    """SNIP connection sensitivity ``|g ⊙ θ|`` (normalisation does not change the ranking)."""
    grads = gradients(model, params, _batches(batches, "snip"), loss_fn)
    return {n: (grads[n] * params[n].detach()).abs() for n in params}


def hessian_gradient_product(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    batches: Iterable[Batch],
    loss_fn: LossFn,
    *,
    temperature: float = 200.0,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(g, Hg)`` for the loss on logits / T, as in the GraSP code: z = Σ stop_grad(g)·g, Hg = dz/dθ."""
    data = _batches(batches, "grasp")
    names = list(params)
    tensors = [params[n] for n in names]
    g_acc = [torch.zeros_like(t) for t in tensors]
    for x, y in data:
        loss = loss_fn(model(x) / temperature, y)
        for a, g in zip(g_acc, torch.autograd.grad(loss, tensors, allow_unused=True)):
            if g is not None:
                a.add_(g.detach())
    hg_acc = [torch.zeros_like(t) for t in tensors]
    for x, y in data:
        loss = loss_fn(model(x) / temperature, y)
        grads = torch.autograd.grad(loss, tensors, create_graph=True, allow_unused=True)
        z = sum((g * a).sum() for g, a in zip(grads, g_acc) if g is not None)
        for h, hg in zip(hg_acc, torch.autograd.grad(z, tensors, allow_unused=True)):
            if hg is not None:
                h.add_(hg.detach())
    return dict(zip(names, g_acc)), dict(zip(names, hg_acc))


def grasp_scores(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    batches: Iterable[Batch],
    loss_fn: LossFn,
    *,
    temperature: float = 200.0,
    reinit_linear: bool = True,
    generator_seed: int = 0,
) -> dict[str, torch.Tensor]:
    """GraSP score ``S = -θ ⊙ Hg / |Σ S|`` as in the reference code (which removes the highest S).

    Following the code, the score is taken on a copy whose Linear layers are re-initialised (xavier
    normal) when ``reinit_linear``; ``params`` keep their values.
    """
    data = _batches(batches, "grasp")
    names = _param_names(model, params)
    work = copy.deepcopy(model)
    if reinit_linear:
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(generator_seed)
        for m in work.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
        torch.random.set_rng_state(gen_state)
    wparams = dict(work.named_parameters())
    wp = {n: wparams[names[n]] for n in params}
    _, hg = hessian_gradient_product(work, wp, data, loss_fn, temperature=temperature)
    raw = {n: -wp[n].detach() * hg[n] for n in params}
    norm = torch.stack([s.sum() for s in raw.values()]).sum().abs() + 1e-12
    return {n: s / norm for n, s in raw.items()}


@torch.no_grad()
def _abs_copy(model: nn.Module) -> nn.Module:
    work = copy.deepcopy(model).double().eval()
    for t in list(work.parameters()) + list(work.buffers()):
        if t.is_floating_point():
            t.abs_()
    return work


def synflow_scores(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    input_shape: Sequence[int],
    *,
    masks: Mapping[str, torch.Tensor] | None = None,
    zero_bias: bool = False,
) -> dict[str, torch.Tensor]:
    """SynFlow saliency ``|θ ⊙ dR/dθ|`` on an abs-valued float64 copy, all-ones input, eval mode.

    ``masks`` (by the same keys) are applied to the copy first (iterative SynFlow). Biases and
    normalisation buffers take part as their absolute values, as in the reference code; on a
    bias-free, BN-free net each layer's total saliency equals R (conservation). ``zero_bias`` zeroes
    every bias (and BN shift / running mean) of the copy, which restores exact conservation on nets
    with biases.
    """
    names = _param_names(model, params)
    work = _abs_copy(model)
    if zero_bias:
        with torch.no_grad():
            for mod in work.modules():
                for attr in ("bias", "running_mean"):
                    t = getattr(mod, attr, None)
                    if isinstance(t, torch.Tensor):
                        t.zero_()
    wparams = dict(work.named_parameters())
    wp = {n: wparams[names[n]] for n in params}
    if masks is not None:
        with torch.no_grad():
            for n, m in masks.items():
                wp[n].mul_(m.to(torch.float64))
    x = torch.ones((1, *tuple(input_shape)[1:]), dtype=torch.float64)
    r = work(x).sum()
    grads = torch.autograd.grad(r, [wp[n] for n in params], allow_unused=True)
    out = {}
    for n, g in zip(params, grads):
        g = torch.zeros_like(wp[n]) if g is None else g
        out[n] = (wp[n].detach() * g).abs().to(params[n].dtype)
    return out


def keep_scores(
    criterion: Criterion,
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    *,
    batches: Iterable[Batch] | None = None,
    loss_fn: LossFn | None = None,
    input_shape: Sequence[int] | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    synflow_zero_bias: bool = False,
) -> dict[str, torch.Tensor]:
    """Scores where higher means keep, for any criterion (GraSP is negated, see module doc)."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    if criterion is Criterion.MAGNITUDE:
        return magnitude_scores(params)
    if criterion is Criterion.RANDOM:
        return random_scores(params, generator=generator)
    if criterion is Criterion.GRADIENT:
        return gradient_scores(model, params, _batches(batches, "gradient"), loss_fn)
    if criterion is Criterion.SNIP:
        return snip_scores(model, params, _batches(batches, "snip"), loss_fn)
    if criterion is Criterion.GRASP:
        return {n: -s for n, s in grasp_scores(model, params, _batches(batches, "grasp"), loss_fn).items()}
    if criterion is Criterion.SYNFLOW:
        if input_shape is None:
            raise EdgetrimError("synflow needs the model's input shape (example inputs)")
        return synflow_scores(model, params, input_shape, masks=masks, zero_bias=synflow_zero_bias)
    raise ValueError(f"unknown criterion {criterion}")
