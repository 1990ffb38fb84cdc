"""``export_run``: RUN folder -> export folder (artifacts, parity, re-measurement, manifest, report).

The pipeline for each requested format is explicit and ordered: export fp32 -> parity -> (int8:
quantize -> parity) -> re-measure the artifacts the target runs -> sparsity check -> manifest -> report.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from edgetrim.compress.run_folder import INFO_FILE, MODEL_FILE, load_run
from edgetrim.deploy.artifact import ExportArtifact, ExportFormat, Precision
from edgetrim.deploy.data import RealData, check_artifact_inputs, check_input_spec, load_real_data
from edgetrim.deploy.manifest import build_manifest, write_manifest
from edgetrim.deploy.onnx_export import DEFAULT_OPSET, OnnxRunner, export_onnx, quantize_onnx_int8
from edgetrim.deploy.parity import ParityConfig, check_ids_in_range, check_parity, embedding_sizes
from edgetrim.deploy.remeasure import RemeasureReport, remeasure, sparsity_payoff, weight_sparsity
from edgetrim.errors import EdgetrimError, ExportError

logger = logging.getLogger(__name__)

SPARSITY_MIN = 0.05  # below this fraction of zero weights the sparse-vs-dense comparison is skipped


@dataclass(frozen=True)
class ExportConfig:
    """What ``edgetrim export`` does.

    Args:
        formats: artifact formats to write.
        int8: also write int8 artifacts (needs ``data`` or a run with a ``data_spec``).
        data: data spec for calibration and real-data parity / accuracy.
        target: target to re-measure on; default: the target of the run's table.
        table: latency table for predictions; default: the run's ``table`` entry.
        opset: ONNX opset.
        parity: parity tolerances.
        timing: ``edgetrim.profiler.timing.TimingConfig`` for re-measurement (default one).
        profile_runs: onnxruntime profiled runs for the per-layer split.
        check_sparsity: compare a sparse model against its dense twin.
        report: write report.html / report.json into the folder.
    """

    formats: tuple[ExportFormat, ...] = (ExportFormat.ONNX, ExportFormat.TFLITE)
    int8: bool = False
    data: str | None = None
    target: str | None = None
    table: Path | None = None
    opset: int = DEFAULT_OPSET
    parity: ParityConfig = field(default_factory=ParityConfig)
    timing: Any = None
    profile_runs: int = 20
    check_sparsity: bool = True
    report: bool = True

    def __post_init__(self) -> None:
        formats = tuple(ExportFormat(f) for f in self.formats)
        if not formats:
            raise ValueError("formats must name at least one format")
        object.__setattr__(self, "formats", formats)
        if self.profile_runs < 1:
            raise ValueError(f"profile_runs must be >= 1, got {self.profile_runs}")


@dataclass(frozen=True)
class ExportBundle:
    """What :func:`export_run` wrote."""

    out_dir: Path
    artifacts: tuple[ExportArtifact, ...]
    remeasured: tuple[RemeasureReport, ...]
    manifest_path: Path
    report_path: Path | None
    notes: tuple[str, ...] = ()


def parse_formats(text: str) -> tuple[ExportFormat, ...]:
    """``"onnx,tflite"`` -> formats, with a one-line error naming the valid ones."""
    out = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        try:
            out.append(ExportFormat(part))
        except ValueError:
            raise EdgetrimError(
                f"unknown format {part!r}; choose from {', '.join(f.value for f in ExportFormat)}"
            ) from None
    if not out:
        raise EdgetrimError("--format needs at least one format, e.g. --format onnx,tflite")
    return tuple(dict.fromkeys(out))


def _file_name(fmt: ExportFormat, precision: Precision) -> str:
    return f"model{'' if precision is Precision.FP32 else '_int8'}{fmt.suffix}"


def _export(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    fmt: ExportFormat,
    precision: Precision,
    path: Path,
    *,
    opset: int,
    data: RealData | None,
    fp32: ExportArtifact | None = None,
) -> ExportArtifact:
    calib = [b[0] for b in data.calibration] if data is not None else None
    if fmt is ExportFormat.ONNX:
        if precision is Precision.FP32:
            return export_onnx(model, inputs, path, opset=opset)
        base = fp32 or export_onnx(model, inputs, path.with_name(path.stem + "_fp32.onnx"), opset=opset)
        return quantize_onnx_int8(base, path, calib or [])
    from edgetrim.deploy.tflite_export import export_tflite

    return export_tflite(model, inputs, path, precision=precision, calibration=calib)


def _runner(artifact: ExportArtifact) -> Any:
    if artifact.format is ExportFormat.ONNX:
        return OnnxRunner(artifact)
    from edgetrim.deploy.tflite_export import TfliteRunner

    return TfliteRunner(artifact)


def _resolve_table(config: ExportConfig, run_path: Path, info: dict[str, Any]) -> Any:
    raw = config.table or info.get("table") or (info.get("config") or {}).get("table")
    if not raw:
        return None
    from edgetrim.lookup_tables import load_table

    path = Path(raw)
    if not path.is_file() and (run_path / path).is_file():
        path = run_path / path
    if not path.is_file():
        if config.table is not None:
            raise EdgetrimError(f"table {path} does not exist")
        logger.warning("the run's table %s is gone; exporting without predictions", path)
        return None
    return load_table(path)


def _format_for_runtime(runtime: str) -> ExportFormat | None:
    if runtime == "onnxruntime":
        return ExportFormat.ONNX
    if runtime.startswith("litert"):
        return ExportFormat.TFLITE
    return None


def _prediction(
    table: Any, model: nn.Module, inputs: tuple[torch.Tensor, ...], target: Any
) -> dict[str, Any]:
    from edgetrim.lookup_tables import predict_model
    from edgetrim.model_ops import extract_layer_ops

    ops = extract_layer_ops(model, inputs, fusion=target.fusion)
    pred = predict_model(table, ops, target=target.name)
    overhead = float((table.meta or {}).get("invoke_overhead_ms", 0.0))
    return {
        "table_target": table.device.target,
        "total_ms": float(pred.total_ms),
        "invoke_overhead_ms": overhead,
        "uncovered_share": float(pred.uncovered_share),
        "rows": [
            {
                "name": r.name,
                "context_key": r.context_key,
                "in_width": r.in_width,
                "out_width": r.out_width,
                "ms": float(r.ms),
                "covered": bool(r.covered),
                "extrapolated": bool(r.extrapolated),
            }
            for r in pred.rows
        ],
    }


def export_run(run_path: str | Path, out_dir: str | Path, config: ExportConfig | None = None) -> ExportBundle:
    """Export a RUN folder into ``out_dir`` and check, measure and document the artifacts.

    Raises:
        EdgetrimError / ExportError: one line for a run with no model, int8 without data, data whose
            shape does not match the model, a converter failure, or a parity failure.

    Example:
        >>> b = export_run("runs/cnn50", "deploy_out", ExportConfig(formats=("onnx",)))  # doctest: +SKIP
        >>> b.manifest_path.name  # doctest: +SKIP
        'manifest.json'
    """
    cfg = config or ExportConfig()
    root = Path(run_path)
    if root.is_dir() and not (root / MODEL_FILE).is_file():
        raise EdgetrimError(f"run folder {root} holds no {MODEL_FILE}; export needs a finished run")
    if root.is_dir() and not (root / INFO_FILE).is_file():
        raise EdgetrimError(f"run folder {root} holds no {INFO_FILE}; export needs a finished run")
    run = load_run(root)
    model, inputs, info = run.model.eval(), run.example_inputs, run.info
    data_spec = cfg.data or (info.get("data_spec") if cfg.int8 else None)
    if cfg.int8 and not data_spec:
        raise ExportError("int8 export needs calibration data: pass --data (e.g. --data digits)")
    data = load_real_data(data_spec) if data_spec else None
    if data is not None:
        check_input_spec(
            [_spec_of(t) for t in inputs],
            data.calibration[0][0],
            what=f"data {data.spec!r} for run {root.name}",
            against="the model",
        )
        # before any export: out-of-range ids would fail later in torch or in int8 calibration
        names = [f"input_{i}" for i in range(len(inputs))]
        check_ids_in_range(embedding_sizes(model, inputs), inputs, data, names)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    precisions = (Precision.FP32, Precision.INT8) if cfg.int8 else (Precision.FP32,)
    artifacts: list[ExportArtifact] = []
    bar = tqdm(total=len(cfg.formats) * len(precisions), desc="export + parity", unit="file", file=sys.stderr)
    for fmt in cfg.formats:
        fp32: ExportArtifact | None = None
        for precision in precisions:
            bar.set_postfix_str(f"{fmt.value}-{precision.value}")
            art = _export(
                model,
                inputs,
                fmt,
                precision,
                out / _file_name(fmt, precision),
                opset=cfg.opset,
                data=data,
                fp32=fp32,
            )
            check_artifact_inputs(art.inputs, [tuple(t.shape) for t in inputs], path=art.path.name)
            report = check_parity(model, inputs, art, _runner(art), data=data, config=cfg.parity)
            art = _with_parity(art, report.to_dict())
            if precision is Precision.FP32:
                fp32 = art
            artifacts.append(art)
            logger.info("%s: parity ok (%s)", art.label, report.gate)
            bar.update()
    bar.close()
    table = _resolve_table(cfg, root, info)  # once: the re-measurement and the report share it
    remeasured, device, predicted, notes = _measure(cfg, table, model, inputs, artifacts, data)
    manifest = build_manifest(
        run_path=root.resolve(),
        run_info=info,
        input_spec=[_spec_of(t).to_dict() for t in inputs],
        artifacts=[_artifact_entry(a, remeasured) for a in artifacts],
        out_dir=out,
        device=device,
        predicted=predicted,
        report_file="report.html" if cfg.report else None,
    )
    manifest["notes"] = notes
    manifest_path = write_manifest(out, manifest)
    report_path = None
    if cfg.report:
        from edgetrim.deploy.report import write_report

        report_path = write_report([manifest], out, table=table).html
    return ExportBundle(
        out_dir=out,
        artifacts=tuple(artifacts),
        remeasured=tuple(remeasured),
        manifest_path=manifest_path,
        report_path=report_path,
        notes=tuple(notes),
    )


def _spec_of(t: torch.Tensor) -> Any:
    from edgetrim.deploy.artifact import TensorSpec

    return TensorSpec(name="input", shape=tuple(t.shape), dtype=str(t.dtype).replace("torch.", ""))


def _with_parity(art: ExportArtifact, parity: dict[str, Any]) -> ExportArtifact:
    from dataclasses import replace

    return replace(art, parity=parity)


def _artifact_entry(art: ExportArtifact, remeasured: list[RemeasureReport]) -> dict[str, Any]:
    entry = art.to_dict()
    entry["label"] = art.label
    rm = next((r for r in remeasured if r.label == art.label), None)
    entry["remeasure"] = rm.to_dict() if rm else None
    return entry


def _measure(
    cfg: ExportConfig,
    table: Any,
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    artifacts: list[ExportArtifact],
    data: RealData | None,
) -> tuple[list[RemeasureReport], dict[str, Any] | None, dict[str, Any] | None, list[str]]:
    notes: list[str] = []
    target_name = cfg.target or (table.device.target if table is not None else None)
    if target_name is None:
        notes.append("not re-measured: no --target given and the run names no table")
        return [], None, None, notes
    from edgetrim.profiler.targets import get_target
    from edgetrim.profiler.timing import TimingConfig

    threads = table.device.threads if table is not None and table.device.target == target_name else 1
    target = get_target(target_name, threads=threads)
    timing = cfg.timing or TimingConfig()
    device = target.info()
    fmt = _format_for_runtime(device.runtime)
    if fmt is None:
        notes.append(f"not re-measured: target {target_name} runs no exported format")
        return [], device.to_dict(), None, notes
    predicted = None
    if table is not None and table.device.target == target_name:
        predicted = _prediction(table, model, inputs, target)
    elif table is not None:
        notes.append(f"no prediction: the table was made on {table.device.target}, measured on {target_name}")
    rows = [(r["name"], r["ms"]) for r in predicted["rows"]] if predicted else []
    others = sorted({a.format.value for a in artifacts if a.format is not fmt})
    if others:
        notes.append(f"{', '.join(others)} artifacts not re-measured: {target_name} runs {fmt.value} files")
    measured: list[RemeasureReport] = []
    for art in artifacts:
        if art.format is not fmt:
            continue
        rep = remeasure(
            art,
            target,
            timing=timing,
            example_inputs=inputs,
            # the table is fp32: int8 artifacts get the same layer rows without a prediction
            predicted=rows if art.precision is Precision.FP32 else [(n, None) for n, _ in rows],
            predicted_ms=predicted["total_ms"] if predicted and art.precision is Precision.FP32 else None,
            overhead_ms=predicted["invoke_overhead_ms"] if predicted else 0.0,
            profile_runs=cfg.profile_runs,
        )
        if cfg.check_sparsity and art.precision is Precision.FP32 and weight_sparsity(model) >= SPARSITY_MIN:

            def export_twin(m: nn.Module, stem: Path, a: ExportArtifact = art) -> ExportArtifact:
                return _export(
                    m,
                    inputs,
                    a.format,
                    a.precision,
                    stem.with_suffix(a.format.suffix),
                    opset=cfg.opset,
                    data=data,
                )

            from dataclasses import replace

            rep = replace(rep, sparsity=sparsity_payoff(model, export_twin, target, timing=timing))
        measured.append(rep)
    return measured, device.to_dict(), predicted, notes
