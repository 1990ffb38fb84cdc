"""SAFS stage 2: tune the masked fine-tune's hyper-parameters while alpha / beta are learned.

One interface, two backends: Optuna's TPE sampler when optuna is installed (the ``search`` extra), and
a pure random search otherwise, both seeded. The SAFS paper used SMAC3; the conditional space here is
its reference code's, trimmed to what the fine-tune implements: optimiser (SGD | Adam), log-uniform
learning rate, SGD momentum, weight decay and scheduler (constant | cosine | step), plus the learning
rate multiplier of the activation scalars. The default recipe is always the first trial, as SMAC
evaluates the default configuration first, so tuning can only match or beat it on validation.

The objective is the mean k-fold validation accuracy on the *training* data (never the test split).
"""

from __future__ import annotations

import enum
import importlib.util
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

from edgetrim.compress.safs.train import FinetuneConfig, OptimizerKind, SchedulerKind

logger = logging.getLogger(__name__)


class HPOBackend(enum.StrEnum):
    AUTO = "auto"  # optuna when importable, else random
    OPTUNA = "optuna"
    RANDOM = "random"


@dataclass(frozen=True)
class HPOConfig:
    trials: int = 20  # the reference code's SMAC runcount-limit
    folds: int = 3  # the paper's 3-fold validation
    backend: HPOBackend = HPOBackend.AUTO
    seed: int = 0
    lr_range: tuple[float, float] = (1e-4, 1e-1)
    weight_decay_range: tuple[float, float] = (
        1e-6,
        1e-2,
    )  # log-uniform; the reference's 1e-1 upper end diverges with Adam
    momentum_range: tuple[float, float] = (0.1, 0.99)
    scalar_lr_scale_range: tuple[float, float] = (1.0, 30.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend", HPOBackend(self.backend))
        if self.trials < 1:
            raise ValueError(f"trials must be >= 1, got {self.trials}")
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2, got {self.folds}")
        for name in ("lr_range", "weight_decay_range", "momentum_range", "scalar_lr_scale_range"):
            lo, hi = getattr(self, name)
            if not 0 < lo < hi:
                raise ValueError(f"{name} must satisfy 0 < low < high, got {(lo, hi)}")


@dataclass
class HPOResult:
    best: FinetuneConfig
    best_value: float  # mean k-fold validation accuracy of ``best``
    backend: HPOBackend
    trials: list[dict[str, Any]] = field(default_factory=list)


class Suggester(Protocol):
    def categorical(self, name: str, choices: list[str]) -> str: ...
    def log_uniform(self, name: str, low: float, high: float) -> float: ...
    def uniform(self, name: str, low: float, high: float) -> float: ...


class _RandomSuggester:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def categorical(self, name: str, choices: list[str]) -> str:
        return self.rng.choice(choices)

    def log_uniform(self, name: str, low: float, high: float) -> float:
        return math.exp(self.rng.uniform(math.log(low), math.log(high)))

    def uniform(self, name: str, low: float, high: float) -> float:
        return self.rng.uniform(low, high)


class _OptunaSuggester:
    def __init__(self, trial: Any) -> None:
        self.trial = trial

    def categorical(self, name: str, choices: list[str]) -> str:
        return self.trial.suggest_categorical(name, choices)

    def log_uniform(self, name: str, low: float, high: float) -> float:
        return self.trial.suggest_float(name, low, high, log=True)

    def uniform(self, name: str, low: float, high: float) -> float:
        return self.trial.suggest_float(name, low, high)


def sample_config(s: Suggester, base: FinetuneConfig, cfg: HPOConfig) -> FinetuneConfig:
    """Draw one fine-tune configuration from the conditional space (epochs and batch size kept)."""
    opt = OptimizerKind(s.categorical("optimizer", [k.value for k in OptimizerKind]))
    lr = s.log_uniform(f"lr_{opt.value}", *cfg.lr_range)
    momentum = s.uniform("momentum", *cfg.momentum_range) if opt is OptimizerKind.SGD else base.momentum
    wd = s.log_uniform(f"weight_decay_{opt.value}", *cfg.weight_decay_range)
    sched = SchedulerKind(s.categorical("scheduler", [k.value for k in SchedulerKind]))
    scale = s.log_uniform("scalar_lr_scale", *cfg.scalar_lr_scale_range)
    return replace(
        base, optimizer=opt, lr=lr, momentum=momentum, weight_decay=wd, scheduler=sched, scalar_lr_scale=scale
    )


def kfold_indices(n: int, k: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``k`` (train_idx, val_idx) pairs over a seeded permutation of ``range(n)``."""
    if not 2 <= k <= n:
        raise ValueError(f"need 2 <= folds <= samples, got folds={k}, samples={n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    chunks = torch.tensor_split(perm, k)
    return [(torch.cat([c for j, c in enumerate(chunks) if j != i]), chunks[i]) for i in range(k)]


def _resolve(backend: HPOBackend) -> HPOBackend:
    has_optuna = importlib.util.find_spec("optuna") is not None
    if backend is HPOBackend.AUTO:
        return HPOBackend.OPTUNA if has_optuna else HPOBackend.RANDOM
    if backend is HPOBackend.OPTUNA and not has_optuna:
        from edgetrim.errors import EdgetrimError

        raise EdgetrimError(
            "the optuna HPO backend needs optuna: pip install 'edgetrim[search]', or use --hpo random"
        )
    return backend


def optimise(objective: Callable[[FinetuneConfig], float], base: FinetuneConfig, cfg: HPOConfig) -> HPOResult:
    """Maximise ``objective`` (mean k-fold validation accuracy) over fine-tune configurations.

    The first trial is always ``base`` itself (the default recipe).

    Example:
        >>> res = optimise(lambda c: -abs(math.log10(c.lr) + 2), FinetuneConfig(), HPOConfig(trials=3, backend="random"))
        >>> len(res.trials)
        3
    """
    backend = _resolve(cfg.backend)
    trials: list[dict[str, Any]] = []

    def run(ft: FinetuneConfig) -> float:
        value = float(objective(ft))
        if not math.isfinite(value):
            value = 0.0
        trials.append({"config": ft.to_dict(), "value": value})
        logger.info(
            "HPO trial %d/%d: %.4f (%s lr=%.2g)", len(trials), cfg.trials, value, ft.optimizer.value, ft.lr
        )
        return value

    if backend is HPOBackend.OPTUNA:
        import optuna  # the one place optuna is imported

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=cfg.seed))
        configs: dict[int, FinetuneConfig] = {}

        def fn(trial: Any) -> float:
            ft = base if trial.number == 0 else sample_config(_OptunaSuggester(trial), base, cfg)
            configs[trial.number] = ft
            return run(ft)

        study.optimize(fn, n_trials=cfg.trials)
        best_number = max(range(len(trials)), key=lambda i: trials[i]["value"])
        return HPOResult(configs[best_number], trials[best_number]["value"], backend, trials)

    rng = random.Random(cfg.seed)
    candidates = [base] + [sample_config(_RandomSuggester(rng), base, cfg) for _ in range(cfg.trials - 1)]
    values = [run(ft) for ft in candidates]
    best = max(range(len(values)), key=lambda i: values[i])  # first wins ties: the default recipe
    return HPOResult(candidates[best], values[best], backend, trials)
