"""edgetrim tables show|plot|validate|merge and edgetrim predict via CliRunner, reading their JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgetrim.cli import app
from edgetrim.lookup_tables import LatencyTable, load_table
from edgetrim.lookup_tables.grid import plan_points
from edgetrim.lookup_tables.table import SCHEMA_VERSION
from edgetrim.types import DeviceInfo, OpContext, OpKind

from .synth import DEVICE, stats

runner = CliRunner()

MODEL_FILE = """
import torch
from torch import nn

def tiny():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 13, 3, padding=1), nn.BatchNorm2d(13), nn.ReLU(),
                      nn.Conv2d(13, 9, 1), nn.Hardswish(), nn.Flatten(), nn.Linear(9 * 4 * 4, 5))
    return m, (torch.randn(1, 3, 4, 4),)

def bare():
    return nn.Linear(6, 2)

def broken():
    raise RuntimeError("boom")
"""


def _json(result) -> dict:  # type: ignore[no-untyped-def]
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _error(result, match: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and match in lines[-1], result.output
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """A model file and a synthetic ort-cpu table covering exactly the model's contexts."""
    from edgetrim.model_ops import extract_layer_ops, fusion_for_runtime
    from edgetrim.model_spec import load_model

    d = tmp_path_factory.mktemp("cli")
    model = d / "models.py"
    model.write_text(MODEL_FILE)
    loaded = load_model(f"{model}:tiny")
    ops = extract_layer_ops(loaded.module, loaded.example_inputs, fusion=fusion_for_runtime("onnxruntime"))
    table = LatencyTable(DEVICE, meta={"build_time_s": 1.5})
    for op in ops:
        for i, o in plan_points(op.context, op.in_width + 4, op.out_width + 4):
            table.record(op.context, i, o, stats(0.001 * (1 + i * o / 16)))
    path = table.save(d / "table.json")
    partial = LatencyTable(DEVICE)
    conv = next(op for op in ops if op.context.kind is OpKind.LINEAR)
    partial.record(conv.context, 2, 2, stats(0.5))
    return {"model": model, "table": path, "partial": partial.save(d / "partial.json"), "dir": d}


def test_show_json(files) -> None:  # type: ignore[no-untyped-def]
    data = _json(runner.invoke(app, ["tables", "show", str(files["table"]), "--json"]))
    assert data["fingerprint"] == DEVICE.fingerprint() and data["meta"]["build_time_s"] == 1.5
    kinds = {c["kind"] for c in data["contexts"]}
    assert {"conv2d", "linear"} <= kinds
    assert data["points"] == sum(c["points"] for c in data["contexts"])
    text = runner.invoke(app, ["tables", "show", str(files["table"])])
    assert text.exit_code == 0 and "conv2d" in text.stdout


def test_predict_json(files) -> None:  # type: ignore[no-untyped-def]
    args = ["predict", "--table", str(files["table"]), "--model", f"{files['model']}:tiny", "--json"]
    data = _json(runner.invoke(app, args))
    assert data["total_ms"] == pytest.approx(sum(r["ms"] for r in data["layers"]))
    assert data["uncovered_share"] == 0.0 and all(r["covered"] for r in data["layers"])
    conv = data["layers"][0]
    assert conv["context_key"].startswith("conv2d/k3x3") and (conv["in_width"], conv["out_width"]) == (3, 13)
    assert conv["ms"] == pytest.approx(0.001 * (1 + 3 * 13 / 16))  # a measured point: exact
    data = _json(runner.invoke(app, [*args, "--target", "ort-cpu"]))
    assert data["total_ms"] > 0


def test_plot_one_context_and_all(files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    key = _json(runner.invoke(app, ["tables", "show", str(files["table"]), "--json"]))["contexts"][0]["key"]
    png = tmp_path / "one.png"
    data = _json(
        runner.invoke(
            app, ["tables", "plot", str(files["table"]), "--context", key, "--out", str(png), "--json"]
        )
    )
    assert data["files"] == [str(png)] and png.read_bytes()[:4] == b"\x89PNG"
    data = _json(  # every context into a folder (the one-context table keeps this fast)
        runner.invoke(
            app, ["tables", "plot", str(files["partial"]), "--out", str(tmp_path / "all"), "--json"]
        )
    )
    assert len(data["files"]) == len(load_table(files["partial"]).contexts()) == 1
    assert Path(data["files"][0]).parent == tmp_path / "all"
    _error(
        runner.invoke(app, ["tables", "plot", str(files["table"]), "--context", "nope", "--out", str(png)]),
        "no context 'nope'",
    )


def test_merge(files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "merged.json"
    data = _json(
        runner.invoke(
            app, ["tables", "merge", str(files["table"]), str(files["partial"]), "--out", str(out), "--json"]
        )
    )
    assert data["inputs"] == 2 and data["points"] == load_table(out).n_points()
    assert data["points"] >= load_table(files["table"]).n_points()
    other = LatencyTable(DeviceInfo("litert-cpu", "litert", "2.3", "x"))
    other.record(OpContext(OpKind.LINEAR), 1, 1, stats(1.0))
    other_path = other.save(tmp_path / "other.json")
    _error(
        runner.invoke(app, ["tables", "merge", str(files["table"]), str(other_path), "--out", str(out)]),
        "--force",
    )


def test_bad_input_is_one_line_error(files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = f"{files['model']}:tiny"
    table = str(files["table"])
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(files["table"].read_text()[:200])
    newer = tmp_path / "newer.json"
    newer.write_text(
        json.dumps({**json.loads(files["table"].read_text()), "schema_version": SCHEMA_VERSION + 1})
    )
    cases = [
        (["tables", "show", str(tmp_path / "missing.json")], "does not exist"),
        (["tables", "show", str(corrupt)], "truncated"),
        (["predict", "--table", str(newer), "--model", model], "newer edgetrim"),
        (["predict", "--table", table, "--model", model, "--target", "litert-cpu"], "--allow-other-target"),
        (["predict", "--table", str(files["partial"]), "--model", model], "has no context in the table"),
        (["predict", "--table", table, "--model", str(tmp_path / "nope.py") + ":f"], "does not exist"),
        (["predict", "--table", table, "--model", f"{files['model']}:broken"], "boom"),
        (["tables", "validate", table, "--target", "litert-cpu"], "--allow-other-target"),
        (
            ["tables", "validate", table, "--target", "no-such-target", "--allow-other-target"],
            "unknown target",
        ),
        (["tables", "validate", table, "--target", "ort-cpu", "--points", "0"], "--points must be >= 1"),
    ]
    for args, match in cases:
        _error(runner.invoke(app, args), match)
    ok = runner.invoke(
        app,
        [
            "predict",
            "--table",
            table,
            "--model",
            model,
            "--target",
            "litert-cpu",
            "--allow-other-target",
            "--json",
        ],
    )
    assert ok.exit_code == 0


def test_validate_on_ort_cpu_with_a_real_tiny_table(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("onnxruntime")
    from edgetrim.profiler.session import ContextPlan, ProfileConfig, profile_table
    from edgetrim.profiler.targets import get_target
    from edgetrim.profiler.timing import TimingConfig

    ctx = OpContext(OpKind.LINEAR, tokens=4)
    out = tmp_path / "real.json"
    profile_table(
        get_target("ort-cpu"),
        [ContextPlan(ctx, 12, 12)],
        out=out,
        timing=TimingConfig.quick(),
        refine=False,
        config=ProfileConfig(points_per_context=40),
    )
    data = _json(
        runner.invoke(
            app, ["tables", "validate", str(out), "--target", "ort-cpu", "--points", "4", "--quick", "--json"]
        )
    )
    assert data["n"] == 4 and len(data["points"]) == 4
    assert all(not p["in_table"] for p in data["points"])  # held out: never a stored point
    assert data["mape_pct"] >= 0 and ctx.key() in data["by_context"]
    _error(
        runner.invoke(
            app, ["tables", "validate", str(out), "--target", "torch-cuda", "--allow-other-target"]
        ),
        "",
    )
