"""Acceptance 4: learned per-layer bit widths {2, 4, 8, 16} on a 3-layer CNN (digits).

From one pre-trained cnn3: (a) all layers at 16 bits, (b) all at 2 bits (both quantisation-aware
trained with fixed gates), (c) learned bits: nested residual levels with gates, penalty
``bits_lambda * storage / storage_16bit`` and projection, via ``compress(blocks={quant})``, at a few
``bits_lambda``. Storage = sum over conv/linear layers of params x bits. Writes
benchmarks/results/compress_bits.json.

    .venv/bin/python benchmarks/compress_bits.py [--epochs 6] [--lambdas 0.05,0.2,1.0]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _compress_common import synthetic_table

from edgetrim.compress.api import compress
from edgetrim.compress.config import Block, CompressConfig
from edgetrim.compress.quant import attach_quant_, bake_quant_
from edgetrim.examples.data import digits_loaders
from edgetrim.examples.models import cnn3
from edgetrim.examples.training import evaluate_accuracy, train_classifier
from edgetrim.model_ops import extract_layer_ops, fusion_for_runtime

OUT = Path(__file__).resolve().parent / "results"


def layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}


def fixed_bits(start: nn.Module, bits: int, train, val, epochs: int, lr: float) -> dict:
    model = copy.deepcopy(start)
    level = {2: 0, 4: 1, 8: 2, 16: 3}[bits]
    for m in layers(model).values():
        q = attach_quant_(m)
        with torch.no_grad():
            q.gates.copy_(torch.tensor([1.0 if k < level else 0.0 for k in range(3)]))
        q.gates.requires_grad_(False)
    train_classifier(model, train, val, epochs=epochs, lr=lr)
    records = bake_quant_(model)
    bits_map = {r.name: r.bits for r in records}
    return {
        "accuracy": evaluate_accuracy(model, val),
        "bits": bits_map,
        "storage_bits": storage(model, bits_map),
    }


def storage(model: nn.Module, bits: dict[str, int]) -> int:
    return int(sum(m.weight.numel() * bits.get(n, 32) for n, m in layers(model).items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--pretrain-epochs", type=int, default=8)
    p.add_argument("--lambdas", default="0.05,0.2,1.0")
    p.add_argument("--lr", type=float, default=2e-3)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train, val = digits_loaders()
    start, example = cnn3()
    t0 = time.perf_counter()
    fp32_acc = train_classifier(start, train, val, epochs=args.pretrain_epochs, lr=args.lr)
    rows = {"fp32": {"accuracy": fp32_acc, "storage_bits": storage(start, {})}}
    rows["all16"] = fixed_bits(start, 16, train, val, args.epochs, args.lr)
    rows["all2"] = fixed_bits(start, 2, train, val, args.epochs, args.lr)
    table = synthetic_table(extract_layer_ops(start, example, fusion=fusion_for_runtime("onnxruntime")))
    for lam in [float(v) for v in args.lambdas.split(",")]:
        cfg = CompressConfig(
            lam=0.0, blocks=frozenset({Block.QUANT}), bits_lambda=lam, epochs=args.epochs - 1, finetune_epochs=1,
            lr=args.lr, bits_lr=0.05,
        )  # fmt: skip
        res = compress(start, example, cfg, table=table, train_loader=train, val_loader=val)
        bits_map = res.report.bits
        rows[f"learned_lambda_{lam:g}"] = {
            "accuracy": res.report.accuracy,
            "bits": bits_map,
            "storage_bits": storage(res.model, bits_map),
        }
    s16 = rows["all16"]["storage_bits"]
    for r in rows.values():
        r["storage_vs_16bit"] = r["storage_bits"] / s16
    OUT.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": "compress_bits",
        "args": vars(args),
        "seconds": time.perf_counter() - t0,
        "rows": rows,
    }
    (OUT / "compress_bits.json").write_text(json.dumps(doc, indent=2))
    print(
        json.dumps(
            {
                k: (round(v["accuracy"], 4), round(v["storage_vs_16bit"], 3), v.get("bits"))
                for k, v in rows.items()
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
