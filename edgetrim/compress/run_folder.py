"""The RUN folder: what every training pass (compress, sparsify, safs, grow) leaves behind.

Layout (read by ``export`` and ``report``):
    RUN/model.pt            the final, materialised nn.Module (``torch.save`` of the whole module)
    RUN/example_inputs.pt   tuple of example input tensors (define shapes for export / measurement)
    RUN/run.json            what was asked, predicted and measured, plus per-epoch history
Writes are atomic, so an interrupted save never leaves a RUN that looks complete but is not.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgetrim.errors import EdgetrimError
from edgetrim.io_utils import atomic_write_bytes, atomic_write_json
from edgetrim.model_spec import USER_MODULE_PREFIX, absolute_spec, import_callable, is_file_spec

MODEL_FILE = "model.pt"
INPUTS_FILE = "example_inputs.pt"
INFO_FILE = "run.json"

RUN_KINDS = ("compress", "sparsify", "safs", "grow", "baseline")


@dataclass
class Run:
    """A loaded RUN folder."""

    path: Path
    model: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    info: dict[str, Any]


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_run(
    path: str | Path,
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    info: dict[str, Any],
) -> Path:
    """Write a RUN folder. ``info['kind']`` must be one of ``RUN_KINDS``.

    The info dict should carry at least: kind, model_spec, data_spec, budget, predicted_ms,
    dense_predicted_ms, accuracy, dense_accuracy, widths_before, widths_after, config, history.
    """
    kind = info.get("kind")
    if kind not in RUN_KINDS:
        raise ValueError(f"run info 'kind' must be one of {RUN_KINDS}, got {kind!r}")
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    if isinstance(info.get("model_spec"), str):  # a file the run can import again from anywhere
        info = info | {"model_spec": absolute_spec(info["model_spec"])}
    model = model.cpu().eval()
    atomic_write_bytes(root / MODEL_FILE, _torch_bytes(model))
    atomic_write_bytes(root / INPUTS_FILE, _torch_bytes(tuple(t.detach().cpu() for t in example_inputs)))
    atomic_write_json(root / INFO_FILE, info)  # last: its presence marks a complete run
    return root


def load_run(path: str | Path) -> Run:
    """Load a RUN folder, with one-line errors for the usual mistakes."""
    root = Path(path)
    if not root.is_dir():
        raise EdgetrimError(f"run folder {root} does not exist")
    model_path = root / MODEL_FILE
    if not model_path.is_file():
        raise EdgetrimError(f"run folder {root} holds no {MODEL_FILE}: was the run finished?")
    info_path = root / INFO_FILE
    if not info_path.is_file():
        raise EdgetrimError(f"run folder {root} holds no {INFO_FILE}: was the run finished?")
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as exc:
        raise EdgetrimError(f"{info_path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    try:
        try:
            model = torch.load(model_path, weights_only=False, map_location="cpu")
        except ModuleNotFoundError as exc:
            # the model's classes come from a file.py spec, imported by compress in its own process
            spec = info.get("model_spec")
            if USER_MODULE_PREFIX not in str(exc) or not isinstance(spec, str) or not is_file_spec(spec):
                raise
            import_callable(spec)
            model = torch.load(model_path, weights_only=False, map_location="cpu")
        inputs = torch.load(root / INPUTS_FILE, weights_only=False, map_location="cpu")
    except Exception as exc:
        raise EdgetrimError(f"cannot load the model in {root}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise EdgetrimError(f"{model_path} does not hold an nn.Module")
    return Run(path=root, model=model.eval(), example_inputs=tuple(inputs), info=info)
