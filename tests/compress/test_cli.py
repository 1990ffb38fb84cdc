"""``edgetrim compress`` through typer's CliRunner on digits with a tiny synthetic table."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from edgetrim.cli import app
from edgetrim.compress.run_folder import load_run
from edgetrim.examples.models import mlp
from edgetrim.model_ops import extract_layer_ops, fusion_for_runtime

MODEL_FILE = """
from edgetrim.examples.models import mlp


def small():
    return mlp(widths=(24, 16))
"""


def _table(tmp_path, make_table):
    """A tiny model file and a staircase table covering it; returns (model spec, table path)."""
    (tmp_path / "small_mlp.py").write_text(MODEL_FILE)
    model, example = mlp(widths=(24, 16))
    table = make_table(extract_layer_ops(model, example, fusion=fusion_for_runtime("onnxruntime")))
    path = tmp_path / "table.json"
    table.save(path)
    return f"{tmp_path / 'small_mlp.py'}:small", path


def _args(spec: str, table, out) -> list[str]:
    return ["compress", "--model", spec, "--data", "digits_flat", "--table", str(table), "--out", str(out)]


def test_cli_compress_writes_a_run_within_budget(tmp_path, make_table) -> None:
    spec, table = _table(tmp_path, make_table)
    out = tmp_path / "run"
    args = [*_args(spec, table, out), "--budget-ms", "0.017", "--epochs", "1", "--finetune-epochs", "1"]
    result = CliRunner().invoke(app, [*args, "--pretrain-epochs", "2", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["kind"] == "compress" and info["budget"]["ms"] == 0.017
    assert info["predicted_ms"] <= 0.017 < info["dense_predicted_ms"]
    run = load_run(out)
    assert run.info["widths_after"] == info["widths_after"]
    assert (out / "checkpoint.pt").is_file()


def test_cli_unreachable_budget_is_a_one_line_error(tmp_path, make_table) -> None:
    spec, table = _table(tmp_path, make_table)
    result = CliRunner().invoke(
        app, [*_args(spec, table, tmp_path / "r"), "--budget-ms", "0.00001", "--epochs", "1"]
    )
    assert result.exit_code == 2
    assert "error: latency budget" in result.output and "smallest reachable latency" in result.output


def test_cli_finetune_schedule_reaches_the_config_and_bad_values_are_one_line_errors(
    tmp_path, make_table
) -> None:
    spec, table = _table(tmp_path, make_table)
    base = [
        *_args(spec, table, tmp_path / "r"),
        "--budget-ms",
        "0.017",
        "--epochs",
        "1",
        "--finetune-epochs",
        "1",
    ]
    ok = CliRunner().invoke(
        app, [*base, "--finetune-schedule", "constant", "--penalised-schedule", "cosine", "--json"]
    )
    assert ok.exit_code == 0, ok.output
    config = json.loads(ok.stdout)["config"]
    assert config["finetune_schedule"] == "constant" and config["penalised_schedule"] == "cosine"
    bad = CliRunner().invoke(app, [*base, "--finetune-schedule", "step"])
    assert bad.exit_code == 2 and "finetune_schedule must be 'cosine' or 'constant'" in bad.output
    bad = CliRunner().invoke(app, [*base, "--penalised-schedule", "step"])
    assert bad.exit_code == 2 and "penalised_schedule must be 'cosine' or 'constant'" in bad.output


def test_cli_needs_exactly_one_budget(tmp_path, make_table) -> None:
    spec, table = _table(tmp_path, make_table)
    result = CliRunner().invoke(app, _args(spec, table, tmp_path / "r"))
    assert result.exit_code == 2 and "exactly one of budget_ms" in result.output


def test_cli_measure_reports_measured_latency_on_the_tables_target(tmp_path, make_table) -> None:
    # the staircase table names ort-cpu, which runs here: --measure times the models for real
    spec, table = _table(tmp_path, make_table)
    out = tmp_path / "run"
    args = [*_args(spec, table, out), "--budget-ms", "0.017", "--epochs", "1", "--finetune-epochs", "0"]
    result = CliRunner().invoke(app, [*args, "--measure", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["measured_ms"] > 0
    assert 1 <= len(info["measure_rounds"]) <= 4  # measure_steps=3: at most three re-fits
    assert info["measure_rounds"][-1]["measured_ms"] == info["measured_ms"]
    assert info["predicted_ms"] <= info["internal_budget_ms"] + 1e-12
