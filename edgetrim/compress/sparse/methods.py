"""``sparsify``: every sparse-training method as a preset over one training loop.

Presets (``Method``):
* ``gmp``: gradual magnitude pruning, Zhu & Gupta cubic schedule from ``prune_start`` to ``prune_end``
  (fractions of training), global (default) or layer-wise (uniform / ERK / map) magnitude. Uniform
  follows GraNet_uniform: from sparsity 0.8 the classifier (last masked layer) keeps density 0.2 and the
  other layers are rebalanced to the same total (Gale et al.).
* ``granet``: ``gmp`` + zero-cost neuroregeneration (per layer, gradient regrowth, cosine death rate
  0.5 -> 0.005 over the whole run). ``init_sparsity=0.5`` starts from a random ERK mask at density 0.5
  (sparse-to-sparse). ``regrow=False`` turns it into ``gmp`` exactly.
* ``rigl`` / ``set``: fixed sparsity from a random ERK mask; drop by magnitude and regrow by dense
  gradient (RigL) or at random (SET), drop fraction ``rigl_alpha/2 (1 + cos(pi t / T_end))``.
* ``static``: a fixed random mask (ERK by default) or ``initial_masks`` given by the caller.
* ``pai``: pruning at initialisation by ``criterion`` (snip, grasp, synflow, magnitude, random,
  gradient), one-shot (``pai_rounds=1``) or iterative (exponential density schedule), then training
  with the mask fixed.
* ``lottery``: iterative magnitude pruning, ``imp_per_round`` (20%) of the remaining weights per round,
  with rewinding to Θ(0), to Θ(k) (``rewind_iteration``), or learning-rate rewinding.
* ``freeze``: train only the top-scoring weights at init, the rest frozen at their initial values.
* ``bn_only``: train only the BatchNorm affine parameters.

Layer collapse (a masked layer with no active weight) raises ``EdgetrimError`` naming the layer for
methods that train a sparse net (gmp, granet, rigl, set, static, bn_only), and is logged and listed in
``SparsifyReport.collapsed`` for pai, lottery and freeze, whose collapse at extreme sparsity is
something users measure (``collapse=`` overrides).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edgetrim.compress.sparse import allocation as alloc
from edgetrim.compress.sparse.config import CollapsePolicy, Granularity, Method, Rewind, SparsifyConfig
from edgetrim.compress.sparse.criteria import Criterion, keep_scores
from edgetrim.compress.sparse.loop import (
    CostTracker,
    DropSchedule,
    Growth,
    MaskScheduler,
    evaluate,
    layer_macs,
    make_optimizer,
    prune_masks,
    train_loop,
)
from edgetrim.compress.sparse.schedules import exponential_density, imp_rounds
from edgetrim.compress.weight_masks import MaskMode, WeightMasks, nm_mask
from edgetrim.errors import EdgetrimError

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class SparsifyReport:
    """What a sparse-training pass produced. ``model`` is the final model (materialised for channels)."""

    model: nn.Module
    config: SparsifyConfig
    accuracy: float
    val_loss: float
    density: float
    layer_densities: dict[str, float]
    layer_nnz: dict[str, int]
    total_nnz: int
    total_numel: int
    collapsed: list[str]
    history: list[dict[str, Any]]
    cost: dict[str, Any]
    trainings: int = 1
    masks: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    predicted_ms: float | None = None
    dense_predicted_ms: float | None = None
    kept_channels: dict[int, list[int]] | None = None
    mask_log: list[dict[str, Any]] = field(default_factory=list, repr=False)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no tensors)."""
        return {
            "config": self.config.to_dict(),
            "accuracy": self.accuracy,
            "val_loss": self.val_loss,
            "density": self.density,
            "sparsity": 1.0 - self.density,
            "layer_densities": self.layer_densities,
            "layer_nnz": self.layer_nnz,
            "total_nnz": self.total_nnz,
            "total_numel": self.total_numel,
            "collapsed": self.collapsed,
            "trainings": self.trainings,
            "predicted_ms": self.predicted_ms,
            "dense_predicted_ms": self.dense_predicted_ms,
            "kept_channels": self.kept_channels,
            "history": self.history,
            "notes": self.notes,
        }


# --------------------------------------------------------------------------- helpers
def _first_batches(loader: Iterable[Batch] | None, n: int) -> list[Batch]:
    out: list[Batch] = []
    if loader is None:
        return out
    for b in loader:
        out.append(b)
        if len(out) >= n:
            break
    return out


def _needs_data(cfg: SparsifyConfig) -> bool:
    if cfg.epochs > 0:
        return True
    if cfg.method in (Method.PAI, Method.FREEZE) and cfg.criterion.needs_data:
        return True
    return cfg.method in (Method.LOTTERY,)


def _shapes(masks: WeightMasks) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in masks.params.items()}


def _masks_from_scores(
    scores: Mapping[str, torch.Tensor], masks: WeightMasks, cfg: SparsifyConfig, density: float
) -> dict[str, torch.Tensor]:
    """Masks at ``density`` from keep-scores under the config's allocation / granularity."""
    nm = cfg.granularity.nm
    if nm is not None:
        return {n: nm_mask(s, *nm, name=n) & masks.masks[n] for n, s in scores.items()}
    scores = {n: torch.where(masks.masks[n], s, torch.full_like(s, -math.inf)) for n, s in scores.items()}
    allocation = cfg.effective_allocation
    if allocation is alloc.Allocation.GLOBAL:
        return alloc.global_topk(scores, density)
    dens = alloc.densities_for(allocation, _shapes(masks), density, layer_map=cfg.layer_densities)
    return alloc.layerwise_topk(scores, dens)


def _random_masks(masks: WeightMasks, cfg: SparsifyConfig, density: float, gen: torch.Generator) -> dict:
    allocation = cfg.effective_allocation
    if allocation is alloc.Allocation.GLOBAL:
        allocation = alloc.Allocation.UNIFORM  # a random global top-k is uniform in expectation
    dens = alloc.densities_for(allocation, _shapes(masks), density, layer_map=cfg.layer_densities)
    if cfg.granularity.nm is not None:
        return {
            n: nm_mask(torch.rand(p.shape, generator=gen), *cfg.granularity.nm, name=n)
            for n, p in masks.params.items()
        }
    return alloc.random_masks(_shapes(masks), dens, generator=gen)


@torch.no_grad()
def _rescale(masks: WeightMasks) -> None:
    """Keep the signal variance of a random sparse init: scale each layer by 1/sqrt(its density)."""
    for n, d in masks.layer_densities().items():
        if d > 0:
            masks.params[n].mul_(1.0 / math.sqrt(d))


def shuffle_masks(
    masks: Mapping[str, torch.Tensor], *, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Permute active positions within each layer (the PaI sanity check): same per-layer counts."""
    out = {}
    for n, m in masks.items():
        flat = m.reshape(-1)
        perm = torch.randperm(flat.numel(), generator=generator)
        out[n] = flat[perm].reshape(m.shape)
    return out


def prune_at_init(
    model: nn.Module,
    masks: WeightMasks,
    cfg: SparsifyConfig,
    *,
    density: float,
    batches: Sequence[Batch],
    input_shape: Sequence[int],
    generator: torch.Generator,
    cost: CostTracker | None = None,
) -> None:
    """Set ``masks`` by ``cfg.criterion`` at ``density``: one-shot, or ``pai_rounds`` rounds with
    density_k = density^(k/n) re-scoring the currently pruned net each round (SynFlow, iterative SNIP)."""
    rounds = cfg.pai_rounds
    samples = sum(len(y) for _, y in batches)
    for k in range(1, rounds + 1):
        d_k = exponential_density(k, n=rounds, density=density)
        scores = keep_scores(
            cfg.criterion,
            model,
            masks.params,
            batches=batches,
            input_shape=input_shape,
            masks=masks.masks,
            generator=generator,
            synflow_zero_bias=cfg.synflow_zero_bias,
        )
        masks.set_masks(_masks_from_scores(scores, masks, cfg, d_k))
        if cost is not None:
            if cfg.criterion is Criterion.SYNFLOW:
                cost.add_scoring(1, 1.0)
            elif cfg.criterion is Criterion.GRASP:
                cost.add_scoring(samples, 3.0)  # gradient pass + Hessian-gradient pass (double backward)
            elif cfg.criterion.needs_data:
                cost.add_scoring(samples, 1.0)


class _Trainer:
    """Binds the config, data and accounting to ``train_loop`` for one ``sparsify`` call."""

    def __init__(self, model, cfg, train_loader, val_loader, masks, cost, on_epoch, progress=None):
        self.model, self.cfg = model, cfg
        self.train_loader, self.val_loader = train_loader, val_loader
        self.masks, self.cost, self.on_epoch, self.progress = masks, cost, on_epoch, progress
        n = len(train_loader) if train_loader is not None and hasattr(train_loader, "__len__") else 1
        self.iters_per_epoch = min(n, cfg.batches_per_epoch) if cfg.batches_per_epoch else n
        self.history: list[dict[str, Any]] = []
        self.step_offset = 0

    @property
    def total_steps(self) -> int:
        return self.iters_per_epoch * self.cfg.epochs

    def run(self, *, scheduler=None, frozen=False, label="", step_hook=None, params=None) -> None:
        cfg = self.cfg
        if cfg.epochs == 0:
            return
        trainable = params if params is not None else [p for p in self.model.parameters() if p.requires_grad]
        opt = make_optimizer(
            trainable,
            kind=cfg.optimizer.value,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
        self.masks.attach(opt)
        milestones = sorted({max(1, round(f * cfg.epochs)) for f in cfg.lr_milestones if 0 < f < 1})

        def epoch_cb(row):
            row["epoch_global"] = len(self.history) + 1
            self.history.append(row)
            _check_collapse(self.masks, cfg, during=True)
            if self.on_epoch is not None:
                self.on_epoch(row)

        try:
            train_loop(
                self.model,
                self.masks,
                opt,
                self.train_loader,
                self.val_loader,
                epochs=cfg.epochs,
                batches_per_epoch=cfg.batches_per_epoch,
                milestones=milestones,
                gamma=cfg.lr_gamma,
                scheduler=scheduler,
                cost=self.cost,
                frozen=frozen,
                on_epoch=epoch_cb,
                step_hook=step_hook,
                progress=self.progress,
                label=label,
            )
        finally:
            self.masks.detach()


def _check_collapse(masks: WeightMasks, cfg: SparsifyConfig, *, during: bool = False) -> list[str]:
    if masks.mode is MaskMode.FREEZE:
        return []
    collapsed = masks.collapsed()
    if collapsed and cfg.effective_collapse is CollapsePolicy.ERROR:
        raise EdgetrimError(
            f"layer collapse: {', '.join(collapsed)} kept no weights at sparsity {cfg.sparsity} with "
            f"{cfg.method.value}/{cfg.effective_allocation.value}; lower the sparsity, use --allocation erk, "
            f"or exclude the layer"
        )
    if collapsed and not during:
        log.warning("layer collapse: %s kept no weights", ", ".join(collapsed))
    return collapsed


def _predict_dense_ms(model: nn.Module, example_inputs, table) -> float | None:
    """Table prediction of the model as the runtime runs it (zeros do not change dense kernels)."""
    if table is None:
        return None
    from edgetrim.model_ops import extract_layer_ops, fusion_for_runtime

    try:
        fusion = fusion_for_runtime(table.device.runtime)
    except (KeyError, ValueError, AttributeError):
        fusion = None
    known = set(table.contexts())
    total = 0.0
    for op in extract_layer_ops(model, tuple(example_inputs), fusion=fusion):
        if op.context in known:
            out_w = op.in_width if op.context.one_axis else op.out_width
            total += float(table.predict_ms(op.context, op.in_width, out_w).ms)
    return total


# --------------------------------------------------------------------------- the API
def sparsify(
    model: nn.Module,
    config: SparsifyConfig,
    *,
    train_loader: Iterable[Batch] | None,
    val_loader: Iterable[Batch] | None,
    table: Any = None,
    example_inputs: Sequence[torch.Tensor] | None = None,
    initial_masks: Mapping[str, torch.Tensor] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    progress: Any = None,
) -> SparsifyReport:
    """Train ``model`` sparse with ``config.method`` and return a report holding the final model.

    Unstructured / N:M: ``model`` is trained in place with masks applied (``report.model is model``).
    Channel granularity: the result is materialised into a physically smaller copy.

    Args:
        model: a conv / linear classifier (logits ``(B, classes)``).
        config: the method and its hyper-parameters.
        train_loader / val_loader: ``(x, y)`` batches; a method that trains or scores on data raises
            ``EdgetrimError`` when ``train_loader`` is None.
        table: a ``LatencyTable`` for predicted latency (and the latency allocation).
        example_inputs: input tensors defining shapes; default: the first training sample.
        initial_masks: masks by parameter name for ``static`` (lottery re-init and shuffle checks).
        on_epoch: called with each epoch's history row (the CLI prints them).
    """
    cfg = config
    if _needs_data(cfg) and train_loader is None:
        raise EdgetrimError(
            f"method {cfg.method.value} needs training data (it trains or scores on batches); pass --data / train_loader"
        )
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    if example_inputs is None:
        batches = _first_batches(train_loader, 1)
        if not batches:
            raise EdgetrimError("no example inputs: pass example_inputs or a non-empty train_loader")
        example_inputs = (batches[0][0][:1],)
    example_inputs = tuple(example_inputs)
    if cfg.granularity is Granularity.CHANNEL:
        from edgetrim.compress.sparse.channels import sparsify_channels

        return sparsify_channels(
            model,
            cfg,
            train_loader=train_loader,
            val_loader=val_loader,
            table=table,
            example_inputs=example_inputs,
            on_epoch=on_epoch,
            progress=progress,
        )
    mode = MaskMode.FREEZE if cfg.method in (Method.FREEZE, Method.BN_ONLY) else MaskMode.PRUNE
    masks = WeightMasks(model, exclude=cfg.exclude, mode=mode)
    if cfg.granularity.nm is not None:
        for n, p in masks.params.items():  # shape check up front: one line naming the layer
            nm_mask(torch.zeros(p.shape), *cfg.granularity.nm, name=n)
    macs = layer_macs(model, example_inputs)
    cost = CostTracker(macs=macs, masked=list(masks.params))
    trainer = _Trainer(model, cfg, train_loader, val_loader, masks, cost, on_epoch, progress)
    density = cfg.density
    T = trainer.total_steps
    dt = cfg.update_every or max(1, trainer.iters_per_epoch // 2)
    score_batches = _first_batches(train_loader, cfg.score_batches)
    trainings = 1
    notes: list[str] = []
    scheduler: MaskScheduler | None = None
    m = cfg.method

    if m in (Method.GMP, Method.GRANET):
        if cfg.init_sparsity > 0:
            init = alloc.random_masks(
                _shapes(masks), alloc.erk_densities(_shapes(masks), 1 - cfg.init_sparsity), generator=gen
            )
            masks.set_masks(init)
            if cfg.sparse_init_rescale:
                _rescale(masks)
        allocation = cfg.effective_allocation
        layer_d = None
        if (
            allocation is alloc.Allocation.UNIFORM
        ):  # GraNet_uniform / GMP_uniform: Gale et al. classifier rule
            layer_d = alloc.gale_uniform_densities(
                _shapes(masks), cfg.sparsity, classifier=list(masks.params)[-1]
            )
        elif allocation is not alloc.Allocation.GLOBAL:
            layer_d = alloc.densities_for(allocation, _shapes(masks), density, layer_map=cfg.layer_densities)
        scheduler = MaskScheduler(
            total_steps=T, update_every=dt, prune=True, s_i=cfg.init_sparsity, s_f=cfg.sparsity,
            t0=round(cfg.prune_start * T), tf=round(cfg.prune_end * T), allocation=allocation,
            layer_densities=layer_d, nm=cfg.granularity.nm, min_layer_density=cfg.effective_min_layer_density,
            regrow=Growth.GRADIENT if cfg.effective_regrow else None, drop_schedule=DropSchedule.COSINE_ALL,
            r0=cfg.death_rate, r_min=cfg.death_rate_min, generator=gen,
        )  # fmt: skip
        trainer.run(scheduler=scheduler)
    elif m in (Method.RIGL, Method.SET, Method.STATIC):
        if initial_masks is not None:
            masks.set_masks(initial_masks)
        else:
            masks.set_masks(_random_masks(masks, cfg, density, gen))
        if cfg.sparse_init_rescale:
            _rescale(masks)
        if m is not Method.STATIC and cfg.effective_regrow:
            scheduler = MaskScheduler(
                total_steps=T, update_every=dt, prune=False,
                regrow=Growth.GRADIENT if m is Method.RIGL else Growth.RANDOM, drop_schedule=DropSchedule.RIGL,
                r0=cfg.rigl_alpha, t_end=round(cfg.drop_end * T), generator=gen,
            )  # fmt: skip
        trainer.run(scheduler=scheduler)
    elif m is Method.PAI:
        prune_at_init(
            model, masks, cfg, density=density, batches=score_batches,
            input_shape=example_inputs[0].shape, generator=gen, cost=cost,
        )  # fmt: skip
        _check_collapse(masks, cfg)
        trainer.run()
    elif m is Method.FREEZE:
        prune_at_init(
            model, masks, cfg, density=density, batches=score_batches,
            input_shape=example_inputs[0].shape, generator=gen, cost=cost,
        )  # fmt: skip
        trainer.run(frozen=True)
        notes.append("frozen weights keep their initial values: inference cost is the dense model's")
    elif m is Method.BN_ONLY:
        norms = [mod for mod in model.modules() if isinstance(mod, _NORMS)]
        if not norms:
            raise EdgetrimError("bn_only training needs BatchNorm layers, and this model has none")
        bn_params = [p for mod in norms for p in mod.parameters()]
        ids = {id(p) for p in bn_params}
        for p in model.parameters():
            p.requires_grad_(id(p) in ids)
        masks.set_masks({n: torch.zeros_like(mk) for n, mk in masks.masks.items()})
        trainer.run(frozen=True, params=bn_params)
        for p in model.parameters():
            p.requires_grad_(True)
        notes.append("bn_only: conv/linear weights and biases frozen at init; only BatchNorm trains")
    elif m is Method.LOTTERY:
        trainings = _lottery(model, masks, cfg, trainer, density)
    else:  # pragma: no cover - enum exhausted
        raise ValueError(f"unknown method {m}")

    collapsed = _check_collapse(masks, cfg)
    val_loss, acc = evaluate(model, val_loader)
    predicted = _predict_dense_ms(model, example_inputs, table)
    if predicted is not None:
        notes.append("unstructured / N:M zeros do not change the table prediction: dense kernels run them")
    return SparsifyReport(
        model=model,
        config=cfg,
        accuracy=acc,
        val_loss=val_loss,
        density=masks.density(),
        layer_densities=masks.layer_densities(),
        layer_nnz=masks.nnz(),
        total_nnz=masks.total_nnz(),
        total_numel=masks.total_numel(),
        collapsed=collapsed,
        history=trainer.history,
        cost=cost.to_dict(),
        trainings=trainings,
        masks=masks.state_dict(),
        predicted_ms=predicted,
        dense_predicted_ms=predicted,
        mask_log=scheduler.log_rows if scheduler is not None else [],
        notes=notes,
    )


def _lottery(
    model: nn.Module, masks: WeightMasks, cfg: SparsifyConfig, trainer: _Trainer, density: float
) -> int:
    """IMP: train, prune ``imp_per_round`` of the remaining weights, rewind; repeat; train the ticket."""
    rounds = (
        cfg.imp_rounds
        if cfg.imp_rounds is not None
        else imp_rounds(cfg.sparsity, per_round=cfg.imp_per_round)
    )
    init_state = copy.deepcopy(model.state_dict())
    rewind_state: dict[str, torch.Tensor] | None = None

    def capture(step: int) -> None:
        nonlocal rewind_state
        if rewind_state is None and step >= cfg.rewind_iteration:
            rewind_state = copy.deepcopy(model.state_dict())

    if cfg.rewind is Rewind.ITERATION and cfg.rewind_iteration == 0:
        rewind_state = copy.deepcopy(init_state)
    allocation = cfg.effective_allocation
    for r in range(rounds):
        trainer.run(label=f"imp round {r + 1}/{rounds}", step_hook=capture if r == 0 else None)
        target = (1.0 - cfg.imp_per_round) ** (r + 1)
        if r == rounds - 1 or target < density:
            target = density
        if cfg.granularity.nm is not None:
            new = {n: nm_mask(p.detach().abs(), *cfg.granularity.nm, name=n) for n, p in masks.params.items()}
        else:
            layer_d = None
            if allocation is not alloc.Allocation.GLOBAL:
                layer_d = alloc.densities_for(
                    allocation, _shapes(masks), density, layer_map=cfg.layer_densities
                )
            new = prune_masks(
                masks,
                target,
                allocation,
                layer_densities=layer_d,
                min_layer_density=cfg.effective_min_layer_density,
            )
        masks.set_masks(new)
        if cfg.rewind is Rewind.INIT:
            model.load_state_dict(init_state)
        elif cfg.rewind is Rewind.ITERATION:
            model.load_state_dict(rewind_state if rewind_state is not None else init_state)
        masks.apply()
    trainer.run(label="ticket")
    return rounds + 1
