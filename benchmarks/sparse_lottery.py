"""Acceptance 4: lottery tickets by iterative magnitude pruning on the digits MLP (LeNet-300-100).

20% of the remaining weights per round for 8 rounds (sparsity 1 - 0.8^8 = 83.2%; 9 trainings), global
magnitude. Rewinding variants: to Θ(0) (Frankle & Carbin), to Θ(k) (late rewinding, k = one epoch),
and learning-rate rewinding (keep the weights, replay the LR schedule). Each ticket is compared with
the *same mask* trained from a random re-initialisation (another seed), the test of the LTH.

    .venv/bin/python benchmarks/sparse_lottery.py --quick    # 3 seeds, 5 epochs per training
    .venv/bin/python benchmarks/sparse_lottery.py            # 5 seeds, 15 epochs per training
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
from edgetrim.compress.sparse.schedules import imp_sparsity_after
from edgetrim.examples.data import digits_loaders
from edgetrim.examples.models import lenet_300_100
from edgetrim.io_utils import atomic_write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sparse_lottery.json"))
    args = ap.parse_args()
    seeds = args.seeds or (3 if args.quick else 5)
    epochs = args.epochs or (5 if args.quick else 15)
    sparsity = imp_sparsity_after(args.rounds)
    torch.set_num_threads(1)
    t0 = time.time()
    variants = {
        "rewind_init": {"rewind": "init"},
        "rewind_iter_k": {"rewind": "iteration", "rewind_iteration": 22},  # ~1 epoch of 21 batches
        "lr_rewind": {"rewind": "lr"},
    }
    results: dict = {}
    for vname, kw in variants.items():
        ticket, reinit, trainings = [], [], None
        for seed in range(seeds):
            train, val = digits_loaders(flat=True, batch_size=64, seed=seed)
            torch.manual_seed(seed)
            model, _ = lenet_300_100()
            cfg = SparsifyConfig(
                method="lottery", sparsity=round(sparsity, 6), imp_rounds=args.rounds, epochs=epochs,
                lr=args.lr, seed=seed, min_layer_density=0.0, **kw,
            )  # fmt: skip
            rep = sparsify(model, cfg, train_loader=train, val_loader=val)
            ticket.append(rep.accuracy)
            trainings = rep.trainings
            torch.manual_seed(10_000 + seed)  # a different initialisation, the same mask
            fresh, _ = lenet_300_100()
            cfg_r = SparsifyConfig(
                method="static", sparsity=round(sparsity, 6), epochs=epochs, lr=args.lr, seed=seed
            )
            reinit.append(
                sparsify(fresh, cfg_r, train_loader=train, val_loader=val, initial_masks=rep.masks).accuracy
            )
        results[vname] = {"ticket": summary(ticket), "random_reinit": summary(reinit), "trainings": trainings}
        print(
            f"{vname:<14} ticket {statistics.fmean(ticket):.4f}  reinit {statistics.fmean(reinit):.4f}",
            flush=True,
        )
    # dense reference with the same budget of one training
    dense = []
    for seed in range(seeds):
        train, val = digits_loaders(flat=True, batch_size=64, seed=seed)
        torch.manual_seed(seed)
        model, _ = lenet_300_100()
        cfg = SparsifyConfig(method="static", sparsity=0.0, epochs=epochs, lr=args.lr, seed=seed)
        dense.append(sparsify(model, cfg, train_loader=train, val_loader=val).accuracy)
    checks = {
        v: {
            "ticket_beats_reinit": r["ticket"]["mean"] > r["random_reinit"]["mean"],
            "gap": r["ticket"]["mean"] - r["random_reinit"]["mean"],
        }
        for v, r in results.items()
    }
    out = {
        "benchmark": "sparse_lottery",
        "quick": args.quick,
        "seeds": seeds,
        "epochs_per_training": epochs,
        "rounds": args.rounds,
        "per_round": 0.2,
        "sparsity": sparsity,
        "model": "lenet_300_100 on digits_flat",
        "results": results,
        "dense": summary(dense),
        "checks": checks,
        "elapsed_s": time.time() - t0,
        "machine": "shared 2-core x86, torch CPU, 1 thread",
    }
    atomic_write_json(args.out, out)
    print(json.dumps(checks, indent=1))


if __name__ == "__main__":
    main()
