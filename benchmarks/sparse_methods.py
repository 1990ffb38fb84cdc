"""Acceptance 2: GMP, GraNet(0), GraNet(0.5), RigL, SET and static on digits (LeNet-5, LeNet-300-100).

Every method runs through ``edgetrim.compress.sparse.sparsify`` with the same schedule: SGD (Nesterov,
momentum 0.9, wd 5e-4), LR x0.1 at 50% and 75% of training, mask updates every half epoch, gradual
pruning from t0 = 0 to tf = the first LR decay. Methods that start from a random sparse mask (GraNet
0.5, RigL, SET, static) rescale it by 1/sqrt(layer density) (``sparse_init_rescale``; without it the
2%-dense, BN-free LeNet-5 does not train at all from a random mask).

    .venv/bin/python benchmarks/sparse_methods.py --quick      # 3 seeds, 15 epochs
    .venv/bin/python benchmarks/sparse_methods.py              # 5 seeds, 30 epochs

Writes benchmarks/results/sparse_methods.json: mean, std, min, max of validation accuracy per model,
sparsity and method, plus the paper's expected orderings checked on the means.
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
from edgetrim.compress.sparse.methods import sparsify
from edgetrim.examples.data import digits_loaders
from edgetrim.examples.models import lenet5, lenet_300_100
from edgetrim.io_utils import atomic_write_json

METHODS = {
    "gmp": {"method": "gmp"},
    "granet_0": {"method": "granet"},
    "granet_0.5": {"method": "granet", "init_sparsity": 0.5, "sparse_init_rescale": True},
    "rigl": {"method": "rigl", "sparse_init_rescale": True},
    "set": {"method": "set", "sparse_init_rescale": True},
    "static": {"method": "static", "sparse_init_rescale": True},
}
MODELS = {"lenet5": (lenet5, False), "lenet_300_100": (lenet_300_100, True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--sparsities", default="0.9,0.95,0.98")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--update-every", type=int, default=None, help="Δt in iterations (default: half an epoch)"
    )
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sparse_methods.json"))
    args = ap.parse_args()
    seeds = args.seeds or (3 if args.quick else 5)
    epochs = args.epochs or (15 if args.quick else 30)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    torch.set_num_threads(1)
    t_start = time.time()
    results: dict = {}
    for mname in args.models.split(","):
        factory, flat = MODELS[mname]
        for sp in sparsities:
            cell = results.setdefault(mname, {}).setdefault(str(sp), {})
            for meth, kw in METHODS.items():
                if meth not in args.methods.split(","):
                    continue
                accs, flops = [], []
                for seed in range(seeds):
                    train, val = digits_loaders(flat=flat, batch_size=args.batch_size, seed=seed)
                    torch.manual_seed(seed)
                    model, _ = factory()
                    cfg = SparsifyConfig(
                        sparsity=sp,
                        epochs=epochs,
                        lr=args.lr,
                        seed=seed,
                        update_every=args.update_every,
                        **kw,
                    )
                    rep = sparsify(model, cfg, train_loader=train, val_loader=val)
                    accs.append(rep.accuracy)
                    flops.append(rep.cost["train_flops"])
                cell[meth] = {"accuracy": summary(accs), "train_flops_mean": statistics.fmean(flops)}
                print(
                    f"{mname} s={sp} {meth:<11} acc {statistics.fmean(accs):.4f} ± {cell[meth]['accuracy']['std']:.4f}",
                    flush=True,
                )
    checks = {}
    ran = [m for m in METHODS if m in args.methods.split(",")]
    pairs = {
        "granet_0_ge_gmp": ("granet_0", "gmp"),
        "granet_0.5_ge_rigl": ("granet_0.5", "rigl"),
        "rigl_ge_set": ("rigl", "set"),
    }
    for sp in map(str, sparsities):
        mean = {m: statistics.fmean(results[mn][sp][m]["accuracy"]["mean"] for mn in results) for m in ran}
        checks[sp] = {"mean_over_models": mean}
        for key, (a, b) in pairs.items():
            if a in mean and b in mean:
                checks[sp][key] = mean[a] >= mean[b]
        if "static" in mean:
            checks[sp]["all_above_static"] = all(mean[m] > mean["static"] for m in ran if m != "static")
    out = {
        "benchmark": "sparse_methods",
        "quick": args.quick,
        "seeds": seeds,
        "epochs": epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "update_every": args.update_every or "half an epoch",
        "data": "sklearn digits, 25% stratified validation split per seed",
        "metric": "validation accuracy at the end of training",
        "results": results,
        "checks": checks,
        "elapsed_s": time.time() - t_start,
        "machine": "shared 2-core x86, torch CPU, 1 thread",
    }
    atomic_write_json(args.out, out)
    print(json.dumps(checks, indent=1))


if __name__ == "__main__":
    main()
