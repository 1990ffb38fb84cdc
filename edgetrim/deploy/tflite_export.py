"""TFLite export through litert-torch (fp32 and PT2E int8) and running the result with LiteRT.

The one module of edgetrim that imports ``litert_torch`` and ``ai_edge_litert``; both lazily, with an
actionable error when the ``[tflite]`` extra is missing.

int8 is PT2E static quantization (``torchao.quantization.pt2e`` driven by litert-torch's
``PT2EQuantizer``, symmetric per-channel weights), calibrated on real batches. The resulting model
takes and returns **int8** tensors; their scale / zero point are recorded in the artifact's
``TensorSpec``s (and so in the manifest), and :class:`TfliteRunner` / :func:`quantize_input` /
:func:`dequantize_output` do the float <-> int8 mapping for the caller. TFLite models have the
example inputs' batch size baked in; the runner re-batches.

Integer inputs (token ids into an ``nn.Embedding``) are converted with their integer dtype and never
quantized: the converter may declare them int32 or int64, and the runner casts ids to whatever the
interpreter's input details say.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgetrim.deploy.artifact import ExportArtifact, ExportFormat, Precision, TensorSpec
from edgetrim.deploy.data import feed_array, is_integer, rebatch
from edgetrim.errors import ExportError
from edgetrim.io_utils import atomic_write_bytes

logger = logging.getLogger(__name__)

_MISSING = "TFLite export needs litert-torch and ai-edge-litert: pip install 'edgetrim[tflite]'"
_OP_PATTERNS = (
    r"Lowering not found: (aten\.[A-Za-z0-9_.]+)",
    r"(aten\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)",
    r"'((?:stablehlo|tfl|tf|mhlo|chlo)\.[A-Za-z0-9_]+)'",
    r"target=torch\.ops\.([A-Za-z0-9_.]+)",
)


def _litert_torch() -> Any:
    try:
        import litert_torch
    except ImportError:
        raise ExportError(_MISSING) from None
    return litert_torch


def _interpreter_cls() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise ExportError(_MISSING) from None
    return Interpreter


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """litert-torch prints its progress to *stdout*, which would corrupt ``--json`` output."""
    old = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = old


def failed_op(exc: BaseException) -> str | None:
    """The operator a converter error is about, when its message names one."""
    text = "\n".join(str(e) for e in (exc, exc.__cause__, exc.__context__) if e is not None)
    for pattern in _OP_PATTERNS:
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    return None


def _convert_error(exc: BaseException, precision: Precision) -> ExportError:
    op = failed_op(exc)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    what = f"op {op}" if op else f"an op the converter did not name ({type(exc).__name__}: {first[:160]})"
    return ExportError(
        f"TFLite {precision.value} conversion failed at {what}; export with --format onnx instead, "
        f"or replace that op in the model"
    )


def _details_to_specs(details: Sequence[dict[str, Any]]) -> tuple[TensorSpec, ...]:
    specs = []
    for d in details:
        dtype = np.dtype(d["dtype"]).name
        scale, zp = d.get("quantization", (0.0, 0))
        quantized = dtype in ("int8", "uint8") and scale != 0.0
        specs.append(
            TensorSpec(
                name=d["name"],
                shape=tuple(int(s) for s in d["shape"]),
                dtype=dtype,
                scale=float(scale) if quantized else None,
                zero_point=int(zp) if quantized else None,
            )
        )
    return tuple(specs)


def _example_inputs(example_inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """CPU copies for the converter: float inputs as float32, integer inputs (ids) keep their dtype."""
    return tuple(
        t.detach().cpu() if is_integer(t.dtype) else t.detach().cpu().float() for t in example_inputs
    )


def _calibrate(
    prepared: nn.Module,
    batches: Sequence[Sequence[np.ndarray]],
    inputs: Sequence[torch.Tensor],
    max_samples: int,
) -> int:
    """Feed real batches to the PT2E observers, each array cast to its example input's dtype (ids as ids)."""
    batch = int(inputs[0].shape[0])
    dtypes = [str(t.dtype).replace("torch.", "") for t in inputs]
    seen = 0
    with torch.no_grad():
        for arrays in batches:
            for chunk in rebatch(arrays, batch):
                prepared(*(torch.from_numpy(feed_array(a, d)) for a, d in zip(chunk, dtypes)))
                seen += batch
                if seen >= max_samples:
                    return seen
    return seen


def export_tflite(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | Path,
    *,
    precision: Precision = Precision.FP32,
    calibration: Sequence[Sequence[np.ndarray]] | None = None,
    max_calibration_samples: int = 256,
) -> ExportArtifact:
    """Convert ``model`` to a ``.tflite`` file with litert-torch.

    Args:
        model: the module (a deep copy in eval mode is converted).
        example_inputs: tensors fixing the input shapes (TFLite keeps their batch size).
        path: the file to write (atomically).
        precision: ``FP32`` or ``INT8`` (PT2E static, int8 inputs and outputs).
        calibration: real input batches; required for int8.
        max_calibration_samples: stop calibrating after this many samples.

    Raises:
        ExportError: one line naming the op the converter failed on (and suggesting ONNX), or int8
            without calibration data, or litert-torch missing.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3))
        >>> art = export_tflite(net, (torch.randn(1, 4),), "/tmp/net.tflite")  # doctest: +SKIP
        >>> art.inputs[0].dtype  # doctest: +SKIP
        'float32'
    """
    precision = Precision(precision)
    if precision is Precision.INT8 and not calibration:
        raise ExportError("int8 export needs calibration data: pass --data (e.g. --data digits)")
    litert_torch = _litert_torch()
    out = Path(path)
    module = copy.deepcopy(model).cpu().eval()
    inputs = _example_inputs(example_inputs)
    notes: list[str] = []
    with _quiet_converter():
        try:
            if precision is Precision.FP32:
                edge = litert_torch.convert(module, inputs)
            else:
                from litert_torch.quantize import pt2e_quantizer, quant_config
                from torchao.quantization.pt2e import move_exported_model_to_eval, quantize_pt2e

                quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
                    pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
                )
                graph = torch.export.export(module, inputs).module()
                prepared = quantize_pt2e.prepare_pt2e(graph, quantizer)
                assert calibration is not None
                seen = _calibrate(prepared, calibration, inputs, max_calibration_samples)
                converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
                move_exported_model_to_eval(converted)  # swaps the BN / dropout ops to their eval forms
                converted.training = False  # the flag litert-torch checks (exported modules refuse .eval())
                edge = litert_torch.convert(
                    converted, inputs, quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer)
                )
                notes.append(f"PT2E static int8 (per-channel weights), calibrated on {seen} samples")
        except ExportError:
            raise
        except Exception as exc:
            raise _convert_error(exc, precision) from exc
        tmp = out.with_name(f".{out.name}.convert.tmp")
        try:
            edge.export(str(tmp))
            data = tmp.read_bytes()
        finally:
            tmp.unlink(missing_ok=True)
    atomic_write_bytes(out, data)
    interp = _interpreter_cls()(model_path=str(out))
    ins = _details_to_specs(interp.get_input_details())
    outs = _details_to_specs(interp.get_output_details())
    return ExportArtifact(
        path=out,
        format=ExportFormat.TFLITE,
        precision=precision,
        inputs=ins,
        outputs=outs,
        dynamic_batch=False,
        notes=tuple(notes),
    )


def quantize_input(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Float -> the artifact's integer input: ``round(x / scale) + zero_point``, saturated.

    An input without a scale (a float input of an fp32 file, token ids) is only cast to its dtype.
    """
    if spec.scale is None or spec.zero_point is None:
        return feed_array(x, spec.dtype)
    info = np.iinfo(np.dtype(spec.dtype))
    q = np.round(np.asarray(x, np.float32) / spec.scale) + spec.zero_point
    return np.clip(q, info.min, info.max).astype(spec.dtype)


def dequantize_output(q: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """The artifact's integer output -> float: ``(q - zero_point) * scale``."""
    if spec.scale is None or spec.zero_point is None:
        return np.asarray(q, np.float32)
    return ((q.astype(np.float32) - spec.zero_point) * spec.scale).astype(np.float32)


class TfliteRunner:
    """Run a ``.tflite`` artifact on inputs of any batch size; int8 I/O is (de)quantized here.

    Float inputs are float32 (quantized when the file takes int8); integer inputs (ids) are cast to the
    integer type the interpreter declares for them (int32 or int64), never scaled.

    Example:
        >>> run = TfliteRunner(artifact)  # doctest: +SKIP
        >>> logits = run([x.numpy()])[0]  # doctest: +SKIP
    """

    def __init__(self, artifact: ExportArtifact, *, threads: int = 1) -> None:
        self.artifact = artifact
        self._interp = _interpreter_cls()(model_path=str(artifact.path), num_threads=threads)
        self._interp.allocate_tensors()
        self._in = self._interp.get_input_details()
        self._out = self._interp.get_output_details()

    def __call__(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        n = int(arrays[0].shape[0])
        batch = self.artifact.inputs[0].shape[0]
        results: list[list[np.ndarray]] = []
        for chunk in rebatch(arrays, batch):
            for d, spec, a in zip(self._in, self.artifact.inputs, chunk):
                self._interp.set_tensor(d["index"], self._feed(a, spec, d))
            self._interp.invoke()
            results.append(
                [
                    dequantize_output(self._interp.get_tensor(d["index"]), spec)
                    for d, spec in zip(self._out, self.artifact.outputs)
                ]
            )
        return [np.concatenate([r[i] for r in results])[:n] for i in range(len(results[0]))]

    @staticmethod
    def _feed(a: np.ndarray, spec: TensorSpec, detail: dict[str, Any]) -> np.ndarray:
        if spec.scale is not None:
            return quantize_input(a, spec)
        # the interpreter's own input type, not the manifest's: set_tensor refuses any other width
        return feed_array(a, np.dtype(detail["dtype"]).name)
