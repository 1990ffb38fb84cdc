"""The SAFS pipeline: prune once, search operators (stage 1), learn scalars under HPO (stage 2).

``run_safs`` takes a *trained dense* model and training / test tensors. Stage 1 and stage 2 only ever
see the training tensors (stage 1 holds out ``stage1_val_fraction`` of them; stage 2 uses k folds); the
test tensors are used once, for the final accuracy. The pruning mask is made once and held exactly by
every fine-tune; ``masks_intact`` in the report is checked, not assumed.

Each stage only replaces what came before it when it wins on the training split's k folds at the final
fine-tune's length (``incumbent_check``): stage 1's operators against the original ones, stage 2's
learned scalars and tuned recipe against frozen scalars with the default recipe. Both stages rank
their candidates at low fidelity (a short fine-tune on one holdout; short HPO trials), and their winners
were seen to lose to the incumbent after the real fine-tune (stage 1 at 90-95% sparsity) or to diverge
past the trials' length (a tuned recipe at 95%). A stage that keeps its incumbent changes nothing.

Turning the stages off gives the ablation arms of the paper:

===================  ================  ================
arm                  stage1            stage2
===================  ================  ================
magnitude + ReLU     False             False
stage 1 only         True              False
stage 2 only         False             True
SAFS                 True              True
===================  ================  ================
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from edgetrim.compress.safs.activations import ParametricActivation
from edgetrim.compress.safs.hpo import HPOConfig, HPOResult, kfold_indices, optimise
from edgetrim.compress.safs.latency import ActivationLatencyModel
from edgetrim.compress.safs.search import SearchConfig, SearchResult, search
from edgetrim.compress.safs.surgery import (
    activation_shapes,
    bake_activations_,
    replace_activations,
    set_chromosome_,
    set_scalars_learnable_,
)
from edgetrim.compress.safs.train import (
    FinetuneConfig,
    PruneScope,
    evaluate,
    finetune_,
    hold_masks,
    magnitude_masks,
    mask_nnz,
)
from edgetrim.errors import BudgetError, EdgetrimError

logger = logging.getLogger(__name__)

# Weight of the (capped) validation loss in both stages' fitness: small enough that accuracy decides.
STAGE_LOSS_WEIGHT = 0.01


@dataclass(frozen=True)
class SafsConfig:
    """Everything ``run_safs`` needs besides the model and data."""

    sparsity: float = 0.99
    scope: PruneScope = PruneScope.LAYER
    stage1: bool = True
    stage2: bool = True
    search: SearchConfig = field(default_factory=SearchConfig)
    stage1_epochs: int = 3  # low-fidelity fine-tune per candidate
    stage1_val_fraction: float = 0.2
    hpo: HPOConfig = field(default_factory=HPOConfig)
    stage2_epochs: int | None = None  # per HPO trial and fold; None: final_epochs
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # the dense recipe (default HPs)
    latency_budget_ms: float | None = None
    # Each stage's result must beat the configuration it replaces (the incumbent: the original
    # activations, then the frozen scalars with the default recipe) on the k folds of the training split
    # at the *final* fine-tune's length; otherwise the incumbent is kept. False: take each stage's
    # low-fidelity winner as it is.
    incumbent_check: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scope", PruneScope(self.scope))
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.stage1_epochs < 1:
            raise ValueError(f"stage1_epochs must be >= 1, got {self.stage1_epochs}")
        if not 0.0 < self.stage1_val_fraction < 1.0:
            raise ValueError(f"stage1_val_fraction must be in (0, 1), got {self.stage1_val_fraction}")
        if self.latency_budget_ms is not None and self.latency_budget_ms <= 0:
            raise ValueError(f"latency_budget_ms must be > 0, got {self.latency_budget_ms}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scope"] = self.scope.value
        d["search"]["algorithm"] = self.search.algorithm.value
        d["search"]["space"] = list(self.search.space)
        d["hpo"]["backend"] = self.hpo.backend.value
        d["finetune"] = self.finetune.to_dict()
        return d


@dataclass
class SafsReport:
    """What one SAFS run found (the model itself is returned next to it)."""

    test_accuracy: float
    test_loss: float
    dense_test_accuracy: float
    chromosome: list[str]
    scalars: list[dict[str, float]]
    sites: list[str]
    finetune: dict[str, Any]
    sparsity: float
    kept_weights: int
    masks_intact: bool
    predicted_ms: float | None
    stage1: dict[str, Any] | None
    stage2: dict[str, Any] | None
    seconds: float
    latency: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def kfold_fitness(accs: list[float], losses: list[float | None]) -> float:
    """Stage-2 fitness (maximised): mean fold accuracy minus 0.01 x mean fold loss (capped at 10).

    The same rule as stage 1's energy: accuracy decides, the validation loss breaks ties. At 99%
    sparsity many configurations sit at the same near-chance k-fold accuracy; without the tie-break the
    optimiser picks among them by noise, and a configuration that does not train at all was chosen
    that way. A missing or non-finite loss counts as the cap.
    """
    capped = [min(v, 10.0) if v is not None and math.isfinite(v) else 10.0 for v in losses]
    return sum(accs) / len(accs) - STAGE_LOSS_WEIGHT * sum(capped) / len(capped)


def chance_floor(y: Tensor, *, sigmas: float = 3.0) -> float:
    """k-fold accuracy below which a configuration is indistinguishable from guessing the majority class.

    ``p + sigmas * sqrt(p (1 - p) / n)`` with ``p`` the majority-class share of ``y`` and ``n = len(y)``
    (the mean over k folds validates every sample once).
    """
    counts = torch.bincount(y.flatten().long())
    p = float(counts.max()) / max(len(y), 1)
    return p + sigmas * math.sqrt(p * (1.0 - p) / max(len(y), 1))


def _split(x: Tensor, y: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(len(x) * fraction))
    val, tr = perm[:n_val], perm[n_val:]
    return x[tr], y[tr], x[val], y[val]


def _masks_intact(model: nn.Module, masks: dict[str, Tensor]) -> bool:
    params = dict(model.named_parameters())
    return all(bool((params[n].detach()[~m] == 0).all()) for n, m in masks.items())


def run_safs(
    dense: nn.Module,
    example_inputs: tuple[Tensor, ...],
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    cfg: SafsConfig,
    *,
    masks: dict[str, Tensor] | None = None,
    table: Any | None = None,
    base_ms: float = 0.0,
    state_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[nn.Module, SafsReport]:
    """Prune ``dense`` (or apply ``masks``), run the enabled stages, fine-tune, and test once.

    Args:
        dense: the trained dense model (not modified).
        example_inputs: inputs for shape discovery.
        train: (x, y) training tensors: everything stage 1 / 2 see.
        test: (x, y) held-out tensors: used once, for the reported accuracy.
        cfg: the run configuration.
        masks: an external mask by parameter name (e.g. from a sparse-training pass) instead of
            magnitude pruning.
        table: a LatencyTable to price activations (optional).
        base_ms: predicted latency of the rest of the model (added to the activation costs).
        state_dir: where stage 1 writes ``stage1_state.json`` (resumable).

    Returns:
        (final model with activation scalars baked in, report).
    """
    start = time.perf_counter()
    say = progress or (lambda msg: logger.info(msg))
    torch.manual_seed(cfg.seed)
    x_tr, y_tr = train
    x_te, y_te = test
    dense_acc, _ = evaluate(dense, x_te, y_te)

    # --- prune once; the mask is frozen from here on -------------------------------------------------
    pruned = copy.deepcopy(dense)
    if masks is None:
        masks = magnitude_masks(pruned, cfg.sparsity, scope=cfg.scope)
    hold_masks(pruned, masks)  # zero the pruned weights now
    surgery = replace_activations(pruned)  # original operators, scalars frozen at 1
    checkpoint, sites = surgery.model, surgery.sites
    if not sites:
        raise EdgetrimError("the model has no activation sites (ReLU, GELU, F.relu, ...) for SAFS to search")
    original = [s.original_op for s in sites]
    shapes = activation_shapes(checkpoint, example_inputs)
    lat = ActivationLatencyModel(sites, shapes, table=table, base_ms=base_ms)
    feasible = None
    if cfg.latency_budget_ms is not None:
        budget = cfg.latency_budget_ms
        if lat.total_ms(original) > budget:
            raise BudgetError(
                f"the model with its original activations is predicted at {lat.total_ms(original):.4f} ms, over "
                f"the {budget} ms budget; raise --budget-ms"
            )

        def feasible(ch: tuple[str, ...]) -> bool:
            return lat.total_ms(ch) <= budget

    def fresh(chromosome: list[str] | tuple[str, ...], learnable: bool) -> nn.Module:
        m = copy.deepcopy(checkpoint)
        set_chromosome_(m, sites, list(chromosome))
        set_scalars_learnable_(m, learnable)
        return m

    folds = kfold_indices(len(x_tr), cfg.hpo.folds, cfg.seed)
    final_scores: dict[tuple[Any, ...], dict[str, Any]] = {}

    def kfold_score(
        chromosome: list[str] | tuple[str, ...], learnable: bool, ft: FinetuneConfig
    ) -> dict[str, Any]:
        """k-fold validation of one (operators, scalars learnable, recipe) at the final fine-tune's length.

        Length is counted in optimiser steps: a fold trains on ``(k - 1) / k`` of the data, so it runs
        ``epochs * n / n_fold`` epochs (twice the epochs for 2 folds). At the same epoch count it took
        half the steps, and a recipe that diverges late in the final fine-tune passed the check.
        """
        key = (tuple(chromosome), learnable, tuple(sorted(ft.to_dict().items())))
        if key not in final_scores:
            accs, losses, epochs = [], [], []
            for tr_idx, va_idx in folds:
                m = fresh(chromosome, learnable)
                fold_ft = FinetuneConfig(
                    **{**ft.to_dict(), "epochs": max(1, round(ft.epochs * len(x_tr) / len(tr_idx)))}
                )
                rep = finetune_(
                    m,
                    masks,
                    x_tr[tr_idx],
                    y_tr[tr_idx],
                    fold_ft,
                    seed=cfg.seed,
                    val=(x_tr[va_idx], y_tr[va_idx]),
                )
                accs.append(rep.val_acc or 0.0)
                # a fold that diverged scores as a missing loss (the cap): its rolled-back model is not a result
                losses.append(None if rep.diverged else rep.val_loss)
                epochs.append(fold_ft.epochs)
            final_scores[key] = {
                "fitness": kfold_fitness(accs, losses),
                "kfold_accuracy": sum(accs) / len(accs),
                "fold_accuracy": accs,
                "fold_epochs": epochs,
            }
        return final_scores[key]

    def incumbent_check(
        candidate: tuple[list[str], bool, FinetuneConfig], incumbent: tuple[list[str], bool, FinetuneConfig]
    ) -> dict[str, Any]:
        """Both at the final fine-tune's length on the same folds; the candidate must score strictly higher."""
        c, i = kfold_score(*candidate), kfold_score(*incumbent)
        return {"candidate": c, "incumbent": i, "accepted": c["fitness"] > i["fitness"]}

    # --- stage 1: operator search, scalars frozen at 1, dense recipe, low fidelity --------------------
    chromosome = list(original)
    stage1_info: dict[str, Any] | None = None
    if cfg.stage1:
        s1_x, s1_y, s1_vx, s1_vy = _split(x_tr, y_tr, cfg.stage1_val_fraction, cfg.seed)
        low = FinetuneConfig(**{**cfg.finetune.to_dict(), "epochs": cfg.stage1_epochs})

        def energy(ch: tuple[str, ...]) -> float:
            m = fresh(ch, learnable=False)
            rep = finetune_(m, masks, s1_x, s1_y, low, seed=cfg.seed, val=(s1_vx, s1_vy))
            assert rep.val_acc is not None and rep.val_loss is not None
            # Accuracy decides; the validation loss (capped) only breaks ties between equal accuracies.
            return (1.0 - rep.val_acc) + STAGE_LOSS_WEIGHT * min(rep.val_loss, 10.0)

        state = Path(state_dir) / "stage1_state.json" if state_dir is not None else None
        if state is not None:
            state.parent.mkdir(parents=True, exist_ok=True)
        say(
            f"stage 1: {cfg.search.algorithm.value} over {len(sites)} sites, {cfg.search.max_evals} evaluations"
        )
        res: SearchResult = search(energy, len(sites), cfg.search, feasible=feasible, state_path=state)
        baseline_energy = (
            energy(tuple(original))
            if tuple(original) not in {tuple(r["chromosome"]) for r in res.log}
            else None
        )
        chromosome = list(res.best)
        check = None
        if cfg.incumbent_check and chromosome != list(original):
            # The search ranks candidates after a short fine-tune on one holdout; whether the winner
            # is better than the original operators after the real fine-tune is a separate question.
            check = incumbent_check((chromosome, False, cfg.finetune), (list(original), False, cfg.finetune))
            say(
                f"stage 1: {chromosome} k-fold {check['candidate']['kfold_accuracy']:.3f} vs original "
                f"{check['incumbent']['kfold_accuracy']:.3f} at {cfg.finetune.epochs} epochs: "
                + ("accepted" if check["accepted"] else "original kept")
            )
            if not check["accepted"]:
                chromosome = list(original)
        stage1_info = {
            "best": list(res.best),
            "best_energy": res.best_energy,
            "evaluations": res.evaluations,
            "steps": res.steps,
            "original_energy": baseline_energy,
            "incumbent_check": check,
            "chosen": chromosome,
            "log": res.log,
        }

    # --- stage 2: learn alpha / beta while the optimiser tunes the fine-tune (k-fold validation) -----
    final_cfg = cfg.finetune
    learn_scalars = False
    stage2_info: dict[str, Any] | None = None
    if cfg.stage2:
        trial_epochs = cfg.stage2_epochs if cfg.stage2_epochs is not None else cfg.finetune.epochs
        base = FinetuneConfig(**{**cfg.finetune.to_dict(), "epochs": trial_epochs})

        fold_accuracy: list[float] = []  # mean k-fold accuracy per trial, in trial order

        def objective(ft: FinetuneConfig) -> float:
            accs, losses = [], []
            for tr_idx, va_idx in folds:
                m = fresh(chromosome, learnable=True)
                rep = finetune_(
                    m, masks, x_tr[tr_idx], y_tr[tr_idx], ft, seed=cfg.seed, val=(x_tr[va_idx], y_tr[va_idx])
                )
                accs.append(rep.val_acc or 0.0)
                losses.append(rep.val_loss)
            fold_accuracy.append(sum(accs) / len(accs))  # mean over folds (the reference code took the max)
            return kfold_fitness(accs, losses)

        say(f"stage 2: {cfg.hpo.trials} trials x {cfg.hpo.folds} folds")
        hpo: HPOResult = optimise(objective, base, cfg.hpo)
        best_index = [t["value"] for t in hpo.trials].index(hpo.best_value)
        floor = chance_floor(y_tr)
        chosen = hpo.best
        if fold_accuracy[best_index] < floor:
            # Every trial sat at chance: the k-fold signal carries no information, and its "winner" is
            # typically a configuration that does not train at all (it keeps the pruned net's chance
            # accuracy while the default drifts slightly below it). Keep the default recipe instead.
            chosen = base
            say(
                f"stage 2: best k-fold accuracy {fold_accuracy[best_index]:.3f} is at chance (< {floor:.3f}): default kept"
            )
        final_cfg = FinetuneConfig(**{**chosen.to_dict(), "epochs": cfg.finetune.epochs})
        learn_scalars = True
        check = None
        if cfg.incumbent_check:
            # The incumbent is what the run would do without stage 2: scalars frozen, default recipe.
            # Trials shorter than the final fine-tune cannot see a recipe that overfits or diverges later.
            check = incumbent_check((chromosome, True, final_cfg), (chromosome, False, cfg.finetune))
            say(
                f"stage 2: k-fold {check['candidate']['kfold_accuracy']:.3f} vs frozen scalars + default "
                f"{check['incumbent']['kfold_accuracy']:.3f} at {cfg.finetune.epochs} epochs: "
                + ("accepted" if check["accepted"] else "incumbent kept")
            )
            if not check["accepted"]:
                final_cfg, learn_scalars = cfg.finetune, False
        stage2_info = {
            "incumbent_check": check,
            "learned_scalars": learn_scalars,
            "final_diverged_fallback": False,
            "chance_floor": floor,
            "kept_default_at_chance": chosen is not hpo.best,
            "backend": hpo.backend.value,
            "objective": "mean k-fold accuracy - 0.01 x mean k-fold loss (capped at 10)",
            "best_kfold_accuracy": fold_accuracy[best_index],
            "default_kfold_accuracy": fold_accuracy[0],
            "kfold_accuracy_per_trial": fold_accuracy,
            "best": hpo.best.to_dict(),
            "trials": hpo.trials,
        }

    # --- final fine-tune on all training data, then test once ----------------------------------------
    say("final fine-tune")
    final = fresh(chromosome, learnable=cfg.stage2 and learn_scalars)
    final_rep = finetune_(final, masks, x_tr, y_tr, final_cfg, seed=cfg.seed)
    if (
        final_rep.diverged
        and stage2_info is not None
        and stage2_info["learned_scalars"]
        and cfg.incumbent_check
    ):
        # A diverged fine-tune (non-finite training loss; rolled back to its last finite epoch) is not a
        # result: train stage 2's incumbent instead (frozen scalars, default recipe). Training data only.
        say("final fine-tune diverged with the tuned recipe: stage 2's incumbent trained instead")
        final_cfg = cfg.finetune
        final = fresh(chromosome, learnable=False)
        final_rep = finetune_(final, masks, x_tr, y_tr, final_cfg, seed=cfg.seed)
        stage2_info["learned_scalars"] = False
        stage2_info["final_diverged_fallback"] = True
    intact = _masks_intact(final, masks)
    if not intact:  # a bug, not a user error: the mask engine must hold masks exactly
        raise RuntimeError("pruned weights became nonzero during fine-tuning")
    scalars = [m.values() for m in final.modules() if isinstance(m, ParametricActivation)]
    test_acc, test_loss = evaluate(final, x_te, y_te)
    bake_activations_(final)
    final.eval()
    total = sum(int(m.numel()) for m in masks.values())
    report = SafsReport(
        test_accuracy=test_acc,
        test_loss=test_loss,
        dense_test_accuracy=dense_acc,
        chromosome=chromosome,
        scalars=scalars,
        sites=[f"{s.name}: {s.origin}" for s in sites],
        finetune=final_cfg.to_dict(),
        sparsity=1.0 - mask_nnz(masks) / total,
        kept_weights=mask_nnz(masks),
        masks_intact=intact,
        predicted_ms=lat.total_ms(chromosome) if table is not None or base_ms else None,
        stage1=stage1_info,
        stage2=stage2_info,
        seconds=time.perf_counter() - start,
        latency=lat.describe(),
    )
    return final, report


def pretrain_dense_(
    model: nn.Module, train: tuple[Tensor, Tensor], cfg: FinetuneConfig, *, seed: int = 0
) -> float:
    """Train a dense model in place (no mask); returns the last epoch's training loss."""
    torch.manual_seed(seed)
    return finetune_(model, None, train[0], train[1], cfg, seed=seed).train_loss
