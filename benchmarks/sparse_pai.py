"""Acceptance 3: pruning at initialisation on digits (LeNet-300-100 accuracy; collapse scan on three nets).

Part A (accuracy, 50-99% sparsity): random, magnitude, SNIP (one-shot), GraSP (one-shot, reference
sign convention), SynFlow (100 iterative rounds, data-free), each trained with the mask fixed; plus
the sanity check of Frankle et al.: the same masks shuffled within each layer, trained from the same
initial weights.
Part B (layer collapse): for SNIP (one-shot), global magnitude and SynFlow (iterative), the largest
compression 10^x (x in steps of 0.125) at which no layer has lost every weight, on LeNet-300-100,
LeNet-5 and a 6-layer MLP.

    .venv/bin/python benchmarks/sparse_pai.py --quick     # 3 seeds, 8 epochs, 4 sparsities
    .venv/bin/python benchmarks/sparse_pai.py             # 3 seeds, 20 epochs, 6 sparsities
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sparse_common import summary

from edgetrim.compress.sparse.config import SparsifyConfig
from edgetrim.compress.sparse.methods import shuffle_masks, sparsify
from edgetrim.examples.data import digits_loaders
from edgetrim.examples.models import lenet5, lenet_300_100, mlp
from edgetrim.io_utils import atomic_write_json

CRITERIA = {
    "random": {"criterion": "random"},
    "magnitude": {"criterion": "magnitude"},
    "snip": {"criterion": "snip"},
    "grasp": {"criterion": "grasp"},
    "synflow": {"criterion": "synflow", "pai_rounds": 100},
    # the same two criteria with ERK layer ratios: global magnitude at init collapses high-fan-in layers
    "random_erk": {"criterion": "random", "allocation": "erk"},
    "magnitude_erk": {"criterion": "magnitude", "allocation": "erk"},
}


def masks_at_init(factory, seed: int, sp: float, kw: dict, train, ex) -> dict:
    torch.manual_seed(seed)
    model, _ = factory()
    cfg = SparsifyConfig(method="pai", sparsity=sp, epochs=0, seed=seed, **kw)
    return sparsify(model, cfg, train_loader=train, val_loader=None, example_inputs=ex)


def part_a(args, seeds: int, epochs: int, sparsities: list[float], only: list[str], out: dict) -> dict:
    for sp in sparsities:
        cell = out.setdefault(str(sp), {})
        for name, kw in CRITERIA.items():
            if name not in only:
                continue
            accs, shuffled, collapsed = [], [], 0
            for seed in range(seeds):
                train, val = digits_loaders(flat=True, batch_size=64, seed=seed)
                torch.manual_seed(seed)
                _, ex = lenet_300_100()
                rep = masks_at_init(lenet_300_100, seed, sp, kw, train, ex)
                collapsed += bool(rep.collapsed)
                variants = [("mask", rep.masks)]
                if name in ("snip", "grasp", "synflow"):
                    variants.append(
                        ("shuffled", shuffle_masks(rep.masks, generator=torch.Generator().manual_seed(seed)))
                    )
                for label, masks in variants:
                    torch.manual_seed(seed)
                    model, _ = lenet_300_100()
                    cfg = SparsifyConfig(
                        method="static", sparsity=sp, epochs=epochs, lr=args.lr, seed=seed, collapse="warn"
                    )
                    r = sparsify(model, cfg, train_loader=train, val_loader=val, initial_masks=masks)
                    (accs if label == "mask" else shuffled).append(r.accuracy)
            cell[name] = {"accuracy": summary(accs), "runs_with_collapse": collapsed}
            if shuffled:
                cell[name]["shuffled_accuracy"] = summary(shuffled)
            extra = f" shuffled {statistics.fmean(shuffled):.4f}" if shuffled else ""
            print(f"A s={sp} {name:<9} acc {statistics.fmean(accs):.4f}{extra}", flush=True)
    return out


def part_b() -> dict:
    nets = {
        "lenet_300_100": (lenet_300_100, True),
        "lenet5": (lenet5, False),
        "mlp6": (lambda: mlp(widths=(100, 100, 100, 100, 100)), True),
    }
    xs = [0.5 + 0.125 * i for i in range(29)]  # compression 10^0.5 .. 10^4
    out: dict = {}
    for net, (factory, flat) in nets.items():
        train, _ = digits_loaders(flat=flat, batch_size=64, seed=0)
        torch.manual_seed(0)
        _, ex = factory()
        out[net] = {}
        for name, kw in (
            ("snip", {"criterion": "snip"}),
            ("magnitude", {"criterion": "magnitude"}),
            ("synflow", {"criterion": "synflow", "pai_rounds": 100}),
            ("synflow_zero_bias", {"criterion": "synflow", "pai_rounds": 100, "synflow_zero_bias": True}),
        ):
            best, first_collapse = None, None
            for x in xs:
                sp = 1 - 10 ** (-x)
                rep = masks_at_init(factory, 0, sp, kw, train, ex)
                if rep.total_nnz < 1 or rep.collapsed:
                    first_collapse = {"log10_compression": x, "layers": rep.collapsed}
                    break
                best = x
            out[net][name] = {
                "max_log10_compression_without_collapse": best,
                "first_collapse": first_collapse,
            }
            print(f"B {net} {name:<9} max compression 10^{best}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sparse_pai.json"))
    ap.add_argument("--only", default=",".join(CRITERIA), help="criteria of part A to run")
    ap.add_argument("--merge", action="store_true", help="add to an existing result file (part B kept)")
    ap.add_argument("--collapse-only", action="store_true", help="with --merge: recompute only part B")
    args = ap.parse_args()
    epochs = args.epochs or (8 if args.quick else 20)
    sparsities = [0.5, 0.9, 0.98, 0.99] if args.quick else [0.5, 0.8, 0.9, 0.95, 0.98, 0.99]
    torch.set_num_threads(1)
    t0 = time.time()
    prev = json.loads(Path(args.out).read_text()) if args.merge and Path(args.out).exists() else None
    collapse = prev["collapse"] if prev and not args.collapse_only else part_b()
    only = [] if args.collapse_only else args.only.split(",")
    acc = part_a(args, args.seeds, epochs, sparsities, only, prev["accuracy"] if prev else {})
    hi = [str(s) for s in sparsities if s >= 0.9]
    checks = {
        "magnitude_ge_random_at_high_sparsity": {
            s: {
                alloc: acc[s][f"magnitude{sfx}"]["accuracy"]["mean"]
                >= acc[s][f"random{sfx}"]["accuracy"]["mean"]
                for alloc, sfx in (("global", ""), ("erk", "_erk"))
                if f"magnitude{sfx}" in acc[s] and f"random{sfx}" in acc[s]
            }
            for s in hi
        },
        "synflow_compresses_further_than_snip_before_collapse": {
            net: (v["synflow"]["max_log10_compression_without_collapse"] or 0)
            > (v["snip"]["max_log10_compression_without_collapse"] or 0)
            for net, v in collapse.items()
        },
        "shuffle_change_mean_abs": {
            s: {
                c: acc[s][c]["accuracy"]["mean"] - acc[s][c]["shuffled_accuracy"]["mean"]
                for c in ("snip", "grasp", "synflow")
                if c in acc[s]
            }
            for s in map(str, sparsities)
        },
    }
    out = {
        "benchmark": "sparse_pai",
        "quick": args.quick,
        "seeds": args.seeds,
        "epochs": epochs,
        "lr": args.lr,
        "model_part_a": "lenet_300_100 on digits_flat",
        "accuracy": acc,
        "collapse": collapse,
        "checks": checks,
        "elapsed_s": time.time() - t0,
        "machine": "shared 2-core x86, torch CPU, 1 thread",
    }
    atomic_write_json(args.out, out)
    print(json.dumps(checks, indent=1))


if __name__ == "__main__":
    main()
