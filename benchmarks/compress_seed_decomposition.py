"""Where a gap of the side-by-side benchmark comes from: the structure or the recipe, with more seeds.

benchmarks/compress_vs_baselines.py compares methods over 3 seeds; on a converged net the gaps it
finds are as small as one seed's spread. This script takes one network of a stored run (``--from``),
rebuilds its dense model exactly as that run did (same init, data and pre-training; the dense accuracy
is checked against the stored one), and, for every budget of the run, trains with more seeds:

* ``ours``: ``compress`` with the run's recipe (penalised + fine-tune epochs, gate learning rate) at
  the internal budget the run's measured loop settled on (predicted scale, no device timing);
* ``ours_structure``: the widths that run chose, cut from the dense model by the same unit scores
  (dense weights, gates at 1) and fine-tuned as the baselines are (one cosine run of all the epochs):
  ours' structure without ours' recipe;
* ``flops_reg``: ``compress`` with the FLOPs regulariser, otherwise as ``ours`` (the run's FLOPs
  regulariser internal budget);
* ``tp_magnitude`` / ``tp_magnitude_r8``: Torch-Pruning magnitude pruning at the ratio that rebuilds
  the stored run's structure (same parameter count), the same fine-tune;
* ``fit`` / ``fit_cost_prior`` / ``fit_sqrt_cost_prior``: the final width fit run on the dense model
  (its magnitudes, no penalised epoch) at ours' internal budget, with no group prior, with every group
  weighted by its dense cost (the per-op latency of the layers its width changes: a share of a group
  is worth what it costs, so all groups are cut by about the same share, as a uniform multiplier
  aligned on the staircase), or by its square root (``widths.fit_budget``'s ``weights``); cut and
  fine-tuned as ``ours_structure``. Which allocation prior suits which net.
* ``fit_distortion``: the same fit with groups weighed by their measured output distortion
  (``CompressConfig(allocation="distortion")``: each group alone cut along its widths on training
  batches) instead of the share of their magnitudes.

Every structure is also priced on the run's table (``predicted_ms``). The summary gives mean, std and
standard error per (fraction, method), and per fraction the differences to the FLOPs regulariser and
each Torch-Pruning arm paired by seed (for one seed the arms fine-tuned here see the same batches in
the same order; ours' seed is compress' own). No timing: two processes can share the machine
(``--seeds`` split between them, ``--summarise`` joins their files).

    .venv/bin/python benchmarks/compress_seed_decomposition.py --model resnet_small --seeds 0,1,2,3
        [--from compress_vs_baselines_hard.json]
        [--methods ours,ours_structure,flops_reg,tp_magnitude,tp_magnitude_r8]
        [--out compress_seed_decomposition_resnet_small_a.json]
    .venv/bin/python benchmarks/compress_seed_decomposition.py --summarise A.json,B.json --out C.json

Writes benchmarks/results/<out> (rewritten after every run: an interrupted run keeps what it did).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compress_vs_baselines import MODEL_KWARGS, OUT, benchmark_table, bisect_ratio, predicted, tp_model

from edgetrim.compress.api import _group_label, _importance, compress, model_latency_ms, width_limits
from edgetrim.compress.config import CompressConfig, Regularizer
from edgetrim.compress.gates import ChannelGates
from edgetrim.compress.graph import find_channel_groups
from edgetrim.compress.importance import distortion_importance, magnitude_scores
from edgetrim.compress.latency_model import LatencyModel, bind_layer_terms
from edgetrim.compress.widths import fast_side_widths, fit_widths
from edgetrim.examples.data import digits_hard_loaders, digits_loaders
from edgetrim.examples.models import MODEL_ZOO
from edgetrim.examples.training import train_classifier
from edgetrim.io_utils import atomic_write_json
from edgetrim.model_ops import extract_layer_ops
from edgetrim.profiler.targets import get_target

PRIORS = {"fit": None, "fit_cost_prior": 1.0, "fit_sqrt_cost_prior": 0.5}  # method -> exponent of the cost
METHODS = (
    "ours",
    "ours_structure",
    "flops_reg",
    "tp_magnitude",
    "tp_magnitude_r8",
    *PRIORS,
    "fit_distortion",
)
REFERENCES = ("flops_reg", "tp_magnitude", "tp_magnitude_r8", "ours_structure")


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tp_with_params(model, example, params: int, round_to: int | None) -> tuple[torch.nn.Module, float]:
    """Torch-Pruning magnitude pruning at the smallest ratio whose model has at most ``params``
    parameters (the side-by-side benchmark's bisection, run to convergence); SystemExit when that
    model does not have exactly ``params`` (no ratio up to 0.95 rebuilds the stored structure)."""
    try:
        ratio, pruned = bisect_ratio(
            lambda r: tp_model(model, example, r, round_to), lambda m: n_params(m) <= params, steps=40
        )
    except ValueError:
        pruned = None
    if pruned is None or n_params(pruned) != params:
        raise SystemExit(
            f"no Torch-Pruning ratio rebuilds the stored {params}-parameter model (round_to={round_to})"
        )
    return pruned, ratio


def rebuild_dense(run: dict, name: str):
    """``(model, example, train, val, dense_accuracy)``: the dense net of a stored side-by-side run
    (its ``args``), built and pre-trained exactly as compress_vs_baselines builds it (one thread)."""
    torch.set_num_threads(1)
    loaders = digits_hard_loaders if run["data"] == "digits_hard" else digits_loaders
    train, val = loaders(image_size=run["image_size"])
    torch.manual_seed(0)  # as compress_vs_baselines builds its dense nets
    model, example = MODEL_ZOO[name](image_size=run["image_size"], **MODEL_KWARGS.get(name, {}))
    dense_acc = train_classifier(
        model, train, val, epochs=run["pretrain_epochs"], lr=run["lr"], schedule=run["pretrain_schedule"]
    )
    return model, example, train, val, dense_acc


def summarise(rows: list[dict]) -> dict:
    """Per (fraction, method): mean / std / standard error; per fraction: differences to the
    Torch-Pruning arms paired by seed."""
    acc: dict[tuple[float, str], dict[int, float]] = {}
    for r in rows:
        acc.setdefault((r["fraction"], r["method"]), {})[r["seed"]] = r["accuracy"]
    per_method = []
    for (frac, method), by_seed in sorted(acc.items()):
        xs = list(by_seed.values())
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        per_method.append({"fraction": frac, "method": method, "seeds": len(xs), "mean": statistics.mean(xs),
                           "std": sd, "se": sd / len(xs) ** 0.5})  # fmt: skip
    paired = []
    for frac in sorted({f for f, _ in acc}):
        for method in METHODS:
            for ref in REFERENCES:
                a, b = acc.get((frac, method), {}), acc.get((frac, ref), {})
                common = sorted(set(a) & set(b))
                later_ref = method in REFERENCES and REFERENCES.index(method) > REFERENCES.index(ref)
                if method == ref or later_ref or len(common) < 2:  # each pair of references once
                    continue
                d = [a[s] - b[s] for s in common]
                se = statistics.stdev(d) / len(d) ** 0.5
                paired.append({"fraction": frac, "method": method, "vs": ref, "seeds": len(d),
                               "diff": statistics.mean(d), "se": se})  # fmt: skip
    return {"per_method": per_method, "paired": paired}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--from", dest="source", default="compress_vs_baselines_hard.json", help="a stored side-by-side run"
    )
    p.add_argument("--model", default="resnet_small")
    p.add_argument("--seeds", default="0,1,2,3,4,5,6,7")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument(
        "--penalised-schedule", choices=("constant", "cosine"), default=None,
        help="weights' learning rate in ours' / flops_reg's penalised epochs (default: the stored run's)",
    )  # fmt: skip
    p.add_argument("--summarise", default="", help="join these result files (comma separated) into --out")
    p.add_argument("--out", default=None, help="default compress_seed_decomposition_<model>.json")
    args = p.parse_args()
    out = OUT / (args.out or f"compress_seed_decomposition_{args.model}.json")
    named = args.summarise.split(",") if args.summarise else [args.source]
    missing = [f for f in named if not (OUT / f).is_file()]
    if missing:
        raise SystemExit(f"no result file {', '.join(missing)} under {OUT}; name files written there")
    if args.summarise:
        docs = [json.loads((OUT / f).read_text()) for f in named]
        rows = [r for d in docs for r in d["rows"]]
        atomic_write_json(out, docs[0] | {"parts": named, "rows": rows, "summary": summarise(rows)})
        print(json.dumps(summarise(rows), indent=1))
        return
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown --methods {unknown}; choose from {', '.join(METHODS)}")
    source = json.loads((OUT / args.source).read_text())
    run = source["args"]
    stored = [r for r in source["rows"] if r["model"] == args.model and "accuracy" in r]
    if not stored:
        raise SystemExit(f"{args.source} has no {args.model} results; pick --model from its rows")
    seeds = [int(s) for s in args.seeds.split(",")]
    model, example, train, val, dense_acc = rebuild_dense(run, args.model)
    if abs(dense_acc - stored[0]["dense_accuracy"]) > 1e-9:
        print(
            f"warning: dense accuracy {dense_acc:.4f}, the stored run had {stored[0]['dense_accuracy']:.4f}"
        )
    target = get_target("ort-cpu", threads=1)
    ops = extract_layer_ops(model, example, fusion=target.fusion)
    table = benchmark_table(target, ops, args.model, run["image_size"], reuse=True)
    groups = find_channel_groups(model, example)
    labels = [_group_label(g) for g in groups]
    total_epochs = run["epochs"] + run["finetune_epochs"]
    penalised = args.penalised_schedule or run.get("penalised_schedule", "constant")
    rows: list[dict] = []
    t0 = time.perf_counter()

    def log(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        doc = {"benchmark": "compress_seed_decomposition", "args": vars(args), "source_args": run,
               "dense_accuracy": dense_acc, "seconds": time.perf_counter() - t0, "rows": rows,
               "summary": summarise(rows)}  # fmt: skip
        atomic_write_json(out, doc)

    def fine_tuned(pruned: torch.nn.Module, frac: float, method: str, **extra) -> None:
        for seed in seeds:
            small = copy.deepcopy(pruned)
            acc = train_classifier(
                small, train, val, epochs=total_epochs, lr=run["lr"], seed=seed, schedule="cosine"
            )
            log({"fraction": frac, "method": method, "seed": seed, "accuracy": acc, "params": n_params(small),
                 "predicted_ms": predicted(table, target, small, example)} | extra)  # fmt: skip

    extract = lambda m, x: extract_layer_ops(m, x, fusion=target.fusion)  # noqa: E731
    cost = LatencyModel(
        table, bind_layer_terms(model, example, groups, extract=extract), [g.unit for g in groups]
    )
    sizes, units = [g.size for g in groups], [g.unit for g in groups]
    min_widths, align = width_limits(groups, table)
    dense_pred = model_latency_ms(table, ops)
    offset = dense_pred - cost.whole_ms(sizes)  # as compress prices the budget
    # The stored budgets are on the stored run's table; profiled again (tables are per machine and not
    # kept in git) the table has another scale, so budgets keep their share of the dense prediction.
    scale = dense_pred / stored[0]["dense_predicted_ms"]
    if abs(scale - 1) > 1e-6:
        print(f"this table predicts the dense net at {scale:.3f}x the stored run's: budgets scaled by it")
    dense_group_ms = [sum(cost.term_ms(k, sizes) for k in cost.terms_of_group(g)) for g in range(len(groups))]

    def dense_fit(method: str, budget_ms: float) -> list[int]:
        """The final width fit on the dense model's magnitudes, groups weighed as ``method`` says."""
        gates = ChannelGates(model, groups)
        scores = magnitude_scores(gates, model)
        weights, relative = None, True
        if method == "fit_distortion":
            torch.manual_seed(0)  # the same training batches for every budget
            importance = distortion_importance(gates, model, train, scores, min_widths, align)
            relative = False
        else:
            importance = _importance(scores)
            if PRIORS[method] is not None:
                weights = [c ** PRIORS[method] for c in dense_group_ms]
        gates.detach_hooks()
        start = fast_side_widths(sizes, units, sizes, cost.partial_ms, min_widths=min_widths, align=align)
        return fit_widths(
            start, units, sizes, importance, cost.partial_ms, cost.whole_ms, budget_ms - offset,
            min_widths=min_widths, align=align, relative=relative, weights=weights,
        )  # fmt: skip

    for frac in sorted({r["fraction"] for r in stored}, reverse=True):
        for method in methods:
            kind = "ours" if method == "ours_structure" or method.startswith("fit") else method
            ref = next((r for r in stored if r["method"] == kind and r["fraction"] == frac), None)
            if ref is None:  # e.g. a baseline that found no structure within this budget
                print(f"skipped: {args.source} has no {kind} result at {frac}", flush=True)
                continue
            if method in ("ours", "flops_reg"):
                reg = Regularizer.LATENCY if method == "ours" else Regularizer.FLOPS
                for seed in seeds:
                    cfg = CompressConfig(
                        budget_ms=ref["internal_budget_ms"] * scale, regularizer=reg, epochs=run["epochs"],
                        finetune_epochs=run["finetune_epochs"], lr=run["lr"], seed=seed,
                        gate_lr=run["gate_lr"], unit_importance=run.get("unit_importance", "magnitude"),
                        penalised_schedule=penalised,
                    )  # fmt: skip
                    res = compress(model, example, cfg, table=table, train_loader=train, val_loader=val)
                    small = res.model
                    log({"fraction": frac, "method": method, "seed": seed, "accuracy": res.report.accuracy,
                         "params": n_params(small), "predicted_ms": predicted(table, target, small, example),
                         "widths": res.report.widths_after})  # fmt: skip
            elif method.startswith("fit"):
                widths = dense_fit(method, ref["internal_budget_ms"] * scale)
                gates = ChannelGates(model, groups)
                pruned = gates.materialize(example, widths=widths, scores=magnitude_scores(gates, model))
                gates.detach_hooks()
                fine_tuned(pruned, frac, method, widths=dict(zip(labels, widths)))
            elif method == "ours_structure":
                widths = [ref["widths_after"][label] for label in labels]
                gates = ChannelGates(model, groups)
                pruned = gates.materialize(example, widths=widths, scores=magnitude_scores(gates, model))
                gates.detach_hooks()
                fine_tuned(pruned, frac, method, widths=ref["widths_after"])
            else:
                round_to = 8 if method.endswith("r8") else None
                pruned, ratio = tp_with_params(model, example, ref["params"], round_to)
                fine_tuned(pruned, frac, method, ratio=ratio)


if __name__ == "__main__":
    main()
