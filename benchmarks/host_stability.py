"""How steady is this host? Small / dense latency ratios of a zoo model, measured again and again.

The compress benchmarks set budgets as fractions of the dense model's measured latency and measure
every candidate paired with the dense model (candidate / dense in each round), which cancels a host
that gets uniformly slower. A shared host does not slow down uniformly: load from a neighbour hits
memory- and dispatch-bound kernels (a small model's share) harder than compute-bound ones (the dense
model's). This script measures uniformly narrowed copies of a model against the dense one, paired,
once every few seconds for ``--minutes``, and writes the timeline and each ratio's spread. Ratios that
move by more than the budget tolerance (10%) within minutes mean that a budget near a small model's
latency cannot be judged on this host at that time.

    python benchmarks/host_stability.py --minutes 5        # ~5 min on one core
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compress_vs_baselines import MODEL_KWARGS, OUT, Meter, uniform_model

from edgetrim.examples.models import MODEL_ZOO
from edgetrim.io_utils import atomic_write_json
from edgetrim.profiler.targets import get_target


def spread(xs: list[float]) -> dict[str, float]:
    q = statistics.quantiles(xs, n=10) if len(xs) >= 2 else [xs[0]] * 9
    return {"median": statistics.median(xs), "p10": q[0], "p90": q[-1], "min": min(xs), "max": max(xs),
            "max_over_min": max(xs) / min(xs)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenetv3_small", choices=sorted(MODEL_KWARGS))
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--keep", default="0.25,0.5", help="width fractions of the narrowed copies")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=11, help="paired rounds per measurement")
    p.add_argument("--out", default="host_stability.json")
    args = p.parse_args()
    keeps = [float(k) for k in args.keep.split(",")]
    if not keeps or not all(0 < k < 1 for k in keeps):
        p.error(f"--keep takes fractions in (0, 1), got {args.keep}")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    target = get_target("ort-cpu", threads=1)
    model, example = MODEL_ZOO[args.model](image_size=args.image_size, **MODEL_KWARGS[args.model])
    model.eval()
    meter = Meter(target, args.rounds)
    dense = meter.session(model, example)
    smalls = {f"keep_{k}": meter.session(uniform_model(model, example, k), example) for k in keeps}
    for sess in (dense, *smalls.values()):
        target.time_session(sess, meter.timing)  # a fresh session's first timings run slow
    timeline: list[dict[str, float]] = []
    end = time.perf_counter() + 60 * args.minutes

    def write() -> None:
        summary = {k: spread([t[k] for t in timeline]) for k in smalls}
        summary["dense_ms"] = spread([t["dense_ms"] for t in timeline])
        atomic_write_json(
            OUT / args.out,
            {"benchmark": "host_stability", "args": vars(args), "target": target.info().to_dict(),
             "summary": summary, "timeline": timeline},
        )  # fmt: skip

    while time.perf_counter() < end:
        meas = meter.paired(smalls, dense, 1.0)
        point = {"s": meter.timeline[-1]["s"], "dense_ms": meter.timeline[-1]["dense_ms"]}
        point |= {k: m["ratio_to_dense"] for k, m in meas.items()}
        timeline.append(point)
        print(" ".join(f"{k}={v:.4f}" for k, v in point.items()), flush=True)
        write()


if __name__ == "__main__":
    main()
