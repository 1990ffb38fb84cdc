"""The one sparse training loop every preset runs, its mask scheduler and its cost accounting.

Per iteration: forward, backward (``weight.grad`` is dense: masks live in the weights, not in a
re-parametrisation), read the dense gradient if a mask update is due, ``optimizer.step()`` (the
``WeightMasks`` hooks mask grads before and weights + optimiser state after), then the mask update.

``MaskScheduler`` covers GMP, GraNet, RigL and SET with one code path:

* gradual pruning (``prune=True``): at every update step t >= t0, prune to the cubic target
  ``s_t`` (global magnitude over all masked layers, or per layer for uniform / ERK / map), reaching
  ``s_f`` at the first update step >= tf;
* drop / regrow (``regrow`` set): right after it, per layer, drop ``ceil(r * nnz_l)`` smallest-|w|
  active weights and regrow as many inactive positions (just-dropped ones included) by the largest
  dense |gradient| (GraNet, RigL) or at random (SET). Regrown weights start at 0 with zeroed
  optimiser state. ``r`` follows the GraNet cosine death rate over the whole run, or the RigL
  ``alpha/2 (1 + cos(pi t / T_end))`` drop fraction (0 after T_end).

GMP is GraNet with ``regrow=None``: same code, same random numbers, so the ablation is exact.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edgetrim.compress.sparse import allocation as alloc
from edgetrim.compress.sparse.schedules import cosine_death_rate, cubic_sparsity, rigl_drop_fraction
from edgetrim.compress.weight_masks import WeightMasks, nm_mask

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


class Growth(enum.StrEnum):
    GRADIENT = "gradient"  # largest dense |dL/dW| among inactive positions (RigL, GraNet)
    RANDOM = "random"  # uniformly random inactive positions (SET)


class DropSchedule(enum.StrEnum):
    COSINE_ALL = "cosine_all"  # GraNet: r0 -> r_min cosine over all iterations
    RIGL = "rigl"  # alpha/2 (1 + cos(pi t / T_end)), 0 after T_end


# --------------------------------------------------------------------------- drop / regrow (pure)
@torch.no_grad()
def regrow_layer(
    weight: torch.Tensor,
    mask: torch.Tensor,
    rate: float,
    *,
    growth: Growth,
    grad: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One layer's drop-and-regrow: returns the new mask with exactly ``mask.sum()`` active entries.

    Drops ``k = ceil(rate * nnz)`` active entries with the smallest |w| and grows ``k`` entries among
    the positions inactive *after* the drop with the largest |grad| (or at random).
    """
    flat_m = mask.reshape(-1)
    nnz = int(flat_m.sum())
    k = min(math.ceil(rate * nnz), nnz) if rate > 0 else 0
    if k == 0 or nnz == flat_m.numel():
        return mask.clone()
    mag = weight.detach().abs().reshape(-1).float()
    drop_score = torch.where(flat_m, mag, torch.full_like(mag, math.inf))
    new = flat_m.clone()
    new[(-drop_score).topk(k).indices] = False
    if growth is Growth.GRADIENT:
        if grad is None:
            raise ValueError("gradient regrowth needs the dense gradient")
        cand = grad.detach().abs().reshape(-1).float()
    else:
        cand = torch.rand(flat_m.numel(), generator=generator).to(mag.device)
    cand = torch.where(new, torch.full_like(cand, -math.inf), cand)
    new[cand.topk(k).indices] = True
    return new.reshape(mask.shape)


def _active_magnitude(masks: WeightMasks) -> dict[str, torch.Tensor]:
    return {
        n: torch.where(m, p.detach().abs(), torch.full_like(p.detach(), -math.inf))
        for (n, p), m in zip(masks.params.items(), masks.masks.values())
    }


def prune_masks(
    masks: WeightMasks,
    density: float,
    allocation: alloc.Allocation,
    *,
    layer_densities: Mapping[str, float] | None = None,
    nm: tuple[int, int] | None = None,
    min_layer_density: float = 0.0,
) -> dict[str, torch.Tensor]:
    """New masks at ``density`` by magnitude among currently active weights (masks only shrink).

    ``layer_densities`` (for non-global allocations) are the per-layer densities at the final target;
    they are scaled with ``density`` so the total matches. With ``nm`` the pruned entries are taken
    only among those outside each block's top-N, so the final target is an exact N:M pattern.
    """
    scores = _active_magnitude(masks)
    if nm is not None:
        n, m = nm
        cands = {k: masks.masks[k] & ~nm_mask(s, n, m, name=k) for k, s in scores.items()}
        total = masks.total_numel()
        drop = masks.total_nnz() - round(density * total)
        if drop <= 0:
            return masks.state_dict()
        pooled = torch.cat(
            [torch.where(cands[k], s, torch.full_like(s, math.inf)).reshape(-1) for k, s in scores.items()]
        )
        drop = min(drop, int(torch.cat([c.reshape(-1) for c in cands.values()]).sum()))
        flat_drop = torch.zeros(pooled.numel(), dtype=torch.bool)
        flat_drop[(-pooled).topk(drop).indices] = True
        out, off = {}, 0
        for k, s in scores.items():
            out[k] = masks.masks[k] & ~flat_drop[off : off + s.numel()].reshape(s.shape)
            off += s.numel()
        return out
    if allocation is alloc.Allocation.GLOBAL:
        mins = {
            k: min(math.ceil(min_layer_density * s.numel()), int(masks.masks[k].sum()))
            for k, s in scores.items()
        }
        return alloc.global_topk(scores, density, min_keep_per_layer=mins)
    base = layer_densities or {k: density for k in scores}
    total = masks.total_numel()
    base_total = sum(base[k] * masks.masks[k].numel() for k in scores)
    final_density = base_total / total
    # interpolate every layer between its current density and its final one, matching the total
    cur = masks.layer_densities()
    if final_density >= 1.0 or math.isclose(density, final_density):
        dens = dict(base)
    else:
        start = masks.density()
        frac = 0.0 if math.isclose(start, final_density) else (start - density) / (start - final_density)
        frac = min(max(frac, 0.0), 1.0)
        dens = {k: cur[k] + (base[k] - cur[k]) * frac for k in scores}
    return alloc.layerwise_topk(scores, dens)


@dataclass
class MaskScheduler:
    """When and how masks change during training (see module doc). Steps are iterations."""

    total_steps: int
    update_every: int
    prune: bool = False
    s_i: float = 0.0
    s_f: float = 0.0
    t0: int = 0
    tf: int = 0
    allocation: alloc.Allocation = alloc.Allocation.GLOBAL
    layer_densities: Mapping[str, float] | None = None
    nm: tuple[int, int] | None = None
    min_layer_density: float = 0.0
    regrow: Growth | None = None
    drop_schedule: DropSchedule = DropSchedule.COSINE_ALL
    r0: float = 0.5
    r_min: float = 0.005
    t_end: int = 0
    generator: torch.Generator | None = None
    log_rows: list[dict[str, Any]] = field(default_factory=list)

    def due(self, step: int) -> bool:
        if self.update_every <= 0 or step <= 0 or step % self.update_every:
            return False
        return (self.prune and step >= self.t0) or (self.regrow is not None and self.drop_rate(step) > 0)

    def needs_dense_grad(self, step: int) -> bool:
        return self.regrow is Growth.GRADIENT and self.due(step) and self.drop_rate(step) > 0

    def drop_rate(self, step: int) -> float:
        if self.regrow is None:
            return 0.0
        if self.drop_schedule is DropSchedule.RIGL:
            return rigl_drop_fraction(step, alpha=self.r0, t_end=self.t_end)
        return cosine_death_rate(step, total=self.total_steps, r0=self.r0, r_min=self.r_min)

    def update(
        self, step: int, masks: WeightMasks, grads: Mapping[str, torch.Tensor] | None, optimizer
    ) -> None:
        row: dict[str, Any] = {"step": step}
        if self.prune and step >= self.t0:
            target = 1.0 - cubic_sparsity(step, s_i=self.s_i, s_f=self.s_f, t0=self.t0, tf=self.tf)
            if masks.density() > target + 0.5 / masks.total_numel():
                new = prune_masks(
                    masks,
                    target,
                    self.allocation,
                    layer_densities=self.layer_densities,
                    nm=self.nm,
                    min_layer_density=self.min_layer_density,
                )
                masks.set_masks(new, optimizer)
            row["target_density"] = target
        rate = self.drop_rate(step)
        if self.regrow is not None and rate > 0:
            new = {}
            for n, p in masks.params.items():
                new[n] = regrow_layer(
                    p,
                    masks.masks[n],
                    rate,
                    growth=self.regrow,
                    grad=None if grads is None else grads.get(n),
                    generator=self.generator,
                )
            grown = masks.set_masks(new, optimizer)
            row["drop_rate"] = rate
            row["regrown"] = sum(grown.values())
        row["density"] = masks.density()
        self.log_rows.append(row)


# --------------------------------------------------------------------------- cost accounting
def layer_macs(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> dict[str, int]:
    """Per-sample multiply-accumulates of every conv / linear weight (by parameter name)."""
    out: dict[str, int] = {}
    hooks = []
    batch = example_inputs[0].shape[0] if example_inputs and example_inputs[0].dim() > 0 else 1
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            pname = f"{name}.weight" if name else "weight"

            def hook(m, inp, o, pname=pname):
                if isinstance(m, nn.Linear):
                    positions = o.numel() // o.shape[-1] // batch
                else:
                    positions = o[0].numel() // o.shape[1] if o.dim() > 1 else 1
                out[pname] = int(m.weight.numel() * positions)

            hooks.append(mod.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return out


@dataclass
class CostTracker:
    """Training FLOPs (2 FLOPs per MAC) under the actual per-layer densities over time.

    Per training sample: forward ``f_S``, backward ``2 f_S`` (activation + weight gradients) on the
    sparse net; a dense-gradient step (RigL / GraNet regrowth) costs ``2 f_S + f_D`` (the weight
    gradient is dense); frozen weights (freezing) keep a dense forward and activation gradient,
    ``2 f_D + f_S``. Layers without a mask count dense.
    """

    macs: dict[str, int]
    masked: list[str]
    train_flops: float = 0.0
    dense_grad_steps: int = 0
    scoring_flops: float = 0.0
    steps: int = 0
    density_rows: list[dict[str, Any]] = field(default_factory=list)

    def forward_flops(self, densities: Mapping[str, float] | None) -> float:
        d = densities or {}
        return 2.0 * sum(self.macs[n] * d.get(n, 1.0) for n in self.macs)

    def dense_flops(self) -> float:
        return self.forward_flops(None)

    def add_step(
        self, samples: int, densities: Mapping[str, float], *, dense_grad: bool = False, frozen: bool = False
    ) -> None:
        f_s = self.forward_flops(densities)
        f_d = self.dense_flops()
        if frozen:
            per = 2 * f_d + f_s
        elif dense_grad:
            per = 2 * f_s + f_d
            self.dense_grad_steps += 1
        else:
            per = 3 * f_s
        self.train_flops += per * samples
        self.steps += 1

    def add_scoring(self, samples: int, passes: float) -> None:
        """Dense scoring passes (PaI criteria): ``passes`` x (forward + backward) on ``samples``."""
        self.scoring_flops += passes * 3 * self.dense_flops() * samples

    def record(self, step: int, epoch: int, densities: Mapping[str, float]) -> None:
        self.density_rows.append({"step": step, "epoch": epoch, "densities": dict(densities)})

    def to_dict(self) -> dict[str, Any]:
        return {
            "dense_forward_flops_per_sample": self.dense_flops(),
            "train_flops": self.train_flops,
            "scoring_flops": self.scoring_flops,
            "total_flops": self.train_flops + self.scoring_flops,
            "dense_gradient_steps": self.dense_grad_steps,
            "steps": self.steps,
            "layer_macs_per_sample": self.macs,
            "density_over_time": self.density_rows,
        }


# --------------------------------------------------------------------------- the loop
@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable[Batch] | None, loss_fn=nn.functional.cross_entropy
) -> tuple[float, float]:
    """(mean loss, accuracy in [0, 1]) on ``loader``; (nan, nan) when there is none."""
    if loader is None:
        return math.nan, math.nan
    was = model.training
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    try:
        for x, y in loader:
            out = model(x)
            loss_sum += float(loss_fn(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            total += len(y)
    finally:
        model.train(was)
    if total == 0:
        return math.nan, math.nan
    return loss_sum / total, correct / total


def make_optimizer(params, *, kind: str, lr: float, momentum: float, nesterov: bool, weight_decay: float):
    if kind == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, weight_decay=weight_decay
        )
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {kind}")


@dataclass
class LoopResult:
    history: list[dict[str, Any]]
    steps: int


def train_loop(
    model: nn.Module,
    masks: WeightMasks,
    optimizer: torch.optim.Optimizer,
    train_loader: Iterable[Batch],
    val_loader: Iterable[Batch] | None,
    *,
    epochs: int,
    batches_per_epoch: int | None,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    scheduler: MaskScheduler | None = None,
    cost: CostTracker | None = None,
    frozen: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    step_hook: Callable[[int], None] | None = None,
    loss_fn=nn.functional.cross_entropy,
    progress: Any = None,
    label: str = "",
) -> LoopResult:
    """Train ``model`` for ``epochs`` with ``masks`` attached to ``optimizer``; one history row per epoch."""
    lr_sched = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)
    history: list[dict[str, Any]] = []
    step = 0
    for epoch in range(epochs):
        model.train()
        loss_sum, seen = 0.0, 0
        for b, (x, y) in enumerate(train_loader):
            if batches_per_epoch is not None and b >= batches_per_epoch:
                break
            out = model(x)
            loss = loss_fn(out, y)
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            step += 1
            due = scheduler is not None and scheduler.due(step)
            grads = None
            if due and scheduler.needs_dense_grad(step):
                grads = {n: p.grad.detach().clone() for n, p in masks.params.items() if p.grad is not None}
            optimizer.step()
            if cost is not None:
                cost.add_step(len(y), masks.layer_densities(), dense_grad=grads is not None, frozen=frozen)
            if due:
                scheduler.update(step, masks, grads, optimizer)
                if cost is not None:
                    cost.record(step, epoch, masks.layer_densities())
            if step_hook is not None:
                step_hook(step)
            loss_sum += float(loss.detach()) * len(y)
            seen += len(y)
            if progress is not None:
                progress.update(1)
        lr_sched.step()
        val_loss, val_acc = evaluate(model, val_loader, loss_fn)
        row = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": loss_sum / max(seen, 1),
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "density": masks.density(),
            "lr": optimizer.param_groups[0]["lr"],
        }
        if label:
            row["phase"] = label
        if cost is not None:
            cost.record(step, epoch + 1, masks.layer_densities())
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
    return LoopResult(history=history, steps=step)
