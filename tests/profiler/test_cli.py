"""edgetrim devices / profile / measure through typer's CliRunner, reading their --json output."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from edgetrim.cli import app
from edgetrim.lookup_tables import load_table
from edgetrim.profiler.builders import build_tflite_op
from edgetrim.types import OpContext, OpKind

runner = CliRunner()

MODEL_FILE = """
import torch
from torch import nn

def tiny():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    return m, (torch.randn(1, 2, 4, 4),)

def bare():
    return nn.Linear(6, 2)

def broken():
    raise RuntimeError("boom")
"""


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "models.py"
    path.write_text(MODEL_FILE)
    return path


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_devices_json_lists_local_targets() -> None:
    data = _json(runner.invoke(app, ["devices", "--json", "--local-only"]))
    by_name = {t["name"]: t for t in data["targets"]}
    assert {"torch-cpu", "ort-cpu", "litert-cpu", "torch-cuda", "ort-cuda"} <= set(by_name)
    assert by_name["ort-cpu"]["available"] and by_name["ort-cpu"]["fingerprint"].startswith(
        "ort-cpu|onnxruntime|"
    )
    assert by_name["ort-cpu"]["info"]["threads"] == 1
    for t in data["targets"]:
        assert t["available"] or t["reason"]  # unavailable targets say why


def test_profile_model_then_resume_then_measure(model_file, tmp_path) -> None:
    out = tmp_path / "table.json"
    args = ["profile", "--target", "ort-cpu", "--model", f"{model_file}:tiny", "--out", str(out)]
    first = _json(runner.invoke(app, [*args, "--quick", "--max-points", "30", "--json"]))
    assert first["points"] == 30 and first["points_measured"] == 30
    assert load_table(out).n_points() == 30
    second = _json(
        runner.invoke(
            app, [*args, "--quick", "--max-points", "40", "--resume", "--drift-tolerance", "0", "--json"]
        )
    )
    assert second["points"] == 40 and second["points_measured"] == 10  # only the new ones
    assert second["resume_drift"] is None  # 0: no resume check

    table = load_table(out)  # as if measured on a host far slower than this one now
    for ctx in table.contexts():
        for i, o, st in table.points(ctx):
            slow = {k: 50 * getattr(st, k) + 0.1 for k in ("median_ms", "p10_ms", "p90_ms", "mean_ms")}
            table.record(ctx, i, o, dataclasses.replace(st, **slow))
    table.save(out)
    third = runner.invoke(app, [*args, "--quick", "--max-points", "40", "--resume"])
    assert third.exit_code == 0, third.output
    assert "started over (old table kept as" in third.stdout
    assert load_table(tmp_path / "table.stale.json").n_points() == 40
    assert load_table(out).meta["resume_drift"]["restarted"] is True

    measured = _json(
        runner.invoke(
            app, ["measure", "--target", "torch-cpu", "--model", f"{model_file}:tiny", "--quick", "--json"]
        )
    )
    assert measured["median_ms"] > 0 and measured["p10_ms"] <= measured["median_ms"] <= measured["p90_ms"]
    assert measured["fingerprint"].startswith("torch-cpu|torch|")


def test_profile_spec_and_measure_tflite_artifact(tmp_path) -> None:
    ctx = OpContext(OpKind.DEPTHWISE_CONV2D, kernel=(3, 3), padding=(1, 1), spatial=(4, 4), activation="relu")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"contexts": [{"context": ctx.to_dict(), "max_in": 6}]}))
    out = tmp_path / "t.json"
    data = _json(
        runner.invoke(
            app,
            [
                "profile",
                "--target",
                "litert-cpu",
                "--spec",
                str(spec),
                "--out",
                str(out),
                "--quick",
                "--json",
            ],
        )
    )
    assert data["contexts"] == 1 and data["points"] == 6  # depthwise: every width 1..6

    artifact = tmp_path / "op.tflite"
    artifact.write_bytes(build_tflite_op(ctx, 6, 6))
    measured = _json(
        runner.invoke(
            app, ["measure", "--target", "litert-cpu", "--model", str(artifact), "--json", "--quick"]
        )
    )
    assert measured["median_ms"] > 0 and measured["target"] == "litert-cpu"


def test_measure_with_input_shape(model_file) -> None:
    data = _json(
        runner.invoke(
            app,
            [
                "measure",
                "--target",
                "ort-cpu",
                "--model",
                f"{model_file}:bare",
                "--input-shape",
                "3,6",
                "--quick",
                "--json",
            ],
        )
    )
    assert data["median_ms"] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["measure", "--target", "no-such-target", "--model", "x.py:f"], "unknown target 'no-such-target'"),
        (["measure", "--target", "ort-cpu", "--model", "missing.py:f"], "does not exist"),
        (["measure", "--target", "ort-cpu", "--model", "MODEL:broken"], "failed: RuntimeError: boom"),
        (["measure", "--target", "ort-cpu", "--model", "MODEL:bare"], "--input-shape"),
        (["profile", "--target", "ort-cpu", "--out", "t.json"], "exactly one of --model or --spec"),
        (["profile", "--target", "ort-cpu", "--spec", "nope.json", "--out", "t.json"], "does not exist"),
        (["measure", "--target", "ort-cpu", "--model", "MODEL:tiny", "--cores", "0,x"], "comma-separated"),
        (
            ["profile", "--target", "ort-cpu", "--model", "MODEL:tiny", "--out", "t.json", "--passes", "0"],
            "--passes",
        ),
        (
            [
                "profile",
                "--target",
                "ort-cpu",
                "--model",
                "MODEL:tiny",
                "--out",
                "t.json",
                "--drift-tolerance",
                "-1",
            ],
            "--drift-tolerance must be >= 0",
        ),
    ],
)
def test_one_line_errors(argv, message, model_file) -> None:
    argv = [a.replace("MODEL", str(model_file)) for a in argv]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_unavailable_target_is_a_one_line_error() -> None:
    from edgetrim.profiler.targets import list_targets

    missing = [s.name for s in list_targets() if not s.available]
    if not missing:
        pytest.skip("every local target is available here (GPU machine)")
    result = runner.invoke(app, ["measure", "--target", missing[0], "--model", "x.py:f"])
    assert result.exit_code == 2 and result.stderr.startswith(f"error: {missing[0]}")


def test_resume_into_another_targets_table_is_refused(model_file, tmp_path) -> None:
    out = tmp_path / "t.json"
    base = ["profile", "--model", f"{model_file}:tiny", "--out", str(out), "--quick", "--max-points", "5"]
    assert runner.invoke(app, [*base, "--target", "ort-cpu"]).exit_code == 0
    result = runner.invoke(app, [*base, "--target", "litert-cpu", "--resume"])
    assert result.exit_code == 2 and "cannot resume" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_console_output_carries_no_third_party_notices(model_file) -> None:
    """The exporter's own notices (torchvision ops not installed, a pytree deprecation) are not the
    user's concern; the console entry point keeps them out of a measure's output."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "edgetrim.cli", "measure", "--target", "ort-cpu"]
    cmd += ["--model", f"{model_file}:tiny", "--quick"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "median" in done.stdout
    for notice in ("torchvision is not installed", "LeafSpec", "Failed to load"):
        assert notice not in done.stdout + done.stderr
