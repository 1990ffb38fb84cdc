"""How far a per-op sum of compress' bound terms is from the table's whole-model prediction.

The bound terms (one table lookup per operator, the widths written as functions of the group widths)
plus a constant offset taken on the dense model stand for what the whole-model prediction adds
(invoke overhead, per-node dispatch, onnxruntime's NCHWc layout: reorders at region boundaries,
one-op reorder costs taken off blocked convs, Adds and activations fused into convs). compress used
to price widths that way; it now prices them with ``LatencyModel.whole_ms`` (the whole-model
prediction of the bound operators at the widths). This materialises each zoo model at random aligned
widths (and at its narrowest) and writes, per configuration, the whole-model prediction of the
materialised model, the bound terms plus offset, ``whole_ms``, and their differences, to
benchmarks/results/bound_vs_whole.json. No device timing; it reads the cached ort-cpu tables of
compress_vs_baselines (profiled on first use).

    .venv/bin/python benchmarks/bound_vs_whole.py [--models mobilenetv3_small,resnet_small] [--configs 12]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compress_vs_baselines import MODEL_KWARGS, benchmark_table

from edgetrim.compress.api import default_extractor, model_latency_ms, width_limits
from edgetrim.compress.gates import ChannelGates
from edgetrim.compress.graph import find_channel_groups
from edgetrim.compress.latency_model import LatencyModel, bind_layer_terms
from edgetrim.compress.widths import fast_side_widths
from edgetrim.examples.models import MODEL_ZOO
from edgetrim.io_utils import atomic_write_json
from edgetrim.model_ops import extract_layer_ops
from edgetrim.profiler.targets import get_target

OUT = Path(__file__).resolve().parent / "results"


def measure_model(name: str, image_size: int, configs: int, seed: int) -> dict:
    target = get_target("ort-cpu", threads=1)
    torch.manual_seed(0)
    model, example = MODEL_ZOO[name](image_size=image_size, **MODEL_KWARGS.get(name, {}))
    model.eval()
    table = benchmark_table(target, extract_layer_ops(model, example, fusion=target.fusion), name, image_size)
    extract = default_extractor(table.device.runtime)
    groups = find_channel_groups(model, example)
    units, sizes = [g.unit for g in groups], [g.size for g in groups]
    cost = LatencyModel(table, bind_layer_terms(model, example, groups, extract=extract), units)
    dense_ms = model_latency_ms(table, extract(model, example))
    offset = dense_ms - cost.hard_ms(sizes)
    min_w, align = width_limits(groups, table)  # as compress' final step chooses widths
    block = int(table.meta.get("ort_nchwc_block") or 1)

    rng = random.Random(seed)
    requests = [list(min_w)] + [
        [rng.randint(lo, size) for lo, size in zip(min_w, sizes)] for _ in range(configs)
    ]
    gates = ChannelGates(model, groups)
    rows = []
    for req in requests:
        widths = fast_side_widths(req, units, sizes, cost.partial_ms, min_widths=min_w, align=align)
        small = gates.materialize(example, widths=widths)
        whole = model_latency_ms(table, extract(small, example))
        bound = cost.hard_ms(widths) + offset
        substituted = cost.whole_ms(widths)
        rows.append(
            {"widths": widths, "whole_ms": whole, "bound_plus_offset_ms": bound, "diff_ms": whole - bound,
             "rel_diff": (whole - bound) / whole, "whole_ms_substituted": substituted,
             "substituted_diff_ms": whole - substituted}
        )  # fmt: skip
        print(
            name, widths, f"whole {whole:.4f} bound+offset {bound:.4f} diff {whole - bound:+.4f} "
            f"substituted {substituted:.4f}", flush=True,
        )  # fmt: skip
    gates.detach_hooks()
    rel = [r["rel_diff"] for r in rows]
    return {
        "model": name, "dense_ms": dense_ms, "offset_ms": offset, "nchwc_block": block,
        "rel_diff_median": statistics.median(rel), "rel_diff_min": min(rel), "rel_diff_max": max(rel),
        "substituted_abs_diff_max_ms": max(abs(r["substituted_diff_ms"]) for r in rows),
        "narrowest": rows[0], "rows": rows,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mobilenetv3_small,resnet_small")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--configs", type=int, default=12, help="random width configurations per model")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    results = [measure_model(m, args.image_size, args.configs, args.seed) for m in args.models.split(",")]
    atomic_write_json(OUT / "bound_vs_whole.json", {"benchmark": "bound_vs_whole", "args": vars(args),
                                                     "models": results})  # fmt: skip


if __name__ == "__main__":
    main()
