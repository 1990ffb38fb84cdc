"""PNG plots of table contexts (matplotlib, Agg backend; torch-free)."""

from __future__ import annotations

import io
import logging
import os
import re
from pathlib import Path

import numpy as np

from edgetrim.io_utils import atomic_write_bytes
from edgetrim.lookup_tables.table import LatencyTable
from edgetrim.types import OpContext

logger = logging.getLogger(__name__)

_MAX_LINES = 8


def _figure():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_context(table: LatencyTable, ctx: OpContext, path: str | os.PathLike[str]) -> Path:
    """Write a PNG of one context.

    One-axis contexts: latency vs width, measured points as dots over the interpolated line (the
    staircase shows). Two-axis contexts: a heatmap of the dense interpolated surface with the measured
    points overlaid, plus lines of latency vs output width for a few input widths.
    """
    plt = _figure()
    pts = table.points(ctx)
    ins = np.array([i for i, _, _ in pts])
    outs = np.array([o for _, o, _ in pts])
    med = np.array([s.median_ms for _, _, s in pts])
    ia, oa, ms = table.surface_ms(ctx)
    if ctx.one_axis:
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.plot(ia, ms[:, 0], "-", lw=1, color="tab:blue", label="interpolated")
        lo = np.array([s.p10_ms for _, _, s in pts])
        hi = np.array([s.p90_ms for _, _, s in pts])
        ax.errorbar(
            ins, med, yerr=[med - lo, hi - med], fmt=".", ms=3, color="k", lw=0.5, label="measured (p10-p90)"
        )
        ax.set_xlabel("width")
        ax.set_ylabel("latency (ms)")
        ax.legend(loc="upper left")
    else:
        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.5))
        im = ax0.imshow(
            ms, origin="lower", aspect="auto", extent=(oa[0] - 0.5, oa[-1] + 0.5, ia[0] - 0.5, ia[-1] + 0.5)
        )
        ax0.scatter(outs, ins, s=2, c="w", alpha=0.5)
        ax0.set_xlabel("output width")
        ax0.set_ylabel("input width")
        fig.colorbar(im, ax=ax0, label="ms")
        rows = sorted(set(ins.tolist()))
        pick = [
            rows[int(k)] for k in np.unique(np.linspace(0, len(rows) - 1, min(_MAX_LINES, len(rows))).round())
        ]
        for i in pick:
            ax1.plot(oa, ms[i - ia[0]] if ia[0] <= i <= ia[-1] else ms[-1], lw=1, label=f"in={i}")
            sel = ins == i
            ax1.plot(outs[sel], med[sel], ".", ms=3, color="k")
        ax1.set_xlabel("output width")
        ax1.set_ylabel("latency (ms)")
        ax1.legend(fontsize=7)
    fig.suptitle(
        f"{ctx.key()}  [{table.device.target}, {table.device.runtime} {table.device.runtime_version}]",
        fontsize=9,
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def safe_filename(key: str) -> str:
    """A context key as a file name (``conv2d/k3x3/s1x1`` -> ``conv2d_k3x3_s1x1``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_") or "context"


def plot_all(table: LatencyTable, folder: str | os.PathLike[str]) -> list[Path]:
    """One PNG per context into ``folder`` (named by :func:`safe_filename`)."""
    out = []
    for ctx in table.contexts():
        out.append(plot_context(table, ctx, Path(folder) / f"{safe_filename(ctx.key())}.png"))
    return out
