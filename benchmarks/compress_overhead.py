"""Acceptance 5: a compress epoch costs at most 1.3x a plain training epoch of the same model.

Side by side in one process, interleaved: a plain Adam epoch of the dense model vs an epoch of
``PenaltyTrainer`` (channel gates via pre-hooks, l1/l2 soft counts, bilinear latency surrogate, dual
ascent on the real table, projection). The table is a synthetic staircase (its values do not change
the cost of an epoch). Writes benchmarks/results/compress_overhead.json.

    .venv/bin/python benchmarks/compress_overhead.py [--models mobilenetv3_small,resnet_small] [--repeats 11]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _compress_common import median, synthetic_table

from edgetrim.compress.api import model_latency_ms
from edgetrim.compress.config import CompressConfig
from edgetrim.compress.gates import ChannelGates
from edgetrim.compress.graph import find_channel_groups
from edgetrim.compress.latency_model import LatencyModel, bind_layer_terms
from edgetrim.compress.train import PenaltyTrainer
from edgetrim.examples.data import digits_loaders, digits_tokens_loaders
from edgetrim.examples.models import MODEL_ZOO
from edgetrim.model_ops import extract_layer_ops, fusion_for_runtime

OUT = Path(__file__).resolve().parent / "results"


def plain_epoch(model: nn.Module, loader, opt) -> None:
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for xb, yb in loader:
        loss = loss_fn(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def measure(name: str, repeats: int) -> dict:
    torch.manual_seed(0)
    model, example = MODEL_ZOO[name]()
    flat = name.startswith(("mlp", "lenet_300"))
    train, _ = digits_tokens_loaders() if name.startswith("bert") else digits_loaders(flat=flat)
    extract = lambda m, x: extract_layer_ops(m, x, fusion=fusion_for_runtime("onnxruntime"))  # noqa: E731
    ops = extract(model, example)
    table = synthetic_table(ops)
    dense_ms = model_latency_ms(table, ops)
    groups = find_channel_groups(model, example)
    cost = LatencyModel(
        table, bind_layer_terms(model, example, groups, extract=extract), [g.unit for g in groups]
    )
    gates = ChannelGates(model, groups)
    cfg = CompressConfig(budget_ms=0.6 * dense_ms)
    trainer = PenaltyTrainer(
        model, gates, {}, cost, cfg, dense_widths=[g.size for g in groups], dense_cost=dense_ms,
        cost_fn=cost.whole_ms, budget=0.6 * dense_ms, soft_cost_fn=cost.soft_ms,  # as compress() binds it
    )  # fmt: skip
    plain_opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    plain, comp = [], []
    for _ in range(repeats):
        gates.detach_hooks()
        t = time.perf_counter()
        plain_epoch(model, train, plain_opt)
        plain.append(time.perf_counter() - t)
        gates.attach()
        t = time.perf_counter()
        trainer.run_epoch(train, example[0])
        comp.append(time.perf_counter() - t)
    ratios = [c / p for c, p in zip(comp, plain)]
    return {
        "model": name,
        "groups": len(groups),
        "terms": len(cost.terms),
        "plain_epoch_s": {"median": median(plain), "min": min(plain), "max": max(plain)},
        "compress_epoch_s": {"median": median(comp), "min": min(comp), "max": max(comp)},
        # each compress epoch against the plain epoch timed just before it: load on the shared machine
        # drifts between repeats, and a ratio of neighbours cancels most of it
        "ratio_median": median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "ratio_of_medians": median(comp) / median(plain),
        "within_1_3x": median(ratios) <= 1.3,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mobilenetv3_small,resnet_small")
    p.add_argument("--repeats", type=int, default=11)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = [measure(m, args.repeats) for m in args.models.split(",")]
    OUT.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "compress_overhead", "args": vars(args), "threads": 1, "rows": rows}
    (OUT / "compress_overhead.json").write_text(json.dumps(doc, indent=2))
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
