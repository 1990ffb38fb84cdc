"""ONNX export (fp32, int8) and the onnxruntime calls deploy needs (running, per-node profiling).

This is the one module of ``edgetrim.deploy`` that imports ``onnx`` / ``onnxruntime``; both are imported
lazily with an actionable error, so the rest of deploy imports without them.

The fp32 file is self-contained: weights are embedded (no external-data side files), the opset is
pinned and the batch dimension is dynamic unless the model's code fixes it (then the export falls back
to the example batch and says so in ``ExportArtifact.notes``). int8 is onnxruntime's *static*
quantization in QDQ form, per-channel asymmetric uint8 weights and uint8 activations, calibrated
(min/max) on real input batches. (Symmetric int8 weights cost ~20 dB of SQNR on the small digits
models here: 18 dB vs 38 dB for uint8 on the pruned + low-rank test net, onnxruntime 1.32.) Integer
inputs (token ids) are fed to calibration as they are and stay integer in the quantized file: only
float tensors get quantize/dequantize pairs.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgetrim.deploy.artifact import ExportArtifact, ExportFormat, Precision, TensorSpec
from edgetrim.deploy.data import feed_array, rebatch
from edgetrim.errors import ExportError
from edgetrim.io_utils import atomic_write_bytes

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
_ONNX_DTYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
}
# onnxruntime's names for input types (``NodeArg.type``) -> numpy dtype names
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the onnx packages: pip install 'edgetrim[onnx]'") from None
    return onnx


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("running ONNX files needs onnxruntime: pip install 'edgetrim[onnx]'") from None
    return onnxruntime


def _failed_op(exc: BaseException) -> str | None:
    text = f"{exc}\n{exc.__cause__ or ''}"
    m = re.search(r"(aten\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)", text)
    return m.group(1) if m else None


def _specs(graph: Any) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    def one(v: Any) -> TensorSpec:
        t = v.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
        return TensorSpec(name=v.name, shape=shape, dtype=_ONNX_DTYPES.get(t.elem_type, str(t.elem_type)))

    init_names = {i.name for i in graph.initializer}
    inputs = tuple(one(v) for v in graph.input if v.name not in init_names)
    return inputs, tuple(one(v) for v in graph.output)


def _check_self_contained(proto: Any, path: Path) -> None:
    onnx = _onnx()
    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise ExportError(
                f"{path} refers to external weight data ({init.name}); export needs embedded weights"
            )


def export_onnx(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
) -> ExportArtifact:
    """Export ``model`` to one self-contained ONNX file (fp32).

    Args:
        model: the module to export (a deep copy is put in eval mode; the caller's module is untouched).
        example_inputs: tensors defining the input shapes; their first dimension is the batch.
        path: the ``.onnx`` file to write (atomically).
        opset: the ONNX opset to pin.
        dynamic_batch: make the first dimension of every input and output symbolic.

    Returns:
        The ExportArtifact (parity not yet checked: see :func:`edgetrim.deploy.parity.check_parity`).

    Raises:
        ExportError: one line naming the operator when torch cannot export the model.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3))
        >>> art = export_onnx(net, (torch.randn(1, 4),), "/tmp/net.onnx")  # doctest: +SKIP
        >>> art.inputs[0].shape  # doctest: +SKIP
        (-1, 4)
    """
    onnx = _onnx()
    out = Path(path)
    module = copy.deepcopy(model).cpu().eval()
    inputs = tuple(t.detach().cpu() for t in example_inputs)
    input_names = [f"input_{i}" for i in range(len(inputs))]
    with torch.no_grad():
        produced = module(*inputs)
    n_out = len(produced) if isinstance(produced, list | tuple) else 1
    output_names = [f"output_{i}" for i in range(n_out)]
    notes: list[str] = []

    def _export(dynamic: bool) -> Any:
        shapes = tuple({0: torch.export.Dim("batch")} for _ in inputs) if dynamic else None
        with torch.no_grad():
            return torch.onnx.export(
                module,
                inputs,
                None,
                input_names=input_names,
                output_names=output_names,
                opset_version=opset,
                dynamo=True,
                external_data=False,
                dynamic_shapes=shapes,
                verbose=False,
            )

    try:
        try:
            program = _export(dynamic_batch)
        except Exception as exc:
            if not dynamic_batch:
                raise
            logger.warning("dynamic-batch ONNX export failed (%s); exporting with the example batch", exc)
            notes.append(
                f"batch fixed at {inputs[0].shape[0]}: the model's code specialises the batch dimension"
            )
            dynamic_batch = False
            program = _export(False)
    except Exception as exc:
        op = _failed_op(exc)
        where = f" at {op}" if op else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"ONNX export failed{where}: {type(exc).__name__}: {first[:300]}") from exc
    proto = program.model_proto
    _check_self_contained(proto, out)
    atomic_write_bytes(out, proto.SerializeToString())
    onnx.checker.check_model(str(out))
    ins, outs = _specs(proto.graph)
    if dynamic_batch and any(spec.shape[:1] != (-1,) for spec in ins):
        # the exporter can accept the symbolic batch and still write the example's (a module whose
        # traced path specialises it, such as torch's fused transformer layers): report what it wrote
        dynamic_batch = False
        notes.append(f"batch fixed at {inputs[0].shape[0]}: the exporter specialised the batch dimension")
    logger.info("wrote %s (opset %d, outputs %s)", out, opset, output_names)
    return ExportArtifact(
        path=out,
        format=ExportFormat.ONNX,
        precision=Precision.FP32,
        inputs=ins,
        outputs=outs,
        opset=opset,
        dynamic_batch=dynamic_batch,
        notes=tuple(notes),
    )


class _Reader:
    """onnxruntime CalibrationDataReader over pre-loaded input batches, each cast to its input's dtype."""

    def __init__(self, specs: Sequence[TensorSpec], batches: Sequence[Sequence[np.ndarray]]) -> None:
        self._items = iter([{t.name: feed_array(a, t.dtype) for t, a in zip(specs, b)} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def _attention_mask_nodes(graph: Any) -> list[str]:
    """Names of the nodes that apply an attention mask and the softmax after it: Softmax nodes, the
    Add / Where / Mul producing their input and the IsNaN / Where guarding their output. A causal or
    padding mask puts -inf (or the float minimum) into the scores: one int8 scale over that range
    leaves nothing for the scores themselves (GPT-2's int8 model measured 1 dB SQNR)."""
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    names: list[str] = []
    for node in graph.node:
        if node.op_type != "Softmax":
            continue
        names.append(node.name)
        before = producers.get(node.input[0])
        if before is not None and before.op_type in ("Add", "Where", "Mul"):
            names.append(before.name)
        for after in consumers.get(node.output[0], []):
            if after.op_type in ("IsNaN", "Where"):
                names.append(after.name)
                names += [n.name for n in consumers.get(after.output[0], []) if n.op_type == "Where"]
    return [n for n in dict.fromkeys(names) if n]


def quantize_onnx_int8(
    fp32: ExportArtifact,
    path: str | Path,
    calibration: Sequence[Sequence[np.ndarray]],
    *,
    per_channel: bool = True,
) -> ExportArtifact:
    """Static 8-bit quantization (QDQ, uint8, min/max calibration) of an fp32 ONNX artifact.

    Args:
        fp32: the artifact from :func:`export_onnx`.
        path: the int8 ``.onnx`` file to write.
        calibration: input batches (one list of arrays per batch, float32 or integer ids) from the real data.
        per_channel: per-output-channel weight scales (more accurate; supported by the CPU EP).

    Raises:
        ExportError: when no calibration batch is given, or quantization fails.
    """
    if not calibration:
        raise ExportError("int8 export needs calibration data: pass --data (e.g. --data digits)")
    _ort()
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches: list[list[np.ndarray]] = []
    for b in calibration:
        batches += [list(b)] if fp32.dynamic_batch else rebatch(b, fp32.inputs[0].shape[0])

    class Reader(_Reader, CalibrationDataReader):
        pass

    out = Path(path)
    with tempfile.TemporaryDirectory(prefix="edgetrim-q-") as tmp:
        src = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(fp32.path), str(src), skip_symbolic_shape=True)
        except Exception as exc:  # pre-processing only helps; quantize the raw file when it fails
            logger.warning("onnxruntime quantization pre-processing failed (%s); quantizing as exported", exc)
            src = fp32.path
        dst = Path(tmp) / "int8.onnx"
        excluded = _attention_mask_nodes(_onnx().load(str(src)).graph)
        if excluded:
            logger.info("kept in float (attention masks and softmax): %s", ", ".join(excluded))
        try:
            quantize_static(
                str(src),
                str(dst),
                Reader(fp32.inputs, batches),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QUInt8,
                per_channel=per_channel,
                nodes_to_exclude=excluded,
            )
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(
                f"onnxruntime int8 quantization failed: {type(exc).__name__}: {first[:300]}"
            ) from exc
        data = dst.read_bytes()
    atomic_write_bytes(out, data)
    proto = _onnx().load(str(out))
    _check_self_contained(proto, out)
    ins, outs = _specs(proto.graph)
    return ExportArtifact(
        path=out,
        format=ExportFormat.ONNX,
        precision=Precision.INT8,
        inputs=ins,
        outputs=outs,
        opset=fp32.opset,
        dynamic_batch=fp32.dynamic_batch,
        notes=(
            *fp32.notes,
            f"static QDQ 8-bit (uint8 weights and activations), min/max calibrated on {len(batches)} batches",
        ),
    )


def session(
    path: str | Path, *, threads: int = 1, optimize: bool = True, profile_dir: Path | None = None
) -> Any:
    """An onnxruntime CPU InferenceSession with ``threads`` intra-op threads."""
    ort = _ort()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if profile_dir is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_dir / "ort_profile")
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot load {path}: {type(exc).__name__}: {str(exc)[:200]}") from exc


class OnnxRunner:
    """Run an ONNX artifact on numpy inputs of any batch size (re-batched for a static batch).

    Each input is cast to the dtype the artifact declares: float32 for float inputs, int64 (or whatever
    integer type the graph takes) for token ids.
    """

    def __init__(self, artifact: ExportArtifact, *, threads: int = 1) -> None:
        self.artifact = artifact
        self._sess = session(artifact.path, threads=threads)
        self._names = [i.name for i in self._sess.get_inputs()]

    def __call__(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        n = int(arrays[0].shape[0])
        if self.artifact.dynamic_batch:
            chunks = [list(arrays)]
        else:
            chunks = rebatch(arrays, self.artifact.inputs[0].shape[0])
        results: list[list[np.ndarray]] = []
        for chunk in chunks:
            feed = {
                name: feed_array(a, spec.dtype)
                for name, spec, a in zip(self._names, self.artifact.inputs, chunk)
            }
            results.append(self._sess.run(None, feed))
        return [np.concatenate([r[i] for r in results])[:n] for i in range(len(results[0]))]


def node_modules(path: str | Path) -> list[tuple[str, str, str, list[str], list[str]]]:
    """``(node name, op type, module path, inputs, outputs)`` for every node, in graph order.

    The module path comes from the torch exporter's ``pkg.torch.onnx.name_scopes`` metadata
    (``['', 'features', '3', 'conv2d']`` -> ``features.3``); nodes added later (quantize/dequantize
    pairs) have none and get ``""``.
    """
    proto = _onnx().load(str(path))
    rows = []
    for node in proto.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        module = ""
        scopes = meta.get("pkg.torch.onnx.name_scopes")
        if scopes:
            try:
                parts = [p for p in json.loads(scopes.replace("'", '"'))[:-1] if p]
                module = ".".join(parts)
            except json.JSONDecodeError:
                module = ""
        rows.append((node.name, node.op_type, module, list(node.input), list(node.output)))
    return rows


def profile_nodes(
    path: str | Path, arrays: Sequence[np.ndarray], *, runs: int, threads: int = 1
) -> dict[str, float]:
    """Median per-node kernel time (ms) over ``runs`` profiled runs, graph optimisation off.

    ``arrays`` are cast to the dtypes the session declares (float32, or int64 for token ids).

    Optimisation is off so every node keeps the name (and module metadata) the exporter gave it; the
    profiler's own overhead inflates these times, so callers scale them to an un-profiled total.
    """
    with tempfile.TemporaryDirectory(prefix="edgetrim-prof-") as tmp:
        sess = session(path, threads=threads, optimize=False, profile_dir=Path(tmp))
        feed = {
            i.name: feed_array(a, _ORT_DTYPES.get(i.type, "float32"))
            for i, a in zip(sess.get_inputs(), arrays)
        }
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    samples: dict[str, list[float]] = {}
    for ev in events:
        name = ev.get("name", "")
        if ev.get("cat") == "Node" and name.endswith("_kernel_time"):
            samples.setdefault(name[: -len("_kernel_time")], []).append(float(ev.get("dur", 0.0)) / 1000.0)
    # the median over runs keeps the first (allocating) run and stray preemptions out
    return {node: float(np.median(ms)) for node, ms in samples.items()}
