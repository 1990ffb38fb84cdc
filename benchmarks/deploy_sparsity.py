"""Does unstructured sparsity pay off on the local runtimes? Sparse artifacts vs their dense twins.

For each model (``edgetrim.examples.models``), sparsity level and runtime (ort-cpu via ONNX,
litert-cpu via TFLite; 1 thread) this script

1. zeroes the smallest-magnitude fraction of every conv / linear weight (global per layer);
2. exports the sparse model and its *dense twin* (same shapes, the zeros replaced by small nonzero
   values: ``edgetrim.deploy.remeasure.dense_twin``) in the same format, and checks fp32 parity of
   the sparse artifact (max abs error <= 1e-4);
3. times the two files interleaved: ``--rounds`` rounds, each timing sparse then dense once with
   ``TimingConfig()``; a file's latency is the median of its round medians, spread = min..max of
   the round medians;
4. writes JSON rows: model, runtime, sparsity, sparse/dense medians and spreads, speedup, and the
   verdict of ``edgetrim.deploy.remeasure.sparsity_payoff``'s rule (>= 1.10x and separated).

Usage::

    .venv/bin/python benchmarks/deploy_sparsity.py            # full run (minutes)
    .venv/bin/python benchmarks/deploy_sparsity.py --quick    # reduced run (smoke)

Output: ``benchmarks/results/deploy_sparsity.json`` (``--quick``: ``deploy_sparsity_quick.json``).
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from edgetrim.deploy.onnx_export import OnnxRunner, export_onnx  # noqa: E402
from edgetrim.deploy.parity import ParityConfig, check_parity  # noqa: E402
from edgetrim.deploy.remeasure import dense_twin, weight_sparsity  # noqa: E402
from edgetrim.deploy.tflite_export import TfliteRunner, export_tflite  # noqa: E402
from edgetrim.examples.models import build  # noqa: E402
from edgetrim.io_utils import atomic_write_json  # noqa: E402
from edgetrim.profiler.targets import get_target  # noqa: E402
from edgetrim.profiler.timing import TimingConfig  # noqa: E402

logger = logging.getLogger("deploy_sparsity")

MODELS = {"digits_cnn": {}, "lenet_300_100": {}}
LEVELS = (0.5, 0.9)
RUNTIMES = {"ort-cpu": "onnx", "litert-cpu": "tflite"}


def prune_unstructured(model: nn.Module, fraction: float) -> nn.Module:
    """Zero the ``fraction`` smallest-magnitude weights of every conv / linear layer (in place)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                w = m.weight
                k = int(fraction * w.numel())
                if k > 0:
                    threshold = w.abs().flatten().kthvalue(k).values
                    w[w.abs() <= threshold] = 0.0
    return model


def _export(fmt: str, model: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> Any:
    if fmt == "onnx":
        return export_onnx(model, inputs, path.with_suffix(".onnx"))
    return export_tflite(model, inputs, path.with_suffix(".tflite"))


def run(
    rounds: int, models: dict[str, dict[str, Any]], levels: tuple[float, ...], timing: TimingConfig
) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="deploy-sparsity-") as tmp:
        for name, kwargs in models.items():
            for level in levels:
                torch.manual_seed(0)
                model, inputs = build(name, **kwargs)
                sparse = prune_unstructured(model.eval(), level)
                dense = dense_twin(sparse)
                for target_name, fmt in RUNTIMES.items():
                    target = get_target(target_name, threads=1)
                    stem = Path(tmp) / f"{name}_{round(100 * level)}pct_{fmt}"  # no dots: with_suffix below
                    a_sparse = _export(fmt, sparse, inputs, stem.with_name(stem.name + "_sparse"))
                    a_dense = _export(fmt, dense, inputs, stem.with_name(stem.name + "_dense"))
                    runner = OnnxRunner(a_sparse) if fmt == "onnx" else TfliteRunner(a_sparse)
                    parity = check_parity(sparse, inputs, a_sparse, runner, config=ParityConfig(n_random=2))
                    s_ms, d_ms = [], []
                    for _ in range(rounds):
                        s_ms.append(target.measure_artifact(a_sparse.path, timing))
                        d_ms.append(target.measure_artifact(a_dense.path, timing))
                    s = statistics.median(x.median_ms for x in s_ms)
                    d = statistics.median(x.median_ms for x in d_ms)
                    s_p90 = statistics.median(x.p90_ms for x in s_ms)
                    d_p10 = statistics.median(x.p10_ms for x in d_ms)
                    row = {
                        "model": name,
                        "runtime": target_name,
                        "format": fmt,
                        "sparsity_requested": level,
                        "weight_sparsity": weight_sparsity(sparse),
                        "sparse_median_ms": s,
                        "sparse_spread_ms": [min(x.median_ms for x in s_ms), max(x.median_ms for x in s_ms)],
                        "dense_median_ms": d,
                        "dense_spread_ms": [min(x.median_ms for x in d_ms), max(x.median_ms for x in d_ms)],
                        "speedup": d / s,
                        "paid_off": d / s >= 1.10 and s_p90 < d_p10,
                        "parity_max_abs_err": parity.max_abs_err,
                        "device": target.info().to_dict(),
                    }
                    logger.info("%s %s %.0f%%: %.2fx", name, target_name, 100 * level, row["speedup"])
                    rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one model, one level, quick timing, 3 rounds")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        models, levels, timing, rounds = {"lenet_300_100": {}}, (0.9,), TimingConfig.quick(), 3
    else:
        models, levels, timing, rounds = MODELS, LEVELS, TimingConfig(), args.rounds
    start = time.perf_counter()
    rows = run(rounds, models, levels, timing)
    out = (
        args.out or ROOT / "benchmarks" / "results" / f"deploy_sparsity{'_quick' if args.quick else ''}.json"
    )
    atomic_write_json(
        out,
        {
            "benchmark": "deploy_sparsity",
            "quick": args.quick,
            "rounds": rounds,
            "timing": timing.to_dict(),
            "machine": {"platform": platform.platform(), "python": platform.python_version()},
            "seconds": time.perf_counter() - start,
            "rows": rows,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
