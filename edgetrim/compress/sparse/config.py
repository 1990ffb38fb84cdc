"""Configuration of a sparse-training pass: enums and one frozen, validated dataclass.

``SparsifyConfig.method`` picks a preset (see ``edgetrim.compress.sparse.methods``); every preset runs
the same training loop, so ablations are exact (GraNet with ``regrow=False`` *is* GMP).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from edgetrim.compress.sparse.allocation import Allocation
from edgetrim.compress.sparse.criteria import Criterion


class Method(enum.StrEnum):
    """Sparse-training presets."""

    GMP = "gmp"  # gradual magnitude pruning, cubic schedule (allocation global or uniform)
    GRANET = "granet"  # GMP + zero-cost neuroregeneration (init_sparsity 0 or 0.5)
    RIGL = "rigl"  # fixed sparsity, drop by magnitude, regrow top-|dense grad| (ERK)
    SET = "set"  # fixed sparsity, drop by magnitude, regrow at random (ERK)
    STATIC = "static"  # fixed random mask (ERK), never changes
    PAI = "pai"  # pruning at initialisation by ``criterion`` (one-shot or iterative), then train
    LOTTERY = "lottery"  # iterative magnitude pruning with rewinding (lottery tickets)
    FREEZE = "freeze"  # train only the top-scoring weights, the rest frozen at init (FreezeNet)
    BN_ONLY = "bn_only"  # train only BatchNorm affine parameters


class Granularity(enum.StrEnum):
    """What one mask entry covers."""

    UNSTRUCTURED = "unstructured"
    NM_2_4 = "2:4"
    NM_1_4 = "1:4"
    CHANNEL = "channel"  # whole coupled channel groups, materialised into smaller layers at the end

    @property
    def nm(self) -> tuple[int, int] | None:
        if self is Granularity.NM_2_4:
            return (2, 4)
        if self is Granularity.NM_1_4:
            return (1, 4)
        return None


class Optim(enum.StrEnum):
    SGD = "sgd"
    ADAM = "adam"
    ADAMW = "adamw"


class Rewind(enum.StrEnum):
    """Lottery-ticket reset after each IMP round."""

    INIT = "init"  # weights back to Θ(0)
    ITERATION = "iteration"  # weights back to Θ(k), k = ``rewind_iteration``
    LR = "lr"  # keep the trained weights, restart the LR schedule (learning-rate rewinding)


class CollapsePolicy(enum.StrEnum):
    """What a layer left with zero weights does to the run."""

    ERROR = "error"  # raise, naming the layer (default for methods that train a sparse net)
    WARN = "warn"  # log and record it in the report (default for pruning at init and lottery tickets)


DEFAULT_ALLOCATION: dict[Method, Allocation] = {
    Method.GMP: Allocation.GLOBAL,
    Method.GRANET: Allocation.GLOBAL,
    Method.RIGL: Allocation.ERK,
    Method.SET: Allocation.ERK,
    Method.STATIC: Allocation.ERK,
    Method.PAI: Allocation.GLOBAL,
    Method.LOTTERY: Allocation.GLOBAL,
    Method.FREEZE: Allocation.GLOBAL,
    Method.BN_ONLY: Allocation.UNIFORM,
}

DEFAULT_COLLAPSE: dict[Method, CollapsePolicy] = {
    m: (CollapsePolicy.WARN if m in (Method.PAI, Method.LOTTERY, Method.FREEZE) else CollapsePolicy.ERROR)
    for m in Method
}


@dataclass(frozen=True)
class SparsifyConfig:
    """Everything a sparse-training pass needs besides the model, data and latency table.

    Sparsity is the fraction of masked weights removed (``p = 1 - d/D``); densities elsewhere are
    ``1 - sparsity``. Step counts (``update_every``, ``rewind_iteration``) are iterations.
    """

    method: Method = Method.GRANET
    sparsity: float = 0.9
    granularity: Granularity = Granularity.UNSTRUCTURED
    allocation: Allocation | None = None  # None: the method's default (DEFAULT_ALLOCATION)
    layer_densities: Mapping[str, float] | None = None  # for Allocation.MAP
    budget_ms: float | None = None  # for Allocation.LATENCY
    epochs: int = 20
    batches_per_epoch: int | None = None  # cap (quick runs); None: the whole loader
    optimizer: Optim = Optim.SGD
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    lr_milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of training; LR x lr_gamma at each
    lr_gamma: float = 0.1
    # gradual pruning (GMP / GraNet)
    init_sparsity: float = 0.0  # s_i: 0 dense-to-sparse, 0.5 GraNet sparse-to-sparse (random ERK init)
    prune_start: float = 0.0  # t0 as a fraction of training
    prune_end: float = 0.5  # tf as a fraction of training (GraNet: the first LR decay)
    update_every: int | None = None  # Δt in iterations; None: half an epoch
    # drop / regrow (GraNet, RigL, SET)
    regrow: bool | None = None  # None: the method's default (GraNet, RigL, SET: True; GMP: False)
    death_rate: float = 0.5  # GraNet r0 (cosine to death_rate_min over all training); RigL/SET alpha
    death_rate_min: float = 0.005
    drop_end: float = 0.75  # RigL/SET: mask updates stop at this fraction of training
    rigl_alpha: float = 0.3  # RigL/SET initial drop fraction (cosine to 0 at drop_end)
    sparse_init_rescale: bool = (
        False  # scale random sparse inits by 1/sqrt(layer density) (not in the papers)
    )
    # pruning at init / freezing
    criterion: Criterion = Criterion.SNIP
    pai_rounds: int = 1  # 1: one-shot; > 1: iterative with an exponential density schedule
    score_batches: int = 1  # mini-batches used for data-driven scores
    synflow_zero_bias: bool = False  # score SynFlow with biases zeroed (exact per-layer conservation)
    # lottery tickets
    imp_rounds: int | None = None  # None: enough 20% rounds to reach ``sparsity``
    imp_per_round: float = 0.2
    rewind: Rewind = Rewind.INIT
    rewind_iteration: int = 0
    # misc
    min_layer_density: float | None = None  # global pruning guard; None: 0.01 for gmp/granet/lottery, else 0
    exclude: tuple[str, ...] = ()  # module names kept dense
    collapse: CollapsePolicy | None = None  # None: DEFAULT_COLLAPSE[method]
    seed: int = 0

    def __post_init__(self) -> None:
        for name, enum_type in (
            ("method", Method),
            ("granularity", Granularity),
            ("optimizer", Optim),
            ("rewind", Rewind),
            ("criterion", Criterion),
        ):
            value = getattr(self, name)
            if not isinstance(value, enum_type):
                try:
                    object.__setattr__(self, name, enum_type(value))
                except ValueError:
                    known = ", ".join(e.value for e in enum_type)
                    raise ValueError(f"{name} must be one of {known}, got {value!r}") from None
        if self.allocation is not None and not isinstance(self.allocation, Allocation):
            object.__setattr__(self, "allocation", Allocation(self.allocation))
        if self.collapse is not None and not isinstance(self.collapse, CollapsePolicy):
            object.__setattr__(self, "collapse", CollapsePolicy(self.collapse))
        if not (0.0 <= self.sparsity < 1.0) or math.isnan(self.sparsity):
            raise ValueError(f"sparsity must be in [0, 1) (fraction of weights removed), got {self.sparsity}")
        if not (0.0 <= self.init_sparsity <= self.sparsity):
            raise ValueError(
                f"init_sparsity must be in [0, sparsity={self.sparsity}], got {self.init_sparsity}"
            )
        nm = self.granularity.nm
        if nm is not None and abs(self.sparsity - (1 - nm[0] / nm[1])) > 1e-9:
            raise ValueError(
                f"granularity {self.granularity.value} means sparsity {1 - nm[0] / nm[1]}, got {self.sparsity}"
            )
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not (0.0 <= self.prune_start <= self.prune_end <= 1.0):
            raise ValueError(
                f"need 0 <= prune_start <= prune_end <= 1, got {self.prune_start}, {self.prune_end}"
            )
        if self.update_every is not None and self.update_every < 1:
            raise ValueError(f"update_every must be >= 1 iteration, got {self.update_every}")
        if not (0.0 <= self.death_rate_min <= self.death_rate < 1.0):
            raise ValueError(
                f"need 0 <= death_rate_min <= death_rate < 1, got {self.death_rate_min}, {self.death_rate}"
            )
        if not (0.0 < self.rigl_alpha < 1.0):
            raise ValueError(f"rigl_alpha must be in (0, 1), got {self.rigl_alpha}")
        if self.pai_rounds < 1:
            raise ValueError(f"pai_rounds must be >= 1, got {self.pai_rounds}")
        if not (0.0 < self.imp_per_round < 1.0):
            raise ValueError(f"imp_per_round must be in (0, 1), got {self.imp_per_round}")
        if self.min_layer_density is not None and not (0.0 <= self.min_layer_density <= self.density):
            raise ValueError(
                f"min_layer_density must be in [0, {self.density}], got {self.min_layer_density}"
            )
        if self.budget_ms is not None and self.budget_ms <= 0:
            raise ValueError(f"budget_ms must be > 0, got {self.budget_ms}")
        if self.allocation is Allocation.LATENCY:
            if self.granularity is not Granularity.CHANNEL:
                raise ValueError(
                    "latency allocation needs granularity 'channel': unstructured and N:M zeros do not change "
                    "dense-runtime latency"
                )
            if self.budget_ms is None:
                raise ValueError("latency allocation needs budget_ms")
        if self.granularity is Granularity.CHANNEL and self.method not in (Method.GMP, Method.PAI):
            raise ValueError(f"granularity 'channel' supports methods gmp and pai, got {self.method.value}")
        if nm is not None and self.method not in (Method.GMP, Method.STATIC, Method.PAI, Method.LOTTERY):
            raise ValueError(
                f"granularity {self.granularity.value} supports methods gmp, static, pai and lottery, "
                f"got {self.method.value}"
            )

    @property
    def density(self) -> float:
        return 1.0 - self.sparsity

    @property
    def effective_allocation(self) -> Allocation:
        return self.allocation if self.allocation is not None else DEFAULT_ALLOCATION[self.method]

    @property
    def effective_min_layer_density(self) -> float:
        """Layer-collapse guard of global magnitude pruning (GraNet pitfall 8)."""
        if self.min_layer_density is not None:
            return self.min_layer_density
        return min(0.01, self.density) if self.method in (Method.GMP, Method.GRANET, Method.LOTTERY) else 0.0

    @property
    def effective_collapse(self) -> CollapsePolicy:
        return self.collapse if self.collapse is not None else DEFAULT_COLLAPSE[self.method]

    @property
    def effective_regrow(self) -> bool:
        if self.regrow is not None:
            return self.regrow
        return self.method in (Method.GRANET, Method.RIGL, Method.SET)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, enum.Enum):
                d[k] = v.value
        d["layer_densities"] = dict(self.layer_densities) if self.layer_densities else None
        d["lr_milestones"] = list(self.lr_milestones)
        d["exclude"] = list(self.exclude)
        return d
