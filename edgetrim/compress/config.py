"""Configuration of a compression run (frozen, validated, round-trips through a dict)."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = [
    "ALLOCATIONS",
    "IMPORTANCE_KINDS",
    "Block",
    "CompressConfig",
    "OptimizerKind",
    "Regularizer",
    "config_from_dict",
]


IMPORTANCE_KINDS = ("magnitude", "taylor")  # see edgetrim.compress.importance
ALLOCATIONS = (
    "share",
    "distortion",
    "distortion_bn",
)  # how the final width fit weighs one group against another


class Block(enum.StrEnum):
    """Re-parameterisations the run may use (any combination)."""

    PRUNE = "prune"  # channel / neuron / head gates per coupled group
    LOWRANK = "lowrank"  # U diag(alpha) V^T for linear and 1x1 conv layers
    QUANT = "quant"  # learned per-layer bits in {2, 4, 8, 16}
    SPARSE = "sparse"  # unstructured sparsity via the l1/l2 of vec(W)


class Regularizer(enum.StrEnum):
    """Which cost the penalty measures."""

    LATENCY = "latency"  # Eq. 6: bilinear lookups in the latency table
    FLOPS = "flops"  # Eq. 4: products of soft counts with per-layer constants
    L1 = "l1"  # Eq. 3: plain l1 of the masks (ablation)


class OptimizerKind(enum.StrEnum):
    ADAM = "adam"
    SGD = "sgd"


@dataclass(frozen=True)
class CompressConfig:
    """What to compress to, and how.

    Exactly one of ``budget_ms`` (latency on the table's target), ``budget_flops`` (2 x MACs) or
    ``lam`` (a fixed penalty weight, no budget) is set.

    Args:
        budget_ms / budget_flops / lam: the target (see above).
        regularizer: cost the penalty measures; default latency, FLOPs for a FLOPs budget.
        blocks: re-parameterisations to use.
        epochs: training epochs with the penalty; finetune_epochs: plain epochs of the small model.
        finetune_schedule: learning rate of the fine-tune: ``"cosine"`` (from ``lr`` to 0 over the
            fine-tune, so it ends on small steps) or ``"constant"``.
        penalised_schedule: learning rate of the *weights* during the penalised epochs:
            ``"constant"`` (``lr`` throughout) or ``"cosine"`` (from ``lr`` to 0 over the penalised
            epochs, so the weights the cut is scored on, and the fine-tune starts from, have settled;
            the masks keep ``gate_lr``).
        lr: weight learning rate; gate_lr: learning rate of the channel / head masks; bits_lr: of
            the bit gates. Adam moves a mask by up to about ``gate_lr`` per step, so the rate sets how
            far the masks can travel in a run. Which is better depends on the model (README,
            Compression): on the digits ResNet and MobileNetV3 0.002 kept 0.3-0.7 points more accuracy
            than 0.05 (the masks barely move and the table fit decides); on the demo's digits CNN
            the two tie.
        optimizer: Adam or SGD (momentum 0.9) for the weights; the gates always use the same kind.
        dual_lr: step of the dual ascent on lambda (per batch, on the relative budget violation).
        budget_ramp: share of the penalised epochs over which the dual ascent's target moves linearly
            from the dense cost to the budget (gradual pruning; 1.0 reaches the budget at the last batch).
        measure_steps: with a ``measure_fn`` (see :func:`edgetrim.compress.api.compress`), how many times
            the final width step may be redone with a tighter internal budget when the materialised
            model measures over the budget.
        measure_tolerance: a model measuring up to ``(1 + measure_tolerance) x budget_ms`` counts as
            within the budget in the measured loop (the noise of the measurement; 0: strict).
        measure_margin: with a ``measure_fn``, the share of ``budget_ms`` the measured steps leave free:
            calibration and the measured loop aim at ``(1 - measure_margin) x budget_ms``, so that a
            later measurement that reads the model slower still meets the budget (on a shared host a
            small net's latency relative to its dense one moved by up to 11% between passes minutes
            apart). 0: aim at the budget itself.
        dual_signal: what the dual ascent compares with its target: ``"soft"`` the cost at the l1/l2
            soft widths (smooth, follows the masks as they spread), ``"hard"`` the real table at the
            non-zero gates (moves only when gates reach exact zeros).
        calibrate: with a ``measure_fn`` and ``budget_ms``, measure the dense model before training
            and the model at the gates' widths after every penalised epoch but the last, and set the
            dual ascent's (table-scale) target to ``budget_ms x predicted / measured``.
        lambda_init: starting lambda in budget mode.
        bits_lambda: weight of the weight-storage penalty (bits / dense 16-bit bits) with ``quant``.
        sparse_lambda: weight of the l1/l2 weight penalty with ``sparse``.
        align: final widths are multiples of this (or a group's full size); None: the table's
            onnxruntime NCHWc block (``meta["ort_nchwc_block"]``) when it records one, else 1.
        unit_importance: what the final width fit spends and materialisation keeps per mask entry
            (:mod:`edgetrim.compress.importance`): ``"magnitude"`` (``|alpha| x`` consumer column
            norm, groups compared by the share of their own score a step removes) or ``"taylor"``
            (first-order Taylor estimate of the loss change from training batches, compared across
            groups as it is).
        allocation: how the final width fit weighs a step in one group against a step in another:
            ``"share"`` by the unit scores (``unit_importance``) the step removes, ``"distortion"``
            by how far the model's outputs move on training batches when that group alone is cut to
            the step's width (:func:`edgetrim.compress.importance.distortion_importance`, measured once
            per fit; the units kept are still ranked by ``unit_importance``); ``"distortion_bn"`` the
            same with batch norms normalising by each batch's own statistics, so a cut is not charged
            for the stale statistics it leaves behind (fine-tuning re-estimates them; 0.3-1.2 points
            below ``"distortion"`` on the tuning split). The default,
            ``"distortion"``, was chosen on a tuning split carved out of the training data
            (``benchmarks/compress_schedule_tuning.py --importances magnitude,magnitude+distortion``).
        lowrank_min_width: factorise only layers whose widths are both at least this.
        ignore: module names whose output channels are kept whole.
        seed: RNG seed for the run.
    """

    budget_ms: float | None = None
    budget_flops: float | None = None
    lam: float | None = None
    regularizer: Regularizer | None = None
    blocks: frozenset[Block] = field(default_factory=lambda: frozenset({Block.PRUNE}))
    epochs: int = 3
    finetune_epochs: int = 1
    finetune_schedule: str = "cosine"
    penalised_schedule: str = "constant"
    lr: float = 1e-3
    gate_lr: float = 0.05
    bits_lr: float = 0.05
    optimizer: OptimizerKind = OptimizerKind.ADAM
    dual_lr: float = 0.5
    budget_ramp: float = 0.75
    measure_steps: int = 3
    calibrate: bool = True
    measure_tolerance: float = 0.0
    measure_margin: float = 0.0
    dual_signal: str = "soft"
    lambda_init: float = 0.0
    bits_lambda: float = 0.0
    sparse_lambda: float = 0.0
    unit_importance: str = "magnitude"
    allocation: str = "distortion"
    lowrank_min_width: int = 16
    align: int | None = None
    ignore: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        targets = [v for v in (self.budget_ms, self.budget_flops, self.lam) if v is not None]
        if len(targets) != 1:
            raise ValueError(
                f"set exactly one of budget_ms, budget_flops, lam; got budget_ms={self.budget_ms}, "
                f"budget_flops={self.budget_flops}, lam={self.lam}"
            )
        if self.budget_ms is not None and self.budget_ms <= 0:
            raise ValueError(f"budget_ms must be > 0, got {self.budget_ms}")
        if self.budget_flops is not None and self.budget_flops <= 0:
            raise ValueError(f"budget_flops must be > 0, got {self.budget_flops}")
        if self.lam is not None and self.lam < 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}")
        blocks = frozenset(Block(b) for b in self.blocks)
        if not blocks:
            raise ValueError("blocks must name at least one of prune, lowrank, quant, sparse")
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "optimizer", OptimizerKind(self.optimizer))
        if self.regularizer is None:
            default = Regularizer.FLOPS if self.budget_flops is not None else Regularizer.LATENCY
            object.__setattr__(self, "regularizer", default)
        else:
            object.__setattr__(self, "regularizer", Regularizer(self.regularizer))
        if self.epochs < 0 or self.finetune_epochs < 0:
            raise ValueError(
                f"epochs and finetune_epochs must be >= 0, got {self.epochs}, {self.finetune_epochs}"
            )
        for name in ("lr", "gate_lr", "bits_lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("dual_lr", "lambda_init", "bits_lambda", "sparse_lambda"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.budget_ramp <= 1.0:
            raise ValueError(f"budget_ramp must be in (0, 1], got {self.budget_ramp}")
        for name in ("finetune_schedule", "penalised_schedule"):
            if getattr(self, name) not in ("cosine", "constant"):
                raise ValueError(f"{name} must be 'cosine' or 'constant', got {getattr(self, name)!r}")
        if self.unit_importance not in IMPORTANCE_KINDS:
            raise ValueError(
                f"unit_importance must be one of {IMPORTANCE_KINDS}, got {self.unit_importance!r}"
            )
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
        if self.dual_signal not in ("soft", "hard"):
            raise ValueError(f"dual_signal must be 'soft' or 'hard', got {self.dual_signal!r}")
        if not 0.0 <= self.measure_tolerance < 0.5:
            raise ValueError(f"measure_tolerance must be in [0, 0.5), got {self.measure_tolerance}")
        if not 0.0 <= self.measure_margin < 0.5:
            raise ValueError(f"measure_margin must be in [0, 0.5), got {self.measure_margin}")
        if self.measure_steps < 0:
            raise ValueError(f"measure_steps must be >= 0, got {self.measure_steps}")
        if self.align is not None and self.align < 1:
            raise ValueError(f"align must be >= 1, got {self.align}")
        if self.lowrank_min_width < 1:
            raise ValueError(f"lowrank_min_width must be >= 1, got {self.lowrank_min_width}")
        object.__setattr__(self, "ignore", tuple(self.ignore))

    @property
    def penalised(self) -> bool:
        """True when some structural block (prune / lowrank) is trained against a cost."""
        return bool(self.blocks & {Block.PRUNE, Block.LOWRANK})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["blocks"] = sorted(b.value for b in self.blocks)
        d["regularizer"] = self.regularizer.value if self.regularizer is not None else None
        d["optimizer"] = self.optimizer.value
        d["ignore"] = list(self.ignore)
        return d


def config_from_dict(d: dict[str, Any]) -> CompressConfig:
    """Inverse of :meth:`CompressConfig.to_dict` (unknown keys are an error)."""
    known = {f.name for f in fields(CompressConfig)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown CompressConfig fields {sorted(unknown)}")
    kwargs = dict(d)
    if "blocks" in kwargs:
        kwargs["blocks"] = frozenset(Block(b) for b in kwargs["blocks"])
    if "ignore" in kwargs:
        kwargs["ignore"] = tuple(kwargs["ignore"])
    return CompressConfig(**kwargs)
