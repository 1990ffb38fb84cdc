"""Pruning masks and the masked fine-tune shared by both SAFS stages.

SAFS is pruning-agnostic: it takes a pruned model and a frozen mask. This module makes that mask
(one-shot magnitude pruning, layer-wise or global, at a fixed ratio) or accepts one from elsewhere (the
sparse-training passes), and fine-tunes with the mask held exactly through the optimiser. Every mask
operation goes through :func:`hold_masks`, the single place that binds SAFS to
``edgetrim.compress.weight_masks``.
"""

from __future__ import annotations

import enum
import logging
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgetrim.compress.weight_masks import WeightMasks, prunable_weights

logger = logging.getLogger(__name__)


class PruneScope(enum.StrEnum):
    """Where the magnitude threshold is taken: per layer (uniform ratio) or over all layers together."""

    LAYER = "layer"
    GLOBAL = "global"


class OptimizerKind(enum.StrEnum):
    SGD = "sgd"
    ADAM = "adam"


class SchedulerKind(enum.StrEnum):
    CONSTANT = "constant"
    COSINE = "cosine"
    STEP = "step"  # x0.1 every epochs // 4 (SAFS reference "Step")


@dataclass(frozen=True)
class FinetuneConfig:
    """One masked fine-tune. Defaults are the SAFS LeNet-5 dense recipe: Adam, lr 1e-3, constant."""

    epochs: int = 10
    optimizer: OptimizerKind = OptimizerKind.ADAM
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    scheduler: SchedulerKind = SchedulerKind.CONSTANT
    batch_size: int = 64
    scalar_lr_scale: float = 1.0  # lr multiplier for the activation scalars (stage 2)

    def __post_init__(self) -> None:
        object.__setattr__(self, "optimizer", OptimizerKind(self.optimizer))
        object.__setattr__(self, "scheduler", SchedulerKind(self.scheduler))
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["optimizer"] = self.optimizer.value
        d["scheduler"] = self.scheduler.value
        return d


@dataclass(frozen=True)
class FinetuneReport:
    train_loss: float  # mean training loss of the last epoch
    val_acc: float | None  # accuracy on the validation tensors after the last epoch (None if none given)
    val_loss: float | None
    epochs: int
    diverged: bool = False  # a non-finite loss or weight: the model was rolled back to the last finite epoch


# --------------------------------------------------------------------------------------------- masks
def magnitude_masks(
    model: nn.Module, ratio: float, *, scope: PruneScope = PruneScope.LAYER
) -> dict[str, Tensor]:
    """One-shot magnitude pruning masks: keep the ``1 - ratio`` largest-|w| weights (exact counts).

    Every conv / linear weight is pruned, first and last layers included (the SAFS reference code).
    Layer-wise keeps ``ceil((1 - ratio) * n)`` (at least one) per layer; global ranks all weights
    together. Ties are broken by index (top-k), so the kept count is exact.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")
    weights = prunable_weights(model)
    scope = PruneScope(scope)
    masks: dict[str, Tensor] = {}
    if scope is PruneScope.LAYER:
        for name, w in weights.items():
            keep = max(1, math.ceil((1.0 - ratio) * w.numel() - 1e-9))  # 1e-9: float noise
            masks[name] = _topk_mask(w.detach().abs(), keep)
        return masks
    flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    keep = max(1, math.ceil((1.0 - ratio) * flat.numel() - 1e-9))
    global_mask = _topk_mask(flat, keep)
    offset = 0
    for name, w in weights.items():
        masks[name] = global_mask[offset : offset + w.numel()].view_as(w)
        offset += w.numel()
    return masks


def masks_from_weights(model: nn.Module) -> dict[str, Tensor]:
    """The mask a sparse model already carries: every conv / linear weight's nonzero pattern.

    This is how SAFS takes a mask from the sparse-training passes (a ``sparsify`` RUN folder) instead
    of pruning by magnitude itself.
    """
    return {name: w.detach() != 0 for name, w in prunable_weights(model).items()}


def _topk_mask(scores: Tensor, keep: int) -> Tensor:
    flat = scores.flatten()
    idx = flat.topk(min(keep, flat.numel())).indices
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(0, idx, True).view_as(scores)


def hold_masks(
    model: nn.Module, masks: dict[str, Tensor], optimizer: torch.optim.Optimizer | None = None
) -> WeightMasks:
    """Apply ``masks`` to ``model`` now and keep them exact through ``optimizer`` (grads, weights, state)."""
    held = WeightMasks(model, names=list(masks))
    held.set_masks(masks)
    if optimizer is not None:
        held.attach(optimizer)
    return held


def mask_nnz(masks: dict[str, Tensor]) -> int:
    return int(sum(int(m.sum()) for m in masks.values()))


# ------------------------------------------------------------------------------------------ training
def evaluate(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 512) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on tensors; eval mode, no grad."""
    was = model.training
    model.eval()
    correct, loss, n = 0, 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out = model(x[i : i + batch_size])
            yy = y[i : i + batch_size]
            loss += float(F.cross_entropy(out, yy, reduction="sum"))
            correct += int((out.argmax(1) == yy).sum())
            n += len(yy)
    model.train(was)
    return correct / max(n, 1), loss / max(n, 1)


def _optimizer(model: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    scalars = [p for n, p in model.named_parameters() if ".scalars." in f".{n}" and p.requires_grad]
    ids = {id(p) for p in scalars}
    weights = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups: list[dict[str, object]] = [{"params": weights}]
    if scalars:
        # Activation scalars are not weight-decayed: decay would pull alpha / beta towards 0.
        groups.append({"params": scalars, "lr": cfg.lr * cfg.scalar_lr_scale, "weight_decay": 0.0})
    if cfg.optimizer is OptimizerKind.SGD:
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(groups, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)


def _scheduler(
    opt: torch.optim.Optimizer, cfg: FinetuneConfig
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if cfg.scheduler is SchedulerKind.COSINE:
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    if cfg.scheduler is SchedulerKind.STEP:
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(cfg.epochs // 4, 1), gamma=0.1)
    return None


def finetune_(
    model: nn.Module,
    masks: dict[str, Tensor] | None,
    x: Tensor,
    y: Tensor,
    cfg: FinetuneConfig,
    *,
    seed: int = 0,
    val: tuple[Tensor, Tensor] | None = None,
) -> FinetuneReport:
    """Fine-tune ``model`` in place on ``(x, y)`` with ``masks`` held exactly; returns a report.

    Trainable parameters are whatever has ``requires_grad`` (activation scalars included in stage 2).
    The minibatch order comes from a generator seeded with ``seed``, so runs are reproducible.
    A non-finite loss (or a non-finite weight at the end of an epoch) stops the run early: the model
    is rolled back to its state at the start of that epoch (finite, masks exact) and the report says
    ``diverged`` with an infinite train loss. Without the rollback a diverged fine-tune returned NaN
    weights (NaN * 0 is NaN, so even the pruned entries stopped being zero).
    """
    opt = _optimizer(model, cfg)
    held = hold_masks(model, masks, opt) if masks else None
    sched = _scheduler(opt, cfg)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    last_loss = float("nan")
    for _ in range(cfg.epochs):
        snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
        perm = torch.randperm(len(x), generator=gen)
        total, count = 0.0, 0
        for i in range(0, len(x), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on one sample
                continue
            out = model(x[idx])
            loss = F.cross_entropy(out, y[idx])
            if not torch.isfinite(loss):
                return _rollback(model, snapshot, held, val, cfg.epochs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            return _rollback(model, snapshot, held, val, cfg.epochs)
        if sched is not None:
            sched.step()
        last_loss = total / max(count, 1)
    if held is not None:
        held.detach()
    acc, vloss = evaluate(model, *val) if val is not None else (None, None)
    return FinetuneReport(last_loss, acc, vloss, cfg.epochs)


def _rollback(
    model: nn.Module,
    snapshot: dict[str, Tensor],
    held: WeightMasks | None,
    val: tuple[Tensor, Tensor] | None,
    epochs: int,
) -> FinetuneReport:
    logger.debug("non-finite loss or weight; rolling back to the start of the epoch and stopping")
    if held is not None:
        held.detach()
    with torch.no_grad():
        model.load_state_dict(snapshot)
    acc, vloss = evaluate(model, *val) if val is not None else (None, None)
    return FinetuneReport(float("inf"), acc, vloss, epochs, diverged=True)
