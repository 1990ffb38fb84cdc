"""Acceptance 5: freezing vs pruning at initialisation (FreezeNet) at 1%, 5% and 20% trainable weights.

Both arms score weights with SNIP at init and keep the same top set trainable; pruning zeroes the
rest, freezing holds them at their initial values. Plus BN-only training (digits CNN with BatchNorm).

    .venv/bin/python benchmarks/sparse_freezing.py --quick   # 3 seeds, 10 epochs
    .venv/bin/python benchmarks/sparse_freezing.py           # 5 seeds, 25 epochs
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
from edgetrim.examples.models import digits_cnn, lenet5, lenet_300_100
from edgetrim.io_utils import atomic_write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sparse_freezing.json"))
    ap.add_argument("--only-bn", action="store_true", help="recompute only BN-only training, keep the rest")
    args = ap.parse_args()
    seeds = args.seeds or (3 if args.quick else 5)
    epochs = args.epochs or (10 if args.quick else 25)
    torch.set_num_threads(1)
    t0 = time.time()
    models = {"lenet_300_100": (lenet_300_100, True), "lenet5": (lenet5, False)}
    prev = json.loads(Path(args.out).read_text()) if args.only_bn and Path(args.out).exists() else None
    results: dict = prev["results"] if prev else {}
    for mname, (factory, flat) in ({} if prev else models).items():
        for trainable in (0.01, 0.05, 0.2):
            cell = results.setdefault(mname, {}).setdefault(str(trainable), {})
            for arm in ("prune", "freeze"):
                accs = []
                for seed in range(seeds):
                    train, val = digits_loaders(flat=flat, batch_size=64, seed=seed)
                    torch.manual_seed(seed)
                    model, _ = factory()
                    cfg = SparsifyConfig(
                        method="pai" if arm == "prune" else "freeze", criterion="snip", sparsity=1 - trainable,
                        epochs=epochs, lr=args.lr, seed=seed, collapse="warn",
                    )  # fmt: skip
                    accs.append(sparsify(model, cfg, train_loader=train, val_loader=val).accuracy)
                cell[arm] = summary(accs)
                print(f"{mname} trainable={trainable} {arm:<6} acc {statistics.fmean(accs):.4f}", flush=True)
    bn = []
    for seed in range(seeds):
        train, val = digits_loaders(batch_size=64, seed=seed)
        torch.manual_seed(seed)
        model, _ = digits_cnn()
        cfg = SparsifyConfig(
            method="bn_only",
            sparsity=0.0,
            epochs=epochs,
            optimizer="adam",
            lr=0.02,
            seed=seed,
            weight_decay=0.0,
        )  # BN affine parameters need a larger step than SGD at 0.05 gives them
        bn.append(sparsify(model, cfg, train_loader=train, val_loader=val).accuracy)
    print(f"bn_only digits_cnn acc {statistics.fmean(bn):.4f}", flush=True)
    checks = {
        m: {
            "freeze_beats_prune_at_1pct": r["0.01"]["freeze"]["mean"] > r["0.01"]["prune"]["mean"],
            "prune_ge_freeze_at_20pct": r["0.2"]["prune"]["mean"] >= r["0.2"]["freeze"]["mean"],
        }
        for m, r in results.items()
    }
    checks["bn_only_far_above_chance"] = statistics.fmean(bn) > 0.3
    out = {
        "benchmark": "sparse_freezing",
        "quick": args.quick,
        "seeds": seeds,
        "epochs": epochs,
        "lr": args.lr,
        "criterion": "snip at init (one batch of 64)",
        "bn_only_optimizer": "adam lr 0.02, no weight decay",
        "results": results,
        "bn_only_digits_cnn": summary(bn),
        "checks": checks,
        "elapsed_s": time.time() - t0,
        "machine": "shared 2-core x86, torch CPU, 1 thread",
    }
    atomic_write_json(args.out, out)
    print(json.dumps(checks, indent=1))


if __name__ == "__main__":
    main()
