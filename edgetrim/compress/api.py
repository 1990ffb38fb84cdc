"""``compress``: a model, a table and data in; a smaller model that fits the budget out.

Stages (one function each below):

1. re-parameterise: low-rank factorisation (SVD), channel/head gates per coupled group, bit gates;
2. bind the model to its latency / FLOPs terms once (:mod:`edgetrim.compress.latency_model`);
3. train with ``lambda * R`` + projection, lambda by dual ascent on the budget (:mod:`.train`);
   with a ``measure_fn`` the dual ascent's table-scale target is calibrated on the target (the
   structure the final step would build from the gates, before training and after each penalised
   epoch but the last, measured: ``budget_ms x predicted / measured``);
4. choose the final widths with the real table: fast side of every step, then fit the budget
   (:mod:`.widths`; grown back toward it when training asked for less than it pays for), every
   candidate priced by the table's whole-model prediction at its widths
   (``LatencyModel.whole_ms``: layout reorders, fusions and dispatch included, not a per-op sum);
   check the materialised model's predicted latency, tighten if needed;
5. with a ``measure_fn``: measure the materialised model on the target, re-scale the internal
   (table-scale) budget by the measured/predicted ratio (tighter while over the budget, looser while
   within it, to try wider widths) and redo step 4 (at most ``config.measure_steps`` times);
6. fine-tune the small model, bake the chosen bit widths.

Closing the loop on the target (``measure_fn``): the table predicts each operator in isolation, so a
whole model can run faster or slower than the sum (and not by one factor: on ort-cpu the dense model
and a pruned one can be mispredicted differently). When ``measure_fn(model, example_inputs) -> ms``
is given with a ``budget_ms``, the materialised model is measured; the internal (table-scale) budget
then becomes ``0.98 x budget_ms x predicted / measured`` when it measured over the budget, and
``budget_ms x predicted / measured`` (at least just above the widest prediction that measured within)
when it measured within, so that widths the target runs for free are tried; when that would rebuild
a structure at least as wide as one that already measured over, the midpoint between the widest
within and the narrowest over. The width fit is redone from the fast-side widths that training asked
for, at most ``config.measure_steps`` times, and stops once the widths stop changing; the widest
structure that measured within ``(1 + config.measure_tolerance) x budget_ms`` is kept (else the last
one, with a warning). ``budget_ms`` here is the aim: the budget less ``config.measure_margin``. Latency does not depend on weight values, so this
runs before the fine-tune, which then trains the final structure once. The report holds what was asked
(``budget_ms``), the internal budget, predicted and measured latency, and every measurement round.
``compress`` never imports the profiler: the caller builds ``measure_fn`` (the CLI from
``edgetrim.profiler.targets.get_target``).

Example:
    >>> result = compress(model, (x,), CompressConfig(budget_ms=0.5), table=table,
    ...                   train_loader=train, val_loader=val)          # doctest: +SKIP
    >>> result.report.predicted_ms <= 0.5                               # doctest: +SKIP
    True
"""

from __future__ import annotations

import copy
import dataclasses
import io
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from edgetrim.compress.attention import convert_multihead_attention
from edgetrim.compress.config import Block, CompressConfig
from edgetrim.compress.gates import ChannelGates
from edgetrim.compress.graph import ChannelGroup, Role, find_channel_groups, output_layers
from edgetrim.compress.importance import distortion_importance, magnitude_scores, taylor_scores
from edgetrim.compress.latency_model import (
    Extractor,
    LatencyModel,
    bind_layer_terms,
    default_extractor,
    resolve_context,
)
from edgetrim.compress.linear_like import convert_transposed_linears, disable_generation_cache
from edgetrim.compress.lowrank import LowRank, factorizable_layers, factorize_
from edgetrim.compress.quant import NestedQuant, attach_quant_, bake_quant_, quant_parametrizations
from edgetrim.compress.run_folder import save_run
from edgetrim.compress.surrogate import soft_count
from edgetrim.compress.train import PenaltyTrainer, check_batch_fits
from edgetrim.compress.widths import (
    fast_side_widths,
    fit_budget,
    fit_widths,
    narrowest_widths,
    smallest_reachable,
)
from edgetrim.errors import BudgetError, UncoveredOpError
from edgetrim.examples.training import evaluate_accuracy, run_epochs
from edgetrim.io_utils import atomic_write_bytes
from edgetrim.lookup_tables import LatencyTable, predict_model
from edgetrim.lookup_tables.predict import TABLED_KINDS, total_flops
from edgetrim.types import LayerOp

logger = logging.getLogger(__name__)

__all__ = ["CompressionReport", "CompressionResult", "compress", "model_latency_ms", "save_result"]

Batches = Iterable[tuple[Tensor, Tensor]]
MeasureFn = Callable[[nn.Module, tuple[Tensor, ...]], float]  # (model, example_inputs) -> ms on the target
MARGIN = 0.98  # a re-fit after a measurement over the budget aims this far under it (noise)
CHECKPOINT_FILE = "checkpoint.pt"
QUANTIZED_FILE = "quantized.pt"


@dataclass(frozen=True)
class CompressionReport:
    """What was asked, what the table predicts, and what the model scores (``run.json`` content)."""

    budget_ms: float | None
    budget_flops: float | None
    lam: float | None
    predicted_ms: float
    dense_predicted_ms: float
    flops: float
    dense_flops: float
    accuracy: float
    dense_accuracy: float
    masked_accuracy: float  # the gated model before materialisation and fine-tuning
    widths_before: dict[str, int]
    widths_after: dict[str, int]
    widths_requested: dict[str, int]  # non-zero gates at the end of training
    bits: dict[str, int]
    sparsity: dict[str, float]
    factorized: list[str]
    config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    measured_ms: float | None = None  # the final model on the target (with a measure_fn)
    internal_budget_ms: float | None = None  # the table-scale budget the final fit met
    measure_rounds: list[dict[str, Any]] = field(default_factory=list)
    calibration: list[dict[str, Any]] = field(default_factory=list)  # training-target calibrations

    @property
    def kept_on_measurement(self) -> bool:
        """The table predicts the model over ``budget_ms`` and the target measured it within: the
        measured loop accepts a structure by its measurement, the table's figure is a forecast."""
        return (
            self.budget_ms is not None
            and self.measured_ms is not None
            and self.measured_ms <= self.budget_ms < self.predicted_ms
        )

    def to_info(self) -> dict[str, Any]:
        """The ``run.json`` dict for :func:`edgetrim.compress.run_folder.save_run` (kind="compress")."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["kept_on_measurement"] = self.kept_on_measurement
        budget: dict[str, Any] = {"ms": self.budget_ms, "flops": self.budget_flops, "lambda": self.lam}
        return {"kind": "compress", "budget": budget, **d}


@dataclass
class CompressionResult:
    """The materialised model, its example inputs, and the report."""

    model: nn.Module
    example_inputs: tuple[Tensor, ...]
    report: CompressionReport
    quantized: list[Any] = field(default_factory=list)  # QuantizedWeight records (int codes + scale)


def save_result(
    path: str | Path, result: CompressionResult, extra_info: dict[str, Any] | None = None
) -> Path:
    """Write the RUN folder (``kind="compress"``); learned bit widths also get ``quantized.pt``.

    ``quantized.pt`` maps layer name -> ``{"bits", "codes" (int8/int16), "scale"}``: the integer
    representation of the dequantised fp32 weights stored in ``model.pt``.
    """
    info = result.report.to_info() | dict(extra_info or {})
    root = save_run(path, result.model, result.example_inputs, info)
    if result.quantized:
        buf = io.BytesIO()
        torch.save(
            {q.name: {"bits": q.bits, "codes": q.codes, "scale": q.scale} for q in result.quantized}, buf
        )
        atomic_write_bytes(root / QUANTIZED_FILE, buf.getvalue())
    return root


def width_limits(
    groups: Sequence[ChannelGroup], table: LatencyTable, align: int | None = None
) -> tuple[list[int], list[int]]:
    """Per group, the narrowest width and the alignment of the widths compress' final step may choose.

    A depthwise conv cut to one channel turns into a plain conv (another kernel, another context), so
    depthwise groups keep two units. Widths are multiples of ``align``, by default the runtime's
    channel block the table records (onnxruntime NCHWc), else 1; head groups align to their unit.
    """
    min_widths = [
        min(g.size, 2 * g.unit if any(m.role is Role.DEPTHWISE for m in g.members) else g.unit)
        for g in groups
    ]
    block = align if align is not None else int(table.meta.get("ort_nchwc_block") or 1)
    return min_widths, [block if g.unit == 1 else g.unit for g in groups]


def model_latency_ms(table: LatencyTable, ops: Sequence[LayerOp]) -> float:
    """The table's whole-model prediction (:func:`edgetrim.lookup_tables.predict_model`) of ``ops``.

    That is the per-op sum plus the runtime structure the table's ``meta`` records (invoke overhead,
    per-node dispatch, layout reorders, fused nodes). A factorised layer's bias-free half is priced as
    the biased op when only that is tabled. Raises :class:`UncoveredOpError` naming the layer when a
    conv / linear / depthwise context is missing.
    """
    known = set(table.contexts())
    resolved = []
    for op in ops:
        ctx = resolve_context(known, op.context)
        if ctx is None:
            if op.context.kind in TABLED_KINDS:
                raise UncoveredOpError(
                    f"the table has no context {op.context.key()} needed by layer {op.name!r}; "
                    f"profile this model into the table"
                )
            resolved.append(op)
        else:
            resolved.append(dataclasses.replace(op, context=ctx))
    return float(predict_model(table, resolved).total_ms)


def _group_label(g: ChannelGroup) -> str:
    return f"{g.root_name}" + (f" (heads of {g.unit})" if g.unit > 1 else "")


def _importance(scores: Sequence[Tensor]) -> list[list[float]]:
    """Per group, the unit scores sorted in decreasing order (what :func:`fit_budget` takes)."""
    return [sorted(s.tolist(), reverse=True) for s in scores]


def _strip_quant(clone: nn.Module) -> None:
    """Remove bit parametrisations from a copy, keeping the raw fp32 weights (for slicing)."""
    for name in list(quant_parametrizations(clone)):
        parametrize.remove_parametrizations(clone.get_submodule(name), "weight", leave_parametrized=False)


def _finetune(model: nn.Module, loader: Batches, config: CompressConfig, *, epochs: int, masks: Any) -> None:
    """Plain training of the materialised model (sparsity masks, when given, are held exactly)."""
    if epochs <= 0:
        return
    params = list(model.parameters())
    if config.optimizer.value == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=config.lr, momentum=0.9)
    else:
        opt = torch.optim.Adam(params, lr=config.lr)
    if masks is not None:
        masks.attach(opt)
    run_epochs(model, loader, opt, epochs=epochs, schedule=config.finetune_schedule)


def _sparsify(model: nn.Module, exclude: Iterable[str]) -> Any:
    """Keep the ``round(s(vec W))`` largest weights of every conv / linear (s: the l1/l2 count)."""
    from edgetrim.compress.weight_masks import WeightMasks

    masks = WeightMasks(model, exclude=exclude)
    new = {}
    for name, p in masks.params.items():
        k = max(1, round(float(soft_count(p.detach().flatten()))))
        thresh = p.detach().abs().flatten().kthvalue(p.numel() - k + 1).values if k < p.numel() else -1.0
        new[name] = p.detach().abs() >= thresh
    masks.set_masks(new)
    return masks


def compress(
    model: nn.Module,
    example_inputs: Sequence[Tensor],
    config: CompressConfig,
    *,
    table: LatencyTable,
    train_loader: Batches,
    val_loader: Batches,
    extract: Extractor | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    measure_fn: MeasureFn | None = None,
) -> CompressionResult:
    """Compress ``model`` to ``config``'s budget on ``table``'s target.

    ``model`` is not modified. Widths are chosen with the real table (fast side of every latency
    step) and the materialised model's predicted latency is checked against ``budget_ms``.

    Args:
        model: a trained classifier.
        example_inputs: inputs that define the shapes (batch 1).
        config: budget, blocks and training settings.
        table: latency table of the target (covering the model's operator contexts).
        train_loader / val_loader: ``(x, y)`` batches.
        extract: ``(model, inputs) -> list[LayerOp]``; default ``extract_layer_ops`` with the fusion
            rules of ``table.device.runtime``.
        checkpoint_dir: where to write ``checkpoint.pt`` after every epoch (atomic).
        resume: continue from ``checkpoint_dir/checkpoint.pt`` when it exists.
        on_epoch: called with each epoch's history row (progress display).
        measure_fn: ``(model, example_inputs) -> ms`` measured on the table's target; with
            ``budget_ms`` it calibrates the budget on the dense model and re-fits the widths while the
            materialised model measures over the budget (see the module docstring).

    Raises:
        BudgetError: the budget is below the smallest reachable latency / FLOPs (says which).
        UncoveredOpError: the table lacks a context the model needs (names the layer).
        ModelSpecError: the model cannot be traced (names the module).
        EdgetrimError: the data does not fit the model.
    """
    example = tuple(example_inputs)
    extract = extract or default_extractor(table.device.runtime)
    torch.manual_seed(config.seed)
    work = copy.deepcopy(model).eval()
    # torch's nn.MultiheadAttention packs q/k/v in one parameter; the split module computes the same
    # function with one Linear each, so its heads become prunable and every later step (groups,
    # pricing, materialisation, the saved model, export) sees the split module. Without pruning there
    # are no heads to gain and the packed projection (one matmul, not three) is kept.
    split = convert_multihead_attention(work) if Block.PRUNE in config.blocks else []
    if split:
        logger.info(
            "nn.MultiheadAttention split into q/k/v/out Linears (heads prunable): %s", ", ".join(split)
        )
    # GPT-style Conv1D projections become nn.Linear (prunable, factorizable, quantizable alike), and a
    # generation cache that one classification pass never reads is turned off on the working copy
    linears = convert_transposed_linears(work)
    if linears:
        logger.info("Conv1D layers replaced by the nn.Linear they compute: %s", ", ".join(linears))
    uncached = disable_generation_cache(work)
    if uncached:
        logger.info("generation cache off (config.use_cache) in %s", ", ".join(uncached))
    finals = output_layers(work, example)  # first: a model that cannot run fails naming the module
    dense_ops = extract(work, example)
    dense_ms = model_latency_ms(table, dense_ops)
    dense_flops = total_flops(dense_ops)
    first_x, _ = next(iter(val_loader))
    check_batch_fits(work, example[0], first_x)
    dense_accuracy = evaluate_accuracy(work, val_loader)

    # 1. re-parameterise
    factorized: list[str] = []
    if Block.LOWRANK in config.blocks:
        names = factorizable_layers(
            work, exclude=[*finals, *config.ignore], min_width=config.lowrank_min_width
        )
        factorized = factorize_(work, names)
    groups: list[ChannelGroup] = []
    if config.penalised:
        groups = find_channel_groups(work, example, ignore=config.ignore)
        if Block.PRUNE not in config.blocks:  # rank groups only
            rank_roots = {f"{n}.v" for n in factorized}
            groups = [g for g in groups if g.root_name in rank_roots]
            groups = [dataclasses.replace(g, id=i) for i, g in enumerate(groups)]

    # 2. bind the cost model once
    terms = bind_layer_terms(work, example, groups, extract=extract)
    cost = LatencyModel(table, terms, [g.unit for g in groups])
    sizes = [g.size for g in groups]
    units = [g.unit for g in groups]
    min_widths, align = width_limits(groups, table, config.align)

    group_flops: dict[int, LatencyModel] = {}

    def partial_flops(g: int, widths: Sequence[int]) -> float:
        if g not in group_flops:  # the FLOPs of the terms that depend on group g, bound once
            group_flops[g] = LatencyModel(None, [cost.terms[k] for k in cost.terms_of_group(g)], units)
        return group_flops[g].hard_flops(widths)

    budget: float | None = None
    cost_fn: Callable[[Sequence[int]], float] = cost.whole_ms
    partial, what, unit_name = cost.partial_ms, "latency", "ms"
    # ``whole_ms`` is the whole-model prediction at the widths, built from the bound operators; what
    # it does not price the same way as the extracted dense model is an offset taken from the dense
    # model (0 when the binding reproduces every operator).
    offset = dense_ms - cost.whole_ms(sizes) if groups else 0.0
    dense_cost = dense_ms - offset
    shift = offset if config.budget_ms is not None else 0.0  # internal scale -> the budget's own
    # what the measured steps aim at: the budget less the headroom left for a later measurement
    aim_ms = config.budget_ms * (1.0 - config.measure_margin) if config.budget_ms is not None else None
    if config.budget_ms is not None:
        budget = config.budget_ms - offset  # on whole_ms' scale
    elif config.budget_flops is not None:
        budget = config.budget_flops
        cost_fn, partial, what, unit_name = cost.hard_flops, partial_flops, "FLOPs", "FLOPs"
        dense_cost = cost.hard_flops(sizes)
    if budget is not None:
        floor = (
            smallest_reachable(units, sizes, partial, cost_fn, min_widths=min_widths, align=align)
            if groups
            else cost_fn(sizes)
        )
        if budget < floor - 1e-12:
            measured_floor = None
            if measure_fn is not None and config.budget_ms is not None and groups:
                # the table can overprice the narrowest structure: the target has the last word
                narrow = narrowest_widths(units, sizes, partial, min_widths=min_widths, align=align)
                probe_gates = ChannelGates(work, groups)
                try:
                    narrowest = probe_gates.materialize(example, widths=narrow)
                finally:
                    probe_gates.detach_hooks()
                measured_floor = float(measure_fn(narrowest, example))
            if measured_floor is None or measured_floor > aim_ms:  # type: ignore[operator]
                on_target = (
                    "" if measured_floor is None else f" (measured {measured_floor:.4g} ms on the target)"
                )
                margin = (
                    f" less its {config.measure_margin:.0%} measure margin"
                    if measured_floor is not None and config.measure_margin > 0
                    else ""
                )
                raise BudgetError(
                    f"{what} budget {budget + shift:.4g} {unit_name}{margin} is below the smallest reachable {what} "
                    f"{floor + shift:.4g} {unit_name}{on_target} for this model and table; raise the budget",
                    smallest=floor + shift if measured_floor is None else measured_floor,
                )
            logger.info(
                "the table prices the narrowest structure at %.4g ms, the target measures %.4g ms: within "
                "the budget %.4g ms, which the measured loop meets on the target",
                floor + shift, measured_floor, aim_ms,
            )  # fmt: skip
            budget = floor  # the table's scale: the narrowest structure; calibration moves it from there

    gates = ChannelGates(work, groups)
    quants: dict[str, NestedQuant] = {}
    if Block.QUANT in config.blocks:
        for name, m in work.named_modules():
            if isinstance(m, nn.Linear | nn.Conv2d) and not isinstance(m, LowRank):
                quants[name] = attach_quant_(m)

    # 3. penalised training with projection and dual ascent
    trainer = PenaltyTrainer(
        work,
        gates,
        quants,
        cost,
        config,
        dense_widths=sizes,
        dense_cost=dense_cost,
        cost_fn=cost_fn,
        budget=budget,
        soft_cost_fn=cost.soft_flops if config.budget_flops is not None else cost.soft_ms,
    )
    ckpt = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
    resumed = False
    if resume and ckpt is not None and ckpt.is_file():
        trainer.load_checkpoint(ckpt)
        resumed = True
        logger.info("resumed from %s after epoch %d", ckpt, trainer.state.epoch)

    # magnitudes are on per-group scales; Taylor scores and measured distortions are in loss units
    relative = config.unit_importance == "magnitude" and config.allocation == "share"

    def unit_scores() -> list[Tensor]:
        """Per group, one importance per mask entry (see ``config.unit_importance``)."""
        if config.unit_importance == "taylor":
            return taylor_scores(gates, work, train_loader)
        return magnitude_scores(gates, work)

    def fit_importance(scores: Sequence[Tensor]) -> list[list[float]]:
        """What the width fit spends per group (see ``config.allocation``)."""
        if config.allocation.startswith("distortion") and groups:
            t0 = time.perf_counter()
            importance = distortion_importance(
                gates, work, train_loader, scores, min_widths, align,
                batch_stats=config.allocation == "distortion_bn",
            )  # fmt: skip
            logger.info(
                "measured the output distortion of %d groups along their widths in %.1f s",
                len(groups), time.perf_counter() - t0,
            )  # fmt: skip
            return importance
        return _importance(scores)

    def check_ms(small: nn.Module, widths: Sequence[int]) -> float:
        """The real table's prediction for the materialised model itself (re-extracted)."""
        try:
            return model_latency_ms(table, extract(small, example))
        except UncoveredOpError:
            # a context the narrowing created (it changes with a group) that the table lacks: the
            # bound model's price, which builds the same contexts
            logger.info("materialised model has a context outside the table; using the bound model's price")
            return cost.whole_ms(widths) + offset

    # Calibrate the training target on the target itself: the dual ascent drives the *table's*
    # latency to ``budget_ms x predicted / measured`` of the structure the final step would build
    # from the current gates (before training, then after every penalised epoch but the last): the
    # table can mispredict a pruned model by another factor than the dense one, so the probe is a
    # model near the budget, not the dense model. Training then prunes to what the target needs.
    calibrate = bool(measure_fn is not None and config.budget_ms is not None and config.calibrate and groups)
    calibration: list[dict[str, Any]] = []

    def recalibrate(small: nn.Module, pred_ms: float, widths: Sequence[int], epoch: int) -> None:
        assert measure_fn is not None and aim_ms is not None and budget is not None
        meas = float(measure_fn(small, example))
        internal = max(aim_ms * pred_ms / meas, floor + offset)
        trainer.budget = internal - offset
        calibration.append(
            {"after_epoch": epoch, "predicted_ms": pred_ms, "measured_ms": meas,
             "internal_budget_ms": internal, "widths": list(widths)}
        )  # fmt: skip
        logger.info(
            "calibration after epoch %d: predicted %.4f ms, measured %.4f ms -> internal budget %.4f ms",
            epoch, pred_ms, meas, internal,
        )  # fmt: skip

    def probe_and_recalibrate(epoch: int) -> None:
        """Measure the structure the final step would build now (the gates' fast-side widths fitted
        to the current internal budget) and re-scale the internal budget by its predicted/measured."""
        start = fast_side_widths(gates.widths(), units, sizes, partial, min_widths=min_widths, align=align)
        scores = unit_scores()
        try:
            now = fit_widths(
                start, units, sizes, fit_importance(scores), partial, cost.whole_ms, trainer.budget,
                min_widths=min_widths, align=align, relative=relative,
            )  # fmt: skip
        except BudgetError:
            return
        probe = gates.materialize(example, widths=now, prepare=_strip_quant, scores=scores)
        recalibrate(probe, check_ms(probe, now), now, epoch)

    if calibrate and not resumed:
        probe_and_recalibrate(0)
    while trainer.state.epoch < config.epochs:
        stats = trainer.run_epoch(train_loader, example[0])
        widths = gates.widths()
        row = {
            "epoch": trainer.state.epoch + 1,
            **stats,
            "accuracy": evaluate_accuracy(work, val_loader),
            "predicted_ms": cost.whole_ms(widths) + offset,
            "flops": cost.hard_flops(widths),
            "widths": widths,
            "bits": {n: q.bits() for n, q in quants.items()},
        }
        if calibrate and trainer.state.epoch + 1 < config.epochs:
            probe_and_recalibrate(trainer.state.epoch + 1)
            row["calibration"] = calibration[-1]
        trainer.state.history.append(row)
        trainer.state.epoch += 1
        if ckpt is not None:
            trainer.save_checkpoint(ckpt)
        logger.info(
            "epoch %d/%d loss %.4f acc %.4f predicted %.4f ms lambda %.4g",
            row["epoch"], config.epochs, row["loss"], row["accuracy"], row["predicted_ms"], row["lambda"],
        )  # fmt: skip
        if on_epoch is not None:
            on_epoch(row)
    masked_accuracy = evaluate_accuracy(work, val_loader)

    # 4. final widths with the real table
    budget = trainer.budget  # calibrated on the target when a measure_fn was given
    requested = gates.widths()
    final = (
        fast_side_widths(requested, units, sizes, partial, min_widths=min_widths, align=align)
        if groups
        else []
    )
    scores = unit_scores()  # the weights and gates are final from here on
    ranked = fit_importance(scores) if budget is not None else []
    if budget is not None and groups:
        try:
            final = fit_widths(
                final, units, sizes, ranked, partial, cost_fn, budget, what=what, unit_name=unit_name,
                min_widths=min_widths, align=align, relative=relative,
            )  # fmt: skip
        except BudgetError as exc:
            # Only when even the narrowest widths are over after training (the up-front floor check
            # passed): say so on the budget's own scale, with where the descent stopped.
            reached = (exc.smallest if exc.smallest is not None else budget) + shift
            raise BudgetError(
                f"{what} budget {budget + shift:.4g} {unit_name} could not be met: the width fit stopped "
                f"at {reached:.4g} {unit_name}; raise the budget",
                smallest=reached,
            ) from exc
    for q in quants.values():
        q.harden_()
    bits = {n: q.bits() for n, q in quants.items()}

    # materialise and check the real prediction
    small = (
        gates.materialize(example, widths=final, prepare=_strip_quant, scores=scores)
        if groups
        else _plain_copy(work)
    )

    # internal budget on the whole-model prediction's scale
    ms_budget = budget + offset if config.budget_ms is not None and budget is not None else None

    def meet_predicted(
        final: list[int], small: nn.Module, ms_budget: float
    ) -> tuple[list[int], nn.Module, float]:
        """Shrink until the materialised model's own prediction is within ``ms_budget``."""
        predicted_ms = check_ms(small, final)
        tighten = 0
        while predicted_ms > ms_budget + 1e-9 and groups and tighten < 20:
            # The bound model and the extracted model disagree (only where a context changes with a
            # group, e.g. attention heads priced from a table that holds the narrowed context).
            tighten += 1
            target = cost.whole_ms(final) - (predicted_ms - ms_budget)
            final = fit_budget(
                final,
                units,
                ranked,
                partial,
                cost.whole_ms,
                target,
                min_widths=min_widths,
                align=align,
                relative=relative,
            )
            small = gates.materialize(example, widths=final, prepare=_strip_quant, scores=scores)
            predicted_ms = check_ms(small, final)
        if predicted_ms > ms_budget + 1e-9:
            raise BudgetError(
                f"could not bring the predicted latency {predicted_ms:.4g} ms under the budget {ms_budget:.4g} ms"
            )
        return final, small, predicted_ms

    if ms_budget is not None:
        try:
            final, small, predicted_ms = meet_predicted(final, small, ms_budget)
        except BudgetError as exc:  # after training: say it on the budget's own scale
            raise BudgetError(
                f"latency budget {config.budget_ms:.4g} ms could not be met: the materialised model stays "
                f"predicted over {ms_budget:.4g} ms on the table's scale at the narrowest widths the fit "
                f"reached; raise the budget",
                smallest=exc.smallest,
            ) from exc
    else:
        predicted_ms = check_ms(small, final)

    # 5. close the loop on the target: measure, re-scale the internal budget, redo the width fit
    measured_ms: float | None = None
    rounds: list[dict[str, Any]] = []
    if measure_fn is not None and aim_ms is not None and ms_budget is not None:
        accept = aim_ms * (1.0 + config.measure_tolerance)  # measurement noise allowance
        start = (
            fast_side_widths(requested, units, sizes, partial, min_widths=min_widths, align=align)
            if groups
            else []
        )
        best: tuple[list[int], nn.Module, float, float, float] | None = None  # widest within budget
        over = math.inf  # lowest prediction that measured over the budget
        last = (final, small, predicted_ms, 0.0, ms_budget)
        for step in range(config.measure_steps + 1):
            m_ms = float(measure_fn(small, example))
            last = (final, small, predicted_ms, m_ms, ms_budget)
            rounds.append(
                {"internal_budget_ms": ms_budget, "predicted_ms": predicted_ms, "measured_ms": m_ms,
                 "widths": list(final)}
            )  # fmt: skip
            logger.info(
                "round %d: internal budget %.4f ms, predicted %.4f ms, measured %.4f ms (aim %.4f ms)",
                step, ms_budget, predicted_ms, m_ms, aim_ms,
            )  # fmt: skip
            if m_ms <= accept and (best is None or predicted_ms > best[2]):
                best = last
            if not groups or step == config.measure_steps:
                break
            if m_ms > accept:
                over = min(over, predicted_ms)
                new_budget = MARGIN * aim_ms * predicted_ms / m_ms
            else:
                # within the aim: try the widest structure this ratio says still measures within it
                # (no margin on the way up: whatever measures over is discarded, the best is kept),
                # so that a calibration that read the target a little slow does not leave a step of
                # width that costs nothing measurable unused
                assert best is not None
                new_budget = max(aim_ms * predicted_ms / m_ms, best[2] * 1.0001)  # wider than the best
            if best is not None and new_budget >= over:
                # the re-scaled budget would rebuild a structure that already measured over: try
                # between the widest within budget and the narrowest over it (bisect on the table)
                new_budget = 0.5 * (best[2] + over)
            try:
                new_final = fit_widths(
                    start, units, sizes, ranked, partial, cost.whole_ms, new_budget - offset,
                    min_widths=min_widths, align=align, relative=relative,
                )  # fmt: skip
            except BudgetError:
                logger.warning("measured %.4f ms > %.4f ms (the budget less its measure margin) and no narrower widths fit", m_ms, aim_ms)  # fmt: skip
                break
            if new_final == final:
                break
            try:
                new_final, new_small, new_pred = meet_predicted(
                    new_final,
                    gates.materialize(example, widths=new_final, prepare=_strip_quant, scores=scores),
                    new_budget,
                )
            except BudgetError:
                break
            ms_budget, final, small, predicted_ms = new_budget, new_final, new_small, new_pred
        final, small, predicted_ms, measured_ms, ms_budget = best if best is not None else last
        if best is None:
            logger.warning(
                "measured %.4f ms is over %.4f ms (the budget less its measure margin) after %d rounds", measured_ms, aim_ms, len(rounds)
            )  # fmt: skip

    # 6. fine-tune, bake bits
    for name in bits:
        q = attach_quant_(small.get_submodule(name))
        with torch.no_grad():
            q.gates.copy_(quants[name].gates.detach())
    masks = _sparsify(small, exclude=finals) if Block.SPARSE in config.blocks else None
    _finetune(small, train_loader, config, epochs=config.finetune_epochs, masks=masks)
    if masks is not None:
        masks.detach()
    records = bake_quant_(small) if bits else []
    small.eval()
    flops = total_flops(extract(small, example))
    sparsity = {}
    if masks is not None:
        sparsity = {n: 1.0 - float((p != 0).float().mean()) for n, p in masks.params.items()}
    labels = [_group_label(g) for g in groups]
    report = CompressionReport(
        budget_ms=config.budget_ms,
        budget_flops=config.budget_flops,
        lam=config.lam,
        predicted_ms=predicted_ms,
        dense_predicted_ms=dense_ms,
        flops=flops,
        dense_flops=dense_flops,
        accuracy=evaluate_accuracy(small, val_loader),
        dense_accuracy=dense_accuracy,
        masked_accuracy=masked_accuracy,
        widths_before=dict(zip(labels, sizes)),
        widths_after=dict(zip(labels, final)),
        widths_requested=dict(zip(labels, requested)),
        bits=bits,
        sparsity=sparsity,
        factorized=factorized,
        config=config.to_dict(),
        history=trainer.state.history,
        measured_ms=measured_ms,
        internal_budget_ms=ms_budget,
        measure_rounds=rounds,
        calibration=calibration,
    )
    return CompressionResult(model=small, example_inputs=example, report=report, quantized=records)


def _plain_copy(work: nn.Module) -> nn.Module:
    clone = copy.deepcopy(work)
    _strip_quant(clone)
    return clone
