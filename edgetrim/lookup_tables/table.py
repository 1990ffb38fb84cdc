"""``LatencyTable``: measured latency points per operator context, one self-describing JSON file.

Storage is *scattered points* per context (not a fixed grid): every measured ``(in_width,
out_width)`` keeps its :class:`~edgetrim.types.LatencyStats`, so a partial or resumed profiling run,
adaptive refinement and merging all just add points. Prediction (alignment-aware, see
:mod:`edgetrim.lookup_tables.interpolation`) and dense surfaces are derived on demand.

File format (``schema_version`` 1)::

    {"format": "edgetrim-latency-table", "schema_version": 1, "created": "<ISO-8601 UTC>",
     "device": DeviceInfo.to_dict(), "runtime": ..., "runtime_version": ..., "threads": ...,
     "meta": {...},                      # build time, planner settings, anything JSON
     "contexts": [{"key": ctx.key(), "context": ctx.to_dict(),
                   "columns": ["in", "out", "median_ms", "p10_ms", "p90_ms", "mean_ms", "std_ms", "n"],
                   "points": [[in, out, median_ms, p10_ms, p90_ms, mean_ms, std_ms, n], ...]}]}

``runtime``/``runtime_version``/``threads`` repeat ``device`` fields so the file reads on its own.
Torch-free: a table can be read on any machine with numpy.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgetrim.errors import TableError
from edgetrim.io_utils import atomic_write_text
from edgetrim.lookup_tables.interpolation import SurfaceInterpolator, envelope_ms
from edgetrim.types import DeviceInfo, LatencyStats, OpContext

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FORMAT_NAME = "edgetrim-latency-table"
COLUMNS = ("in", "out", "median_ms", "p10_ms", "p90_ms", "mean_ms", "std_ms", "n")


@dataclass(frozen=True)
class PointPrediction:
    """A predicted latency and whether it came from outside the measured widths."""

    ms: float
    extrapolated: bool


class LatencyTable:
    """Measured latency points for a set of operator contexts on one device + runtime.

    Args:
        device: where every point was measured.
        meta: free JSON-serialisable information (build time, planner settings, ...).
        created: creation time (ISO-8601); now when omitted.

    Example:
        >>> from edgetrim.types import DeviceInfo, LatencyStats, OpContext, OpKind
        >>> t = LatencyTable(DeviceInfo("ort-cpu", "onnxruntime", "1.32", "x86"))
        >>> ctx = OpContext(OpKind.LINEAR, tokens=4)
        >>> for w in (8, 16):
        ...     t.record(ctx, w, w, LatencyStats(w * 0.01, w * 0.01, w * 0.01, w * 0.01, 0.0, 5))
        >>> round(t.predict_ms(ctx, 8, 8).ms, 3)
        0.08
    """

    def __init__(self, device: DeviceInfo, meta: dict[str, Any] | None = None, *, created: str | None = None):
        self.device = device
        self.meta: dict[str, Any] = dict(meta or {})
        self.created = created or datetime.now(UTC).isoformat(timespec="seconds")
        self._points: dict[OpContext, dict[tuple[int, int], LatencyStats]] = {}
        self._interp: dict[OpContext, SurfaceInterpolator] = {}

    # ------------------------------------------------------------------ points
    def contexts(self) -> list[OpContext]:
        """Contexts with at least one point, sorted by key."""
        return sorted((c for c, p in self._points.items() if p), key=lambda c: c.key())

    def context_by_key(self, key: str) -> OpContext:
        """The context whose ``key()`` is ``key``; ``TableError`` naming the known keys otherwise."""
        for ctx in self._points:
            if ctx.key() == key:
                return ctx
        known = ", ".join(c.key() for c in self.contexts()[:8])
        raise TableError(
            f"no context {key!r} in this table; it has: {known}{' ...' if len(self._points) > 8 else ''}"
        )

    def record(self, ctx: OpContext, in_w: int, out_w: int, stats: LatencyStats) -> None:
        """Store (or replace) the measurement of ``ctx`` at ``(in_w, out_w)``.

        One-axis contexts (depthwise, activations, ...) are stored with ``in_w == out_w``.
        """
        in_w, out_w = int(in_w), int(out_w)
        if in_w < 1 or out_w < 1:
            raise ValueError(f"widths must be >= 1, got ({in_w}, {out_w}) for {ctx.key()}")
        if ctx.one_axis and in_w != out_w:
            raise ValueError(f"{ctx.key()} has one width axis: in_w must equal out_w, got ({in_w}, {out_w})")
        self._points.setdefault(ctx, {})[(in_w, out_w)] = stats
        self._interp.pop(ctx, None)

    def has(self, ctx: OpContext, in_w: int, out_w: int) -> bool:
        return (int(in_w), int(out_w)) in self._points.get(ctx, {})

    def points(self, ctx: OpContext) -> list[tuple[int, int, LatencyStats]]:
        """Measured points of ``ctx`` sorted by ``(in, out)``; empty when the context is unknown."""
        pts = self._points.get(ctx, {})
        return [(i, o, pts[(i, o)]) for i, o in sorted(pts)]

    def stats(self, ctx: OpContext, in_w: int, out_w: int) -> LatencyStats | None:
        return self._points.get(ctx, {}).get((int(in_w), int(out_w)))

    def n_points(self) -> int:
        return sum(len(p) for p in self._points.values())

    def max_widths(self, ctx: OpContext) -> tuple[int, int]:
        pts = self._points.get(ctx)
        if not pts:
            raise TableError(f"no measurements for context {ctx.key()} in this table")
        return max(i for i, _ in pts), max(o for _, o in pts)

    # ------------------------------------------------------------------ prediction
    def interpolator(self, ctx: OpContext) -> SurfaceInterpolator:
        """The (cached) alignment-aware interpolator of ``ctx``."""
        interp = self._interp.get(ctx)
        if interp is None:
            pts = self._points.get(ctx)
            if not pts:
                raise TableError(f"no measurements for context {ctx.key()} in this table")
            interp = SurfaceInterpolator(
                [(i, o, s.median_ms) for (i, o), s in pts.items()], one_axis=ctx.one_axis
            )
            self._interp[ctx] = interp
        return interp

    def predict_ms(self, ctx: OpContext, in_w: float, out_w: float) -> PointPrediction:
        """Predicted median latency of ``ctx`` at ``(in_w, out_w)``; never interpolates across a step.

        Exact at measured points. Outside the measured widths: linear extrapolation through the two
        nearest same-alignment widths, clamped at 0, ``extrapolated=True``. A width of 0 (the op is
        gone) costs 0 ms.
        """
        if in_w < 0 or out_w < 0:
            raise ValueError(f"widths must be >= 0, got ({in_w}, {out_w})")
        if in_w == 0 or out_w == 0:
            return PointPrediction(0.0, False)
        stats = self.stats(ctx, int(in_w), int(out_w)) if float(in_w).is_integer() else None
        if stats is not None and float(out_w).is_integer():
            return PointPrediction(stats.median_ms, False)
        ms, ext = self.interpolator(ctx).predict(in_w, out_w if not ctx.one_axis else in_w)
        return PointPrediction(ms, ext)

    def surface_ms(
        self,
        ctx: OpContext,
        in_axis: Sequence[int] | np.ndarray | None = None,
        out_axis: Sequence[int] | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Dense rectangular grid ``(in_axis, out_axis, ms[len(in), len(out)])`` of predictions.

        Defaults: every integer width ``1..max`` measured on each axis. For one-axis contexts the
        value depends on the input width only (``ms[i, j] == f(in_axis[i])``). Feed it to the
        differentiable bilinear surrogate; it agrees with :meth:`predict_ms` at every grid node.
        """
        max_in, max_out = self.max_widths(ctx)
        ia = np.arange(1, max_in + 1) if in_axis is None else np.asarray(in_axis)
        oa = np.arange(1, max_out + 1) if out_axis is None else np.asarray(out_axis)
        ms, _ = self.interpolator(ctx).predict_grid(ia, oa)
        return ia, oa, ms

    def envelope_ms(
        self,
        ctx: OpContext,
        in_axis: Sequence[int] | np.ndarray | None = None,
        out_axis: Sequence[int] | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Monotone lower envelope of :meth:`surface_ms` (see ``interpolation.envelope_ms``).

        Axes must be consecutive integer widths for the envelope to mean "cheapest width at or above".
        """
        ia, oa, ms = self.surface_ms(ctx, in_axis, out_axis)
        return ia, oa, envelope_ms(ms)

    # ------------------------------------------------------------------ I/O
    def to_dict(self) -> dict[str, Any]:
        contexts = []
        for ctx in self.contexts():
            rows = [
                [i, o, s.median_ms, s.p10_ms, s.p90_ms, s.mean_ms, s.std_ms, s.n]
                for i, o, s in self.points(ctx)
            ]
            contexts.append(
                {"key": ctx.key(), "context": ctx.to_dict(), "columns": list(COLUMNS), "points": rows}
            )
        return {
            "format": FORMAT_NAME,
            "schema_version": SCHEMA_VERSION,
            "created": self.created,
            "device": self.device.to_dict(),
            "runtime": self.device.runtime,
            "runtime_version": self.device.runtime_version,
            "threads": self.device.threads,
            "meta": self.meta,
            "contexts": contexts,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the table atomically (a crash never leaves a half-written file)."""
        text = json.dumps(self.to_dict(), indent=1, sort_keys=True, allow_nan=False)
        return atomic_write_text(path, text + "\n")

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "table") -> LatencyTable:
        """Build a table from its JSON form; every problem is a one-line ``TableError``."""
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise TableError(f"{source} is not an edgetrim latency table (no 'format': '{FORMAT_NAME}')")
        version = d.get("schema_version")
        if not isinstance(version, int):
            raise TableError(f"{source} has no integer schema_version; the file is damaged, re-profile it")
        if version > SCHEMA_VERSION:
            raise TableError(
                f"{source} has schema version {version}, made by a newer edgetrim (this one reads <= "
                f"{SCHEMA_VERSION}); upgrade edgetrim"
            )
        try:
            device = DeviceInfo.from_dict(d["device"])
            table = cls(device, meta=d.get("meta") or {}, created=str(d.get("created", "")) or None)
            for n_ctx, entry in enumerate(d["contexts"]):
                ctx = OpContext.from_dict(entry["context"])
                for row in entry["points"]:
                    _check_row(row, ctx, source, n_ctx)
                    i, o, med, p10, p90, mean, std, n = row
                    stats = LatencyStats(float(med), float(p10), float(p90), float(mean), float(std), int(n))
                    table.record(ctx, int(i), int(o), stats)
        except TableError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TableError(
                f"{source} has a wrong structure ({type(exc).__name__}: {msg}); re-profile it"
            ) from None
        return table

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatencyTable:
        return load_table(path)

    def __repr__(self) -> str:
        return f"LatencyTable({self.device.fingerprint()!r}, contexts={len(self._points)}, points={self.n_points()})"


def _check_row(row: Any, ctx: OpContext, source: str, n_ctx: int) -> None:
    where = f"{source}: context {ctx.key()}"
    if not isinstance(row, list) or len(row) != len(COLUMNS):
        raise TableError(f"{where} has a point that is not a list of {len(COLUMNS)} numbers; re-profile it")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in row):
        raise TableError(f"{where} has a non-numeric or non-finite value in point {row}; re-profile it")
    i, o, med, p10, p90, _mean, std, n = row
    if int(i) != i or int(o) != o or i < 1 or o < 1:
        raise TableError(f"{where} has widths ({i}, {o}); widths must be integers >= 1")
    if ctx.one_axis and i != o:
        raise TableError(f"{where} is one-axis but has a point with in={i} != out={o}")
    if not (p10 <= med <= p90):
        raise TableError(f"{where} point ({i}, {o}) breaks p10 <= median <= p90 ({p10}, {med}, {p90})")
    if med < 0 or std < 0 or int(n) != n or n < 1:
        raise TableError(f"{where} point ({i}, {o}) has a negative latency/std or n < 1")


def load_table(path: str | os.PathLike[str]) -> LatencyTable:
    """Read a table file; raises ``TableError`` (one line) for every way it can be unusable."""
    p = Path(path)
    if not p.exists():
        raise TableError(f"table file {p} does not exist; build one with `edgetrim profile --out {p}`")
    if p.is_dir():
        raise TableError(f"{p} is a folder, not a table file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TableError(f"cannot read table {p}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        stripped = text.strip()
        truncated = stripped.startswith("{") and not stripped.endswith("}")
        what = "is truncated" if truncated or exc.pos >= len(stripped) else "is not valid JSON"
        raise TableError(f"table {p} {what} (line {exc.lineno}); re-profile or restore it") from None
    return LatencyTable.from_dict(data, source=f"table {p}")


def merge(tables: Iterable[LatencyTable], *, force: bool = False) -> LatencyTable:
    """Combine tables measured on the same device + runtime into one.

    Tables must share ``DeviceInfo.fingerprint()`` unless ``force``. When two tables hold the same
    point, the one with more samples (``n``) is kept; on equal ``n`` the later table wins. The merged
    table takes the first table's device and a meta listing its sources.
    """
    tables = list(tables)
    if not tables:
        raise TableError("merge needs at least one table")
    first = tables[0]
    for t in tables[1:]:
        if t.device.fingerprint() != first.device.fingerprint() and not force:
            raise TableError(
                f"cannot merge tables from different targets ({first.device.fingerprint()} vs "
                f"{t.device.fingerprint()}); pass --force to merge anyway"
            )
    out = LatencyTable(first.device, meta={"merged_from": [t.meta for t in tables]})
    for t in tables:
        for ctx in t.contexts():
            for i, o, s in t.points(ctx):
                old = out.stats(ctx, i, o)
                if old is None or s.n >= old.n:
                    out.record(ctx, i, o, s)
    return out


def check_target(table: LatencyTable, target: str | DeviceInfo, *, allow_other: bool = False) -> None:
    """Raise ``TableError`` when ``table`` was made on another target / runtime than ``target``.

    ``target`` is a target name ("ort-cpu") or the ``DeviceInfo`` of the target in use (then the full
    fingerprint - target, runtime, device, threads - must agree). ``allow_other`` turns the check off.
    """
    if allow_other:
        return
    dev = table.device
    if isinstance(target, DeviceInfo):
        if target.fingerprint() != dev.fingerprint():
            raise TableError(
                f"table was made on {dev.fingerprint()} but the target is {target.fingerprint()}; "
                f"profile this target or pass --allow-other-target"
            )
        return
    if target != dev.target:
        raise TableError(
            f"table was made on target {dev.target!r} ({dev.runtime} {dev.runtime_version}), not {target!r}; "
            f"profile {target} or pass --allow-other-target"
        )
