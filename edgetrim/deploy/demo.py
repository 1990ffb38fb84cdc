"""The end-to-end demo on the local CPU: profile -> train -> compress to 50% -> export -> re-measure -> report.

Everything runs through library functions (no subprocess): ``profile_table``, ``compress``,
``export_run`` (export + parity + re-measurement) and ``write_report``. The target is ``ort-cpu`` with
one thread; the table covers exactly the operator contexts of the digits CNN.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from edgetrim.deploy.artifact import ExportFormat

logger = logging.getLogger(__name__)

TARGET = "ort-cpu"
STAGES = ("train", "profile table", "compress", "export + re-measure", "report", "dense vs compressed")


def _advance(bar: Any) -> None:
    """Count the finished stage and name the next one on the progress bar (stderr)."""
    bar.update()
    if bar.n < len(STAGES):
        bar.set_description_str(f"demo: {STAGES[bar.n]}")


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo. ``quick()`` is the few-minute variant used by tests and ``--quick``."""

    widths: tuple[int, ...] = (32, 64, 64)
    train_epochs: int = 8
    compress_epochs: int = 4
    finetune_epochs: int = 2
    budget_fraction: float = 0.5
    timing: str = "default"  # "default" or "quick" TimingConfig
    refine: bool = True
    int8: bool = True
    formats: tuple[ExportFormat, ...] = (ExportFormat.ONNX, ExportFormat.TFLITE)
    profile_runs: int = 20
    points_per_context: int = 120
    rounds: int = 7

    def __post_init__(self) -> None:
        if not 0.0 < self.budget_fraction < 1.0:
            raise ValueError(f"budget_fraction must be in (0, 1), got {self.budget_fraction}")
        if self.points_per_context < 1:
            raise ValueError(f"points_per_context must be >= 1, got {self.points_per_context}")
        if self.timing not in ("default", "quick"):
            raise ValueError(f"timing must be 'default' or 'quick', got {self.timing!r}")

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(
            widths=(64, 128),  # several channel blocks (16 on AVX-512): a quick table still sees steps
            train_epochs=4,
            compress_epochs=2,
            finetune_epochs=1,
            timing="quick",
            refine=False,
            int8=False,
            profile_runs=10,
            points_per_context=24,
            rounds=3,
        )


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f} ms"


@dataclass(frozen=True)
class DemoResult:
    """Where the demo put things and the headline numbers."""

    out_dir: Path
    table: Path
    dense_run: Path
    compressed_run: Path
    export_dir: Path
    dense_export_dir: Path
    report_html: Path
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    def summary_lines(self) -> list[str]:
        n = self.numbers
        return [
            f"dense digits CNN: accuracy {n['dense_accuracy']:.3f}, measured {n['dense_measured_ms']:.4f} ms "
            f"(predicted {_ms(n['dense_predicted_ms'])}) on {TARGET}, 1 thread",
            f"compressed:       accuracy {n['accuracy']:.3f}, measured {n['measured_ms']:.4f} ms "
            f"(predicted {_ms(n['predicted_ms'])}), {n['measured_ms'] / n['dense_measured_ms']:.0%} of dense "
            f"(ONNX files timed side by side; budget {n['budget_fraction']:.0%} of the layers' {n['budget_ms'] / n['budget_fraction']:.4f} ms)",
            f"widths {n['widths_before']} -> {n['widths_after']}",
            f"table:            {self.table}",
            f"runs:             {self.dense_run}  {self.compressed_run}",
            f"artifacts:        {self.export_dir}  (manifest.json lists them with hashes)",
            f"report:           {self.report_html}",
            f"took {n['seconds']:.0f} s",
        ]


def side_by_side_ms(target: Any, paths: list[Path], timing: Any, *, rounds: int) -> list[float]:
    """Median over ``rounds`` of each artifact's median latency, measured interleaved."""
    import numpy as np

    per: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):
        for i, p in enumerate(paths):
            per[i].append(target.measure_artifact(p, timing).median_ms)
    return [float(np.median(v)) for v in per]


def run_demo(out_dir: str | Path, config: DemoConfig | None = None) -> DemoResult:
    """Run the whole story into ``out_dir`` (resumes the table when it is already there)."""
    import torch

    from edgetrim.compress.api import compress
    from edgetrim.compress.config import CompressConfig
    from edgetrim.compress.run_folder import save_run
    from edgetrim.deploy.bundle import ExportConfig, export_run
    from edgetrim.deploy.manifest import load_manifest
    from edgetrim.deploy.report import write_report
    from edgetrim.errors import BudgetError
    from edgetrim.examples.data import digits_loaders
    from edgetrim.examples.models import digits_cnn
    from edgetrim.examples.training import train_classifier
    from edgetrim.model_ops import extract_layer_ops
    from edgetrim.profiler.session import ProfileConfig, profile_table
    from edgetrim.profiler.targets import get_target
    from edgetrim.profiler.timing import TimingConfig

    cfg = config or DemoConfig()
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timing = TimingConfig.quick() if cfg.timing == "quick" else TimingConfig()
    target = get_target(TARGET, threads=1)
    torch.manual_seed(0)

    model, inputs = digits_cnn(widths=cfg.widths)
    train, val = digits_loaders(batch_size=64)
    stages = tqdm(total=len(STAGES), unit="stage", file=sys.stderr, dynamic_ncols=True)
    stages.set_description_str(f"demo: {STAGES[0]}")
    logger.info("training the digits CNN %s for %d epochs", cfg.widths, cfg.train_epochs)
    dense_acc = train_classifier(model, train, val, epochs=cfg.train_epochs, lr=3e-3)

    table_path = out / "table.json"
    ops = extract_layer_ops(model, inputs, fusion=target.fusion)
    _advance(stages)
    logger.info("profiling %d operators of the model on %s", len(ops), TARGET)
    table = profile_table(
        target,
        ops,
        out=table_path,
        resume=True,
        timing=timing,
        refine=cfg.refine,
        config=ProfileConfig(points_per_context=cfg.points_per_context, refine_rounds=1),
    )

    _advance(stages)
    dense_measured = target.measure_model(model, inputs, timing).median_ms
    dense_run = save_run(
        out / "runs" / "dense",
        model,
        inputs,
        {
            "kind": "baseline",
            "model_spec": "edgetrim.examples.models:digits_cnn",
            "data_spec": "digits",
            "accuracy": dense_acc,
            "measured_ms": dense_measured,
            "table": str(table_path.resolve()),
        },
    )
    from edgetrim.compress.api import model_latency_ms

    dense_pred = model_latency_ms(table, ops)
    budget = cfg.budget_fraction * dense_pred  # compress's budget is in the table's (overhead-free) terms
    logger.info(
        "compressing to %.0f%% of the dense latency: %.4f ms predicted", 100 * cfg.budget_fraction, budget
    )
    fraction = cfg.budget_fraction
    while True:
        try:
            result = compress(
                model,
                inputs,
                CompressConfig(
                    budget_ms=budget, epochs=cfg.compress_epochs, finetune_epochs=cfg.finetune_epochs
                ),
                table=table,
                train_loader=train,
                val_loader=val,
            )
            break
        except BudgetError as exc:
            # Where latency steps with wide channel blocks (onnxruntime pads to 16 channels on
            # AVX-512) the narrowest widths of a small CNN can cost more than the asked fraction:
            # aim halfway between them and the dense model instead, and say so (once).
            # A table that sees almost no step at all (a small, noisy one) leaves only the narrowest
            # structure: compress to that, and the side-by-side measurement says what it is worth.
            floor = exc.smallest
            if floor is None or fraction != cfg.budget_fraction or floor >= dense_pred:
                raise
            budget = floor + 0.5 * (dense_pred - floor) if floor < 0.95 * dense_pred else floor
            fraction = budget / dense_pred
            logger.warning("%s; compressing to %.0f%% of the dense latency instead", exc, 100 * fraction)
    info = {
        **result.report.to_info(),
        "model_spec": "edgetrim.examples.models:digits_cnn",
        "data_spec": "digits",
        "table": str(table_path.resolve()),
        "dense_measured_ms": dense_measured,
    }
    comp_run = save_run(out / "runs" / "compressed", result.model, result.example_inputs, info)

    export_cfg = ExportConfig(
        formats=cfg.formats,
        int8=cfg.int8,
        data="digits",
        target=TARGET,
        table=table_path,
        timing=timing,
        profile_runs=cfg.profile_runs,
    )
    _advance(stages)
    bundle = export_run(comp_run, out / "deploy", export_cfg)
    dense_bundle = export_run(
        dense_run,
        out / "deploy_dense",
        ExportConfig(
            formats=(ExportFormat.ONNX,),
            data="digits",
            target=TARGET,
            table=table_path,
            timing=timing,
            profile_runs=cfg.profile_runs,
        ),
    )
    _advance(stages)
    files = write_report(
        [load_manifest(dense_bundle.out_dir), load_manifest(bundle.out_dir)], out / "report", table=table
    )

    onnx_rm = next(r for r in bundle.remeasured if r.label == "onnx-fp32")
    # the headline ratio: dense and compressed ONNX files timed interleaved, round after round, so
    # load on a shared machine hits both alike (the two export folders were measured minutes apart)
    _advance(stages)
    dense_ms, comp_ms = side_by_side_ms(
        target,
        [dense_bundle.out_dir / "model.onnx", bundle.out_dir / "model.onnx"],
        timing,
        rounds=cfg.rounds,
    )
    numbers = {
        "dense_accuracy": dense_acc,
        "accuracy": result.report.accuracy,
        "dense_predicted_ms": next(r for r in dense_bundle.remeasured if r.label == "onnx-fp32").predicted_ms,
        "budget_ms": budget,
        "budget_fraction": fraction,
        "predicted_ms": onnx_rm.predicted_ms,
        "dense_measured_ms": dense_ms,
        "measured_ms": comp_ms,
        "widths_before": result.report.widths_before,
        "widths_after": result.report.widths_after,
        "seconds": time.perf_counter() - start,
    }
    stages.update()
    stages.close()
    return DemoResult(
        out_dir=out,
        table=table_path,
        dense_run=dense_run,
        compressed_run=comp_run,
        export_dir=bundle.out_dir,
        dense_export_dir=dense_bundle.out_dir,
        report_html=files.html,
        numbers=numbers,
    )
