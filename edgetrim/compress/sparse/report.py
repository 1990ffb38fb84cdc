"""Write a sparse-training result: the RUN folder (kind "sparsify"), cost JSON and density plot.

RUN/model.pt, example_inputs.pt, run.json   via ``save_run`` (masks applied: pruned weights are 0)
RUN/masks.pt                                 the boolean masks by parameter name (unstructured / N:M)
RUN/sparse_cost.json                         training FLOPs, dense-gradient steps, density over time
RUN/sparse_density.png                       per-layer density over training steps
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import torch

from edgetrim.compress.run_folder import save_run
from edgetrim.compress.sparse.methods import SparsifyReport
from edgetrim.io_utils import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

COST_FILE = "sparse_cost.json"
PLOT_FILE = "sparse_density.png"
MASKS_FILE = "masks.pt"


def cost_json(report: SparsifyReport) -> dict[str, Any]:
    """Training cost and density over time, JSON-ready."""
    cost = dict(report.cost)
    dense_per_sample = cost.get("dense_forward_flops_per_sample", 0.0)
    cost["method"] = report.config.method.value
    cost["sparsity_target"] = report.config.sparsity
    cost["final_density"] = report.density
    cost["trainings"] = report.trainings
    cost["mask_updates"] = report.mask_log
    cost["final_layer_densities"] = report.layer_densities
    cost["inference_flops_per_sample"] = (
        sum(2.0 * cost["layer_macs_per_sample"].get(n, 0) * d for n, d in report.layer_densities.items())
        if report.kept_channels is None
        else None
    )
    cost["dense_inference_flops_per_sample"] = dense_per_sample
    return cost


def density_plot_png(report: SparsifyReport) -> bytes | None:
    """PNG of per-layer density against training step (None when nothing was recorded)."""
    rows = report.cost.get("density_over_time", [])
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(rows[-1]["densities"])
    steps = [r["step"] for r in rows]
    for n in names:
        ax.plot(steps, [r["densities"].get(n, float("nan")) for r in rows], label=n, lw=1.2)
    ax.set_xlabel("training step")
    ax.set_ylabel("density (kept fraction)")
    ax.set_yscale("log")
    ax.set_title(f"{report.config.method.value}: per-layer density (target {1 - report.config.sparsity:.3g})")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def save_sparsify_run(
    path: str | Path,
    report: SparsifyReport,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    model_spec: str = "",
    data_spec: str = "",
    dense_accuracy: float | None = None,
    widths_before: dict[str, int] | None = None,
) -> Path:
    """Write the RUN folder (``kind="sparsify"``) plus cost JSON, density plot and masks."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    cost = cost_json(report)
    atomic_write_json(root / COST_FILE, cost)
    png = density_plot_png(report)
    if png is not None:
        atomic_write_bytes(root / PLOT_FILE, png)
    if report.masks:
        buf = io.BytesIO()
        torch.save({n: m.cpu() for n, m in report.masks.items()}, buf)
        atomic_write_bytes(root / MASKS_FILE, buf.getvalue())
    widths_after = {
        n: int(getattr(m, "out_features", getattr(m, "out_channels", 0)))
        for n, m in report.model.named_modules()
        if hasattr(m, "out_features") or hasattr(m, "out_channels")
    }
    info = {
        "kind": "sparsify",
        "model_spec": model_spec,
        "data_spec": data_spec,
        "budget": {"ms": report.config.budget_ms, "sparsity": report.config.sparsity},
        "predicted_ms": report.predicted_ms,
        "dense_predicted_ms": report.dense_predicted_ms,
        "accuracy": report.accuracy,
        "dense_accuracy": dense_accuracy,
        "widths_before": widths_before or {},
        "widths_after": widths_after,
        "config": report.config.to_dict(),
        "history": report.history,
        "sparsity": {
            "method": report.config.method.value,
            "granularity": report.config.granularity.value,
            "density": report.density,
            "layer_densities": report.layer_densities,
            "layer_nnz": report.layer_nnz,
            "total_nnz": report.total_nnz,
            "total_numel": report.total_numel,
            "collapsed": report.collapsed,
            "trainings": report.trainings,
            "train_flops": cost["total_flops"],
            "dense_gradient_steps": cost["dense_gradient_steps"],
            "kept_channels": report.kept_channels,
            "notes": [n for n in report.notes if n],
            "files": {
                "cost": COST_FILE,
                "plot": PLOT_FILE if png else None,
                "masks": MASKS_FILE if report.masks else None,
            },
        },
    }
    return save_run(root, report.model, example_inputs, info)
