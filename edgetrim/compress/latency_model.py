"""Bind a model to its latency / FLOPs terms once; evaluate them every step.

Every operator the tables know (``extract_layer_ops``) gets a :class:`LayerTerm`: its context and two
:class:`WidthExpr` saying how its input and output widths depend on the channel-group widths
(``width = const + sum_g coef_g * n_g``; a flatten before a linear gives ``coef = H*W``, a
concatenation sums groups). The expressions are found by probing: one group at a time is narrowed by
one unit in a physically sliced copy and the extracted widths are compared, so no naming convention
between ``graph`` and ``model_ops`` is assumed.

The differentiable cost (Eq. 6) evaluates :func:`~edgetrim.compress.surrogate.bilinear_ms` on the
table's monotone lower envelope at the soft widths; :meth:`LatencyModel.hard_ms` evaluates the real
(staircase) table at integer widths, term by term. :meth:`LatencyModel.whole_ms` is what budgets are
checked against: the table's whole-model prediction (``predict_model``) of the operators at those
widths, which adds the runtime structure a per-op sum leaves out and which itself changes with the
widths (on onnxruntime: NCHWc reorders at region boundaries, the reorders a blocked op's one-op
profile paid, fused nodes, per-node dispatch).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from edgetrim.compress.graph import ChannelGroup, materialize_channels
from edgetrim.compress.surrogate import bilinear_ms, bilinear_ms_batched
from edgetrim.errors import UncoveredOpError
from edgetrim.lookup_tables import LatencyTable, ModelPredictor
from edgetrim.types import LayerOp, OpContext, OpKind

logger = logging.getLogger(__name__)

__all__ = ["LatencyModel", "LayerTerm", "WidthExpr", "bind_layer_terms", "default_extractor"]

Extractor = Callable[[nn.Module, tuple[Tensor, ...]], list[LayerOp]]

# Data movement ops a table may leave out: they cost what the table says when present, 0 otherwise.
_OPTIONAL_KINDS = frozenset({OpKind.OTHER})


@dataclass(frozen=True)
class WidthExpr:
    """``width = const + sum(coef * n_group)`` over the channel groups a layer's width depends on."""

    const: float
    terms: tuple[tuple[int, float], ...] = ()

    def hard(self, widths: Sequence[int]) -> int:
        return round(self.const + sum(c * widths[g] for g, c in self.terms))

    def soft(self, counts: Sequence[Tensor]) -> Tensor:
        value = torch.as_tensor(self.const, dtype=torch.float32)
        for g, c in self.terms:
            value = value + c * counts[g]
        return value

    @property
    def groups(self) -> tuple[int, ...]:
        return tuple(g for g, _ in self.terms)


@dataclass(frozen=True)
class LayerTerm:
    """One operator of the model with its width expressions (``op`` holds the dense widths)."""

    op: LayerOp
    in_expr: WidthExpr
    out_expr: WidthExpr
    # (group, size): the op's *context* changes with that group (attention matmuls / softmax whose
    # token count includes the heads); its cost is taken proportional to the group's kept fraction
    # in the soft (training) signal. ``probe`` (set with ``scale``) is its context with one unit of
    # the group removed: the whole-model price builds the context at any width from the two
    # (:func:`context_at`).
    scale: tuple[int, int] | None = None
    probe: OpContext | None = None
    unit: int = 1

    @property
    def groups(self) -> tuple[int, ...]:
        extra = {self.scale[0]} if self.scale is not None else set()
        return tuple(sorted(set(self.in_expr.groups) | set(self.out_expr.groups) | extra))


def _at(dense: int, probe: int, removed: int) -> int:
    return max(1, dense + (probe - dense) * removed)


def context_at(dense: OpContext, probe: OpContext, removed: int) -> OpContext:
    """The context of an op whose context changes with a group, with ``removed`` units of the group
    gone, from its dense context and its context with one unit gone (``probe``). Every number that
    differs between the two changes linearly with the units removed: token counts (batch x heads x
    queries), spatial extents (heads x ...), numbers inside the variant (``batch8`` -> ``batch2``).

    Example:
        >>> d = OpContext(OpKind.MATMUL, tokens=8, variant="batch8")
        >>> context_at(d, OpContext(OpKind.MATMUL, tokens=8, variant="batch7"), 6).variant
        'batch2'
    """
    changes: dict[str, object] = {}
    if probe.tokens != dense.tokens:
        changes["tokens"] = _at(dense.tokens, probe.tokens, removed)
    if probe.spatial != dense.spatial:
        changes["spatial"] = tuple(_at(d, p, removed) for d, p in zip(dense.spatial, probe.spatial))
    if probe.variant != dense.variant:
        d_parts, p_parts = re.split(r"(\d+)", dense.variant), re.split(r"(\d+)", probe.variant)
        if len(d_parts) == len(p_parts):
            changes["variant"] = "".join(
                str(_at(int(d), int(p), removed)) if i % 2 and d != p else d
                for i, (d, p) in enumerate(zip(d_parts, p_parts))
            )
    return dataclasses.replace(dense, **changes)  # type: ignore[arg-type]


def default_extractor(runtime: str) -> Extractor:
    """``extract_layer_ops`` with the fusion rules of ``runtime`` (the table's ``device.runtime``)."""
    from edgetrim.model_ops import extract_layer_ops, fusion_for_runtime

    fusion = fusion_for_runtime(runtime)

    def extract(model: nn.Module, example_inputs: tuple[Tensor, ...]) -> list[LayerOp]:
        return list(extract_layer_ops(model, example_inputs, fusion=fusion))

    return extract


def _match(base: list[LayerOp], probe: list[LayerOp]) -> list[LayerOp]:
    if [o.name for o in base] == [o.name for o in probe]:
        return probe
    by_name = {o.name: o for o in probe}
    if len(by_name) == len(probe) and all(o.name in by_name for o in base):
        return [by_name[o.name] for o in base]
    raise RuntimeError("narrowing one channel group changed the operator list; cannot bind widths")


def bind_layer_terms(
    model: nn.Module,
    example_inputs: tuple[Tensor, ...],
    groups: Sequence[ChannelGroup],
    *,
    extract: Extractor,
) -> list[LayerTerm]:
    """Find, for every extracted operator, how its widths depend on the group widths.

    Costs one slicing + extraction per group (a few seconds for the zoo models).
    """
    model.eval()
    base = extract(model, example_inputs)
    in_terms: list[list[tuple[int, float]]] = [[] for _ in base]
    out_terms: list[list[tuple[int, float]]] = [[] for _ in base]
    scales: list[tuple[int, int] | None] = [None for _ in base]
    probes: list[tuple[OpContext, int] | None] = [None for _ in base]
    for gi, g in enumerate(groups):
        if g.num_units < 2:
            continue  # a one-unit group can never shrink
        keep = torch.arange(g.size - g.unit)
        narrowed = materialize_channels(model, example_inputs, {gi: keep}, groups=groups)
        probe = _match(base, extract(narrowed, example_inputs))
        for k, (b, p) in enumerate(zip(base, probe)):
            if b.context != p.context:
                scales[k] = (gi, g.size)
                probes[k] = (p.context, g.unit)
                continue
            if b.in_width != p.in_width:
                in_terms[k].append((gi, (b.in_width - p.in_width) / g.unit))
            if b.out_width != p.out_width:
                out_terms[k].append((gi, (b.out_width - p.out_width) / g.unit))
    sizes = [g.size for g in groups]
    terms = []
    for k, op in enumerate(base):
        ie = WidthExpr(op.in_width - sum(c * sizes[g] for g, c in in_terms[k]), tuple(in_terms[k]))
        oe = WidthExpr(op.out_width - sum(c * sizes[g] for g, c in out_terms[k]), tuple(out_terms[k]))
        probe, unit = probes[k] if probes[k] is not None else (None, 1)
        terms.append(LayerTerm(op=op, in_expr=ie, out_expr=oe, scale=scales[k], probe=probe, unit=unit))
    return terms


def resolve_context(known: set[OpContext], ctx: OpContext) -> OpContext | None:
    """``ctx`` itself, or the same op with the other bias setting (a factorised layer's first half has
    no bias; its cost is that of the biased op), or None when the table cannot price it."""
    if ctx in known:
        return ctx
    alt = dataclasses.replace(ctx, bias=not ctx.bias)
    return alt if alt in known else None


class LatencyModel:
    """Latency (and FLOPs) of a gated model as a function of its channel-group widths.

    Args:
        table: the target's latency table.
        terms: from :func:`bind_layer_terms`.
        units: channels per mask entry of each group (``ChannelGroup.unit``).

    Raises:
        UncoveredOpError: a layer whose width can change has no context in the table (names the layer).
    """

    def __init__(self, table: LatencyTable | None, terms: Sequence[LayerTerm], units: Sequence[int]) -> None:
        self.table = table
        self.terms = list(terms)
        self.units = list(units)
        self._grids: dict[tuple[OpContext, int, int], tuple[Tensor, Tensor, Tensor]] = {}
        self._term_grid: list[tuple[Tensor, Tensor, Tensor] | None] = []
        self._cache: dict[tuple[int, int, int], float] = {}
        self._real: dict[OpContext, np.ndarray] = {}  # dense real-table surface per context
        self._packed: tuple[Tensor, ...] | None = None
        self._predictor = ModelPredictor(table) if table is not None else None
        self._whole: dict[tuple[int, ...], float] = {}
        self._group_terms: dict[int, list[int]] = {}
        self._ops: dict[tuple[int, int, int, int], LayerOp] = {}
        known = set(table.contexts()) if table is not None else set()
        self._known = known
        self.contexts = [resolve_context(known, t.op.context) for t in self.terms]  # as priced by the table
        self.covered = [c is not None for c in self.contexts]
        if table is None:
            return
        self._need: dict[OpContext, tuple[int, int]] = {}
        for t, c in zip(self.terms, self.contexts):  # one grid per context, wide enough for every user
            if c is not None:
                a, b = self._need.get(c, (1, 1))
                self._need[c] = (max(a, t.op.in_width), max(b, t.op.out_width))
        for t, covered in zip(self.terms, self.covered):
            if not covered:
                if t.op.context.kind in _OPTIONAL_KINDS:
                    self._term_grid.append(None)
                    continue
                raise UncoveredOpError(
                    f"the table has no context {t.op.context.key()} needed by layer {t.op.name!r}; "
                    f"profile this model into the table (edgetrim profile --model ...)"
                )
            self._term_grid.append(self._grid(t, self.contexts[len(self._term_grid)]) if t.groups else None)

    # ---- grids -----------------------------------------------------------------------------------
    def _grid(self, term: LayerTerm, ctx: OpContext) -> tuple[Tensor, Tensor, Tensor]:
        """Envelope grid of a term's (table) context over widths ``0..max`` (width 0 costs 0 ms)."""
        assert self.table is not None
        max_in, max_out = self.table.max_widths(ctx)
        need_in, need_out = self._need[ctx]
        w_in = max(max_in, need_in)
        w_out = 1 if ctx.one_axis else max(max_out, need_out)
        key = (ctx, w_in, w_out)
        if key not in self._grids:
            ia = np.arange(1, w_in + 1)
            oa = np.arange(1, w_out + 1)
            _, _, real = self.table.surface_ms(ctx, ia, oa)  # (w_in, w_out) staircase, = predict_ms
            from edgetrim.lookup_tables.interpolation import envelope_ms

            env = envelope_ms(real)  # monotone lower envelope: carries the gradients
            self._real[ctx] = real
            ms = np.zeros((w_in + 1, 1 if ctx.one_axis else w_out + 1))
            if ctx.one_axis:
                ms[1:, 0] = env[:, 0]
                out_axis = torch.tensor([1.0])
            else:
                ms[1:, 1:] = env
                out_axis = torch.arange(0, w_out + 1, dtype=torch.float32)
            self._grids[key] = (
                torch.arange(0, w_in + 1, dtype=torch.float32),
                out_axis,
                torch.as_tensor(ms, dtype=torch.float32),
            )
        return self._grids[key]

    # ---- latency ---------------------------------------------------------------------------------
    def _pack(self) -> None:
        """Stack the per-term grids (padded) and width expressions for one batched lookup per step."""
        active = [k for k, g in enumerate(self._term_grid) if g is not None]
        n_groups = len(self.units)
        n_max = max((self._term_grid[k][0].numel() for k in active), default=1)
        m_max = max((self._term_grid[k][1].numel() for k in active), default=1)
        T = len(active)
        in_axes = torch.zeros(T, n_max)
        out_axes = torch.zeros(T, m_max)
        grids = torch.zeros(T, n_max, m_max)
        n_in = torch.ones(T, dtype=torch.long)
        n_out = torch.ones(T, dtype=torch.long)
        c_in, c_out = torch.zeros(T, n_groups), torch.zeros(T, n_groups)
        k_in, k_out = torch.zeros(T), torch.zeros(T)
        one_axis = torch.zeros(T, dtype=torch.bool)
        scale_idx = torch.full((T,), -1, dtype=torch.long)
        scale_size = torch.ones(T)
        for r, k in enumerate(active):
            ia, oa, ms = self._term_grid[k]
            n, m = ia.numel(), oa.numel()
            pad = lambda a, size: torch.cat([a, a[-1] + torch.arange(1, size - a.numel() + 1)])  # noqa: E731
            in_axes[r], out_axes[r] = pad(ia, n_max), pad(oa, m_max)
            grids[r, :n, :m] = ms
            n_in[r], n_out[r] = n, m
            t = self.terms[k]
            one_axis[r] = t.op.context.one_axis
            k_in[r], k_out[r] = t.in_expr.const, t.out_expr.const
            if t.scale is not None:
                scale_idx[r], scale_size[r] = t.scale[0], float(t.scale[1])
            for g, c in t.in_expr.terms:
                c_in[r, g] += c
            for g, c in t.out_expr.terms:
                c_out[r, g] += c
        self._packed = (
            in_axes,
            out_axes,
            grids,
            n_in,
            n_out,
            c_in,
            c_out,
            k_in,
            k_out,
            one_axis,
            scale_idx,
            scale_size,
        )

    def soft_ms(self, counts: Sequence[Tensor]) -> Tensor:
        """Differentiable latency (envelope) of the width-dependent terms at soft widths (channels)."""
        if self._packed is None:
            self._pack()
        in_axes, out_axes, grids, n_in, n_out, c_in, c_out, k_in, k_out, one_axis, sc_idx, sc_size = (
            self._packed
        )
        if grids.shape[0] == 0:
            return torch.zeros(())
        s = torch.stack([torch.as_tensor(c, dtype=torch.float32) for c in counts])  # (G,)
        x = k_in + c_in @ s  # (T,) soft input widths
        y = torch.where(one_axis, torch.ones_like(x), k_out + c_out @ s)  # (T,) soft output widths
        ms = bilinear_ms_batched(x, y, in_axes, out_axes, grids, n_in, n_out)  # (T,)
        frac = torch.where(sc_idx >= 0, s[sc_idx.clamp(min=0)] / sc_size, torch.ones_like(ms))  # (T,)
        return (ms * frac).sum()

    def soft_ms_reference(self, counts: Sequence[Tensor]) -> Tensor:
        """:meth:`soft_ms` term by term with the scalar :func:`bilinear_ms` (for tests)."""
        total = torch.zeros(())
        for t, grid in zip(self.terms, self._term_grid):
            if grid is None:
                continue
            x = t.in_expr.soft(counts)
            y = x if t.op.context.one_axis else t.out_expr.soft(counts)
            frac = counts[t.scale[0]] / t.scale[1] if t.scale is not None else 1.0
            total = total + bilinear_ms(x, y, *grid) * frac
        return total

    def term_ms(self, k: int, widths: Sequence[int]) -> float:
        """Real-table latency of term ``k`` at integer group widths."""
        t = self.terms[k]
        if t.scale is not None:
            g, size = t.scale
            return self._term_ms(k, widths) * widths[g] / size
        return self._term_ms(k, widths)

    def _term_ms(self, k: int, widths: Sequence[int]) -> float:
        t = self.terms[k]
        if self.table is None or not self.covered[k]:
            return 0.0
        w_in = max(0, t.in_expr.hard(widths))
        w_out = w_in if t.op.context.one_axis else max(0, t.out_expr.hard(widths))
        if w_in == 0 or w_out == 0:
            return 0.0
        ctx = self.contexts[k]
        assert ctx is not None
        real = self._real.get(ctx)
        if real is not None and w_in <= real.shape[0] and (ctx.one_axis or w_out <= real.shape[1]):
            return float(real[w_in - 1, 0 if ctx.one_axis else w_out - 1])
        key = (k, w_in, w_out)
        if key not in self._cache:
            self._cache[key] = float(self.table.predict_ms(ctx, w_in, w_out).ms)
        return self._cache[key]

    def hard_ms(self, widths: Sequence[int]) -> float:
        """Sum of the real (staircase) table's per-term latencies at these group widths."""
        return sum(self.term_ms(k, widths) for k in range(len(self.terms)))

    def op_at(self, k: int, widths: Sequence[int]) -> LayerOp:
        """Term ``k``'s operator at these group widths, in the context the table prices it with.

        A term whose context changes with a group (``scale``) gets its context at the group's width
        (:func:`context_at`), priced as the materialised model's op would be: from the table when it
        holds that context, else by the predictor's per-element fit of the kind.
        """
        t = self.terms[k]
        w_in = max(0, t.in_expr.hard(widths))
        w_out = max(0, t.out_expr.hard(widths))
        removed = 0
        if t.scale is not None:
            g, size = t.scale
            removed = (size - int(widths[g])) // t.unit
        key = (k, w_in, w_out, removed)
        op = self._ops.get(key)
        if op is None:
            ctx = self.contexts[k] or t.op.context
            if removed:
                assert t.probe is not None
                narrowed = context_at(t.op.context, t.probe, removed)
                ctx = resolve_context(self._known, narrowed) or narrowed
            op = dataclasses.replace(t.op, context=ctx, in_width=w_in, out_width=w_out)
            self._ops[key] = op
        return op

    def whole_ms(self, widths: Sequence[int]) -> float:
        """The table's whole-model prediction (``predict_model``) of the model at these group widths.

        Equal to the prediction of the materialised model at these widths (tested), without
        materialising it: the widths are substituted into the bound operators. What differs from
        :meth:`hard_ms` is the runtime structure in the prediction (invoke overhead, per-node
        dispatch, NCHWc reorders and fusions), part of which changes with the widths. Memoised.
        """
        assert self._predictor is not None, "whole_ms needs a table"
        key = tuple(int(w) for w in widths)
        hit = self._whole.get(key)
        if hit is not None:
            return hit
        ops = [self.op_at(k, key) for k in range(len(self.terms))]
        total = self._predictor.predict(ops).total_ms
        self._whole[key] = total
        return total

    # ---- FLOPs (Eq. 4) ---------------------------------------------------------------------------
    def _flops_scale(self, t: LayerTerm, x: Tensor | float, y: Tensor | float) -> Tensor | float:
        op = t.op
        if op.macs <= 0:
            return 0.0
        if op.context.one_axis:
            return 2.0 * op.macs * x / max(op.in_width, 1)
        return 2.0 * op.macs * x * y / max(op.in_width * op.out_width, 1)

    def soft_flops(self, counts: Sequence[Tensor]) -> Tensor:
        """Differentiable FLOPs (2 x MACs): ``sum_i c_i * s_in * s_out`` with the per-layer constants."""
        total = torch.zeros(())
        for t in self.terms:
            if not t.groups:
                continue
            total = total + self._flops_scale(t, t.in_expr.soft(counts), t.out_expr.soft(counts))
        return total

    def hard_flops(self, widths: Sequence[int]) -> float:
        return float(
            sum(self._flops_scale(t, t.in_expr.hard(widths), t.out_expr.hard(widths)) for t in self.terms)
        )

    def constant_ms(self, widths: Sequence[int]) -> float:
        """Latency of the terms no group can change (added to :meth:`soft_ms` for a total)."""
        return sum(self.term_ms(k, widths) for k, t in enumerate(self.terms) if not t.groups)

    def terms_of_group(self, g: int) -> list[int]:
        """Indices of the terms whose widths (or context) depend on group ``g`` (cached: the width fit
        asks for them in its inner loops)."""
        hit = self._group_terms.get(g)
        if hit is None:
            hit = self._group_terms[g] = [k for k, t in enumerate(self.terms) if g in t.groups]
        return hit

    def partial_ms(self, g: int, widths: Sequence[int]) -> float:
        """The cost the width fit compares when group ``g``'s width changes (``widths.PartialCost``):
        the whole-model price itself. A per-group sum of terms would miss the layout costs that move
        with the width (NCHWc reorders at region boundaries, the reorders blocked ops shed), mostly at
        narrow widths; the fit only compares prices that differ in group ``g``'s width."""
        return self.whole_ms(widths)
