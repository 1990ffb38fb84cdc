"""manifest.json: what an export folder holds and how it was made, verifiable by file hashes.

Keys: ``schema`` (1), ``created``, ``versions`` (python + library versions), ``run`` (RUN folder path,
kind, model spec and the compression settings from its run.json), ``input_spec`` (the model's example
inputs), ``artifacts`` (per file: sha256, bytes, format, precision, tensor specs incl. int8
scale/zero point, parity, re-measurement), ``device`` (the DeviceInfo measured on, or null),
``predicted`` (table target and per-layer rows), ``accuracy`` (run's and per artifact), ``report``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import logging
import platform
from pathlib import Path
from typing import Any

from edgetrim.errors import EdgetrimError
from edgetrim.io_utils import atomic_write_json

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
SCHEMA = 1
_PACKAGES = (
    "edgetrim",
    "torch",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "litert-torch",
    "ai-edge-litert",
    "torchao",
)
COMPRESSION_KEYS = (
    "kind",
    "model_spec",
    "data_spec",
    "budget",
    "predicted_ms",
    "dense_predicted_ms",
    "measured_ms",
    "dense_measured_ms",
    "accuracy",
    "dense_accuracy",
    "widths_before",
    "widths_after",
    "config",
    "table",
)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Installed versions of the packages an artifact depends on (``"missing"`` when absent)."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def build_manifest(
    *,
    run_path: Path,
    run_info: dict[str, Any],
    input_spec: list[dict[str, Any]],
    artifacts: list[dict[str, Any]],
    out_dir: Path,
    device: dict[str, Any] | None,
    predicted: dict[str, Any] | None,
    report_file: str | None,
) -> dict[str, Any]:
    """Assemble the manifest dict; each artifact dict must name a ``path`` inside ``out_dir``."""
    files = []
    for art in artifacts:
        f = out_dir / art["path"]
        files.append({**art, "sha256": sha256_file(f), "bytes": f.stat().st_size})
    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        "run": {"path": str(run_path), **{k: run_info.get(k) for k in COMPRESSION_KEYS if k in run_info}},
        "input_spec": input_spec,
        "artifacts": files,
        "device": device,
        "predicted": predicted,
        "accuracy": {
            "run": run_info.get("accuracy"),
            "dense": run_info.get("dense_accuracy"),
            "artifacts": {
                a["label"]: (a.get("parity") or {}).get("accuracy_artifact")
                for a in artifacts
                if "label" in a
            },
        },
        "report": report_file,
    }


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    return atomic_write_json(out_dir / MANIFEST_FILE, manifest)


def load_manifest(out_dir: str | Path) -> dict[str, Any]:
    """Read ``DIR/manifest.json`` with one-line errors."""
    path = Path(out_dir) / MANIFEST_FILE
    if not path.is_file():
        raise EdgetrimError(f"{out_dir} holds no {MANIFEST_FILE}: is it an 'edgetrim export' folder?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EdgetrimError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None


def verify_manifest(out_dir: str | Path) -> list[str]:
    """Problems found re-hashing the files a manifest lists (empty when everything matches)."""
    root = Path(out_dir)
    problems = []
    for art in load_manifest(root)["artifacts"]:
        f = root / art["path"]
        if not f.is_file():
            problems.append(f"{art['path']}: missing")
        elif sha256_file(f) != art["sha256"]:
            problems.append(f"{art['path']}: sha256 differs from the manifest")
    return problems
