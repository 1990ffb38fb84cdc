"""Re-measure exported artifacts on the target the latency table was made on.

Totals come from ``Target.measure_artifact`` (``edgetrim.profiler.targets``), the same timing path the
table's whole-model checks use, so local runtimes (``ort-cpu``, ``litert-cpu``) and phones (``adb:...``)
go through one interface.

Per-layer times (ONNX on onnxruntime): onnxruntime's profiler reports one ``<node>_kernel_time`` per
node, but only with graph optimisation *off* (otherwise fused nodes get new names and lose the
exporter's module metadata), and profiling itself slows every run (reported upstream: up to ~3x). So:

1. node times are the per-node median over ``profile_runs`` profiled runs, optimisation off;
2. each node is attributed to a layer of the prediction: by the module path the torch exporter stored
   on it (``pkg.torch.onnx.name_scopes``); nodes with no layer of their own (unfused activations,
   quantize/dequantize pairs) go to the layer that produced their input, else to the one consuming
   their output;
3. the per-node times are scaled by one factor so that they sum to the *un-profiled, optimised* total
   minus the runtime's per-invoke overhead (``table.meta["invoke_overhead_ms"]`` when the table has it).
   The shares between layers come from the profile, the absolute scale from the honest total.

Per-layer times (TFLite on a phone, ``adb:...``): ``AdbTarget.measure_artifact_per_op`` runs
``benchmark_model`` once plain (the total) and once with ``--enable_op_profiling=true`` (the "Run
Order" table), and scales the op times to the plain median minus the per-invoke overhead, as in
step 3 above. Each op row is matched to a node of the .tflite graph (read on the host with the LiteRT
interpreter, no delegate) by its output tensor names (rows are named ``[outputs]:INDEX``), else by
its index when the op type agrees; rows of a delegate's internal ops (``Delegate/Convolution (NHWC,
F32) IGEMM:0``, what XNNPACK prints) carry no tensor names and are aligned in order with graph nodes
of a matching op type. Nodes are attributed to layers as for ONNX, the module of a node coming from
the location litert-torch writes into tensor names (``pkg.Net/torch.nn.modules.conv.Conv2d_conv1;1``
is module ``conv1``; fused ops join several locations with ``;;``, the deepest wins). Rows matched to
no node are reported under :data:`UNATTRIBUTED`, so the rows still sum to the total.

TFLite per-op times on the *local* CPU need the C++ ``benchmark_model`` tool too (the Python
interpreter has no per-op profiler), so ``litert-cpu`` gives totals only.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgetrim.deploy.artifact import ExportArtifact, ExportFormat
from edgetrim.errors import ExportError
from edgetrim.types import DeviceInfo, LatencyStats

logger = logging.getLogger(__name__)

UNATTRIBUTED = "(unattributed)"
_COMPUTE = frozenset(
    {"Conv", "ConvTranspose", "Gemm", "MatMul", "QLinearConv", "QLinearMatMul", "ConvInteger"}
    | {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL"}  # TFLite
)
# functional-op layer names (fx call names, "_N" suffix stripped) -> graph op types (ONNX / TFLite, lower case)
_FUNCTIONAL_RE = re.compile(r"_\d+$")
_RESHAPES = frozenset({"reshape", "flatten", "squeeze", "unsqueeze", "expand_dims"})
_FUNCTIONAL: dict[str, frozenset[str]] = {
    "add": frozenset({"add"}),
    "iadd": frozenset({"add"}),
    "sub": frozenset({"sub"}),
    "mul": frozenset({"mul"}),
    "imul": frozenset({"mul"}),
    "cat": frozenset({"concat", "concatenation"}),
    "flatten": _RESHAPES,
    "view": _RESHAPES,
    "reshape": _RESHAPES,
    "relu": frozenset({"relu"}),
    "relu6": frozenset({"relu6", "clip"}),
    "sigmoid": frozenset({"sigmoid", "logistic"}),
    "hardswish": frozenset({"hardswish", "hard_swish"}),
    "gelu": frozenset({"gelu"}),
    "tanh": frozenset({"tanh"}),
    "softmax": frozenset({"softmax"}),
    "matmul": frozenset({"matmul", "batch_matmul"}),
    "mean": frozenset({"reducemean", "mean"}),
}
# a delegate's op description (XNNPACK's "Convolution (NHWC, F32) IGEMM") -> TFLite builtin ops
_DELEGATE_OPS = (
    ("global average pooling", ("MEAN", "AVERAGE_POOL_2D")),
    ("average pooling", ("AVERAGE_POOL_2D",)),
    ("max pooling", ("MAX_POOL_2D",)),
    ("deconvolution", ("TRANSPOSE_CONV",)),
    ("convolution", ("CONV_2D", "DEPTHWISE_CONV_2D")),
    ("fully connected", ("FULLY_CONNECTED",)),
    ("batch matrix multiply", ("BATCH_MATMUL",)),
    ("multiply", ("MUL",)),
    ("subtract", ("SUB",)),
    ("softmax", ("SOFTMAX",)),
    ("copy", ("RESHAPE", "SQUEEZE", "EXPAND_DIMS")),
)


@dataclass(frozen=True)
class LayerComparison:
    """Predicted vs measured latency of one layer (``None`` where one side has no number)."""

    name: str
    predicted_ms: float | None
    measured_ms: float | None
    nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class SparsityCheck:
    """Did unstructured sparsity pay off on this runtime? Sparse and dense twins measured side by side."""

    weight_sparsity: float
    sparse_ms: float
    dense_ms: float
    speedup: float
    paid_off: bool
    verdict: str


@dataclass(frozen=True)
class RemeasureReport:
    """Measured latency of one artifact next to the table's prediction."""

    label: str
    target: str
    device: DeviceInfo
    measured: LatencyStats
    predicted_ms: float | None
    layers: tuple[LayerComparison, ...]
    per_layer_method: str
    profile_scale: float | None = None
    sparsity: SparsityCheck | None = None

    @property
    def measured_ms(self) -> float:
        return self.measured.median_ms

    @property
    def error_rel(self) -> float | None:
        """(predicted - measured) / measured, or None without a prediction."""
        if self.predicted_ms is None or self.measured.median_ms <= 0:
            return None
        return (self.predicted_ms - self.measured.median_ms) / self.measured.median_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "target": self.target,
            "device": self.device.to_dict(),
            "measured": self.measured.to_dict(),
            "measured_ms": self.measured_ms,
            "predicted_ms": self.predicted_ms,
            "error_rel": self.error_rel,
            "layers": [asdict(r) for r in self.layers],
            "per_layer_method": self.per_layer_method,
            "profile_scale": self.profile_scale,
            "sparsity": asdict(self.sparsity) if self.sparsity else None,
        }


def _module_of(layer_name: str) -> str:
    return layer_name.split(":", 1)[0]


def attribute_nodes(
    nodes: Sequence[tuple[str, str, str, list[str], list[str]]], layer_names: Sequence[str]
) -> dict[str, str]:
    """Map every ONNX node name to a predicted layer name (or :data:`UNATTRIBUTED`).

    ``nodes`` are ``(name, op_type, module, inputs, outputs)`` in graph order (see
    ``onnx_export.node_modules``); ``layer_names`` are ``LayerOp.name``s (``features.3`` or
    ``features.3:add`` for a functional op inside a module).
    """
    by_module: dict[str, list[str]] = {}
    for name in layer_names:
        by_module.setdefault(_module_of(name), []).append(name)
    group: dict[str, str] = {}
    for node, op_type, module, _, _ in nodes:
        candidates: list[str] = []
        probe = module
        while probe and not candidates:  # the innermost module with a predicted layer
            candidates = by_module.get(probe, [])
            probe = probe.rpartition(".")[0]
        if candidates:
            tagged = [c for c in candidates if ":" in c and c.split(":", 1)[1].lower() in op_type.lower()]
            plain = [c for c in candidates if ":" not in c]
            group[node] = (tagged or plain or candidates)[0]
    # functional ops (``x + y`` -> layer "add_1", ``torch.flatten`` -> "flatten") are named after the
    # call, not a module: an unattributed node of that op type gets the first such layer that sits,
    # in layer order, between the layers of the attributed nodes before and after it (so a layout
    # reshape in front of conv1 cannot take the "flatten" before the classifier)
    order = {name: i for i, name in enumerate(layer_names)}
    used = set(group.values())
    queues: dict[str, list[str]] = {}
    for name in layer_names:
        base = _FUNCTIONAL_RE.sub("", name)
        if name not in used and ":" not in name and base in _FUNCTIONAL:
            queues.setdefault(base, []).append(name)
    pos_layer = [order[group[n]] if n in group else None for n, *_ in nodes]
    lo, hi = [-1] * len(nodes), [len(layer_names)] * len(nodes)
    for p in range(1, len(nodes)):
        prev = pos_layer[p - 1]
        lo[p] = max(lo[p - 1], prev if prev is not None else -1)
    for p in range(len(nodes) - 2, -1, -1):
        nxt = pos_layer[p + 1]
        hi[p] = min(hi[p + 1], nxt if nxt is not None else len(layer_names))
    for p, (node, op_type, *_) in enumerate(nodes):
        if node in group:
            continue
        kind = op_type.lower()
        for base, queue in queues.items():
            if kind not in _FUNCTIONAL[base]:
                continue
            hit = next((n for n in queue if lo[p] < order[n] < hi[p]), None)
            if hit is not None:
                group[node] = hit
                queue.remove(hit)
                break
    # exporter rewrites (conv+BN folding) can leave a compute node under a sibling module ("bn1"
    # for conv1): give such nodes, in graph order, the next predicted layer no node claimed yet
    claimed = {group[n] for n, op_type, *_ in nodes if n in group and op_type in _COMPUTE}
    pos = 0
    for node, op_type, *_ in nodes:
        if node in group:
            pos = max(pos, order[group[node]])
        elif op_type in _COMPUTE:
            free = next((n for n in layer_names[pos:] if n not in claimed), None)
            if free is not None:
                group[node] = free
                claimed.add(free)
                pos = order[free]
    producer: dict[str, str] = {}
    consumers: dict[str, list[str]] = {}
    for node, _, _, ins, outs in nodes:
        for t in outs:
            producer[t] = node
        for t in ins:
            consumers.setdefault(t, []).append(node)
    for node, _, _, ins, _ in nodes:  # forward: fused activations, requantisation after a layer
        if node not in group:
            for t in ins:
                src = producer.get(t)
                if src is not None and src in group:
                    group[node] = group[src]
                    break
    for node, _, _, _, outs in reversed(nodes):  # backward: weight / input dequantisation
        if node not in group:
            for t in outs:
                dst = next((c for c in consumers.get(t, []) if c in group), None)
                if dst is not None:
                    group[node] = group[dst]
                    break
    return {node: group.get(node, UNATTRIBUTED) for node, *_ in nodes}


def per_layer_onnx(
    path: Path,
    arrays: Sequence[np.ndarray],
    *,
    total_ms: float,
    overhead_ms: float,
    predicted: Sequence[tuple[str, float | None]],
    profile_runs: int = 20,
    threads: int = 1,
) -> tuple[list[LayerComparison], float]:
    """Per-layer measured times of an ONNX file, scaled to the un-profiled total (see module doc)."""
    from edgetrim.deploy.onnx_export import node_modules, profile_nodes

    nodes = node_modules(path)
    times = profile_nodes(path, arrays, runs=profile_runs, threads=threads)
    if not predicted:  # no table: one row per module the exporter recorded
        predicted = [(m, None) for m in dict.fromkeys(n[2] for n in nodes if n[2])]
    names = [n for n, _ in predicted]
    groups = attribute_nodes(nodes, names)
    profiled_total = sum(times.get(n, 0.0) for n, *_ in nodes)
    if profiled_total <= 0:
        raise ExportError(f"onnxruntime's profiler reported no node times for {path.name}")
    scale = max(total_ms - overhead_ms, 0.0) / profiled_total
    measured: dict[str, float] = {}
    members: dict[str, list[str]] = {}
    for node, *_ in nodes:
        g = groups[node]
        measured[g] = measured.get(g, 0.0) + times.get(node, 0.0) * scale
        members.setdefault(g, []).append(node)
    rows = [
        LayerComparison(name=n, predicted_ms=ms, measured_ms=measured.get(n), nodes=tuple(members.get(n, ())))
        for n, ms in predicted
    ]
    if UNATTRIBUTED in measured:
        rows.append(
            LayerComparison(UNATTRIBUTED, None, measured[UNATTRIBUTED], tuple(members.get(UNATTRIBUTED, ())))
        )
    return rows, scale


TfliteNode = tuple[str, str, str, list[str], list[str]]


def tflite_module(tensor_name: str) -> str:
    """The module path litert-torch recorded in a tensor name ("" when it names none).

    A location is ``Root/pkg.Class_attr/pkg.Class_attr;N``: the root class, then one
    ``<qualified class>_<attribute>`` per submodule. Fused ops join locations with ``;;``; the deepest
    (the last among equals) is the op's own module, e.g. ``conv1`` for a conv with its folded ``bn1``.

    Example:
        >>> tflite_module("m.Net;;m.Net/torch.nn.modules.batchnorm.BatchNorm2d_bn1;;m.Net/torch.nn.modules.conv.Conv2d_conv1;2")
        'conv1'
        >>> tflite_module("m.Net/torch.nn.modules.container.Sequential_features/m.Block_0/torch.nn.modules.linear.Linear_fc_u;")
        'features.0.fc_u'
    """
    best: list[str] = []
    for loc in tensor_name.split(";;"):
        segments = loc.split(";", 1)[0].split("/")
        attrs: list[str] = []
        for seg in segments[1:]:
            cls, sep, attr = seg.rpartition(".")[2].partition("_")
            if not sep or not cls or not attr:
                attrs = []
                break
            attrs.append(attr)
        if attrs and len(attrs) >= len(best):
            best = attrs
    return ".".join(best)


def tflite_graph_nodes(path: Path) -> list[TfliteNode]:
    """``(name, op type, module, inputs, outputs)`` of a .tflite's ops in execution order (tensor names).

    Read with the LiteRT interpreter without its default delegate, so the nodes are the model's own
    builtin ops. ``name`` is ``OP_TYPE#INDEX``. A node whose outputs name no module (a graph output)
    takes the module of its constant inputs (its weights). A model the host interpreter cannot load
    gives no nodes (logged), so every op row ends up under :data:`UNATTRIBUTED`.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        raise ExportError(
            "per-op TFLite re-measurement needs ai-edge-litert: pip install 'edgetrim[tflite]'"
        ) from None
    try:
        interp = Interpreter(
            model_path=str(path),
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
    except (ValueError, RuntimeError) as exc:  # e.g. custom / Flex ops the host runtime lacks
        logger.warning(
            "cannot read the graph of %s on the host (%s): per-op times stay unattributed", path, exc
        )
        return []
    names = {t["index"]: str(t["name"]) for t in interp.get_tensor_details()}
    ops = [d for d in interp._get_ops_details() if d["op_name"] != "DELEGATE"]
    produced = {i for d in ops for i in d["outputs"]}
    graph_inputs = {d["index"] for d in interp.get_input_details()}
    nodes: list[TfliteNode] = []
    for d in ops:
        ins = [names[i] for i in d["inputs"] if i in names]
        outs = [names[i] for i in d["outputs"] if i in names]
        module = next((m for m in map(tflite_module, outs) if m), "")
        if not module:
            consts = [
                names[i] for i in d["inputs"] if i in names and i not in produced and i not in graph_inputs
            ]
            module = next((m for m in map(tflite_module, consts) if m), "")
        nodes.append((f"{d['op_name']}#{d['index']}", str(d["op_name"]), module, ins, outs))
    return nodes


def _delegate_candidates(description: str) -> tuple[str, ...]:
    desc = description.lower()
    for key, ops in _DELEGATE_OPS:
        if desc.startswith(key):
            return ops
    word = desc.split(" (", 1)[0].strip()
    return (word.upper().replace(" ", "_"),)  # "Add" -> ADD, "Transpose" -> TRANSPOSE


def match_op_rows(ops: Sequence[Any], nodes: Sequence[TfliteNode]) -> list[str | None]:
    """The graph node (name) each profiled op row stands for, or None.

    ``ops`` are ``OpTime``s (``outputs``, ``node_index``, ``node_type``). Interpreter rows match by
    output tensor names, else by index when the op type agrees; delegate rows match in order the next
    unmatched node whose op type their description names. A delegate node standing for a whole
    delegated subgraph (``TfLiteXNNPackDelegate``) matches none.
    """
    by_outputs = {tuple(outs): name for name, _, _, _, outs in nodes}
    got: list[str | None] = []
    taken: set[str] = set()
    for op in ops:
        if "delegate" in op.node_type.lower():  # a whole delegated subgraph: no one node
            got.append(None)
            continue
        hit = by_outputs.get(tuple(op.outputs)) if op.outputs else None
        if hit is None and op.node_index is not None and 0 <= op.node_index < len(nodes):
            cand = nodes[op.node_index]
            hit = cand[0] if op.node_type.split("/", 1)[0] == cand[1] else None
        got.append(hit)
        if hit is not None:
            taken.add(hit)
    pos = 0  # delegate rows come in execution order: each one searches after the previous match
    for k, op in enumerate(ops):
        if got[k] is not None or op.node_index is not None:
            continue
        wanted = _delegate_candidates(op.node_type)
        j = next(
            (j for j in range(pos, len(nodes)) if nodes[j][1] in wanted and nodes[j][0] not in taken), None
        )
        if j is not None:
            got[k] = nodes[j][0]
            taken.add(nodes[j][0])
            pos = j + 1
    return got


def per_layer_tflite(
    path: Path, ops: Sequence[Any], *, predicted: Sequence[tuple[str, float | None]]
) -> list[LayerComparison]:
    """Per-layer rows from per-op times already scaled to the total (``OpProfile.ops``); see module doc."""
    nodes = tflite_graph_nodes(path)
    if not predicted:  # no table: one row per module litert-torch recorded
        predicted = [(m, None) for m in dict.fromkeys(n[2] for n in nodes if n[2])]
    groups = attribute_nodes(nodes, [n for n, _ in predicted])
    matched = match_op_rows(ops, nodes)
    measured: dict[str, float] = {}
    members: dict[str, list[str]] = {}
    for op, node in zip(ops, matched, strict=True):
        g = groups.get(node, UNATTRIBUTED) if node is not None else UNATTRIBUTED
        measured[g] = measured.get(g, 0.0) + op.ms
        members.setdefault(g, []).append(node or op.name)
    rows = [
        LayerComparison(name=n, predicted_ms=ms, measured_ms=measured.get(n), nodes=tuple(members.get(n, ())))
        for n, ms in predicted
    ]
    if UNATTRIBUTED in measured:
        rows.append(
            LayerComparison(UNATTRIBUTED, None, measured[UNATTRIBUTED], tuple(members.get(UNATTRIBUTED, ())))
        )
    return rows


def remeasure(
    artifact: ExportArtifact,
    target: Any,
    *,
    timing: Any,
    example_inputs: Sequence[torch.Tensor],
    predicted: Sequence[tuple[str, float | None]] = (),
    predicted_ms: float | None = None,
    overhead_ms: float = 0.0,
    profile_runs: int = 20,
) -> RemeasureReport:
    """Measure ``artifact`` on ``target`` and line it up with the prediction.

    Args:
        artifact: an exported file.
        target: an ``edgetrim.profiler.targets`` Target (``measure_artifact``, ``info``).
        timing: the ``TimingConfig`` for the total.
        example_inputs: inputs for the per-layer profile (their batch is the one measured).
        predicted: ``(layer name, predicted ms)`` rows from ``predict_model``.
        predicted_ms: the predicted whole-model total.
        overhead_ms: per-invoke runtime overhead kept out of the per-layer split.
        profile_runs: profiled runs for per-node medians (onnxruntime; a phone's profiled run uses ``timing``).
    """
    from edgetrim.deploy.data import check_artifact_inputs

    check_artifact_inputs(artifact.inputs, [tuple(t.shape) for t in example_inputs], path=artifact.path.name)
    layers: list[LayerComparison] = [LayerComparison(n, ms, None) for n, ms in predicted]
    method = "total only"
    scale: float | None = None
    device = target.info()  # once: remote targets answer it over the wire
    runtime = device.runtime
    if artifact.format is ExportFormat.TFLITE and hasattr(target, "measure_artifact_per_op"):
        profile = target.measure_artifact_per_op(artifact.path, timing, overhead_ms=overhead_ms)
        measured = profile.total
        layers = per_layer_tflite(artifact.path, profile.ops, predicted=predicted)
        scale = profile.scale
        method = (
            "benchmark_model op profiling (--enable_op_profiling), op times scaled to the measured total "
            "minus the invoke overhead"
        )
    else:
        measured = target.measure_artifact(artifact.path, timing)
    if (
        artifact.format is ExportFormat.ONNX
        and runtime == "onnxruntime"
        and not target.name.startswith("adb")
    ):
        # integer inputs (ids) keep their dtype: profile_nodes casts each to the graph's input type
        arrays = [t.detach().cpu().numpy() for t in example_inputs]
        layers, scale = per_layer_onnx(
            artifact.path,
            arrays,
            total_ms=measured.median_ms,
            overhead_ms=overhead_ms,
            predicted=predicted,
            profile_runs=profile_runs,
            threads=device.threads,
        )
        method = "onnxruntime profiler (optimisation off), node times scaled to the measured total"
    return RemeasureReport(
        label=artifact.label,
        target=target.name,
        device=device,
        measured=measured,
        predicted_ms=predicted_ms,
        layers=tuple(layers),
        per_layer_method=method,
        profile_scale=scale,
    )


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero weights over all conv / linear weights."""
    zeros = total = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Conv1d | nn.Linear):
            w = m.weight.detach()
            zeros += int((w == 0).sum())
            total += w.numel()
    return zeros / total if total else 0.0


def dense_twin(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """A copy with the same shapes whose zero weights are replaced by small nonzero values."""
    twin = copy.deepcopy(model).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in twin.modules():
            if isinstance(m, nn.Conv2d | nn.Conv1d | nn.Linear):
                w = m.weight
                zero = w == 0
                if zero.any():
                    scale = float(w.abs().max()) * 1e-2 or 1e-3
                    fill = (torch.rand(w.shape, generator=gen) * 2 - 1) * scale
                    w[zero] = fill[zero] + torch.sign(fill[zero]) * 1e-6
    return twin


def sparsity_payoff(
    model: nn.Module,
    export: Callable[[nn.Module, Path], ExportArtifact],
    target: Any,
    *,
    timing: Any,
    rounds: int = 5,
    threshold: float = 1.10,
) -> SparsityCheck:
    """Export ``model`` and its dense twin the same way and time them interleaved on ``target``.

    ``paid_off`` needs both a real margin and a clear separation: the sparse median is at least
    ``threshold``x faster than the dense one, *and* the sparse rounds' p90 sits below the dense
    rounds' p10 (medians over rounds). Rounds alternate sparse/dense so drift on a shared machine
    hits both alike. A few percent either way is timing noise, reported as "no speed-up".
    """
    sparsity = weight_sparsity(model)
    with tempfile.TemporaryDirectory(prefix="edgetrim-sparse-") as tmp:
        sparse = export(model, Path(tmp) / "sparse")
        dense = export(dense_twin(model), Path(tmp) / "dense")
        s_stats: list[LatencyStats] = []
        d_stats: list[LatencyStats] = []
        for _ in range(rounds):
            s_stats.append(target.measure_artifact(sparse.path, timing))
            d_stats.append(target.measure_artifact(dense.path, timing))
    s = float(np.median([x.median_ms for x in s_stats]))
    d = float(np.median([x.median_ms for x in d_stats]))
    s_p90 = float(np.median([x.p90_ms for x in s_stats]))
    d_p10 = float(np.median([x.p10_ms for x in d_stats]))
    speedup = d / s if s > 0 else math.nan
    paid = speedup >= threshold and s_p90 < d_p10
    verdict = f"{sparsity:.0%} zero weights: {speedup:.2f}x vs the dense twin on {target.name} - " + (
        "sparsity paid off"
        if paid
        else "no speed-up from sparsity on this runtime (the zeros are computed like any weight)"
    )
    return SparsityCheck(
        weight_sparsity=sparsity, sparse_ms=s, dense_ms=d, speedup=speedup, paid_off=paid, verdict=verdict
    )
