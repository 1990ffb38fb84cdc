"""Training with the penalty ``lambda * R(alpha)``, projection after every step, dual ascent on lambda.

One batch::

    loss = CE + lambda * R(alpha) / R(dense) [+ bits and sparsity penalties]
    opt.step(); alpha <- max(0, alpha)            # exact zeros, no threshold
    lambda <- max(0, lambda + dual_lr * (cost(hard widths) / target(t) - 1))   # budget mode only

The dual step reads the cost at the soft widths (``config.dual_signal="soft"``, default: the table's
envelope at the l1/l2 counts, offset to the real cost at the current non-zero widths, or Eq. 4 for
FLOPs): the l1/l2 count falls smoothly as the masks spread,
while exact zeros appear late (at uniform masks the surrogate's gradient is zero), so a dual step on
the non-zero count (``"hard"``: the real table at the current integer widths) keeps raising lambda
through the first epochs and then prunes far past the target in a burst. Whatever the gates ask for
at the end, the final widths are fitted to the budget on the real table. ``target(t)``
moves linearly from the dense cost to the budget over the first ``budget_ramp`` share of the
penalised epochs (gradual pruning: the weights adapt while channels go, instead of lambda jumping
to prune everything in the first batches), then stays at the budget.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from edgetrim.compress.config import CompressConfig, OptimizerKind, Regularizer
from edgetrim.compress.gates import ChannelGates
from edgetrim.compress.latency_model import LatencyModel
from edgetrim.compress.quant import NestedQuant
from edgetrim.compress.surrogate import l1_penalty, soft_count
from edgetrim.errors import EdgetrimError
from edgetrim.io_utils import atomic_write_bytes

logger = logging.getLogger(__name__)

__all__ = ["PenaltyTrainer", "TrainState", "check_batch_fits"]

Batches = Iterable[tuple[Tensor, Tensor]]


_ANCHOR_EVERY = 8  # batches between checks of the soft signal's anchor (a new one costs a prediction)


@dataclass
class TrainState:
    """What a checkpoint holds besides the tensors: lambda, finished epochs, per-epoch history."""

    lam: float
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def check_batch_fits(model: nn.Module, example: Tensor, xb: Tensor) -> None:
    """Raise a one-line error when a data batch does not fit the model's example input."""
    if tuple(xb.shape[1:]) != tuple(example.shape[1:]):
        raise EdgetrimError(
            f"data does not fit the model: batches have shape {tuple(xb.shape)}, the model's example "
            f"input is {tuple(example.shape)} (shape mismatch on the first batch)"
        )


def _make_optimizer(kind: OptimizerKind, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    if kind is OptimizerKind.SGD:
        return torch.optim.SGD(groups, momentum=0.9)
    return torch.optim.Adam(groups)


class PenaltyTrainer:
    """Owns the optimiser, lambda and the checkpoints of one penalised training run.

    Args:
        model: the gated (and possibly factorised / quant-parametrised) model, trained in place.
        gates: its channel gates (may hold no group).
        quants: bit-width parametrisations by layer name.
        cost: the bound latency / FLOPs model.
        config: the run's configuration.
        dense_widths: group widths of the unpruned model.
        dense_cost: cost of the dense model in the budget's unit (ms or FLOPs) for normalisation.
        cost_fn: the real cost at integer widths (what the budget is checked against).
        budget: the budget in the same unit, or None in fixed-lambda mode.
        soft_cost_fn: the budget's cost at soft widths (the table's envelope for ms, Eq. 4 for FLOPs);
            with ``config.dual_signal == "soft"`` the dual ascent reads it (shifted to equal
            ``cost_fn`` at the current non-zero widths, ``dense_cost`` at first) instead of
            ``cost_fn`` at the non-zero gates.
    """

    def __init__(
        self,
        model: nn.Module,
        gates: ChannelGates,
        quants: dict[str, NestedQuant],
        cost: LatencyModel,
        config: CompressConfig,
        *,
        dense_widths: Sequence[int],
        dense_cost: float,
        cost_fn: Callable[[Sequence[int]], float],
        budget: float | None,
        soft_cost_fn: Callable[[Sequence[Tensor]], Tensor] | None = None,
    ) -> None:
        self.model, self.gates, self.quants, self.cost, self.config = model, gates, quants, cost, config
        self.dense_widths = list(dense_widths)
        self.cost_fn = cost_fn
        self.budget = budget
        self.dense_cost = dense_cost
        units = [g.unit for g in gates.groups]
        self.units = units
        dense_counts = [torch.tensor(float(w)) for w in self.dense_widths]
        with torch.no_grad():
            self.dense_soft = float(self._soft_cost(dense_counts)) or 1.0
        self.soft_cost_fn = soft_cost_fn if config.dual_signal == "soft" else None
        # the penalty's soft cost is the dual ascent's signal too when both measure the budget's unit
        self._penalty_is_budget_cost = (
            config.regularizer is Regularizer.LATENCY and config.budget_ms is not None
        ) or (config.regularizer is Regularizer.FLOPS and config.budget_flops is not None)
        self._soft_shift = 0.0  # soft signal + this = the real cost at ``self._anchor``
        if self.soft_cost_fn is not None:
            with torch.no_grad():
                self._soft_shift = dense_cost - float(self.soft_cost_fn(dense_counts))
        self._anchor = tuple(self.dense_widths)  # the widths the soft signal's shift was taken at
        self._since_anchor = 0
        masks = list(gates.parameters())
        bit_gates = [q.gates for q in quants.values()]
        gate_ids = {id(p) for p in masks + bit_gates}
        weights = [p for p in model.parameters() if id(p) not in gate_ids]
        groups = [{"params": weights, "lr": config.lr}, {"params": masks, "lr": config.gate_lr}]
        if bit_gates:
            groups.append({"params": bit_gates, "lr": config.bits_lr})
        self.optimizer = _make_optimizer(config.optimizer, groups)
        self.state = TrainState(lam=config.lam if config.lam is not None else config.lambda_init)
        self._dense_bits = sum(self._layer_params(n) * 16 for n in quants) or 1
        self._sparse_layers = [
            m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d) and m.weight.numel() > 1
        ]

    # ---- costs -----------------------------------------------------------------------------------
    def _layer_params(self, name: str) -> int:
        return int(self.model.get_submodule(name).weight.numel())

    def _soft_cost(self, counts: Sequence[Tensor]) -> Tensor:
        reg = self.config.regularizer
        if reg is Regularizer.LATENCY:
            return self.cost.soft_ms(counts)
        if reg is Regularizer.FLOPS:
            return self.cost.soft_flops(counts)
        return sum((l1_penalty(a) for a in self.gates.alphas), torch.zeros(()))

    def soft_counts(self) -> list[Tensor]:
        return [soft_count(a) * u for a, u in zip(self.gates.alphas, self.units)]

    def bits_cost(self) -> Tensor:
        """Soft weight storage of the quantised layers / their 16-bit storage."""
        total = torch.zeros(())
        for name, q in self.quants.items():
            total = total + q.soft_bits() * self._layer_params(name)
        return total / self._dense_bits

    def sparse_cost(self) -> Tensor:
        """Mean over layers of ``s(vec W) / numel``: the l1/l2 estimate of the kept weight fraction."""
        terms = [soft_count(m.weight.flatten()) / m.weight.numel() for m in self._sparse_layers]
        return torch.stack(terms).mean() if terms else torch.zeros(())

    def dual_cost(self, counts: Sequence[Tensor] | None = None, soft: Tensor | None = None) -> float:
        """The cost the dual ascent compares with its target (see ``config.dual_signal``).

        ``counts`` / ``soft``: the batch's soft counts and the penalty's soft cost at them, reused
        when the penalty measures the budget's own cost (a latency penalty on a latency budget) so
        the surrogate is evaluated once per batch, not twice.
        """
        if self.soft_cost_fn is None:
            return self.cost_fn(self.gates.widths())
        shift = self._anchored_shift()
        if soft is not None and self._penalty_is_budget_cost:
            return float(soft.detach()) + shift
        with torch.no_grad():
            counts = [c.detach() for c in (counts if counts is not None else self.soft_counts())]
            return float(self.soft_cost_fn(counts)) + shift

    def _anchored_shift(self) -> float:
        """The soft signal's offset, taken where the gates are now: ``cost_fn`` at the non-zero widths
        minus the soft cost at those widths.

        The soft cost (the table's envelope) lacks what the real cost adds as widths change (the
        whole-model prediction's layout reorders, dispatch, the staircase above its envelope): with
        the offset taken once at the dense widths, a digits MobileNetV3 at 35% of its latency read
        12-39% under its real price, so training stopped pruning early and left the rest to the final
        fit. Re-taken when the non-zero widths change, at most every ``_ANCHOR_EVERY`` batches.
        """
        assert self.soft_cost_fn is not None
        self._since_anchor += 1
        if self._since_anchor >= _ANCHOR_EVERY:
            hard = tuple(self.gates.widths())
            if hard != self._anchor and all(w > 0 for w in hard):
                with torch.no_grad():
                    at_hard = float(self.soft_cost_fn([torch.tensor(float(w)) for w in hard]))
                self._soft_shift = float(self.cost_fn(hard)) - at_hard
                self._anchor = hard
            self._since_anchor = 0
        return self._soft_shift

    # ---- one epoch -------------------------------------------------------------------------------
    def target_at(self, progress: float) -> float:
        """The dual ascent's target after ``progress`` penalised epochs (dense cost -> budget)."""
        if self.budget is None:
            return self.dense_cost
        ramp = self.config.budget_ramp * max(1, self.config.epochs)
        t = min(1.0, max(0.0, progress / ramp))
        return self.dense_cost + t * (self.budget - self.dense_cost)

    def run_epoch(self, loader: Batches, example: Tensor) -> dict[str, float]:
        """Train one epoch; returns mean loss / CE / penalty, the final lambda and the dual target."""
        cfg = self.config
        try:
            num_batches: int | None = len(loader)  # type: ignore[arg-type]
        except TypeError:
            num_batches = None
        target = self.budget
        loss_fn = nn.CrossEntropyLoss()
        self.model.train()
        sums = {"loss": 0.0, "ce": 0.0, "penalty": 0.0}
        n = 0
        for xb, yb in loader:
            if n == 0:
                check_batch_fits(self.model, example, xb)
            try:
                logits = self.model(xb)
            except RuntimeError as exc:
                raise EdgetrimError(
                    f"data does not fit the model: the first batch of shape {tuple(xb.shape)} fails "
                    f"({str(exc).splitlines()[0]})"
                ) from exc
            ce = loss_fn(logits, yb)
            loss = ce
            penalty = torch.zeros(())
            counts: list[Tensor] | None = None
            soft: Tensor | None = None
            if cfg.penalised and self.gates.groups:
                counts = self.soft_counts()
                soft = self._soft_cost(counts)
                penalty = penalty + self.state.lam * soft / self.dense_soft
            if self.quants and cfg.bits_lambda > 0:
                penalty = penalty + cfg.bits_lambda * self.bits_cost()
            if cfg.sparse_lambda > 0:
                penalty = penalty + cfg.sparse_lambda * self.sparse_cost()
            loss = ce + penalty
            if cfg.penalised_schedule == "cosine":
                self._set_weight_lr(n, num_batches)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.project_()
            if self.budget is not None:
                done = (n + 1) / num_batches if num_batches else 1.0
                target = self.target_at(self.state.epoch + done)
                # read at the batch's counts (before the step): one step of lag, one surrogate pass saved
                violation = self.dual_cost(counts, soft) / target - 1.0
                self.state.lam = max(0.0, self.state.lam + cfg.dual_lr * violation)
            sums["loss"] += float(loss.detach())
            sums["ce"] += float(ce.detach())
            sums["penalty"] += float(penalty.detach())
            n += 1
        if n == 0:
            raise EdgetrimError("the training data loader yielded no batches")
        return {k: v / n for k, v in sums.items()} | {"lambda": self.state.lam, "target": target}

    def _set_weight_lr(self, batch: int, num_batches: int | None) -> None:
        """Cosine learning rate of the weights over the penalised epochs (masks keep theirs). The
        position comes from the epoch counter and the batch index, so a resumed run continues it."""
        done = self.state.epoch + (batch / num_batches if num_batches else 0.0)
        progress = min(1.0, done / max(self.config.epochs, 1))
        self.optimizer.param_groups[0]["lr"] = self.config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))

    def project_(self) -> None:
        """Projection onto the constraints after every optimiser step (alpha >= 0, bit gates in [0, 1])."""
        self.gates.project_()
        for q in self.quants.values():
            q.project_()

    # ---- checkpoints -----------------------------------------------------------------------------
    def save_checkpoint(self, path: Path) -> None:
        """Atomically write model, gates, optimiser and lambda/epoch/history."""
        buf = io.BytesIO()
        torch.save(
            {
                "model": self.model.state_dict(),
                "gates": self.gates.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "lam": self.state.lam,
                "budget": self.budget,
                "epoch": self.state.epoch,
                "history": self.state.history,
                "soft_anchor": [list(self._anchor), self._soft_shift, self._since_anchor],
            },
            buf,
        )
        atomic_write_bytes(path, buf.getvalue())

    def load_checkpoint(self, path: Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` for the same model and config."""
        try:
            ckpt = torch.load(path, weights_only=False, map_location="cpu")
            self.model.load_state_dict(ckpt["model"])
            self.gates.load_state_dict(ckpt["gates"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except Exception as exc:
            raise EdgetrimError(
                f"cannot resume from {path}: {type(exc).__name__} (was it written for another model or config?)"
            ) from exc
        self.state = TrainState(
            lam=float(ckpt["lam"]), epoch=int(ckpt["epoch"]), history=list(ckpt["history"])
        )
        if ckpt.get("budget") is not None and self.budget is not None:
            self.budget = float(ckpt["budget"])  # the target as calibrated on the device so far
        if ckpt.get("soft_anchor") is not None:  # the soft signal as it was (exact resume)
            anchor, shift, since = ckpt["soft_anchor"]
            self._anchor, self._soft_shift, self._since_anchor = tuple(anchor), float(shift), int(since)
        if not math.isfinite(self.state.lam):
            raise EdgetrimError(f"cannot resume from {path}: lambda is not finite")
