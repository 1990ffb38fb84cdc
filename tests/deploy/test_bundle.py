"""export_run end to end on a RUN folder: artifacts, manifest (hashes verify), re-measurement on
ort-cpu with a per-layer split, report files; the one-line errors; the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgetrim.deploy.bundle import ExportConfig, export_run
from edgetrim.deploy.manifest import load_manifest, sha256_file, verify_manifest
from edgetrim.errors import EdgetrimError, ExportError


def _table_for(net: torch.nn.Module, path: Path) -> Path:
    """A small hand-made table on this machine's ort-cpu fingerprint covering the net's operators."""
    from edgetrim.lookup_tables import LatencyTable
    from edgetrim.model_ops import extract_layer_ops
    from edgetrim.profiler.targets import get_target
    from edgetrim.types import LatencyStats

    target = get_target("ort-cpu")
    table = LatencyTable(target.info(), meta={"invoke_overhead_ms": 0.002})
    for op in extract_layer_ops(net, (torch.randn(1, 1, 8, 8),), fusion=target.fusion):
        out_w = op.in_width if op.context.one_axis else op.out_width
        for dw in (0, 1):
            ms = 0.001 + 1e-5 * max(op.macs, 1) ** 0.5
            table.record(op.context, op.in_width + dw, out_w + dw, LatencyStats(ms, ms, ms, ms, 0.0, 1))
    table.save(path)
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, trained_net, run_factory):
    from edgetrim.profiler.timing import TimingConfig

    root = tmp_path_factory.mktemp("bundle")
    table = _table_for(trained_net[0], root / "table.json")
    run = run_factory(root / "run", trained_net[0], trained_net[1], table=str(table))
    cfg = ExportConfig(
        formats=("onnx",), int8=True, data="digits", timing=TimingConfig.quick(), profile_runs=5
    )
    return export_run(run, root / "out", cfg)


def test_manifest_lists_every_file_with_a_verifiable_hash(bundle) -> None:
    m = load_manifest(bundle.out_dir)
    names = sorted(a["path"] for a in m["artifacts"])
    assert names == ["model.onnx", "model_int8.onnx"]
    for a in m["artifacts"]:
        assert a["sha256"] == sha256_file(bundle.out_dir / a["path"])
        assert a["parity"]["passed"] is True
    assert verify_manifest(bundle.out_dir) == []
    for key in ("versions", "device", "input_spec", "predicted", "accuracy", "run"):
        assert m[key], key
    assert m["input_spec"][0]["shape"] == [1, 1, 8, 8]
    assert m["device"]["target"] == "ort-cpu" and m["versions"]["onnxruntime"] != "missing"
    assert m["run"]["widths_after"] == {"conv1": 7, "conv2": 5, "fc": 3}  # compression settings kept
    assert m["accuracy"]["artifacts"]["onnx-fp32"] == pytest.approx(m["accuracy"]["run"], abs=1e-9)


def test_tampered_artifact_is_detected(bundle, tmp_path: Path) -> None:
    import shutil

    copy = shutil.copytree(bundle.out_dir, tmp_path / "copy")
    with (copy / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    assert verify_manifest(copy) == ["model.onnx: sha256 differs from the manifest"]


def test_remeasured_on_the_tables_target_with_a_per_layer_split(bundle) -> None:
    rm = {r.label: r for r in bundle.remeasured}
    fp32 = rm["onnx-fp32"]
    assert fp32.target == "ort-cpu" and fp32.measured_ms > 0 and fp32.predicted_ms is not None
    measured_layers = [r for r in fp32.layers if r.measured_ms is not None]
    assert {r.name for r in measured_layers} >= {"conv1", "conv2", "fc_u", "fc_v"}
    # scaled node times add up to the un-profiled total minus the table's invoke overhead
    total = sum(r.measured_ms for r in measured_layers)
    assert total == pytest.approx(max(fp32.measured_ms - 0.002, 0.0), rel=1e-6)
    assert "onnx-int8" in rm and rm["onnx-int8"].measured_ms > 0


def test_report_written_next_to_the_manifest(bundle) -> None:
    data = json.loads((bundle.out_dir / "report.json").read_text())
    assert any(k.startswith("layers:") for k in data["images"]) and "pareto" in data["images"]
    assert (
        bundle.report_path is not None and bundle.report_path.read_text().count("data:image/png;base64,") >= 3
    )


def test_run_folder_without_model_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    with pytest.raises(EdgetrimError, match=r"holds no model\.pt") as err:
        export_run(tmp_path / "run", tmp_path / "out")
    assert "\n" not in str(err.value)


def test_data_whose_shape_does_not_match_is_one_line_error(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"the model expects \('B', 1, 8, 8\)") as err:
        export_run(run_dir, tmp_path / "out", ExportConfig(formats=("onnx",), data="digits_flat"))
    assert "\n" not in str(err.value)


def test_int8_without_any_data_is_one_line_error(tmp_path: Path, trained_net, run_factory) -> None:
    run = run_factory(tmp_path / "run", trained_net[0], trained_net[1], data_spec=None)
    with pytest.raises(ExportError, match="int8 export needs calibration data"):
        export_run(run, tmp_path / "out", ExportConfig(formats=("onnx",), int8=True))


def test_cli_export_and_report(run_dir: Path, tmp_path: Path) -> None:
    from edgetrim.cli import app

    runner = CliRunner()
    res = runner.invoke(
        app, ["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "e"), "--json"]
    )
    assert res.exit_code == 0, res.output
    manifest = json.loads(res.stdout)
    assert manifest["artifacts"][0]["label"] == "onnx-fp32"
    res = runner.invoke(
        app, ["report", str(run_dir), str(tmp_path / "e"), "--out", str(tmp_path / "r"), "--json"]
    )
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["summary"]) == 2
    res = runner.invoke(app, ["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "error: run folder" in res.output
    res = runner.invoke(app, ["export", str(run_dir), "--format", "coreml", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "unknown format 'coreml'" in res.output


def test_cli_report_plots_the_surfaces_of_the_runs_table(bundle, tmp_path: Path) -> None:
    from edgetrim.cli import app

    res = CliRunner().invoke(app, ["report", str(bundle.out_dir), "--out", str(tmp_path / "r"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["surfaces"] and all(f"surface:{k}" in data["images"] for k in data["surfaces"])


def test_a_run_whose_table_is_gone_exports_with_one_warning(
    tmp_path: Path, trained_net, run_factory, caplog
) -> None:
    run = run_factory(tmp_path / "run", trained_net[0], trained_net[1], table=str(tmp_path / "deleted.json"))
    with caplog.at_level("WARNING", logger="edgetrim.deploy.bundle"):
        bundle = export_run(run, tmp_path / "out", ExportConfig(formats=("onnx",)))
    assert [r.getMessage() for r in caplog.records].count(
        f"the run's table {tmp_path / 'deleted.json'} is gone; exporting without predictions"
    ) == 1
    assert bundle.report_path is not None and bundle.report_path.is_file() and not bundle.remeasured
