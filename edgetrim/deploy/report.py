"""report.json + a self-contained report.html (plots embedded as base64 PNG, no external resources).

Input: manifest dicts (from ``edgetrim export`` folders) or run entries built from RUN folders by
:func:`run_entry`. Sections: a summary table; per-layer predicted vs measured latency; the
accuracy-latency Pareto front of every run given; channel widths per layer before and after
compression; latency-table surfaces; notes (sparsity verdicts, fallbacks).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetrim.compress.run_folder import INFO_FILE, MODEL_FILE
from edgetrim.deploy.manifest import MANIFEST_FILE, load_manifest
from edgetrim.errors import EdgetrimError
from edgetrim.io_utils import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

MAX_SURFACES = 4


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    json: Path


def run_entry(path: str | Path) -> dict[str, Any]:
    """A manifest-shaped entry for a RUN folder (or the manifest of an export folder).

    Raises:
        EdgetrimError: one line when the folder is neither, or the run holds no model.
    """
    root = Path(path)
    if (root / MANIFEST_FILE).is_file():
        return load_manifest(root)
    if not root.is_dir():
        raise EdgetrimError(f"{root} does not exist; pass RUN folders or 'edgetrim export' folders")
    if not (root / MODEL_FILE).is_file():
        raise EdgetrimError(f"run folder {root} holds no {MODEL_FILE}: was the run finished?")
    if not (root / INFO_FILE).is_file():
        raise EdgetrimError(f"run folder {root} holds no {INFO_FILE}: was the run finished?")
    try:
        info = json.loads((root / INFO_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise EdgetrimError(f"{root / INFO_FILE} is not valid JSON ({exc.msg})") from None
    return {"run": {"path": str(root.resolve()), **info}, "artifacts": [], "predicted": None, "device": None}


def _name(entry: dict[str, Any]) -> str:
    return Path(str(entry.get("run", {}).get("path", "run"))).name


def _measured(entry: dict[str, Any]) -> tuple[float | None, str]:
    """The entry's latency for the Pareto plot and where it came from."""
    for art in entry.get("artifacts", []):
        rm = art.get("remeasure")
        if rm and art.get("precision") == "fp32":
            return float(rm["measured_ms"]), f"measured ({art['label']} on {rm['target']})"
    run = entry.get("run", {})
    if run.get("measured_ms") is not None:
        return float(run["measured_ms"]), "measured (run)"
    if run.get("predicted_ms") is not None:
        return float(run["predicted_ms"]), "predicted"
    return None, "none"


def _acc(value: Any) -> float | None:
    if isinstance(value, dict):
        value = value.get("top1", value.get("accuracy"))
    return float(value) if isinstance(value, int | float) else None


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated (lower latency *and* higher accuracy), sorted by latency.

    Example:
        >>> pareto_front([(1.0, 0.9), (2.0, 0.8), (3.0, 0.95)])
        [(1.0, 0.9), (3.0, 0.95)]
    """
    front: list[tuple[float, float]] = []
    for ms, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((ms, acc))
    return front


def _widths(obj: Any) -> list[tuple[str, float]]:
    if isinstance(obj, dict):
        out = []
        for k, v in obj.items():
            if isinstance(v, list | tuple) and v:
                v = v[-1]
            if isinstance(v, dict):
                v = v.get("out_width", v.get("width", v.get("size")))
            if isinstance(v, int | float):
                out.append((str(k), float(v)))
        return out
    if isinstance(obj, list | tuple):
        return [(str(i), float(v)) for i, v in enumerate(obj) if isinstance(v, int | float)]
    return []


# --- plots -----------------------------------------------------------------------------------


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_layers(name: str, label: str, layers: Sequence[dict[str, Any]]) -> str | None:
    rows = [r for r in layers if r.get("predicted_ms") is not None or r.get("measured_ms") is not None]
    if not rows:
        return None
    plt = _plt()
    import numpy as np

    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.5))
    pred = [r.get("predicted_ms") or 0.0 for r in rows]
    meas = [r.get("measured_ms") or 0.0 for r in rows]
    ax.barh(y - 0.2, pred, height=0.4, label="predicted (table)")
    ax.barh(y + 0.2, meas, height=0.4, label="measured")
    ax.set_yticks(y, [r["name"] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("latency per layer (ms)")
    ax.set_title(f"{name}: {label} per layer")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_pareto(points: Sequence[tuple[str, float, float, str]]) -> str | None:
    if not points:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, ms, acc, source in points:
        ax.scatter([ms], [acc], marker="o" if source != "dense" else "s")
        ax.annotate(label, (ms, acc), fontsize=7, xytext=(4, 3), textcoords="offset points")
    front = pareto_front([(ms, acc) for _, ms, acc, _ in points])
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="k", lw=1, label="Pareto front")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy vs latency")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_widths(name: str, before: list[tuple[str, float]], after: list[tuple[str, float]]) -> str | None:
    if not before and not after:
        return None
    plt = _plt()
    import numpy as np

    names = [n for n, _ in before] or [n for n, _ in after]
    b = dict(before)
    a = dict(after)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names) + 2), 3.8))
    ax.bar(x - 0.2, [b.get(n, 0) for n in names], width=0.4, label="before")
    ax.bar(x + 0.2, [a.get(n, 0) for n in names], width=0.4, label="after")
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("width (channels / features)")
    ax.set_title(f"{name}: widths per layer")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_surface(table: Any, ctx: Any) -> str | None:
    """One table context as drawn by ``edgetrim.lookup_tables.plot.plot_context``, base64 PNG."""
    import tempfile

    from edgetrim.lookup_tables.plot import plot_context

    with tempfile.TemporaryDirectory(prefix="edgetrim-surface-") as tmp:
        try:
            png = plot_context(table, ctx, Path(tmp) / "surface.png")
        except Exception as exc:  # a context the interpolator cannot grid: skip its picture, keep the report
            logger.warning("no surface plot for %s: %s", ctx.key(), exc)
            return None
        return base64.b64encode(png.read_bytes()).decode("ascii")


# --- document --------------------------------------------------------------------------------

_CSS = (
    "body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
    "td,th{border:1px solid #bbb;padding:3px 8px;font-size:13px;text-align:right}"
    "th{background:#eee}td:first-child{text-align:left}img{max-width:100%;display:block;margin:1em 0}"
)


def _img(b64: str | None, alt: str) -> str:
    if b64 is None:
        return ""
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return html.escape(str(v))


def _surface_contexts(table: Any, entries: Sequence[dict[str, Any]]) -> list[Any]:
    used: list[str] = []
    for e in entries:
        for r in (e.get("predicted") or {}).get("rows", []):
            if r.get("context_key") and r["context_key"] not in used:
                used.append(r["context_key"])
    by_key = {c.key(): c for c in table.contexts()}
    chosen = [by_key[k] for k in used if k in by_key]
    return (chosen or list(by_key.values()))[:MAX_SURFACES]


def build_report(entries: Sequence[dict[str, Any]], *, table: Any = None) -> tuple[dict[str, Any], str]:
    """The report as (JSON-able dict, HTML text)."""
    if not entries:
        raise EdgetrimError("nothing to report: pass at least one RUN folder or export folder")
    images: dict[str, str] = {}
    body: list[str] = ["<h1>edgetrim report</h1>"]
    summary = []
    body.append("<h2>Summary</h2><table><tr><th>run</th><th>kind</th><th>predicted ms</th>")
    body.append("<th>latency ms</th><th>latency source</th><th>accuracy</th><th>artifacts</th></tr>")
    points: list[tuple[str, float, float, str]] = []
    # a run's own note of its dense model is only plotted when no baseline run was given itself
    has_baseline = any(e.get("run", {}).get("kind") == "baseline" for e in entries)
    for e in entries:
        run = e.get("run", {})
        name = _name(e)
        ms, source = _measured(e)
        predicted_ms = (e.get("predicted") or {}).get("total_ms", run.get("predicted_ms"))
        acc = _acc(run.get("accuracy"))
        arts = ", ".join(a["label"] for a in e.get("artifacts", []) if "label" in a) or "-"
        summary.append(
            {
                "run": name,
                "kind": run.get("kind"),
                "predicted_ms": predicted_ms,
                "latency_ms": ms,
                "latency_source": source,
                "accuracy": acc,
                "artifacts": arts,
            }
        )
        body.append(
            f"<tr><td>{_fmt(name)}</td><td>{_fmt(run.get('kind'))}</td><td>{_fmt(predicted_ms)}</td>"
            f"<td>{_fmt(ms)}</td><td>{_fmt(source)}</td><td>{_fmt(acc)}</td><td>{_fmt(arts)}</td></tr>"
        )
        if ms is not None and acc is not None:
            points.append((name, ms, acc, source))
        dense_ms = run.get("dense_measured_ms") or run.get("dense_predicted_ms")
        dense_acc = _acc(run.get("dense_accuracy"))
        if dense_ms is not None and dense_acc is not None and not has_baseline:
            points.append((f"{name} (dense)", float(dense_ms), dense_acc, "dense"))
    body.append("</table>")

    body.append("<h2>Artifacts: parity and re-measurement</h2>")
    art_rows = []
    body.append(
        "<table><tr><th>run</th><th>artifact</th><th>sha256</th><th>parity gate</th><th>max abs err</th>"
    )
    body.append(
        "<th>min SQNR dB</th><th>acc torch</th><th>acc artifact</th><th>predicted ms</th><th>measured ms</th></tr>"
    )
    for e in entries:
        for a in e.get("artifacts", []):
            p = a.get("parity") or {}
            rm = a.get("remeasure") or {}
            art_rows.append({"run": _name(e), "label": a.get("label"), "parity": p, "remeasure": rm})
            body.append(
                f"<tr><td>{_fmt(_name(e))}</td><td>{_fmt(a.get('label'))}</td><td>{_fmt(str(a.get('sha256', ''))[:12])}</td>"
                f"<td>{_fmt(p.get('gate'))}</td><td>{_fmt(p.get('max_abs_err'))}</td><td>{_fmt(p.get('min_sqnr_db'))}</td>"
                f"<td>{_fmt(p.get('accuracy_reference'))}</td><td>{_fmt(p.get('accuracy_artifact'))}</td>"
                f"<td>{_fmt(rm.get('predicted_ms'))}</td><td>{_fmt(rm.get('measured_ms'))}</td></tr>"
            )
    body.append("</table>")
    notes = []
    for e in entries:
        notes += [f"{_name(e)}: {n}" for n in e.get("notes", [])]
        for a in e.get("artifacts", []):
            sp = (a.get("remeasure") or {}).get("sparsity")
            if sp:
                notes.append(f"{_name(e)} {a['label']}: {sp['verdict']}")
            notes += [f"{_name(e)} {a.get('label')}: {n}" for n in a.get("notes", [])]
    if notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")

    body.append("<h2>Per-layer latency: predicted vs measured</h2>")
    any_layers = False
    for e in entries:
        for a in e.get("artifacts", []):
            rm = a.get("remeasure") or {}
            img = plot_layers(_name(e), a.get("label", ""), rm.get("layers", []))
            if img:
                any_layers = True
                key = f"layers:{_name(e)}:{a.get('label')}"
                images[key] = img
                body.append(f"<p>{html.escape(rm.get('per_layer_method', ''))}</p>" + _img(img, key))
    if not any_layers:
        body.append("<p>No per-layer measurements (export with a target or a run table to re-measure).</p>")

    body.append("<h2>Accuracy-latency Pareto front</h2>")
    pareto = plot_pareto(points)
    if pareto:
        images["pareto"] = pareto
        body.append(_img(pareto, "pareto"))
    else:
        body.append("<p>No run reports both an accuracy and a latency.</p>")

    body.append("<h2>Widths per layer, before and after</h2>")
    widths_json = {}
    for e in entries:
        run = e.get("run", {})
        before, after = _widths(run.get("widths_before")), _widths(run.get("widths_after"))
        widths_json[_name(e)] = {"before": before, "after": after}
        img = plot_widths(_name(e), before, after)
        if img:
            images[f"widths:{_name(e)}"] = img
            body.append(_img(img, f"widths:{_name(e)}"))

    surfaces = []
    if table is not None:
        body.append(f"<h2>Latency table surfaces ({html.escape(table.device.target)})</h2>")
        for ctx in _surface_contexts(table, entries):
            img = plot_surface(table, ctx)
            if img:
                surfaces.append(ctx.key())
                images[f"surface:{ctx.key()}"] = img
                body.append(_img(img, f"surface:{ctx.key()}"))

    doc = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>edgetrim report</title>"
        f"<style>{_CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )
    data = {
        "summary": summary,
        "artifacts": art_rows,
        "pareto": {
            "points": [{"run": p[0], "latency_ms": p[1], "accuracy": p[2], "source": p[3]} for p in points],
            "front": [list(p) for p in pareto_front([(p[1], p[2]) for p in points])],
        },
        "widths": widths_json,
        "layers": {
            f"{_name(e)}:{a.get('label')}": (a.get("remeasure") or {}).get("layers", [])
            for e in entries
            for a in e.get("artifacts", [])
        },
        "surfaces": surfaces,
        "notes": notes,
        "images": sorted(images),
    }
    return data, doc


def write_report(entries: Sequence[dict[str, Any]], out_dir: str | Path, *, table: Any = None) -> ReportFiles:
    """Write ``report.json`` and ``report.html`` into ``out_dir`` (atomically)."""
    out = Path(out_dir)
    data, doc = build_report(entries, table=table)
    j = atomic_write_json(out / "report.json", data)
    h = atomic_write_text(out / "report.html", doc)
    logger.info("wrote %s and %s", h, j)
    return ReportFiles(html=h, json=j)
