"""The end-to-end demo: ``edgetrim demo --quick`` (slow) and a tiny in-process variant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgetrim.deploy.artifact import ExportFormat
from edgetrim.deploy.manifest import load_manifest, verify_manifest


def _check_outputs(out: Path, result: dict) -> None:
    assert Path(result["table"]).is_file()
    for folder in ("dense_run", "compressed_run"):
        assert (Path(result[folder]) / "model.pt").is_file()
    for folder in ("export_dir", "dense_export_dir"):
        assert verify_manifest(result[folder]) == []
    m = load_manifest(result["export_dir"])
    fp32 = next(a for a in m["artifacts"] if a["label"] == "onnx-fp32")
    assert fp32["parity"]["passed"] and fp32["remeasure"]["measured_ms"] > 0
    assert fp32["remeasure"]["predicted_ms"] is not None  # predicted by the table made in the demo
    html = Path(result["report_html"]).read_text()
    assert html.count("data:image/png;base64,") >= 4
    n = result["numbers"]
    assert n["measured_ms"] > 0 and n["dense_measured_ms"] > 0
    assert n["predicted_ms"] < n["dense_predicted_ms"]  # the compressed model is predicted faster
    assert 0.0 <= n["accuracy"] <= 1.0


@pytest.mark.slow
def test_demo_quick_cli_end_to_end(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edgetrim.cli import app

    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path / "demo"), "--json"])
    assert res.exit_code == 0, res.output
    _check_outputs(tmp_path / "demo", json.loads(res.stdout))


@pytest.mark.slow
def test_demo_tiny_in_process(tmp_path: Path) -> None:
    """The same pipeline at the smallest sizes (one epoch each, 8 points per context, ONNX only)."""
    from edgetrim.deploy.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        widths=(64, 128),  # several channel blocks (16 on AVX-512): narrower is measurably faster
        train_epochs=1,
        compress_epochs=1,
        finetune_epochs=1,
        timing="quick",
        refine=False,
        int8=False,
        formats=(ExportFormat.ONNX,),
        profile_runs=3,
        points_per_context=16,  # 8 left a quick table too noisy to see a step at times
        rounds=1,
    )
    result = run_demo(tmp_path / "demo", cfg)
    _check_outputs(tmp_path / "demo", result.to_dict())
    assert any("report:" in line for line in result.summary_lines())
