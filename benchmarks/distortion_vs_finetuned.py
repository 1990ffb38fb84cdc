"""Does a cut net's output distortion say how it will score after fine-tuning?

The width fit's ``allocation="distortion"`` ranks cuts by how far they move the dense model's class
distribution on training batches, before any fine-tuning. This script checks that premise on whole
structures: it takes the structures of an eight-seed decomposition
(``benchmarks/compress_seed_decomposition.py``: ours' structure, the width fits with and without group
priors, Torch-Pruning magnitude with and without rounding, each cut from the dense net and fine-tuned
with eight seeds), rebuilds the
dense net exactly as that run did, cuts it to each structure (dense weights, no fine-tuning) and
measures the mean KL divergence of the cut net's class distribution from the dense net's on eight
training batches, with the stored batch-norm statistics (``kl_stored``) and with every batch norm on
each batch's own statistics (``kl_batch_stats``, what ``allocation="distortion_bn"`` measures). Per
budget and measurement, ``pairs`` counts the pairs of structures whose fine-tuned means differ by more
than two standard errors and how many of them the measurement orders the same way (lower distortion,
higher accuracy). No timing.

    .venv/bin/python benchmarks/distortion_vs_finetuned.py --model resnet_small
        [--from compress_seed_decomposition_resnet_small_with_priors.json] [--out ...]

Writes benchmarks/results/distortion_vs_finetuned_<model>.json.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compress_seed_decomposition import rebuild_dense, tp_with_params
from compress_vs_baselines import OUT

from edgetrim.compress.api import _group_label
from edgetrim.compress.gates import ChannelGates
from edgetrim.compress.graph import find_channel_groups
from edgetrim.compress.importance import batch_statistics, magnitude_scores
from edgetrim.io_utils import atomic_write_json

MEASURES = ("kl_stored", "kl_batch_stats")
RECIPES = ("ours", "flops_reg")  # the structures these arms reached are fine-tuned as ours_structure


@torch.no_grad()
def class_log_probs(model: nn.Module, inputs: list[torch.Tensor], batch_stats: bool) -> list[torch.Tensor]:
    """Log class probabilities per batch in eval mode, batch norms on the batch's statistics if asked
    (running statistics untouched: the model is a throwaway copy)."""
    model = copy.deepcopy(model).eval()
    with batch_statistics(model, batch_stats):
        return [torch.log_softmax(model(x).float(), -1) for x in inputs]


def mean_kl(ref: list[torch.Tensor], out: list[torch.Tensor]) -> float:
    total = sum(float((r.exp() * (r - o)).sum()) for r, o in zip(ref, out))
    return total / sum(r.shape[0] for r in ref)


def pair_agreement(rows: list[dict], measure: str) -> dict:
    """Pairs of distinct structures whose fine-tuned accuracies differ by more than 2 standard errors,
    and how many of them ``measure`` orders the same way (lower distortion, higher accuracy)."""
    pairs = agree = 0
    distinct = {(r["params"], r["kl_stored"]): r for r in rows}.values()  # a structure under two names once
    for a, b in itertools.combinations(distinct, 2):
        if abs(a["accuracy"] - b["accuracy"]) <= 2 * (a["se"] ** 2 + b["se"] ** 2) ** 0.5:
            continue
        pairs += 1
        better, worse = (a, b) if a["accuracy"] > b["accuracy"] else (b, a)
        agree += better[measure] < worse[measure]
    return {"pairs": pairs, "agree": agree}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet_small")
    p.add_argument("--from", dest="source", default=None, help="an eight-seed decomposition result")
    p.add_argument("--out", default=None, help="default distortion_vs_finetuned_<model>.json")
    args = p.parse_args()
    source = args.source or f"compress_seed_decomposition_{args.model}_with_priors.json"
    if not (OUT / source).is_file():
        raise SystemExit(f"no result file {source} under {OUT}; run compress_seed_decomposition.py first")
    dec = json.loads((OUT / source).read_text())
    run = dec["source_args"]
    model, example, train, _, dense_acc = rebuild_dense(run, args.model)
    if abs(dense_acc - dec["dense_accuracy"]) > 1e-9:
        raise SystemExit(f"dense accuracy {dense_acc:.4f}, the decomposition had {dec['dense_accuracy']:.4f}")
    groups = find_channel_groups(model, example)
    labels = [_group_label(g) for g in groups]
    torch.manual_seed(0)
    inputs = [xb for xb, _ in itertools.islice(train, 8)]
    refs = {bs: class_log_probs(model, inputs, bs) for bs in (False, True)}

    accs: dict[tuple[float, str], list[float]] = {}
    first: dict[tuple[float, str], dict] = {}
    for r in dec["rows"]:
        accs.setdefault((r["fraction"], r["method"]), []).append(r["accuracy"])
        first.setdefault((r["fraction"], r["method"]), r)
    rows: list[dict] = []
    for (frac, method), r in sorted(first.items(), reverse=True):
        if method in RECIPES:  # their accuracy is the whole recipe's, not the structure's
            continue
        if r.get("widths"):
            gates = ChannelGates(model, groups)
            cut = gates.materialize(
                example, widths=[r["widths"][k] for k in labels], scores=magnitude_scores(gates, model)
            )
            gates.detach_hooks()
        elif method.startswith("tp_magnitude"):
            cut, _ = tp_with_params(model, example, r["params"], 8 if method.endswith("r8") else None)
        else:
            continue
        xs = accs[(frac, method)]
        row = {"fraction": frac, "method": method, "params": r["params"], "accuracy": statistics.mean(xs),
               "se": statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else 0.0,
               "kl_stored": mean_kl(refs[False], class_log_probs(cut, inputs, False)),
               "kl_batch_stats": mean_kl(refs[True], class_log_probs(cut, inputs, True))}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    agreement = [
        {"fraction": f, "measure": m} | pair_agreement([r for r in rows if r["fraction"] == f], m)
        for f in sorted({r["fraction"] for r in rows}, reverse=True)
        for m in MEASURES
    ]
    print(json.dumps(agreement, indent=1))
    doc = {"benchmark": "distortion_vs_finetuned", "args": vars(args) | {"source": source},
           "dense_accuracy": dense_acc, "rows": rows, "agreement": agreement}  # fmt: skip
    atomic_write_json(OUT / (args.out or f"distortion_vs_finetuned_{args.model}.json"), doc)


if __name__ == "__main__":
    main()
