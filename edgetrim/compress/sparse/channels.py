"""Channel / filter granularity: gradual channel pruning on coupled groups, materialised at the end.

One mask entry is one channel of a coupled group (``edgetrim.compress.graph.find_channel_groups``):
the producer's output rows (weight, bias), its BatchNorm, depthwise convs and the consumers' input
columns are masked together through ``WeightMasks``, so a removed channel outputs exactly zero and the
model materialised by ``materialize_channels`` computes the same function, physically smaller.

Channel score: mean |w| of the channel's producer rows (mean, not sum, so layers with different fan-in
compare on one scale). Allocation:

* ``global``: one ranking of all channels; cubic schedule on the fraction of channels removed;
* ``uniform``: every group loses the same fraction;
* ``latency``: a cubic schedule on *predicted latency* from the dense value to ``budget_ms``; at each
  update channel chunks are removed greedily, lowest ``importance / ms saved`` first: per group the
  chunk is its lowest-scoring 1/16 of active channels, doubled until the table predicts a saving
  (stepping over alignment plateaus); importance is the chunk's share of its group's total score. The plain score (no division) is used instead when a dry run on
  the dense model shows it keeps more total score at the budget ("divided where that scores better").

Every group keeps at least one channel (the layer-collapse guard of this granularity).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from edgetrim.compress.graph import ChannelGroup, Role, find_channel_groups, materialize_channels
from edgetrim.compress.sparse.allocation import Allocation
from edgetrim.compress.sparse.config import SparsifyConfig
from edgetrim.compress.sparse.loop import CostTracker, evaluate, layer_macs, make_optimizer, train_loop
from edgetrim.compress.sparse.schedules import cubic_sparsity
from edgetrim.compress.weight_masks import WeightMasks
from edgetrim.errors import BudgetError, EdgetrimError, TableError
from edgetrim.types import OpKind

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    param: str
    dim: int
    local: torch.Tensor  # indices along dim
    root: torch.Tensor  # group channel of each local index


def _entries(model: nn.Module, group: ChannelGroup) -> list[_Entry]:
    mods = dict(model.named_modules())
    out: list[_Entry] = []
    for mem in group.members:
        mod = mods.get(mem.name)
        if mod is None or mem.role is Role.OTHER:
            continue
        local = torch.tensor(mem.local, dtype=torch.long)
        root = torch.tensor(mem.root, dtype=torch.long)
        prefix = f"{mem.name}." if mem.name else ""
        if mem.role is Role.CONSUMER:
            if getattr(mod, "weight", None) is not None:
                out.append(_Entry(prefix + "weight", 1, local, root))
        else:  # producer, depthwise, norm: output channels along dim 0
            for pname in ("weight", "bias"):
                if getattr(mod, pname, None) is not None:
                    out.append(_Entry(prefix + pname, 0, local, root))
    return out


class ChannelMasks:
    """Channel keep-vectors per group, pushed into a ``WeightMasks`` over every touched parameter."""

    def __init__(
        self, model: nn.Module, example_inputs: Sequence[torch.Tensor], *, exclude: Iterable[str] = ()
    ):
        self.groups = find_channel_groups(model, example_inputs, ignore=list(exclude))
        if not self.groups:
            raise EdgetrimError("the model has no prunable channel groups (only its output layer?)")
        self.entries = {g.id: _entries(model, g) for g in self.groups}
        names = sorted({e.param for es in self.entries.values() for e in es})
        self.weights = WeightMasks(model, names=names)
        self.keep = {g.id: torch.ones(g.size, dtype=torch.bool) for g in self.groups}
        self.producers = {
            g.id: [e for e in self.entries[g.id] if e.dim == 0 and e.param.endswith("weight")]
            for g in self.groups
        }

    def push(self, optimizer=None) -> None:
        new = {n: torch.ones_like(m) for n, m in self.weights.masks.items()}
        for gid, keep in self.keep.items():
            removed = ~keep
            for e in self.entries[gid]:
                sel = e.local[removed[e.root]]
                if sel.numel():
                    new[e.param].index_fill_(e.dim, sel, False)
        self.weights.set_masks(new, optimizer)

    def scores(self) -> dict[int, torch.Tensor]:
        """Mean |w| of each channel's producer rows (summed over producers of the group)."""
        params = self.weights.params
        out = {}
        for g in self.groups:
            s = torch.zeros(g.size)
            for e in self.producers[g.id]:
                w = params[e.param].detach().abs()
                rows = w.reshape(w.shape[0], -1).mean(1)
                s.index_add_(0, e.root, rows[e.local])
            out[g.id] = s
        return out

    def n_active(self) -> int:
        return int(sum(int(k.sum()) for k in self.keep.values()))

    def n_total(self) -> int:
        return sum(g.size for g in self.groups)

    def kept_indices(self) -> dict[int, list[int]]:
        return {gid: torch.nonzero(k).flatten().tolist() for gid, k in self.keep.items()}


class LatencyModel:
    """Predicted latency of the model as a function of each group's active channel count."""

    def __init__(
        self, model: nn.Module, example_inputs: Sequence[torch.Tensor], cm: ChannelMasks, table: Any
    ):
        from edgetrim.model_ops import extract_layer_ops, fusion_for_runtime  # torch-side op walk

        self.table = table
        known = set(table.contexts())
        try:
            fusion = fusion_for_runtime(table.device.runtime)
        except (KeyError, ValueError, AttributeError):
            fusion = None
        self.ops = extract_layer_ops(model, tuple(example_inputs), fusion=fusion)
        self.covered = [op for op in self.ops if op.context in known]
        self.uncovered = [op.name for op in self.ops if op.context not in known]
        if not any(op.context.kind in (OpKind.CONV2D, OpKind.LINEAR) for op in self.covered):
            raise TableError(
                f"the latency table covers none of the model's conv / linear layers ({', '.join(self.uncovered[:4])}"
                f"{' ...' if len(self.uncovered) > 4 else ''}); profile this model into the table"
            )
        if self.uncovered:
            log.info("latency table lacks contexts for %s; they count as constant", self.uncovered)
        # per op: group -> (#in features per channel index, #out per channel)
        self.in_maps: dict[str, list[tuple[int, torch.Tensor]]] = {}
        self.out_maps: dict[str, list[tuple[int, torch.Tensor]]] = {}
        for g in cm.groups:
            for mem in g.members:
                root = torch.tensor(mem.root, dtype=torch.long)
                target = self.in_maps if mem.role is Role.CONSUMER else self.out_maps
                if mem.role in (Role.DEPTHWISE, Role.NORM):
                    self.in_maps.setdefault(mem.name, []).append((g.id, root))
                target.setdefault(mem.name, []).append((g.id, root))

    def _width(self, base: int, maps, keep: Mapping[int, torch.Tensor]) -> int:
        removed = sum(int((~keep[gid])[root].sum()) for gid, root in maps)
        return max(1, base - removed)

    def ms(self, keep: Mapping[int, torch.Tensor]) -> float:
        total = 0.0
        for op in self.covered:
            in_w = self._width(op.in_width, self.in_maps.get(op.name, []), keep)
            out_w = self._width(op.out_width, self.out_maps.get(op.name, []), keep)
            if op.context.one_axis:
                in_w = out_w = min(in_w, out_w)
            total += float(self.table.predict_ms(op.context, in_w, out_w).ms)
        return total

    def ops_at(self, keep: Mapping[int, torch.Tensor]) -> list:
        return [
            replace(
                op,
                in_width=self._width(op.in_width, self.in_maps.get(op.name, []), keep),
                out_width=self._width(op.out_width, self.out_maps.get(op.name, []), keep),
            )
            for op in self.ops
        ]


def _greedy_to_ms(
    keep: dict[int, torch.Tensor],
    scores: Mapping[int, torch.Tensor],
    lat: LatencyModel,
    target_ms: float,
    *,
    divide: bool,
) -> dict[int, torch.Tensor]:
    """Remove channel chunks until the prediction is <= target_ms (masks only shrink).

    Per group the candidate is its lowest-scoring active channels, a chunk of 1/16 of the active
    channels doubled until the table predicts a positive saving (this steps over alignment plateaus).
    Scores are normalised so each group's channels sum to 1 (a layer's total importance is the same
    whatever its width). The chunk with the lowest importance (``divide``: importance per ms saved)
    goes first. Every group keeps at least one channel.
    """
    keep = {g: k.clone() for g, k in keep.items()}
    norm = {g: s / (s.sum() + 1e-12) for g, s in scores.items()}
    cur = lat.ms(keep)
    while cur > target_ms:
        best, best_val, best_ms = None, math.inf, cur
        for gid, k in keep.items():
            active = torch.nonzero(k).flatten()
            if active.numel() <= 1:
                continue
            order = active[norm[gid][active].argsort()]
            chunk = max(1, math.ceil(active.numel() / 16))
            while True:
                chunk = min(chunk, active.numel() - 1)
                trial = dict(keep)
                trial[gid] = k.clone()
                trial[gid][order[:chunk]] = False
                ms = lat.ms(trial)
                if cur - ms > 1e-9 or chunk >= active.numel() - 1:
                    break
                chunk *= 2
            saving = cur - ms
            if saving <= 1e-9:
                continue
            importance = float(norm[gid][order[:chunk]].sum())
            val = importance / saving if divide else importance
            if val < best_val:
                best, best_val, best_ms = (gid, order[:chunk]), val, ms
        if best is None:
            break
        keep[best[0]][best[1]] = False
        cur = best_ms
    return keep


def _normalised(scores: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    return {g: s / (s.mean() + 1e-12) for g, s in scores.items()}


def _prune_fraction(keep, scores, frac_removed: float, allocation: Allocation) -> dict[int, torch.Tensor]:
    """Global or uniform removal of the lowest-scoring channels (only shrinks; >= 1 per group)."""
    keep = {g: k.clone() for g, k in keep.items()}
    if allocation is Allocation.UNIFORM:
        for g, k in keep.items():
            n_keep = max(1, round((1 - frac_removed) * k.numel()))
            active = torch.nonzero(k).flatten()
            drop = active.numel() - n_keep
            if drop > 0:
                k[active[scores[g][active].argsort()[:drop]]] = False
        return keep
    total = sum(k.numel() for k in keep.values())
    target_keep = max(len(keep), round((1 - frac_removed) * total))
    norm = _normalised(scores)
    cands = []
    for g, k in keep.items():
        active = torch.nonzero(k).flatten()
        best = int(active[norm[g][active].argmax()])
        for i in active.tolist():
            if i != best:
                cands.append((float(norm[g][i]), g, i))
    drop = sum(int(k.sum()) for k in keep.values()) - target_keep
    for _, g, i in sorted(cands)[: max(drop, 0)]:
        keep[g][i] = False
    return keep


def sparsify_channels(
    model: nn.Module,
    cfg: SparsifyConfig,
    *,
    train_loader,
    val_loader,
    table: Any,
    example_inputs: tuple[torch.Tensor, ...],
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    progress: Any = None,
):
    """Channel GMP (global / uniform / latency allocation) then materialisation. See module doc."""
    from edgetrim.compress.sparse.methods import SparsifyReport

    allocation = cfg.effective_allocation
    if allocation not in (Allocation.GLOBAL, Allocation.UNIFORM, Allocation.LATENCY):
        raise EdgetrimError(
            f"channel granularity supports allocation global, uniform or latency, got {allocation.value}"
        )
    if allocation is Allocation.LATENCY and table is None:
        raise EdgetrimError("latency allocation needs a latency table (--table) for the target")
    cm = ChannelMasks(model, example_inputs, exclude=cfg.exclude)
    lat = LatencyModel(model, example_inputs, cm, table) if table is not None else None
    dense_ms = lat.ms(cm.keep) if lat is not None else None
    divide = True
    if allocation is Allocation.LATENCY:
        assert lat is not None and cfg.budget_ms is not None
        floor_ms = lat.ms({g: torch.arange(k.numel()) == 0 for g, k in cm.keep.items()})
        if cfg.budget_ms < floor_ms:
            raise BudgetError(
                f"budget {cfg.budget_ms:.4f} ms is below {floor_ms:.4f} ms, the prediction with one channel per "
                f"group; raise --budget-ms"
            )
        sc = cm.scores()
        kept_div = _greedy_to_ms(cm.keep, sc, lat, cfg.budget_ms, divide=True)
        kept_plain = _greedy_to_ms(cm.keep, sc, lat, cfg.budget_ms, divide=False)
        norm = {g: v / (v.sum() + 1e-12) for g, v in sc.items()}

        def retained(keep):
            return sum(float(norm[g][k].sum()) for g, k in keep.items())

        divide = retained(kept_div) >= retained(kept_plain)
        log.info(
            "latency allocation: score %s marginal latency", "divided by" if divide else "not divided by"
        )

    macs = layer_macs(model, example_inputs)
    cost = CostTracker(macs=macs, masked=list(cm.weights.params))
    n = len(train_loader) if train_loader is not None else 0
    iters = min(n, cfg.batches_per_epoch) if cfg.batches_per_epoch else n
    T = iters * cfg.epochs
    dt = cfg.update_every or max(1, iters // 2)
    t0, tf = round(cfg.prune_start * T), round(cfg.prune_end * T)
    mask_log: list[dict[str, Any]] = []

    def update(step: int, optimizer=None) -> None:
        frac = 1.0 - cubic_sparsity(step, s_i=1.0, s_f=0.0, t0=t0, tf=tf)  # 0 -> 1 cubic progress
        sc = cm.scores()
        if allocation is Allocation.LATENCY:
            target = dense_ms + (cfg.budget_ms - dense_ms) * frac
            new = _greedy_to_ms(cm.keep, sc, lat, target, divide=divide)
        else:
            new = _prune_fraction(cm.keep, sc, cfg.sparsity * frac, allocation)
        if any(not torch.equal(new[g], cm.keep[g]) for g in new):
            cm.keep = new
            cm.push(optimizer)
        mask_log.append({"step": step, "channels": cm.n_active(), "density": cm.weights.density()})

    class _Sched:
        def due(self, step):
            return step >= t0 and step % dt == 0 and (step <= tf + dt)

        def needs_dense_grad(self, step):
            return False

        def update(self, step, masks, grads, optimizer):
            update(step, optimizer)

    def predicted() -> float | None:
        return lat.ms(cm.keep) if lat is not None else None

    history: list[dict[str, Any]] = []

    def epoch_cb(row):
        row["predicted_ms"] = predicted()
        row["channels"] = cm.n_active()
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)

    if cfg.epochs > 0:
        opt = make_optimizer(
            [p for p in model.parameters() if p.requires_grad], kind=cfg.optimizer.value, lr=cfg.lr,
            momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay,
        )  # fmt: skip
        cm.weights.attach(opt)
        milestones = sorted({max(1, round(f * cfg.epochs)) for f in cfg.lr_milestones if 0 < f < 1})
        try:
            train_loop(
                model, cm.weights, opt, train_loader, val_loader, epochs=cfg.epochs,
                batches_per_epoch=cfg.batches_per_epoch, milestones=milestones, gamma=cfg.lr_gamma,
                scheduler=_Sched(), cost=cost, on_epoch=epoch_cb, progress=progress,
            )  # fmt: skip
        finally:
            cm.weights.detach()
    # the final target regardless of how many update steps fitted
    update(max(T, tf), None)
    keep_idx = {gid: torch.tensor(ix, dtype=torch.long) for gid, ix in cm.kept_indices().items()}
    model.eval()
    small = materialize_channels(model, example_inputs, keep_idx, ignore=list(cfg.exclude))
    val_loss, acc = evaluate(small, val_loader)
    masked_numel = cm.weights.total_numel()
    params_before = sum(p.numel() for p in model.parameters())
    params_after = sum(p.numel() for p in small.parameters())
    return SparsifyReport(
        model=small,
        config=cfg,
        accuracy=acc,
        val_loss=val_loss,
        density=params_after / params_before,
        layer_densities={
            f"group{g.id}:{g.root_name}": float(cm.keep[g.id].float().mean()) for g in cm.groups
        },
        layer_nnz=cm.weights.nnz(),
        total_nnz=cm.weights.total_nnz(),
        total_numel=masked_numel,
        collapsed=[],
        history=history,
        cost=cost.to_dict(),
        trainings=1,
        masks={},
        predicted_ms=predicted(),
        dense_predicted_ms=dense_ms,
        kept_channels=cm.kept_indices(),
        mask_log=mask_log,
        notes=[
            f"channel granularity: materialised to {params_after} of {params_before} parameters",
            f"latency allocation scored channels {'divided by' if divide else 'without dividing by'} marginal latency"
            if allocation is Allocation.LATENCY
            else "",
            f"latency table lacks {', '.join(lat.uncovered)}: predicted as constant (not part of predicted_ms)"
            if lat is not None and lat.uncovered
            else "",
        ],
    )
