"""SAFS ablation on LeNet-5 / digits: magnitude pruning + ReLU, stage 1 only, stage 2 only, SAFS.

Per seed: train the dense LeNet-5 once, prune it one-shot (layer-wise magnitude, as the SAFS code), then
run the four arms from that same pruned checkpoint with identical budgets. A second table sweeps the
pruning ratio (90 / 95 / 99%) for ReLU vs SAFS. Test accuracy is on the digits held-out split, which
no search or HPO step sees. Writes ``benchmarks/results/safs_ablation.json`` (mean, std, median, min,
max per arm, and every per-seed value).

Reference (SAFS paper, LeNet-5 / MNIST, 99%): ReLU 46.69, stage 1 61.63, stage 2 60.2, SAFS 62.22.

Budgets are the paper's shape scaled to one CPU core (the paper: 20 LAHC evaluations of 80 epochs, 20
SMAC trials x 3 folds, 200-epoch final training): by default 10 stage-1 evaluations of 10 epochs, 5
HPO trials x 2 folds x 15 epochs, 40-epoch final fine-tune for every arm (about 30 minutes on one
shared core). The "stage1" and "safs"
arms run the same seeded stage-1 search; the second replays the first's memo. Each stage's winner is
kept only if it beats its incumbent (original operators; frozen scalars with the default recipe) on the
same k folds of the training split at the final fine-tune's length (``--no-incumbent-check``: each
stage's low-fidelity winner taken as it is, the earlier behaviour).

    .venv/bin/python benchmarks/safs_ablation.py            # 3 seeds, 99% ablation + 90/95/99% sweep
    .venv/bin/python benchmarks/safs_ablation.py --quick    # minutes: proves the script works
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _sparse_common import summary as _stats

from edgetrim.compress.safs import SafsConfig, SearchConfig, pretrain_dense_, run_safs
from edgetrim.compress.safs.hpo import HPOConfig
from edgetrim.compress.safs.train import FinetuneConfig, PruneScope, evaluate
from edgetrim.examples.data import digits_arrays
from edgetrim.examples.models import lenet5
from edgetrim.io_utils import atomic_write_json

ARMS = {"relu": (False, False), "stage1": (True, False), "stage2": (False, True), "safs": (True, True)}
PAPER_LENET_MNIST_99 = {"dense": 98.49, "relu": 46.69, "stage1": 61.63, "stage2": 60.2, "safs": 62.22}
PAPER_VGG_SWEEP_GAIN = {"0.9": 1.65, "0.95": 7.45, "0.99": 8.88}


def _git_sha() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except Exception:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=16, help="digits upsampled to S x S (LeNet-5 input)")
    ap.add_argument("--dense-epochs", type=int, default=20)
    ap.add_argument("--finetune-epochs", type=int, default=40, help="final fine-tune of every arm")
    ap.add_argument("--stage1-evals", type=int, default=10)
    ap.add_argument("--stage1-epochs", type=int, default=10, help="low-fidelity fine-tune per candidate")
    ap.add_argument("--stage2-trials", type=int, default=5)
    ap.add_argument("--stage2-epochs", type=int, default=15, help="per HPO trial and fold")
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--sparsity", type=float, default=0.99)
    ap.add_argument("--scope", default="layer", help="layer (SAFS reference) or global magnitude pruning")
    ap.add_argument(
        "--no-incumbent-check",
        action="store_true",
        help="ablation: take each stage's low-fidelity winner without the final-length k-fold check",
    )
    ap.add_argument("--sweep", default="0.9,0.95,0.99", help="ratios for the ReLU-vs-SAFS sweep ('' to skip)")
    ap.add_argument(
        "--reduced", "--quick", action="store_true", help="small budgets to prove the script works"
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "safs_ablation.json")
    args = ap.parse_args(argv)
    if args.reduced:
        args.dense_epochs, args.finetune_epochs = 15, 10
        args.stage1_evals, args.stage1_epochs = 6, 2
        args.stage2_trials, args.stage2_epochs, args.folds = 4, 6, 2
    torch.set_num_threads(1)
    a = digits_arrays(image_size=args.image_size)
    train = (torch.from_numpy(a.x_train), torch.from_numpy(a.y_train))
    test = (torch.from_numpy(a.x_val), torch.from_numpy(a.y_val))

    def config(ratio: float, arm: str, seed: int) -> SafsConfig:
        s1, s2 = ARMS[arm]
        return SafsConfig(
            sparsity=ratio,
            scope=PruneScope(args.scope),
            stage1=s1,
            stage2=s2,
            search=SearchConfig(max_evals=args.stage1_evals, min_steps=min(20, args.stage1_evals), seed=seed),
            stage1_epochs=args.stage1_epochs,
            hpo=HPOConfig(trials=args.stage2_trials, folds=args.folds, seed=seed),
            stage2_epochs=args.stage2_epochs,
            finetune=FinetuneConfig(epochs=args.finetune_epochs),
            incumbent_check=not args.no_incumbent_check,
            seed=seed,
        )

    rows: list[dict[str, object]] = []
    start = time.perf_counter()
    ratios = sorted({args.sparsity, *(float(r) for r in args.sweep.split(",") if r)})

    def write() -> tuple[dict[str, object], dict[str, object]]:
        """Summarise the rows so far and write the JSON (after every block: a cut-off run keeps them)."""

        def acc(ratio: float, arm: str) -> list[float]:
            return [
                100 * float(r["test_accuracy"]) for r in rows if r["sparsity"] == ratio and r["arm"] == arm
            ]

        ablation = {arm: _stats(acc(args.sparsity, arm)) for arm in ARMS}
        ablation["dense"] = _stats(
            sorted(
                {
                    100 * float(r["dense_accuracy"])
                    for r in rows
                    if r["arm"] == "relu" and r["sparsity"] == args.sparsity
                }
            )
        )
        sweep = {}
        for ratio in ratios:
            if not acc(ratio, "safs"):
                continue  # not run yet
            gains = [s - r for s, r in zip(acc(ratio, "safs"), acc(ratio, "relu"), strict=True)]
            sweep[str(ratio)] = {
                "relu": _stats(acc(ratio, "relu")),
                "safs": _stats(acc(ratio, "safs")),
                "gain": _stats(gains),
            }
        result = {
            "benchmark": "safs_ablation",
            "model": f"lenet5 (digits {args.image_size}x{args.image_size})",
            "pruning": f"one-shot {args.scope} magnitude (every conv/linear weight; layer-wise is the SAFS reference code's)",
            "metric": "test accuracy %, digits held-out split (never seen by search or HPO)",
            "args": vars(args) | {"out": str(args.out)},
            "ablation_at_sparsity": args.sparsity,
            "ablation": ablation,
            "sweep": sweep,
            "paper_lenet5_mnist_99": PAPER_LENET_MNIST_99,
            "paper_vgg16_cifar10_sweep_gain": PAPER_VGG_SWEEP_GAIN,
            "completed": sorted({(float(r["sparsity"]), int(r["seed"])) for r in rows}),
            "rows": rows,
            "seconds": time.perf_counter() - start,
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor(),
                "torch": torch.__version__,
            },
            "git_sha": _git_sha(),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, result)
        return ablation, sweep

    tmp = tempfile.mkdtemp(prefix="safs_ablation_")
    denses: dict[int, tuple[torch.nn.Module, tuple[torch.Tensor, ...], float]] = {}
    # The 99% ablation for every seed first, then the other sweep ratios: a run cut short keeps the
    # main table complete (the JSON is rewritten after every block).
    order = [args.sparsity, *sorted((r for r in ratios if r != args.sparsity), reverse=True)]
    for ratio in order:
        for seed in range(args.seeds):
            if seed not in denses:
                torch.manual_seed(seed)
                dense, example = lenet5(image_size=args.image_size)
                pretrain_dense_(dense, train, FinetuneConfig(epochs=args.dense_epochs), seed=seed)
                denses[seed] = (dense, example, evaluate(dense, *test)[0])
            dense, example, dense_acc = denses[seed]
            arms = list(ARMS) if ratio == args.sparsity else ["relu", "safs"]
            for arm in arms:
                t0 = time.perf_counter()
                # Stage 1 is the same seeded search in the "stage1" and "safs" arms: both arms share one
                # state folder, so the second replays the first's memo instead of retraining every candidate.
                state = Path(tmp) / f"seed{seed}_sparsity{ratio}"
                _, rep = run_safs(dense, example, train, test, config(ratio, arm, seed), state_dir=state)
                row = {
                    "seed": seed,
                    "sparsity": ratio,
                    "arm": arm,
                    "test_accuracy": rep.test_accuracy,
                    "dense_accuracy": dense_acc,
                    "chromosome": rep.chromosome,
                    "scalars": rep.scalars,
                    "finetune": rep.finetune,
                    "masks_intact": rep.masks_intact,
                    "stage1": None
                    if rep.stage1 is None
                    else {
                        k: rep.stage1[k]
                        for k in (
                            "best",
                            "best_energy",
                            "evaluations",
                            "original_energy",
                            "incumbent_check",
                            "chosen",
                        )
                    },
                    "stage2": None
                    if rep.stage2 is None
                    else {k: v for k, v in rep.stage2.items() if k != "trials"},
                    "seconds": time.perf_counter() - t0,
                }
                rows.append(row)
                print(
                    f"seed {seed} sparsity {ratio} {arm:7s} acc {rep.test_accuracy:.4f} {rep.chromosome} "
                    f"{row['seconds']:.0f}s"
                    + (
                        f" | stage1 energy {rep.stage1['best_energy']:.3f} (relu {rep.stage1['original_energy']})"
                        if rep.stage1
                        else ""
                    )
                    + (
                        f" | kfold {rep.stage2['default_kfold_accuracy']:.3f} -> {rep.stage2['best_kfold_accuracy']:.3f} "
                        f"{rep.finetune['optimizer']} lr {rep.finetune['lr']:.2g} {rep.finetune['scheduler']} "
                        f"x{rep.finetune['scalar_lr_scale']:.2g}"
                        if rep.stage2
                        else ""
                    ),
                    file=sys.stderr,
                )
            write()

    shutil.rmtree(tmp, ignore_errors=True)
    ablation, sweep = write()
    print(json.dumps({k: round(v["mean"], 2) for k, v in ablation.items()}), file=sys.stderr)
    print(json.dumps({k: round(v["gain"]["mean"], 2) for k, v in sweep.items()}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
