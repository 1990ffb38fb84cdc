"""How much a net's width shows in accuracy, on the plain and on the distorted digits.

A compression benchmark can only rank methods by accuracy on data where a narrower net is less
accurate. This trains each zoo model at several uniform widths (from scratch, cosine learning rate,
the same epochs and seed) on ``digits`` (upsampled to 16x16, 450 validation images) and on
``digits_hard`` (distorted, with distractors; 3,600 validation images), and writes the validation
accuracies to benchmarks/results/width_sensitivity.json.

    .venv/bin/python benchmarks/width_sensitivity.py [--epochs 15] [--seeds 0]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from edgetrim.examples.data import digits_hard_loaders, digits_loaders
from edgetrim.examples.models import MODEL_ZOO
from edgetrim.examples.training import train_classifier
from edgetrim.io_utils import atomic_write_json

OUT = Path(__file__).resolve().parent / "results"

# the widths of compress_vs_baselines' models (first) and uniformly narrower ones
WIDTHS = {
    "resnet_small": [{"widths": w} for w in ((32, 64, 128), (24, 48, 96), (16, 32, 64), (12, 24, 48))],
    "mobilenetv3_small": [{"width_mult": w} for w in (2.0, 1.5, 1.0, 0.6)],
}
DATA = {"digits": digits_loaders, "digits_hard": digits_hard_loaders}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet_small,mobilenetv3_small")
    p.add_argument("--data", default="digits,digits_hard")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seeds", default="0")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--out", default="width_sensitivity.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows: list[dict] = []
    t0 = time.perf_counter()
    for data_name in args.data.split(","):
        train, val = DATA[data_name](image_size=16)
        for name in args.models.split(","):
            for kwargs in WIDTHS[name]:
                for seed in (int(s) for s in args.seeds.split(",")):
                    torch.manual_seed(seed)
                    model, _ = MODEL_ZOO[name](image_size=16, **kwargs)
                    t = time.perf_counter()
                    acc = train_classifier(
                        model, train, val, epochs=args.epochs, lr=args.lr, seed=seed, schedule="cosine"
                    )
                    row = {
                        "data": data_name, "model": name, "kwargs": kwargs, "seed": seed, "accuracy": acc,
                        "params": sum(q.numel() for q in model.parameters()), "val_images": len(val.dataset),
                        "seconds": time.perf_counter() - t,
                    }  # fmt: skip
                    rows.append(row)
                    print(row, flush=True)
                    doc = {"benchmark": "width_sensitivity", "args": vars(args), "rows": rows,
                           "seconds": time.perf_counter() - t0}  # fmt: skip
                    atomic_write_json(OUT / args.out, doc)  # after every model: a killed run keeps its rows


if __name__ == "__main__":
    main()
