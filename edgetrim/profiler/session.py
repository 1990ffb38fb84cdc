"""Profiling sessions: plan -> randomised measurement -> table on disk, resumable, then refinement.

``profile_table`` measures every planned (context, in_width, out_width) point on a target in a
seeded random order (so slow drift - thermal, other load - spreads over the table as noise instead
of shaping it), shows a progress bar with ETA on stderr, saves the table atomically every few points
(Ctrl-C or a crash loses at most the point in flight), and continues an interrupted table with
``resume=True`` without re-measuring finished points (after checking on a sample that the stored
points still time as they did: a table whose host got slower or faster in between starts over, since
old and new points would not be comparable). Then adaptive refinement adds points where
interpolation between measured neighbours misses (``lookup_tables.grid.refine_points``).

Invoke overhead: the runtime's cost of one empty invoke is measured once per table and subtracted
from every op point (``shift_stats``, clamped at 0), and stored as ``meta["invoke_overhead_ms"]``, so
summing the ops of a model counts the per-invoke cost once (add it back once per model), not once
per op.

Runtime facts: a target may offer ``table_meta(timing) -> dict`` (onnxruntime: the per-node dispatch
cost ``per_op_overhead_ms`` and the NCHWc block ``ort_nchwc_block``), stored in the table's meta for
the predictor; with an NCHWc block the session also measures the layout reorders
(:func:`nchwc_reorder_requests`) for every spatial shape the plan's convs and pools use.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetrim.errors import EdgetrimError, TableError
from edgetrim.lookup_tables import LatencyTable, load_table
from edgetrim.lookup_tables.grid import plan_points, refine_points
from edgetrim.lookup_tables.predict import NCHWC_PAIR_CHAINS, NCHWC_PRICED_FUSED_ACTS
from edgetrim.profiler.builders import UnsupportedOpError, validate_context
from edgetrim.profiler.builders._common import conv_out_hw
from edgetrim.profiler.stats import shift_stats
from edgetrim.profiler.targets.base import LocalTarget, OpRequest, Target
from edgetrim.profiler.timing import TimingConfig
from edgetrim.types import LatencyStats, LayerOp, OpContext, OpKind

logger = logging.getLogger(__name__)

# The invoke overhead is subtracted from every point: measured OVERHEAD_REPEATS times (~1.5 s at most), lowest kept.
OVERHEAD_TIMING = TimingConfig(warmup=20, min_runs=30, max_runs=500, rel_ci=0.01, time_cap_s=0.3)
OVERHEAD_REPEATS = 5


@dataclass(frozen=True)
class ContextPlan:
    """One context to profile up to ``(max_in, max_out)``, plus exact points that must be measured."""

    context: OpContext
    max_in: int
    max_out: int
    include: frozenset[tuple[int, int]] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.max_in < 1 or self.max_out < 1:
            raise ValueError(
                f"max widths must be >= 1, got ({self.max_in}, {self.max_out}) for {self.context.key()}"
            )
        if self.context.one_axis and self.max_in != self.max_out:
            object.__setattr__(self, "max_out", self.max_in)


def plan_from_layer_ops(layer_ops: Iterable[LayerOp]) -> list[ContextPlan]:
    """Every context of a model, each up to the widest layer using it, with the exact layer widths."""
    maxima: dict[OpContext, list[int]] = {}
    exact: dict[OpContext, set[tuple[int, int]]] = {}
    for op in layer_ops:
        m = maxima.setdefault(op.context, [1, 1])
        m[0] = max(m[0], op.in_width)
        m[1] = max(m[1], op.out_width)
        exact.setdefault(op.context, set()).add((op.in_width, op.out_width))
    return [ContextPlan(ctx, mi, mo, frozenset(exact[ctx])) for ctx, (mi, mo) in maxima.items()]


def load_spec(path: str | Path) -> list[ContextPlan]:
    """Read a ``--spec`` grid file.

    Format: ``{"contexts": [{"context": {<OpContext.to_dict()>}, "max_in": 64, "max_out": 64,
    "points": [[in, out], ...]}, ...]}`` (``max_out`` and ``points`` optional).

    Raises:
        EdgetrimError: missing file, bad JSON or a bad entry (one line naming it).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgetrimError(f"spec file {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise EdgetrimError(f"spec file {path} is not valid JSON: {exc}") from None
    entries = data.get("contexts") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise EdgetrimError(f"spec file {path} needs a non-empty 'contexts' list")
    plans = []
    for n, entry in enumerate(entries):
        try:
            ctx = OpContext.from_dict(entry["context"])
            max_in = int(entry["max_in"])
            max_out = int(entry.get("max_out", max_in))
            include = frozenset((int(i), int(o)) for i, o in entry.get("points", []))
            plans.append(ContextPlan(ctx, max_in, max_out, include))
        except (KeyError, TypeError, ValueError) as exc:
            raise EdgetrimError(
                f"spec file {path}: context #{n} is invalid ({type(exc).__name__}: {exc})"
            ) from None
    return plans


@dataclass(frozen=True)
class ProfileConfig:
    """Knobs of a profiling session.

    Args:
        seed: seed of the measurement order.
        save_every: write the table after this many new points.
        batch_size: requests handed to ``target.measure_ops`` at once (remote targets batch them).
        points_per_context: cap on the initial plan of one context (``plan_points`` budget).
        max_points: cap on the points in the table (initial plan and refinement together).
        refine_tol: relative interpolation miss that triggers refinement.
        refine_rounds: at most this many refinement rounds.
        refine_max_new: at most this many new points per context per refinement round (noise
            alone makes many cells "miss"; this keeps refinement from exploding the table).
        subtract_overhead: subtract the runtime's empty-invoke cost from every point.
        recheck_ratio: a point whose median exceeds both neighbours along an axis by more than this
            factor is measured again and the lower median kept (:func:`spike_points`): load from
            other processes only ever adds time, so an isolated spike is more likely disturbance
            than a real latency step.
        recheck_rounds: re-measure spikes this many times (after the plan and after refinement).
        passes: measure every planned point this many times, each pass in a fresh random order, and
            keep the lowest median. On a shared machine, load from other processes inflates whole
            stretches of a run; a second pass at another moment halves the chance that a point
            keeps a disturbed value (it doubles the build time).
        drift_tolerance: on resume, ``drift_points`` stored points are timed again first; when a
            quarter of them or more now take over ``1 + tol`` times (or under ``1 / (1 + tol)``
            times) what is stored (a busier or quieter host, another power mode, a rebuilt
            runtime), old and new points would not be comparable and the table starts over (the
            old file is kept beside it as ``<name>.stale.json``). A quarter, not the median: load
            from a neighbour slows some kernels (memory-bound ones) and leaves others alone.
            ``None``: never start over.
        drift_points: how many stored points the resume check times (the slower half of the table).
    """

    seed: int = 0
    save_every: int = 25
    batch_size: int = 16
    points_per_context: int | None = 400
    max_points: int | None = None
    refine_tol: float = 0.05
    refine_rounds: int = 3
    refine_max_new: int = 24
    subtract_overhead: bool = True
    recheck_ratio: float = 1.3
    recheck_rounds: int = 2
    passes: int = 1
    drift_tolerance: float | None = 0.2
    drift_points: int = 16

    def __post_init__(self) -> None:
        if self.drift_tolerance is not None and self.drift_tolerance <= 0:
            raise ValueError(f"drift_tolerance must be > 0 or None, got {self.drift_tolerance}")
        if self.drift_points < 3:
            raise ValueError(f"drift_points must be >= 3, got {self.drift_points}")
        if self.passes < 1:
            raise ValueError(f"passes must be >= 1, got {self.passes}")
        if self.recheck_ratio <= 1:
            raise ValueError(f"recheck_ratio must be > 1, got {self.recheck_ratio}")
        if self.recheck_rounds < 0:
            raise ValueError(f"recheck_rounds must be >= 0, got {self.recheck_rounds}")
        if self.save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {self.save_every}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.points_per_context is not None and self.points_per_context < 1:
            raise ValueError(f"points_per_context must be >= 1, got {self.points_per_context}")
        if self.max_points is not None and self.max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {self.max_points}")
        if not 0 < self.refine_tol < 1:
            raise ValueError(f"refine_tol must be in (0, 1), got {self.refine_tol}")
        if self.refine_max_new < 1:
            raise ValueError(f"refine_max_new must be >= 1, got {self.refine_max_new}")
        if self.refine_rounds < 0:
            raise ValueError(f"refine_rounds must be >= 0, got {self.refine_rounds}")


def _progress(total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="pt", file=sys.stderr, dynamic_ncols=True, leave=False)


class _Session:
    def __init__(
        self, target: Target, table: LatencyTable, out: Path, timing: TimingConfig, cfg: ProfileConfig
    ):
        self.target, self.table, self.out, self.timing, self.cfg = target, table, out, timing, cfg
        self.overhead_ms = float(table.meta.get("invoke_overhead_ms", 0.0))
        self.measured = 0
        self.since_save = 0
        self.started = time.perf_counter()
        self.build_time_before = float(table.meta.get("build_time_s", 0.0))
        # remote targets log per-batch conditions (phone temperature, cool-down); kept across resumes
        self.log_before = list(table.meta.get("measurement_log", []))

    def room(self) -> int | None:
        if self.cfg.max_points is None:
            return None
        return max(0, self.cfg.max_points - self.table.n_points())

    def save(self) -> None:
        meta = self.table.meta
        meta["build_time_s"] = round(self.build_time_before + time.perf_counter() - self.started, 3)
        meta["points"] = self.table.n_points()
        log = getattr(self.target, "measurement_log", None)
        if callable(log):
            meta["measurement_log"] = self.log_before + list(log())
        self.table.save(self.out)
        self.since_save = 0

    def measure(self, requests: list[OpRequest], desc: str, *, keep_lower: bool = False) -> None:
        room = self.room()
        if room is not None:
            requests = requests[:room]
        if not requests:
            return
        bar = _progress(len(requests), desc)
        try:
            for start in range(0, len(requests), self.cfg.batch_size):
                batch = requests[start : start + self.cfg.batch_size]
                for (ctx, i, o), stats in self.target.measure_ops(batch, self.timing):
                    if self.cfg.subtract_overhead and self.overhead_ms > 0:
                        stats = shift_stats(stats, self.overhead_ms)
                    old = self._existing(ctx, i, o) if keep_lower else None
                    if old is None or stats.median_ms < old.median_ms:
                        self.table.record(ctx, i, o, stats)
                    self.measured += 1
                    self.since_save += 1
                    bar.update(1)
                    if self.since_save >= self.cfg.save_every:
                        self.save()
        finally:
            bar.close()
            self.save()  # also on Ctrl-C / crash: finished points are kept

    def refresh_overhead(self) -> None:
        """Measure the empty-invoke overhead again; if it is lower, re-base every point on it.

        The overhead is first measured before any point, where a burst of load inflates it, and an
        inflated overhead is taken off every point of the table. Load only adds time, so the lowest
        overhead seen in the session is the best estimate: points were stored with the old one
        subtracted and get the difference added back.
        """
        measure = getattr(self.target, "invoke_overhead", None)
        old = self.overhead_ms
        if not (self.cfg.subtract_overhead and old > 0 and callable(measure)):
            return
        if not isinstance(self.target, LocalTarget):
            return  # on a phone each repeat is a whole benchmark run
        samples = [float(measure(OVERHEAD_TIMING).median_ms) for _ in range(OVERHEAD_REPEATS)]
        meta = self.table.meta
        meta["invoke_overhead_samples_ms"] = list(meta.get("invoke_overhead_samples_ms", [])) + samples
        new = min(samples)
        if new >= old:
            return
        for ctx in self.table.contexts():
            for i, o, stats in self.table.points(ctx):
                self.table.record(ctx, i, o, shift_stats(stats, new - old))
        logger.info("invoke overhead re-measured: %.4f ms -> %.4f ms; points re-based", old, new)
        meta["invoke_overhead_ms"] = new
        self.overhead_ms = new

    def _existing(self, ctx: OpContext, i: int, o: int) -> LatencyStats | None:
        for pi, po, st in self.table.points(ctx):
            if (pi, po) == (i, o):
                return st
        return None

    def recheck(self, plans: Sequence[ContextPlan], ratio: float, rng: random.Random, desc: str) -> int:
        """Measure every spike of ``plans``' contexts again, keeping the lower median; returns the count."""
        todo = [(p.context, i, o) for p in plans for i, o in spike_points(self.table, p.context, ratio=ratio)]
        rng.shuffle(todo)
        self.measure(todo, desc, keep_lower=True)
        return len(todo)


def _alignment(width: int) -> int:
    """The largest power of two dividing ``width``."""
    return width & -width


def spike_points(table: LatencyTable, ctx: OpContext, *, ratio: float) -> list[tuple[int, int]]:
    """Points whose median stands out from their neighbours along an axis by more than ``ratio``.

    One-axis contexts are checked along their width; two-axis contexts along every row (fixed input
    width) and every column (fixed output width). An inner point is flagged when it exceeds both
    neighbours; any point when it exceeds a wider width that is no more aligned than it (alignment:
    the largest power of two dividing the width); an end point (the widest or narrowest width of a
    line, which is often a model's own layer width) when it exceeds both its neighbour scaled in
    proportion to width and the linear extrapolation of its two neighbours.
    Re-measuring keeps the lower median, so a real step that gets flagged only costs time.
    """
    pts = {(i, o): s.median_ms for i, o, s in table.points(ctx)}
    lines: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i, o in pts:
        if ctx.one_axis:
            lines.setdefault((0, 0), []).append((i, o))
        else:
            lines.setdefault((0, i), []).append((i, o))
            lines.setdefault((1, o), []).append((i, o))
    out: set[tuple[int, int]] = set()
    for (axis, _), line in lines.items():

        def width(p: tuple[int, int], axis: int = axis) -> int:
            return p[1] if axis == 0 else p[0]

        line.sort(key=width)
        for a, b, c in zip(line, line[1:], line[2:]):
            if pts[b] > ratio * max(pts[a], pts[c]):
                out.add(b)
        # An aligned width among unaligned ones (16 between 15 and 17) hides behind their real
        # slowness. But a kernel never gets faster with more channels at the same or a lower
        # alignment (more alignment never makes it slower): a width that costs more than a wider
        # one no more aligned than it (88 channels against 100) is a spike.
        cheapest: dict[int, float] = {}  # alignment -> lowest cost among the wider widths seen
        for p in reversed(line):
            align = _alignment(width(p))
            bound = min((v for al, v in cheapest.items() if al <= align), default=math.inf)
            if pts[p] > ratio * bound:
                out.add(p)
            cheapest[align] = min(pts[p], cheapest.get(align, math.inf))
        for end, near in ((line[0], line[1:3]), (line[-1], line[-2:-4:-1])):
            if not near or end == near[0]:
                continue
            # cost grows at most about in proportion to width (or along the neighbours' trend)
            expected = pts[near[0]] * max(1.0, width(end) / width(near[0]))
            if len(near) == 2:
                a, a2 = near
                slope = (pts[a] - pts[a2]) / (width(a) - width(a2))
                expected = max(expected, pts[a] + slope * (width(end) - width(a)))
            if pts[end] > ratio * expected:
                out.add(end)
    return sorted(out)


def _open_table(target: Target, out: Path, resume: bool) -> LatencyTable:
    info = target.info()
    if resume and out.exists():
        table = load_table(out)
        if table.device.fingerprint() != info.fingerprint():
            raise TableError(
                f"cannot resume {out}: it was made on {table.device.fingerprint()}, not {info.fingerprint()}; "
                "use another --out or the same target and --threads"
            )
        logger.info("resuming %s with %d points", out, table.n_points())
        return table
    if out.exists():
        logger.warning("overwriting %s (pass --resume to continue it instead)", out)
    return LatencyTable(info, meta={})


def resume_drift(
    target: Target, table: LatencyTable, timing: TimingConfig, *, points: int, seed: int
) -> dict[str, float | int] | None:
    """Time a seeded sample of ``table``'s stored points again: ``{"low", "ratio", "high",
    "points"}``, the quartiles and median over the sample of now / stored (each point timed twice,
    the lower kept); ``None`` when the table has fewer than 3 points to try.

    The sample comes from the slower half of the table: the shortest points are mostly invoke
    overhead and noise, and say little about how fast kernels run now. The table's own invoke
    overhead is subtracted as it was from the stored points.
    """
    stored = {(ctx, i, o): s.median_ms for ctx in table.contexts() for i, o, s in table.points(ctx)}
    if not stored:
        return None
    cut = sorted(stored.values())[len(stored) // 2]
    pool = sorted(
        (k for k, v in stored.items() if v >= cut and v > 0), key=lambda k: (k[0].key(), k[1], k[2])
    )
    if len(pool) < 3:
        return None
    sample = random.Random(seed + 3).sample(pool, min(points, len(pool)))
    overhead = (
        float(table.meta.get("invoke_overhead_ms", 0.0))
        if table.meta.get("invoke_overhead_subtracted")
        else 0.0
    )
    now: dict[OpRequest, float] = {}
    for order in (sample, sample[::-1]):  # twice, the lower kept: load only ever adds time
        for req, stats in target.measure_ops(order, timing):
            ms = shift_stats(stats, overhead).median_ms
            now[req] = min(ms, now.get(req, ms))
    low, mid, high = statistics.quantiles([now[req] / stored[req] for req in sample], n=4)
    return {"low": low, "ratio": mid, "high": high, "points": len(sample)}


def _restart_if_drifted(
    target: Target, table: LatencyTable, out: Path, timing: TimingConfig, cfg: ProfileConfig
) -> LatencyTable:
    """``table`` when its stored points still time as they did, else a new empty table (see
    ``ProfileConfig.drift_tolerance``); the finding is kept in ``meta["resume_drift"]``."""
    table.meta.pop("resume_drift", None)  # a finding of an earlier resume
    if cfg.drift_tolerance is None:
        return table
    drift = resume_drift(target, table, timing, points=cfg.drift_points, seed=cfg.seed)
    if drift is None:
        return table
    finding = {**drift, "tolerance": cfg.drift_tolerance}
    if 1.0 / (1.0 + cfg.drift_tolerance) <= drift["low"] and drift["high"] <= 1.0 + cfg.drift_tolerance:
        table.meta["resume_drift"] = finding | {"restarted": False}
        return table
    stale = out.with_name(f"{out.stem}.stale{out.suffix}")
    os.replace(out, stale)  # nothing is lost: the old points stay readable beside the new table
    logger.warning(
        "%s: %d stored points now time %.2fx-%.2fx (quartiles) what they did, beyond %.2fx: the host "
        "or runtime changed since they were measured, so the table starts over; the old one is kept as %s",
        out, drift["points"], drift["low"], drift["high"], 1 + cfg.drift_tolerance, stale,
    )  # fmt: skip
    fresh = LatencyTable(target.info(), meta={})
    fresh.meta["resume_drift"] = finding | {"restarted": True, "stale_copy": str(stale)}
    return fresh


#: Widths (in multiples of the NCHWc block) at which layout reorders are measured; the predictor fits
#: ``a + b x elements`` through them, so a few sizes per spatial shape are enough.
_REORDER_BLOCKS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def nchwc_reorder_requests(plans: Sequence[ContextPlan], block: int) -> list[OpRequest]:
    """onnxruntime NCHWc ReorderInput / ReorderOutput points for the spatial shapes of ``plans``.

    Every conv / depthwise / (avg, max) pool context contributes its input shape (ReorderInput, block
    multiples only: the kernel requires them) and its output shape (ReorderOutput, also at widths
    off the block, which convs may produce), each up to the context's widest layer. Input shapes
    also get reorder chains (in-graph price); output shapes get blocked 1x1 convs with and without
    each activation of :data:`NCHWC_PRICED_FUSED_ACTS` that the plan holds (its fused price).
    """

    shapes: dict[tuple[str, tuple[int, int], int], int] = {}
    for p in plans:
        ctx = p.context
        if ctx.kind not in (OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D) and not (
            ctx.kind is OpKind.POOL and ctx.variant in ("avg", "max")
        ):
            continue
        for direction, spatial, max_w in (
            ("in", ctx.spatial, p.max_in),
            ("out", conv_out_hw(ctx), p.max_out),
        ):
            key = (direction, spatial, ctx.tokens)
            shapes[key] = max(shapes.get(key, 0), max_w)
    # fused activations are priced only when the plan has them (they may run inside blocked convs)
    fused_acts = [a for a in NCHWC_PRICED_FUSED_ACTS
                  if any(p.context.kind is OpKind.ACTIVATION and p.context.variant == a for p in plans)]  # fmt: skip
    reqs: list[OpRequest] = []
    for (direction, spatial, tokens), max_w in sorted(shapes.items()):
        ctx = OpContext(OpKind.OTHER, spatial=spatial, tokens=tokens, variant=f"nchwc{block}_{direction}")
        widths = {block * k for k in _REORDER_BLOCKS if block * k <= max(max_w, block)}
        if direction == "out" and fused_acts:
            # a blocked conv's fused activation, priced where it runs: at conv outputs (blocked widths)
            fuse_widths = sorted({block * k for k in (1, 2, 4, 8, 16) if block * k <= max(max_w, block)})
            for act in ("none", *fused_acts):
                fuse = OpContext(
                    OpKind.OTHER, spatial=spatial, tokens=tokens, variant=f"nchwc{block}_fuse_{act}"
                )
                reqs.extend((fuse, w, w) for w in fuse_widths)
        if direction == "out":
            widths |= {w + block // 2 + 1 for w in widths if w + block // 2 + 1 <= max_w}
        else:  # in-graph price of a reorder: chains of pairs, at the shapes where regions start
            for k in NCHWC_PAIR_CHAINS:
                chain = OpContext(
                    OpKind.OTHER, spatial=spatial, tokens=tokens, variant=f"nchwc{block}_pair{k}"
                )
                reqs.extend((chain, w, w) for w in sorted(widths))
        reqs.extend((ctx, w, w) for w in sorted(widths))
    return reqs


def profile_table(
    target: Target,
    plan: Sequence[ContextPlan] | Sequence[LayerOp],
    *,
    out: str | Path,
    resume: bool = False,
    timing: TimingConfig | None = None,
    refine: bool = True,
    config: ProfileConfig | None = None,
) -> LatencyTable:
    """Measure ``plan`` on ``target`` into the table file ``out`` and return the table.

    Args:
        target: where to measure (``get_target(...)``).
        plan: ``ContextPlan`` entries (``load_spec``) or a model's ``LayerOp`` list (every context up
            to that layer's widths, exact layer widths included).
        out: table file; written atomically every ``config.save_every`` points and at the end.
        resume: continue ``out`` if it exists, skipping measured points; refuses a table from
            another target / device / thread count, and starts over when a sample of its points
            no longer times as stored (``config.drift_tolerance``).
        timing: per-point timing (default ``TimingConfig()``).
        refine: run adaptive refinement rounds after the initial plan.
        config: session knobs (seed, caps, refinement tolerance).

    Raises:
        TableError: resuming into a table of another target or a damaged table.

    Example:
        >>> table = profile_table(get_target("ort-cpu"), load_spec("grid.json"), out="t.json")  # doctest: +SKIP
    """
    cfg = config or ProfileConfig()
    timing = timing or TimingConfig()
    out = Path(out)
    if not plan:
        raise EdgetrimError("nothing to profile: the model has no operators / the spec no contexts")
    plans = plan_from_layer_ops(plan) if isinstance(plan[0], LayerOp) else list(plan)  # type: ignore[arg-type]
    table = _open_table(target, out, resume)
    if resume and table.n_points():
        table = _restart_if_drifted(target, table, out, timing, cfg)
    session = _Session(target, table, out, timing, cfg)

    skipped: dict[str, str] = dict(table.meta.get("skipped_contexts", {}))
    usable: list[ContextPlan] = []
    for p in plans:
        try:
            validate_context(p.context)
            usable.append(p)
        except (UnsupportedOpError, ValueError) as exc:
            skipped[p.context.key()] = str(exc)
            logger.warning("skipping %s: %s", p.context.key(), exc)

    meta = table.meta
    meta.setdefault("timing", timing.to_dict())
    meta.setdefault("seed", cfg.seed)
    meta["skipped_contexts"] = skipped
    meta["target"] = target.name
    if "invoke_overhead_ms" not in meta:
        overhead = getattr(target, "invoke_overhead", None)
        if cfg.subtract_overhead and callable(overhead):
            # Several short measurements, the lowest kept: load from other processes only adds
            # time, and an inflated overhead would be taken off every point of the table.
            # (local targets only: on a phone each repeat is a whole benchmark run)
            repeats = OVERHEAD_REPEATS if isinstance(target, LocalTarget) else 1
            samples = [float(overhead(OVERHEAD_TIMING).median_ms) for _ in range(repeats)]
            meta["invoke_overhead_ms"] = min(samples)
            meta["invoke_overhead_samples_ms"] = samples
        else:
            meta["invoke_overhead_ms"] = 0.0
        meta["invoke_overhead_subtracted"] = bool(cfg.subtract_overhead and meta["invoke_overhead_ms"] > 0)
    session.overhead_ms = float(meta["invoke_overhead_ms"])
    runtime_meta = getattr(target, "table_meta", None)
    if callable(runtime_meta) and "per_op_overhead_ms" not in meta:
        meta.update(runtime_meta(OVERHEAD_TIMING))

    plan_requests: list[OpRequest] = []
    if meta.get("ort_nchwc_block"):
        plan_requests.extend(nchwc_reorder_requests(usable, int(meta["ort_nchwc_block"])))
    for p in usable:
        points = plan_points(p.context, p.max_in, p.max_out, budget=cfg.points_per_context, include=p.include)
        plan_requests.extend((p.context, i, o) for i, o in points)
    todo = [r for r in plan_requests if not table.has(*r)]
    random.Random(cfg.seed).shuffle(todo)
    logger.info(
        "%d points to measure on %s (%d already in the table)", len(todo), target.name, table.n_points()
    )
    session.measure(todo, f"profile {target.name}")
    planned = [r for r in plan_requests if table.has(*r)]
    for k in range(1, cfg.passes):
        again = list(planned)
        random.Random(cfg.seed + 100 + k).shuffle(again)
        session.measure(again, f"pass {k + 1} {target.name}", keep_lower=True)
    recheck_rng = random.Random(cfg.seed + 2)
    rechecked = 0
    if cfg.recheck_rounds > 0:
        # a model's own layer widths decide its prediction directly: every one is measured a second
        # time, at another moment, and the lower median kept (load only ever adds time)
        exact = [(p.context, i, o) for p in usable for i, o in sorted(p.include)]
        recheck_rng.shuffle(exact)
        session.measure(exact, f"recheck layer widths {target.name}", keep_lower=True)
        rechecked += len(exact)
        rechecked += session.recheck(usable, cfg.recheck_ratio, recheck_rng, f"recheck {target.name}")

    if refine:
        rng = random.Random(cfg.seed + 1)
        rounds = 0
        while rounds < cfg.refine_rounds:
            new: list[OpRequest] = []
            for p in usable:
                if len(table.points(p.context)) < 3:
                    continue
                new.extend(
                    (p.context, i, o)
                    for i, o in refine_points(
                        table, p.context, tol=cfg.refine_tol, max_new=cfg.refine_max_new
                    )
                    if not table.has(p.context, i, o)
                )
            if not new or session.room() == 0:
                break
            rounds += 1
            rng.shuffle(new)
            session.measure(new, f"refine {rounds} {target.name}")
        meta["refine_rounds"] = max(int(meta.get("refine_rounds", 0)), rounds)
    for k in range(1, cfg.recheck_rounds):
        rechecked += session.recheck(usable, cfg.recheck_ratio, recheck_rng, f"recheck {k + 1} {target.name}")
    session.refresh_overhead()
    meta["points_rechecked_last_run"] = rechecked
    meta["points_measured_last_run"] = session.measured
    session.save()
    return table
