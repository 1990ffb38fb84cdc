"""Acceptance 2-3: latency-regularised pruning vs baselines, measured on ort-cpu, side by side.

For each model (trained on digits upsampled to 16x16 so that dense latency is hundreds of
microseconds, well above the measurement noise; ``--data digits_hard``: on distorted digits with
distractors, where accuracy depends on width, with 3,600 validation images) and each budget fraction ``f``, the budget is
``f x`` the dense model's *measured* ort-cpu latency; the result must measure within 10% of it.
One process runs:

* ``ours``: ``compress`` with the latency regulariser (Eq. 6), widths chosen on the real table and the
  measured loop (``measure_fn``: the training target calibrated on the target, the dense model before
  training and the gated model after every penalised epoch; re-fit on the measured ratio, narrower
  while the small model measures over, wider while it measures within);
* ``latency_fit`` (not in the default ``--methods``): ours without the penalised epochs, the same
  final width fit on the table from the trained model, then the baselines' fine-tune (what the
  penalised phase adds, side by side);
* ``flops_reg``: the same run with the FLOPs regulariser (Eq. 4): same calibration, final fit and loop;
* ``flops_fit``: widths chosen by FLOPs instead of the latency table: ``compress`` with a FLOPs budget
  (FLOPs regulariser, the same greedy fit on FLOPs, no penalised epoch) from the trained model, the
  FLOPs budget bisected until the table says the model fits, then the same fine-tune as the other
  baselines (what a FLOPs-targeting tool gives when asked for a latency);
* ``uniform``: every group scaled by one factor (largest that the table says fits), magnitude order;
  ``uniform_r8``: the same with widths rounded as MobileNet's width multiplier rounds (multiples of 8);
* ``tp_magnitude`` / ``tp_magnitude_r8``: Torch-Pruning L2 magnitude channel pruning (classifier kept),
  without / with rounding widths to 8, global ratio bisected until the table says it fits.

Every method gets the same measured loop: fit the table at an internal budget (first the budget
itself), measure, set the internal budget to ``0.98 x budget x predicted / measured`` when over
(``budget x predicted / measured`` when within, to try wider), re-fit (at most 3 times; stop when
the re-fit rebuilds the same structure), keep the widest structure measured within budget.
Every method gets the same number of training epochs after pruning. All
materialised models of one network (dense included) are exported once and measured on ort-cpu
(1 thread) interleaved in rounds (each round times every model once; median over rounds, p10/p90
of the round medians), so machine load drifts hit every model alike. ``measure_fn`` inside
``compress`` measures the candidate interleaved with the dense model and scales the median ratio
by the dense reference. Accuracy, predicted and measured latency, and ``measured <= 1.10 x budget``
are reported per seed (``--ours-fractions``: more budgets for ours alone; ``--seeds``: ours / flops_reg run ``compress`` once per seed; a baseline's
structure is seed-free and is fine-tuned once per seed) and summarised over seeds (mean, std, range).
``comparison`` puts every baseline next to ours at equal *measured* latency (ours interpolated between
its budgets) and gives the measured latency ours needs to reach each FLOPs-regularised point's
accuracy (see :func:`compare`). Models are exported with the TorchScript exporter (``--exporter``). The table is profiled once per model on
ort-cpu (cached under benchmarks/results/, resumable). Writes benchmarks/results/compress_vs_baselines.json.

    .venv/bin/python benchmarks/compress_vs_baselines.py [--models mobilenetv3_small,resnet_small]
        [--fractions 0.7,0.5,0.35] [--ours-fractions 0.25] [--epochs 2] [--finetune-epochs 4] [--image-size 16] [--rounds 9]
        [--seeds 0,1,2] [--data digits|digits_hard] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgetrim.compress.api import compress, model_latency_ms
from edgetrim.compress.config import ALLOCATIONS, IMPORTANCE_KINDS, CompressConfig, Regularizer
from edgetrim.compress.gates import ChannelGates
from edgetrim.compress.graph import find_channel_groups, output_layers
from edgetrim.errors import BudgetError, UncoveredOpError
from edgetrim.examples._common import scaled_channels
from edgetrim.examples.data import digits_hard_loaders, digits_loaders
from edgetrim.examples.models import MODEL_ZOO
from edgetrim.examples.training import train_classifier
from edgetrim.io_utils import atomic_write_json
from edgetrim.lookup_tables import load_table
from edgetrim.lookup_tables.predict import total_flops
from edgetrim.model_ops import extract_layer_ops
from edgetrim.profiler.session import ProfileConfig, profile_table
from edgetrim.profiler.targets import get_target
from edgetrim.profiler.targets.onnxruntime_target import export_onnx_for_timing
from edgetrim.profiler.timing import TimingConfig

OUT = Path(__file__).resolve().parent / "results"


def predicted(table, target, model, example) -> float:
    return model_latency_ms(table, extract_layer_ops(model, example, fusion=target.fusion))


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv / linear layer of a materialised model: the structure a row
    describes, comparable across methods (baselines have no channel groups of their own)."""
    return {
        name: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


def fits_table(table, target, example, budget: float):
    """``model -> bool``: the table's prediction of ``model`` is within ``budget`` (ms)."""

    def fits(model: nn.Module) -> bool:
        try:
            return predicted(table, target, model, example) <= budget
        except UncoveredOpError:  # e.g. a depthwise conv cut to one channel is a plain conv
            return False

    return fits


def benchmark_table(
    target,
    ops,
    name: str,
    image_size: int,
    *,
    points_per_context: int = 120,
    refine: bool = True,
    reuse: bool = False,
):
    """The ort-cpu table of model ``name`` at ``image_size``, profiled once and cached under results/
    (resumable); every compress benchmark on the zoo models at that size reads the same file. A
    cached table whose points no longer time as stored (the host's speed changed) is profiled again
    (``ProfileConfig.drift_tolerance``): budgets are fractions of the dense model measured now.

    ``reuse``: read the cached table as it is when there is one (no rechecks or refinement, so a
    script that only reads predictions can run beside another process without timing anything).
    """
    suffix = "" if image_size == 8 else f"_s{image_size}_wide"
    cached = OUT / f"compress_table_{name}{suffix}.json"
    if reuse and cached.is_file():
        return load_table(cached)
    return profile_table(
        target, ops, out=OUT / f"compress_table_{name}{suffix}.json", resume=True,
        timing=TimingConfig(warmup=3, min_runs=5, max_runs=30, time_cap_s=0.2), refine=refine,
        config=ProfileConfig(points_per_context=points_per_context),
    )  # fmt: skip


MODEL_KWARGS = {
    # widths so that the dense 16x16 model runs ~0.3 ms on one core (fixed per-run overhead a small share)
    "mobilenetv3_small": {"width_mult": 2.0},
    "resnet_small": {"widths": (32, 64, 128)},
}


def add_pretrain_schedule_arg(p: argparse.ArgumentParser) -> None:
    """``--pretrain-schedule`` (shared by the scripts that pre-train the dense zoo models)."""
    p.add_argument(
        "--pretrain-schedule", choices=("constant", "cosine"), default="constant",
        help="the dense model's learning rate (cosine: trained to convergence, not left mid-descent)",
    )  # fmt: skip


def _summary(xs: list[float]) -> dict:
    q = statistics.quantiles(xs, n=10) if len(xs) >= 2 else [xs[0]] * 9
    return {"median_ms": statistics.median(xs), "p10_ms": q[0], "p90_ms": q[-1], "rounds": len(xs)}


class Meter:
    """Exports models once to ONNX and times their ort-cpu sessions interleaved in rounds."""

    def __init__(self, target, rounds: int, exporter: str = "torchscript") -> None:
        self.target = target
        self.exporter = exporter
        self.rounds = rounds
        self.timing = TimingConfig(warmup=20, min_runs=60, max_runs=200, rel_ci=0.01, time_cap_s=0.05)
        self.tmp = Path(tempfile.mkdtemp(prefix="cvb_"))
        self.n = 0
        # the dense model's time at every paired measurement: this host changes speed for minutes at
        # a time and not evenly across kernels, so a run's results are read against this timeline
        self.started = time.perf_counter()
        self.timeline: list[dict[str, float]] = []

    def session(self, model: nn.Module, example):
        self.n += 1
        path = self.tmp / f"m{self.n}.onnx"
        module = copy.deepcopy(model).eval()
        if self.exporter == "torchscript":
            # ~0.3 s per model against ~3-10 s for the dynamo exporter (hundreds of exports per run);
            # every model of the run, dense included, goes through the same exporter
            with torch.no_grad():
                torch.onnx.export(module, tuple(example), str(path), dynamo=False, opset_version=17)
        else:
            export_onnx_for_timing(module, tuple(example), path)
        return self.target.session(path)

    def interleaved(self, sessions: dict[str, object]) -> dict[str, dict]:
        """Median over rounds of each session's per-round median, with p10/p90 over the rounds."""
        per: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(self.rounds):
            for k, sess in sessions.items():
                per[k].append(self.target.time_session(sess, self.timing).median_ms)
        return {k: _summary(xs) for k, xs in per.items()}

    def paired(self, sessions: dict[str, object], ref, ref_ms: float) -> dict[str, dict]:
        """Each session timed right after the reference in every round; ``ref_ms x`` the median ratio.

        Load on a shared machine comes and goes within a round; a candidate and the reference timed
        back to back see nearly the same load, so their ratio is far steadier than either time.
        """
        ratios: dict[str, list[float]] = {k: [] for k in sessions}
        refs: list[float] = []
        for _ in range(self.rounds):
            for k, sess in sessions.items():
                b = self.target.time_session(ref, self.timing).median_ms
                a = self.target.time_session(sess, self.timing).median_ms
                ratios[k].append(a / b)
                refs.append(b)
        self.timeline.append(
            {"s": round(time.perf_counter() - self.started, 1), "dense_ms": statistics.median(refs)}
        )
        out = {}
        for k, rs in ratios.items():
            s = _summary([ref_ms * r for r in rs])
            out[k] = s | {"ratio_to_dense": statistics.median(rs)}
        return out

    def relative_fn(self, dense_sess, dense_ms: float):
        """A ``measure_fn`` for ``compress``: dense_ms x the median per-round candidate/dense ratio."""

        def measure(model: nn.Module, example) -> float:
            sess = self.session(model, example)
            self.target.time_session(sess, self.timing)  # a fresh session's first timings run slow
            return self.paired({"m": sess}, dense_sess, dense_ms)["m"]["median_ms"]

        return measure


def closed_loop(make_at, predict, measure, budget: float, steps: int = 3, tol: float = 0.0):
    """The measured loop of ``compress`` for a baseline: ``make_at(table_budget) -> model``.

    Returns ``(model, internal_budget, rounds)``: the widest model (highest prediction) that measured
    within ``budget``, else the last one. Like ``compress``: after a measurement over the budget the
    internal budget becomes ``0.98 x budget x predicted / measured``, after one within it ``budget x
    predicted / measured`` (at least just above the widest within), a re-scaled budget at or above a
    prediction that already measured over is replaced by the midpoint between within and over, and
    the loop stops when the re-fit rebuilds the structure it just measured.
    """
    internal, best, last, rounds, over = budget, None, None, [], math.inf
    for step in range(steps + 1):
        try:
            m = make_at(internal)
        except ValueError:  # nothing fits this internal budget on the table
            if last is None:
                raise
            break
        pred = predict(m)
        if last is not None and pred == last[2]:  # the same structure again
            break
        ms = measure(m)
        rounds.append({"internal_budget_ms": internal, "predicted_ms": pred, "measured_ms": ms})
        last = (m, internal, pred, ms)
        if ms <= budget * (1 + tol) and (best is None or pred > best[2]):
            best = last
        if step == steps:
            break
        if ms > budget * (1 + tol):
            over = min(over, pred)
            internal = 0.98 * budget * pred / ms
        else:  # within: try the widest structure this ratio says still measures within
            internal = max(budget * pred / ms, best[2] * 1.0001)
        if best is not None and internal >= over:  # as compress does: bisect between within and over
            internal = 0.5 * (best[2] + over)
    m, internal, _, _ = best if best is not None else last
    return m, internal, rounds


def bisect_ratio(make, fits, lo: float = 0.0, hi: float = 0.95, steps: int = 8):
    """Smallest pruning ratio in [lo, hi] whose model ``fits`` -> (ratio, model); ValueError if none does."""
    best = None
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        m = make(mid)
        if fits(m):
            best, hi = (mid, m), mid
        else:
            lo = mid
    if best is None:
        raise ValueError(f"no pruning ratio up to {hi:.2f} meets the budget on the table")
    return best


def _divisible(channels: float, full: int, unit: int, divisor: int) -> int:
    """MobileNet's width-multiplier rounding (the zoo's ``scaled_channels``), never above ``full``,
    whole units."""
    return min(full, math.ceil(scaled_channels(channels, 1.0, divisor) / unit) * unit)


def uniform_model(model, example, keep_frac: float, round_to: int | None = None) -> nn.Module:
    """Every group at ``keep_frac`` of its width (whole units), or rounded as MobileNet's width
    multiplier rounds (``round_to``: a multiple of it, at least 90% of the scaled width)."""
    groups = find_channel_groups(model, example)
    gates = ChannelGates(model, groups)
    if round_to is None:
        widths = [max(g.unit, math.ceil(keep_frac * g.num_units) * g.unit) for g in groups]
    else:
        widths = [
            _divisible(keep_frac * g.num_units * g.unit, g.num_units * g.unit, g.unit, round_to)
            for g in groups
        ]
    small = gates.materialize(example, widths=widths)  # gates at 1: keeps the first channels by |alpha| ties
    gates.detach_hooks()
    return small


def tp_model(model, example, ratio: float, round_to: int | None) -> nn.Module:
    import torch_pruning as tp

    m = copy.deepcopy(model)
    finals = set(output_layers(m, example))
    ignored = [mod for n, mod in m.named_modules() if n in finals]
    pruner = tp.pruner.MagnitudePruner(
        m, example_inputs=list(example), importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio, ignored_layers=ignored, round_to=round_to,
    )  # fmt: skip
    pruner.step()
    return m


def tp_at_budget(model, example, table, target, budget: float, round_to: int | None) -> nn.Module:
    """Torch-Pruning magnitude pruning at the smallest ratio whose model fits ``budget`` (ms) on the
    table; ValueError when no ratio up to 0.95 does."""
    fits = fits_table(table, target, example, budget)
    return bisect_ratio(lambda r: tp_model(model, example, r, round_to), fits)[1]


def fitted_structure(model, example, table, train, val, **budget) -> nn.Module:
    """``compress``'s width fit alone (no penalised epoch, no fine-tune) at ``budget_ms=`` or
    ``budget_flops=``; a budget below the smallest reachable one takes the smallest model."""
    ((key, value),) = budget.items()
    reg = Regularizer.FLOPS if key == "budget_flops" else Regularizer.LATENCY
    for _ in range(2):
        cfg = CompressConfig(regularizer=reg, epochs=0, finetune_epochs=0, seed=0, **{key: value})
        try:
            return compress(model, example, cfg, table=table, train_loader=train, val_loader=val).model
        except BudgetError as exc:
            if exc.smallest is None:
                raise
            value = exc.smallest * (1 + 1e-6)
    raise ValueError("no budget reachable")


def flops_fit_at_budget(model, example, table, target, budget: float, train, val) -> nn.Module:
    """Widths fitted to a FLOPs budget (no latency table in the choice) at the smallest FLOPs cut whose
    model fits ``budget`` (ms) on the table; ValueError when no cut up to 95% does."""

    def make(cut: float) -> nn.Module:
        return fitted_structure(model, example, table, train, val, budget_flops=(1.0 - cut) * dense_flops)

    dense_flops = total_flops(extract_layer_ops(model, example, fusion=target.fusion))
    return bisect_ratio(make, fits_table(table, target, example, budget))[1]


NOISY = ("measure_rounds", "calibration", "widths_requested", "layer_widths")
BASELINES = (
    "latency_fit",
    "flops_reg",
    "flops_fit",
    "uniform",
    "uniform_r8",
    "tp_magnitude",
    "tp_magnitude_r8",
)
FLOPS_METHODS = ("flops_reg", "flops_fit")  # compared with ours on latency at equal accuracy


def budget_plan(fractions: str, ours_fractions: str, methods: str) -> list[tuple[float, list[str]]]:
    """(fraction, methods) per budget, widest first: every method at ``fractions``, ours alone at the
    ``ours_fractions`` not among them (comma-separated lists as the command line gives them)."""
    shared = [float(f) for f in fractions.split(",") if f]
    ours_only = {float(f) for f in ours_fractions.split(",") if f} - set(shared)
    every = methods.split(",")
    plan = [(f, every) for f in shared] + [(f, [m for m in every if m == "ours"]) for f in ours_only]
    return sorted(((f, m) for f, m in plan if m), key=lambda fm: -fm[0])


def _key(row: dict) -> str:
    return f"{row['fraction']}/{row['method']}/{row.get('seed')}"


def _spread(xs: list[float]) -> dict:
    return {
        "mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "min": min(xs), "max": max(xs), "n": len(xs),
    }  # fmt: skip


def summarise(rows: list[dict]) -> list[dict]:
    """Per (model, fraction, method): accuracy and measured latency over seeds (mean, std, range)."""
    out = []
    keys = list(dict.fromkeys((r["model"], r["fraction"], r["method"]) for r in rows))
    for model, frac, method in keys:
        rs = [r for r in rows if (r["model"], r["fraction"], r["method"]) == (model, frac, method)]
        ok = [r for r in rs if "error" not in r and "measured" in r]
        row = {"model": model, "fraction": frac, "method": method, "budget_ms": rs[0]["budget_ms"]}
        if not ok:
            row["error"] = next((r["error"] for r in rs if "error" in r), "not measured")
            out.append(row)
            continue
        row |= {
            "accuracy": _spread([r["accuracy"] for r in ok]),
            "measured_ms": _spread([r["measured"]["median_ms"] for r in ok]),
            "measured_vs_budget_max": max(r["measured_vs_budget"] for r in ok),
            "adheres_1_10": all(r["adheres_1_10"] for r in ok),
            "predicted_ms_mean": statistics.fmean(r["predicted_ms"] for r in ok),
        }
        if len(ok) < len(rs):  # seeds that ended in an error (a budget a seed could not meet)
            row["failed_seeds"] = [r.get("seed") for r in rs if r not in ok]
        out.append(row)
    return out


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    raise ValueError("outside")


def compare(model: str, summaries: list[dict], tol: float = 0.0) -> dict:
    """Ours against every baseline at equal *measured* latency, and latency vs FLOPs at equal accuracy.

    Ours' points (one per budget: mean measured latency, mean accuracy over seeds) form a curve,
    linearly interpolated between budgets. ab baseline point (lb, ab) is compared with ours' accuracy at
    lb (``ours_acc_at_latency``); a baseline faster than all of ours' points is outside ours' range (no
    extrapolation) unless it is within ``tol`` (the measurement tolerance) of ours' fastest point:
    latencies that close are equal as far as the measurement can tell, so it is compared with that
    point; one slower than all of them is compared with ours' most accurate point (ours is then at
    least as fast). ``verdict``: ``ours >=`` when ours is at least as accurate, ``within
    noise`` when it is less accurate by at most 2 standard errors of the difference of the means,
    else ``baseline better``. For FLOPs vs latency regulariser: the measured latency ours needs to
    reach each FLOPs-regularised point's accuracy on ours' running-best curve (ratio < 1: the latency
    regulariser is faster at equal accuracy).
    """
    mine = sorted(
        (s for s in summaries if s["model"] == model and s["method"] == "ours" and "accuracy" in s),
        key=lambda s: s["measured_ms"]["mean"],
    )
    lat = [s["measured_ms"]["mean"] for s in mine]
    acc = [s["accuracy"]["mean"] for s in mine]
    sd = [s["accuracy"]["std"] / max(1, s["accuracy"]["n"]) ** 0.5 for s in mine]  # standard errors
    equal_latency = []
    for b in summaries:
        if b["model"] != model or b["method"] not in BASELINES or "accuracy" not in b or not mine:
            continue
        lb, ab = b["measured_ms"]["mean"], b["accuracy"]["mean"]
        se_b = b["accuracy"]["std"] / max(1, b["accuracy"]["n"]) ** 0.5
        row = {
            "method": b["method"],
            "fraction": b["fraction"],
            "baseline_measured_ms": lb,
            "baseline_accuracy": ab,
        }
        if lb < lat[0] * (1.0 - tol):
            row["verdict"] = "outside ours' latency range (baseline faster than every ours point)"
            equal_latency.append(row)
            continue
        if lb < lat[0]:  # within the measurement tolerance of ours' fastest point: equal latency
            ours, se_o = acc[0], sd[0]
            row["equal_within_tolerance"] = True
        elif lb > lat[-1]:
            i = max(range(len(mine)), key=lambda k: acc[k])
            ours, se_o = acc[i], sd[i]
        else:
            ours = _interp(lb, lat, acc)
            j = min(range(len(mine)), key=lambda k: abs(lat[k] - lb))
            se_o = sd[j]
        diff = ours - ab
        se = (se_o**2 + se_b**2) ** 0.5
        verdict = "ours >=" if diff >= 0 else ("within noise" if -diff <= 2 * se else "baseline better")
        row |= {"ours_acc_at_latency": ours, "diff": diff, "se_diff": se, "verdict": verdict}
        equal_latency.append(row)
    best = []  # running best accuracy over ours' points by increasing latency
    for a in acc:
        best.append(max(a, best[-1]) if best else a)
    latency_vs_flops = []
    for f in summaries:
        if f["model"] != model or f["method"] not in FLOPS_METHODS or "accuracy" not in f or not mine:
            continue
        lb, ab = f["measured_ms"]["mean"], f["accuracy"]["mean"]
        row = {
            "method": f["method"],
            "fraction": f["fraction"],
            "flops_measured_ms": lb,
            "flops_accuracy": ab,
        }
        if best[0] >= ab:
            row |= {"ours_ms_at_accuracy_at_most": lat[0], "ratio_at_most": lat[0] / lb}
        elif best[-1] < ab:
            row |= {"ours_ms_at_accuracy": None, "note": "ours never reaches this accuracy"}
        else:
            k = next(i for i in range(1, len(best)) if best[i] >= ab)
            ms = lat[k - 1] + (lat[k] - lat[k - 1]) * (ab - best[k - 1]) / (best[k] - best[k - 1])
            row |= {"ours_ms_at_accuracy": ms, "ratio": ms / lb}
        latency_vs_flops.append(row)
    return {
        "model": model,
        "ours_curve": [
            {"fraction": s["fraction"], "measured_ms": m, "accuracy": a} for s, m, a in zip(mine, lat, acc)
        ],
        "equal_measured_latency": equal_latency,
        "latency_vs_flops_at_equal_accuracy": latency_vs_flops,
    }


def rescaled_rows(extra: dict, doc: dict) -> list[dict]:
    """``extra``'s rows put on ``doc``'s latency scale, for one comparison over two runs.

    Every model is timed paired with its dense model, so a run's measured latencies are its dense
    latency x the median per-round ratio; two runs of the same dense model (same seed) differ only in
    the dense latency the machine gave at the time. Each extra row keeps its ratio to dense and its own
    figures (``measured_own_run``, ``budget_ms_own_run``) and takes ``doc``'s dense latency.
    """
    dense = {r["model"]: r["dense_measured"]["median_ms"] for r in doc["rows"] if "dense_measured" in r}
    out = []
    for r in extra["rows"]:
        if r["model"] not in dense:
            continue
        if "measured" not in r:  # an error (a seed that could not meet its budget) is a result too
            out.append(r | {"from_run": extra["args"].get("out")})
            continue
        ms = dense[r["model"]] * r["measured"]["ratio_to_dense"]
        budget = dense[r["model"]] * r["fraction"]
        out.append(
            r | {
                "measured": r["measured"] | {"median_ms": ms}, "measured_own_run": r["measured"],
                "budget_ms": budget, "budget_ms_own_run": r["budget_ms"], "from_run": extra["args"].get("out"),
                "measured_vs_budget": ms / budget,
            }
        )  # fmt: skip
    return out


def recompare(path: Path, merge: Sequence[Path] = ()) -> None:
    """Rewrite ``summary`` and ``comparison`` of a stored run from its ``rows`` (its own tolerance),
    with the rows of the ``merge`` runs added on its latency scale (:func:`rescaled_rows`)."""
    doc = json.loads(path.read_text())
    doc["rows"] = [r for r in doc["rows"] if "from_run" not in r]  # a re-merge replaces earlier ones
    for extra in merge:
        doc["rows"].extend(rescaled_rows(json.loads(extra.read_text()), doc))
    doc["merged"] = [str(m.name) for m in merge]
    summaries: list[dict] = []
    comparisons = []
    for model in dict.fromkeys(r["model"] for r in doc["rows"]):
        summaries.extend(summarise([r for r in doc["rows"] if r["model"] == model]))
        comparisons.append(compare(model, summaries, tol=doc["args"].get("tolerance", 0.0)))
    doc["summary"], doc["comparison"] = summaries, comparisons
    atomic_write_json(path, doc)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mobilenetv3_small,resnet_small")
    p.add_argument("--fractions", default="0.7,0.5,0.35")
    p.add_argument(
        "--ours-fractions", default="",
        help="more budgets (fractions of the dense latency) at which only ours runs, so that its curve "
        "spans the latencies the baselines land on (they often stop well under their budget)",
    )  # fmt: skip
    p.add_argument(
        "--methods", default="ours,flops_reg,flops_fit,uniform,uniform_r8,tp_magnitude,tp_magnitude_r8"
    )
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument(
        "--data", choices=("digits", "digits_hard"), default="digits",
        help="digits: the upsampled digits (450 validation images); digits_hard: distorted digits with "
        "distractors (2 training / 8 validation copies per image), where a net's width shows in accuracy",
    )  # fmt: skip
    p.add_argument("--pretrain-epochs", type=int, default=10)
    add_pretrain_schedule_arg(p)
    # 2 penalised + 4 fine-tune epochs: chosen on a tuning split carved from the training data
    # (benchmarks/compress_schedule_tuning.py), never on the validation split reported here
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--finetune-epochs", type=int, default=4)
    # gate learning rate 0.002 (CompressConfig's default is 0.05): chosen the same way, over three
    # fit/tune partitions (compress_schedule_tuning.py --gate-lrs 0.05,0.01,0.002 --partitions ...)
    p.add_argument(
        "--gate-lr", type=float, default=0.002, help="gates' learning rate for ours and flops_reg"
    )  # fmt: skip
    p.add_argument(
        "--unit-importance", choices=IMPORTANCE_KINDS, default="magnitude",
        help="CompressConfig.unit_importance of ours and flops_reg",
    )  # fmt: skip
    p.add_argument(
        "--allocation", choices=ALLOCATIONS, default=CompressConfig.allocation,
        help="CompressConfig.allocation of ours and flops_reg (how the width fit weighs groups)",
    )  # fmt: skip
    p.add_argument("--points-per-context", type=int, default=120)
    p.add_argument("--rounds", type=int, default=9, help="interleaved measurement rounds")
    p.add_argument(
        "--penalised-schedule", choices=("constant", "cosine"), default="constant",
        help="weights' learning rate during the penalised epochs of ours and flops_reg",
    )  # fmt: skip
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--refine", action="store_true", help="adaptive table refinement while profiling")
    p.add_argument("--no-measure-loop", action="store_true", help="ours / flops_reg without measure_fn")
    p.add_argument(
        "--exporter", choices=("torchscript", "dynamo"), default="torchscript",
        help="ONNX exporter for every measured model (torchscript: fast; dynamo: the profiler's default)",
    )  # fmt: skip
    p.add_argument("--measure-steps", type=int, default=4, help="re-fits of the measured loop (every method)")
    p.add_argument(
        "--tolerance", type=float, default=0.02,
        help="the measured loop (every method) accepts a model up to (1 + this) x budget (noise)",
    )  # fmt: skip
    p.add_argument(
        "--margin", type=float, default=0.0,
        help="every method's measured loop aims at (1 - this) x budget (CompressConfig.measure_margin)",
    )  # fmt: skip
    p.add_argument("--seeds", default="0,1,2", help="training seeds (compression runs / fine-tunes)")
    p.add_argument(
        "--quick", action="store_true", help="iteration mode: one budget, one seed, short training"
    )
    p.add_argument("--out", default=None, help="default compress_vs_baselines[_quick].json")
    p.add_argument(
        "--recompare", metavar="JSON", default=None,
        help="recompute summary and comparison of a stored run from its rows (no training or timing)",
    )  # fmt: skip
    p.add_argument(
        "--merge", default="",
        help="with --recompare: comma-separated runs whose rows join the comparison, rescaled by dense ratio",
    )  # fmt: skip
    args = p.parse_args()
    if args.recompare:
        recompare(Path(args.recompare), [Path(m) for m in args.merge.split(",") if m])
        return
    if args.quick:
        args.fractions, args.seeds, args.rounds = "0.5", "0", min(args.rounds, 3)
        args.pretrain_epochs, args.epochs, args.finetune_epochs = 3, 2, 1
    if args.out is None:
        stem = "compress_vs_baselines" + ("_hard" if args.data == "digits_hard" else "")
        args.out = f"{stem}_quick.json" if args.quick else f"{stem}.json"
    torch.set_num_threads(1)
    target = get_target("ort-cpu", threads=1)
    meter = Meter(target, args.rounds, args.exporter)
    loaders = digits_hard_loaders if args.data == "digits_hard" else digits_loaders
    train, val = loaders(image_size=args.image_size)
    rows: list[dict] = []
    summaries: list[dict] = []
    comparisons: list[dict] = []
    seeds = [int(x) for x in args.seeds.split(",")]
    t0 = time.perf_counter()

    def write() -> None:
        doc = {"benchmark": "compress_vs_baselines", "args": vars(args), "target": target.info().to_dict(),
               "seconds": time.perf_counter() - t0, "summary": summaries, "comparison": comparisons,
               "rows": rows, "dense_timeline": meter.timeline}  # fmt: skip
        atomic_write_json(OUT / args.out, doc)

    for name in args.models.split(","):
        torch.manual_seed(0)
        model, example = MODEL_ZOO[name](image_size=args.image_size, **MODEL_KWARGS.get(name, {}))
        dense_acc = train_classifier(
            model, train, val, epochs=args.pretrain_epochs, lr=args.lr, schedule=args.pretrain_schedule
        )
        ops = extract_layer_ops(model, example, fusion=target.fusion)
        table = benchmark_table(
            target, ops, name, args.image_size, points_per_context=args.points_per_context, refine=args.refine
        )
        dense_sess = meter.session(model, example)
        dense_meas = meter.interleaved({"dense": dense_sess})["dense"]
        dense_pred = predicted(table, target, model, example)
        measure_fn = meter.relative_fn(dense_sess, dense_meas["median_ms"])
        total_epochs = args.epochs + args.finetune_epochs
        smalls: dict[str, nn.Module] = {}
        model_rows = []
        for frac, methods in budget_plan(args.fractions, args.ours_fractions, args.methods):
            budget = frac * dense_meas["median_ms"]  # measured scale: the result must meet it (x 1.10)

            def fits_at(tb: float, table=table, example=example):
                return fits_table(table, target, example, tb)

            for method in methods:
                t = time.perf_counter()
                base = {"model": name, "fraction": frac, "method": method, "budget_ms": budget}
                common = {"dense_accuracy": dense_acc, "dense_predicted_ms": dense_pred}
                try:
                    if method in ("ours", "flops_reg"):
                        reg = Regularizer.LATENCY if method == "ours" else Regularizer.FLOPS
                        for seed in seeds:
                            t = time.perf_counter()
                            cfg = CompressConfig(
                                budget_ms=budget, regularizer=reg, epochs=args.epochs,
                                finetune_epochs=args.finetune_epochs, lr=args.lr, seed=seed,
                                gate_lr=args.gate_lr, measure_steps=args.measure_steps, measure_tolerance=args.tolerance,
                                unit_importance=args.unit_importance, allocation=args.allocation,
                                penalised_schedule=args.penalised_schedule, measure_margin=args.margin,
                            )  # fmt: skip
                            try:
                                res = compress(
                                    model, example, cfg, table=table, train_loader=train, val_loader=val,
                                    measure_fn=None if args.no_measure_loop else measure_fn,
                                )  # fmt: skip
                            except BudgetError as exc:  # this seed's error is a result; the others still run
                                row = base | {"seed": seed, "error": f"BudgetError: {exc}"} | common
                                model_rows.append(row)
                                print(json.dumps(row), flush=True)
                                continue
                            small = res.model
                            row = (
                                base
                                | {
                                    "seed": seed,
                                    "accuracy": res.report.accuracy,
                                    "loop_measured_ms": res.report.measured_ms,
                                    "internal_budget_ms": res.report.internal_budget_ms,
                                    "calibration": res.report.calibration,
                                    "measure_rounds": res.report.measure_rounds,
                                    "masked_accuracy": res.report.masked_accuracy,
                                    "widths_requested": res.report.widths_requested,
                                    "widths_after": res.report.widths_after,
                                    "predicted_ms": predicted(table, target, small, example),
                                    "params": sum(q.numel() for q in small.parameters()),
                                    "layer_widths": layer_widths(small),
                                    "seconds": time.perf_counter() - t,
                                }
                                | common
                            )
                            smalls[_key(row)] = small
                            model_rows.append(row)
                            print(json.dumps({k: v for k, v in row.items() if k not in NOISY}), flush=True)
                    else:
                        if method in ("uniform", "uniform_r8"):
                            rt = 8 if method.endswith("r8") else None

                            def make_at(tb, rt=rt, m=model, x=example):
                                return bisect_ratio(lambda r: uniform_model(m, x, 1 - r, rt), fits_at(tb))[1]
                        elif method == "latency_fit":

                            def make_at(tb, m=model, x=example, t=table):
                                return fitted_structure(m, x, t, train, val, budget_ms=tb)
                        elif method == "flops_fit":

                            def make_at(tb, m=model, x=example, t=table):
                                return flops_fit_at_budget(m, x, t, target, tb, train, val)
                        else:
                            rt = 8 if method.endswith("r8") else None

                            def make_at(tb, rt=rt, m=model, x=example, t=table):
                                return tp_at_budget(m, x, t, target, tb, rt)

                        if args.no_measure_loop:
                            pruned, internal, loop_rounds = make_at(budget), budget, []
                        else:
                            pruned, internal, loop_rounds = closed_loop(
                                make_at, lambda m, x=example, t=table: predicted(t, target, m, x),
                                lambda mod, x=example, f=measure_fn: f(mod, x), budget * (1 - args.margin),
                                steps=args.measure_steps, tol=args.tolerance,
                            )  # fmt: skip
                        search_s = time.perf_counter() - t
                        for seed in seeds:  # one structure (seed-free), fine-tuned once per seed
                            t = time.perf_counter()
                            small = copy.deepcopy(pruned)
                            acc = train_classifier(  # the same cosine fine-tune as compress's
                                small,
                                train,
                                val,
                                epochs=total_epochs,
                                lr=args.lr,
                                seed=seed,
                                schedule="cosine",
                            )
                            row = (
                                base
                                | {
                                    "seed": seed,
                                    "accuracy": acc,
                                    "internal_budget_ms": internal,
                                    "measure_rounds": loop_rounds,
                                    "predicted_ms": predicted(table, target, small, example),
                                    "params": sum(q.numel() for q in small.parameters()),
                                    "layer_widths": layer_widths(small),
                                    "seconds": time.perf_counter() - t + search_s / len(seeds),
                                }
                                | common
                            )
                            smalls[_key(row)] = small
                            model_rows.append(row)
                            print(json.dumps({k: v for k, v in row.items() if k not in NOISY}), flush=True)
                except Exception as exc:  # a baseline that cannot reach the budget is a result too
                    row = base | {"error": f"{type(exc).__name__}: {exc}"} | common
                    model_rows.append(row)
                    print(json.dumps(row), flush=True)
        # every result of this network measured side by side, interleaved with the dense model
        sessions = {"dense": dense_sess} | {k: meter.session(m, example) for k, m in smalls.items()}
        for sess in sessions.values():
            target.time_session(sess, meter.timing)  # warm every session once
        meas = meter.paired(sessions, dense_sess, dense_meas["median_ms"])
        for row in model_rows:
            key = _key(row)
            row["dense_measured"] = meas["dense"]
            if key in meas:
                row["measured"] = meas[key]
                row["measured_vs_budget"] = meas[key]["median_ms"] / row["budget_ms"]
                row["adheres_1_10"] = row["measured_vs_budget"] <= 1.10
            print(json.dumps({k: row.get(k) for k in ("model", "fraction", "method", "accuracy", "predicted_ms",
                                                      "measured_vs_budget")}), flush=True)  # fmt: skip
        rows.extend(model_rows)
        summaries.extend(summarise(model_rows))
        comparisons.append(compare(name, summaries, tol=args.tolerance))
        write()


if __name__ == "__main__":
    main()
