"""Algorithm 1 of "Growing Efficient Deep Networks by Structured Continuous Sparsification".

Per epoch: measure the sampled network's resource (parameters, MACs, or table-predicted latency), set
``lambda = lambda_base * (u_target - u_G)`` (negative while too small: growth), train weights and gate
logits on ``CE + lambda1 * sum(channel gates) + lambda2 * sum(layer gates)``, then draw the next
epoch's units ``q ~ Bern(sigmoid(beta s))`` and advance the per-unit temperature counters of the units
drawn on. At the end the units with ``s > 0`` form the network, materialised as a plain
``nn.Sequential``.

Dormant weights (units not in the sampled network) are held exactly: their gradient is zero by
construction (the forward pass slices them out), and after each optimiser step their values are
restored and their momentum reset, so weight decay and momentum never move them. A unit regrown later
resumes from its old weights; a never-grown unit starts from its (untouched) random initialisation.
Dormant *logits* stay in the mask optimiser: the regulariser keeps pushing them (growth runs through it).
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgetrim.compress.grow.gates import (
    budget_lambda,
    default_gamma,
    sample_units,
    sparsity_of,
)
from edgetrim.compress.grow.net import GrowNet, GrowNetSpec, count_resources, plain_net
from edgetrim.errors import BudgetError, EdgetrimError

logger = logging.getLogger(__name__)


class BudgetKind(enum.StrEnum):
    PARAMS = "params"  # value: fraction of the full network's parameters (0.3 = 30%)
    FLOPS = "flops"  # value: fraction of the full network's MACs (<= 1) or an absolute MAC count (> 1)
    LATENCY = "latency"  # value: milliseconds predicted by a LatencyTable


WEIGHT_SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class GrowConfig:
    """Growth run settings (defaults: the paper's channel-growth setting, rescaled to digits)."""

    budget: BudgetKind = BudgetKind.PARAMS
    budget_value: float = 0.3
    epochs: int = 30
    lambda1_base: float = 1.0  # channel gates (paper: 0.5 channel-only, 1.0 with layers; 1.0 suits digits)
    lambda2_base: float = 0.1  # layer gates
    final_beta: float = 100.0  # gamma = final_beta ** (1 / epochs)
    global_temperature: bool = False  # ablation: one global counter instead of per-unit counters
    lr: float = 0.05  # weights: SGD + momentum, schedule below
    # "cosine": the weight lr anneals to 0 over the growth epochs (the network is used as it is, paper
    # Table 1). "constant": the lr stays at ``lr`` while the architecture is still growing, so the
    # annealing is left to the fine-tune of the final architecture (grow, then fine-tune: Tables 3/4).
    weight_schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    mask_lr: float = 0.1  # logits: SGD lr 0.1, momentum 0.9, wd 1e-6, same schedule (paper §4.2)
    mask_momentum: float = 0.9
    mask_weight_decay: float = 1e-6
    batch_size: int = 64
    seed_units: int = 1
    logit_on: float = 2.0
    logit_off: float = -3.0
    logit_jitter: float = 0.5  # uniform spread of the dormant logits (breaks all-at-once growth)
    measure_final: bool = True  # u_G of the architecture kept now (s > 0); False: of the sampled network
    recalibrate_bn: bool = (
        True  # after growth: BN statistics of the final architecture (GrowNet.recalibrate_bn_)
    )
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "budget", BudgetKind(self.budget))
        if self.budget_value <= 0:
            raise ValueError(f"budget_value must be > 0, got {self.budget_value}")
        if self.budget is BudgetKind.PARAMS and self.budget_value > 1:
            raise ValueError(f"a parameter budget is a fraction in (0, 1], got {self.budget_value}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.final_beta <= 1:
            raise ValueError(f"final_beta must be > 1 (the sigmoid sharpens), got {self.final_beta}")
        if self.seed_units < 1:
            raise ValueError(f"seed_units must be >= 1, got {self.seed_units}")
        if not self.logit_off < 0 < self.logit_on:
            raise ValueError(f"need logit_off < 0 < logit_on, got {self.logit_off}, {self.logit_on}")
        if self.weight_schedule not in WEIGHT_SCHEDULES:
            raise ValueError(
                f"weight_schedule must be one of {WEIGHT_SCHEDULES}, got {self.weight_schedule!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["budget"] = self.budget.value
        return d


@dataclass
class GrowReport:
    widths: list[int]
    layers_on: list[bool]
    params: int
    macs: int
    full_params: int
    full_macs: int
    budget: dict[str, Any]
    final_resource: float  # in the budget's unit (fraction for params/flops, ms for latency)
    accuracy: float | None
    training_macs: float  # cumulative forward+backward MACs of growth (3 x forward per sample)
    dense_training_macs: float  # the full network trained for the same epochs
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    final_vs_sampled_disagreement: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ResourceMeter:
    """u_G of a sampled network in the budget's unit, and the target sparsity."""

    def __init__(
        self,
        spec: GrowNetSpec,
        cfg: GrowConfig,
        *,
        table: Any | None = None,
        fusion: Any | None = None,
    ) -> None:
        self.spec = spec
        self.cfg = cfg
        self.table = table
        self.fusion = fusion
        self._cache: dict[tuple[tuple[int, ...], tuple[bool, ...]], float] = {}
        if cfg.budget is BudgetKind.LATENCY and table is None:
            raise EdgetrimError("a latency budget needs a latency table: pass --table T")
        on = [True] * len(spec.widths)
        self.full = self.resource(list(spec.widths), on)
        if cfg.budget is BudgetKind.LATENCY:
            self.target = sparsity_of(cfg.budget_value, self.full)
            floor = self.resource([1] * len(spec.widths), [not g for g in spec.layer_gated])
            if cfg.budget_value < floor:
                raise BudgetError(
                    f"the {cfg.budget_value} ms budget is below the one-filter network's {floor:.4f} ms; raise it"
                )
        elif cfg.budget is BudgetKind.FLOPS and cfg.budget_value > 1:
            self.target = sparsity_of(cfg.budget_value, self.full)
        else:
            self.target = 1.0 - cfg.budget_value
        if self.target < 0:
            logger.warning(
                "the budget exceeds the full network (%.4g > %.4g): growth will stop at full size",
                cfg.budget_value,
                self.full,
            )

    def resource(self, widths: list[int], layers_on: list[bool]) -> float:
        key = (tuple(widths), tuple(layers_on))
        if key not in self._cache:
            params, macs = count_resources(self.spec, widths, layers_on)
            if self.cfg.budget is BudgetKind.PARAMS:
                value = float(params)
            elif self.cfg.budget is BudgetKind.FLOPS:
                value = float(macs)
            else:
                value = self._latency_ms(widths, layers_on)
            self._cache[key] = value
        return self._cache[key]

    def _latency_ms(self, widths: list[int], layers_on: list[bool]) -> float:
        try:
            from edgetrim.lookup_tables import predict_model
            from edgetrim.model_ops import extract_layer_ops
        except ImportError as exc:
            raise EdgetrimError(
                f"latency budgets need edgetrim.model_ops and edgetrim.lookup_tables ({exc})"
            ) from exc
        model = plain_net(self.spec, widths, layers_on)
        example = (torch.zeros(1, self.spec.in_channels, *self.spec.image_size),)
        if self.fusion is None:
            from edgetrim.model_ops import fusion_for_runtime

            self.fusion = fusion_for_runtime(self.table.device.runtime)
        ops = extract_layer_ops(model, example, fusion=self.fusion)
        return float(predict_model(self.table, ops).total_ms)

    def sparsity(self, widths: list[int], layers_on: list[bool]) -> float:
        return sparsity_of(self.resource(widths, layers_on), self.full)

    def in_budget_unit(self, widths: list[int], layers_on: list[bool]) -> float:
        r = self.resource(widths, layers_on)
        if self.cfg.budget is BudgetKind.LATENCY or (
            self.cfg.budget is BudgetKind.FLOPS and self.cfg.budget_value > 1
        ):
            return r
        return r / self.full


def _weight_active_masks(net: GrowNet, active: list[Tensor], layer_active: Tensor) -> dict[str, Tensor]:
    """Per weight parameter, which entries take part in the sampled network (everything else is held)."""
    on = net.layers_on(layer_active)
    masks: dict[str, Tensor] = {}
    cur = torch.ones(net.spec.in_channels, dtype=torch.bool)
    for j, conv in enumerate(net.convs):
        out = active[net.group_of[j]] if on[j] else torch.zeros(conv.out_channels, dtype=torch.bool)
        masks[f"convs.{j}.weight"] = (
            (out.view(-1, 1) & cur.view(1, -1)).view(-1, cur.numel(), 1, 1).expand_as(conv.weight)
        )
        masks[f"convs.{j}.bias"] = out
        masks[f"bns.{j}.weight"] = out
        masks[f"bns.{j}.bias"] = out
        if on[j]:
            cur = out
    masks["fc.weight"] = cur.view(1, -1).expand_as(net.fc.weight)
    masks["fc.bias"] = torch.ones_like(net.fc.bias, dtype=torch.bool)
    return masks


def grow_(
    net: GrowNet,
    train: tuple[Tensor, Tensor],
    cfg: GrowConfig,
    *,
    val: tuple[Tensor, Tensor] | None = None,
    meter: ResourceMeter | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> GrowReport:
    """Grow ``net`` in place on ``train`` tensors under ``cfg``'s budget (Algorithm 1)."""
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    meter = meter or ResourceMeter(net.spec, cfg)
    gamma = default_gamma(cfg.epochs, cfg.final_beta)
    net.gamma.fill_(gamma)
    x_all, y_all = train
    weights = [p for n, p in net.named_parameters() if "logits" not in n]
    logits = [p for n, p in net.named_parameters() if "logits" in n]
    w_opt = torch.optim.SGD(weights, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    m_opt = torch.optim.SGD(
        logits, lr=cfg.mask_lr, momentum=cfg.mask_momentum, weight_decay=cfg.mask_weight_decay
    )
    if cfg.weight_schedule == "constant":
        w_sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.LambdaLR(
            w_opt, lambda _: 1.0
        )
    else:
        w_sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, T_max=cfg.epochs)
    m_sched = torch.optim.lr_scheduler.CosineAnnealingLR(m_opt, T_max=cfg.epochs)
    named = dict(net.named_parameters())
    full_params, full_macs = count_resources(net.spec, list(net.spec.widths), [True] * len(net.spec.widths))
    train_macs = 0.0
    history: list[dict[str, Any]] = []
    n_groups = len(net.group_width)
    for epoch in range(cfg.epochs):
        widths = net.widths_of(net.active)
        on = net.layers_on(net.layer_active)
        if cfg.measure_final:
            kept_ch, kept_layers = net.deterministic_state()
            u_g = meter.sparsity(net.widths_of(kept_ch), net.layers_on(kept_layers))
        else:
            u_g = meter.sparsity(widths, on)
        lam1 = budget_lambda(cfg.lambda1_base, meter.target, u_g)
        lam2 = budget_lambda(cfg.lambda2_base, meter.target, u_g)
        _, macs = count_resources(net.spec, widths, on)
        weight_lr = float(w_opt.param_groups[0]["lr"])
        held = _weight_active_masks(net, net.active, net.layer_active)
        net.train()
        perm = torch.randperm(len(x_all), generator=gen)
        total_loss, seen = 0.0, 0
        for i in range(0, len(x_all), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            if len(idx) < 2:
                continue
            out = net(x_all[idx])
            ce = F.cross_entropy(out, y_all[idx])
            ch_sum, layer_sum = net.soft_gate_sum()
            loss = ce + lam1 * ch_sum + lam2 * layer_sum
            w_opt.zero_grad(set_to_none=True)
            m_opt.zero_grad(set_to_none=True)
            loss.backward()
            saved = {n: named[n].detach().clone() for n in held}
            w_opt.step()
            with torch.no_grad():
                for n, keep in held.items():
                    p = named[n]
                    p.copy_(torch.where(keep, p, saved[n]))
                    buf = w_opt.state.get(p, {}).get("momentum_buffer")
                    if buf is not None:
                        buf.mul_(keep.to(buf.dtype))
            m_opt.step()
            train_macs += 3.0 * macs * len(idx)
            total_loss += float(ce.detach()) * len(idx)
            seen += len(idx)
        w_sched.step()
        m_sched.step()
        # Sample next epoch's network and advance the temperature counters of the units drawn on.
        with torch.no_grad():
            new_active = []
            for g in range(n_groups):
                q = sample_units(net.channel_gates(g), gen)
                new_active.append(q)
            if net.gated_layers:
                ql = sample_units(net.layer_gates(), gen, at_least_one=False)
            else:
                ql = net.layer_active
            for g in range(n_groups):
                if cfg.global_temperature:
                    net.channel_counts[g] += 1
                else:
                    net.channel_counts[g] += new_active[g].float()
            if cfg.global_temperature:
                net.layer_counts += 1
            else:
                net.layer_counts += ql.float()
            net.active = new_active
            net.layer_active = ql.clone()
        row = {
            "epoch": epoch,
            "widths": widths,
            "layers_on": on,
            "u_G": u_g,
            "u_target": meter.target,
            "lambda1": lam1,
            "lambda2": lam2,
            "resource": meter.in_budget_unit(widths, on),
            "train_loss": total_loss / max(seen, 1),
            "weight_lr": weight_lr,
            "kept_widths": net.widths_of(net.deterministic_state()[0]),
            "expected_widths": [
                round(float(net.channel_gates(net.group_of[j]).detach().sum()), 2) for j in range(len(widths))
            ],
        }
        if val is not None:
            row["val_acc"] = _accuracy(net, *val)
        history.append(row)
        logger.info("epoch %d widths %s u_G=%.3f lambda1=%.3f", epoch, widths, u_g, lam1)
        if on_epoch is not None:
            on_epoch(row)
    if cfg.recalibrate_bn:
        net.recalibrate_bn_(x_all)
    chans, layers = net.deterministic_state()
    disagreement = int(sum(int((c != a).sum()) for c, a in zip(chans, net.active, strict=True)))
    final_w = net.widths_of(chans)
    final_on = net.layers_on(layers)
    params, macs = count_resources(net.spec, final_w, final_on)
    acc = _accuracy(net, *val) if val is not None else None
    return GrowReport(
        widths=final_w,
        layers_on=final_on,
        params=params,
        macs=macs,
        full_params=full_params,
        full_macs=full_macs,
        budget={"kind": cfg.budget.value, "value": cfg.budget_value, "target_sparsity": meter.target},
        final_resource=meter.in_budget_unit(final_w, final_on),
        accuracy=acc,
        training_macs=train_macs,
        dense_training_macs=3.0 * full_macs * len(x_all) * cfg.epochs,
        history=history,
        seconds=time.perf_counter() - start,
        final_vs_sampled_disagreement=disagreement,
    )


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    model.train(was)
    return acc


def train_plain_(
    model: nn.Module,
    train: tuple[Tensor, Tensor],
    *,
    epochs: int,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
) -> float:
    """Train a plain model with the growth run's weight recipe (SGD + cosine); returns train MACs-free loss."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    x_all, y_all = train
    model.train()
    last = math.nan
    for _ in range(epochs):
        perm = torch.randperm(len(x_all), generator=gen)
        tot, n = 0.0, 0
        for i in range(0, len(x_all), batch_size):
            idx = perm[i : i + batch_size]
            if len(idx) < 2:
                continue
            loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
            n += len(idx)
        sched.step()
        last = tot / max(n, 1)
    model.eval()
    return last


def accuracy(model: nn.Module, data: tuple[Tensor, Tensor]) -> float:
    return _accuracy(model, *data)
