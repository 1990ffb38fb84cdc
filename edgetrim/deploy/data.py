"""Real data for calibration (int8) and for parity / accuracy checks.

A data spec is whatever ``edgetrim.examples.data.load_data`` accepts: a built-in name (``digits``) or
``package.module:fn`` returning ``(train_loader, val_loader)`` of ``(x, y)`` batches. Calibration reads
the training loader, accuracy the validation loader, so calibration never sees the evaluated samples.

Inputs keep their kind: floating tensors become float32 arrays, integer (and bool) tensors keep their
integer dtype, because token ids are indices, not values (a float id cannot feed an ``nn.Embedding``).
Each consumer then casts an array to the dtype the model or artifact declares (:func:`feed_array`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from edgetrim.deploy.artifact import TensorSpec
from edgetrim.errors import EdgetrimError, ExportError

logger = logging.getLogger(__name__)

Batch = tuple[list[np.ndarray], np.ndarray | None]  # (float32 or integer input arrays, labels or None)


@dataclass(frozen=True)
class RealData:
    """Calibration and evaluation batches, already as numpy (float32 or integer inputs, int labels)."""

    spec: str
    calibration: tuple[Batch, ...]
    evaluation: tuple[Batch, ...]

    @property
    def n_eval(self) -> int:
        return sum(int(b[0][0].shape[0]) for b in self.evaluation)


def is_integer(dtype: Any) -> bool:
    """True for integer and bool dtypes (numpy or torch): inputs that are indices or flags, never scaled."""
    if isinstance(dtype, torch.dtype):
        return not (dtype.is_floating_point or dtype.is_complex)
    return np.dtype(dtype).kind in "iub"


def _to_array(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    return t.numpy() if is_integer(t.dtype) else t.float().numpy()


def _to_batch(item: Any) -> Batch:
    if isinstance(item, torch.Tensor):
        return [_to_array(item)], None
    if isinstance(item, list | tuple) and item:
        x, y = item[0], item[1] if len(item) > 1 else None
        xs = list(x) if isinstance(x, list | tuple) else [x]
        arrays = [_to_array(t) for t in xs]
        labels = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else None
        return arrays, labels
    raise EdgetrimError(f"data loader yielded {type(item).__name__}; expected a tensor or an (x, y) batch")


def _take(loader: Iterable[Any], limit: int | None) -> tuple[Batch, ...]:
    out: list[Batch] = []
    for i, item in enumerate(loader):
        if limit is not None and i >= limit:
            break
        out.append(_to_batch(item))
    return tuple(out)


def load_real_data(spec: str, *, calib_batches: int = 16, eval_batches: int | None = None) -> RealData:
    """Load ``spec`` and keep up to ``calib_batches`` training batches for calibration.

    Raises:
        EdgetrimError: one line when the spec cannot be loaded.
    """
    from edgetrim.examples.data import load_data

    train, val = load_data(spec)
    data = RealData(spec=spec, calibration=_take(train, calib_batches), evaluation=_take(val, eval_batches))
    if not data.calibration or not data.evaluation:
        raise EdgetrimError(f"data {spec!r} yielded no batches; check the loaders it returns")
    return data


def check_input_spec(
    specs: Sequence[TensorSpec], arrays: Sequence[np.ndarray], *, what: str, against: str = "the artifact"
) -> None:
    """Raise a one-line ExportError when ``arrays`` do not fit the artifact's input ``specs``.

    The batch dimension may differ (inputs are re-batched); every other dimension must agree. An
    integer input (token ids) needs integer data: float data would be truncated to ids silently. Integer
    data for a float input is fine (uint8 images): it is cast to float32 as it always was. A quantized
    int8 input (``scale`` set) takes float data, so only unquantized integer specs are checked.
    """
    if len(specs) != len(arrays):
        raise ExportError(f"{what} gives {len(arrays)} input(s) but {against} takes {len(specs)}")
    for spec, arr in zip(specs, arrays):
        want = ("B", *spec.shape[1:])
        got = tuple(arr.shape)
        if len(got) != len(spec.shape) or any(s != -1 and s != g for s, g in zip(spec.shape[1:], got[1:])):
            raise ExportError(
                f"{what} has input {spec.name!r} of shape {got} but {against} expects {want}; "
                f"use data shaped like the model's example inputs"
            )
        if _takes_ids(spec) and not is_integer(arr.dtype):
            raise ExportError(
                f"{what} has input {spec.name!r} of dtype {arr.dtype} but {against} expects integer ids "
                f"({spec.dtype}); return integer tensors (e.g. torch.long) from the data loaders"
            )


def _takes_ids(spec: TensorSpec) -> bool:
    try:
        return spec.scale is None and is_integer(spec.dtype)
    except TypeError:  # a dtype numpy does not know (bfloat16 written as a number): not ids
        return False


def feed_array(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a`` as a contiguous array of the artifact's declared ``dtype`` (float32 when numpy does not know it).

    Float inputs get float32 as before; integer inputs the integer width the artifact declares (ONNX
    int64, TFLite int32 or int64), with no scaling: ids are indices, not values.
    """
    try:
        want = np.dtype(dtype)
    except TypeError:
        want = np.dtype(np.float32)
    return np.ascontiguousarray(a, dtype=want)


def rebatch(arrays: Sequence[np.ndarray], batch: int) -> list[list[np.ndarray]]:
    """Split inputs whose first dimension is N into chunks of exactly ``batch`` rows (a ragged tail is padded
    by repeating the last row, and callers drop the padded outputs)."""
    n = int(arrays[0].shape[0])
    chunks: list[list[np.ndarray]] = []
    for start in range(0, n, batch):
        part = [a[start : start + batch] for a in arrays]
        short = batch - part[0].shape[0]
        if short > 0:
            part = [np.concatenate([p, np.repeat(p[-1:], short, axis=0)]) for p in part]
        chunks.append(part)
    return chunks


def check_artifact_inputs(
    specs: Sequence[TensorSpec], example_shapes: Sequence[tuple[int, ...]], *, path: str
) -> None:
    """Raise a one-line ExportError when an artifact's inputs are not the model's (count, rank, sizes).

    A dynamic (``-1``) dimension matches any size. This catches layout changes (NHWC vs NCHW) and
    artifacts that belong to another model before they are timed or shipped.
    """
    if len(specs) != len(example_shapes):
        raise ExportError(f"{path} takes {len(specs)} input(s) but the model takes {len(example_shapes)}")
    for spec, shape in zip(specs, example_shapes):
        if not spec.matches(tuple(shape)):
            raise ExportError(
                f"{path} input {spec.name!r} has shape {spec.shape} but the model's example input is "
                f"{tuple(shape)}; re-export the artifact from this run"
            )
