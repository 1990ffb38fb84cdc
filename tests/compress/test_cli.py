"""``edgetrim compress`` through typer's CliRunner on digits with a tiny synthetic table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from edgetrim.cli import app
from edgetrim.compress.run_folder import load_run
from edgetrim.examples.models import mlp
from edgetrim.model_ops import extract_layer_ops, fusion_for_runtime
from edgetrim.model_spec import import_callable

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


def test_cli_schedules_and_allocation_reach_the_config_and_bad_values_are_one_line_errors(
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
        app,
        [*base, "--finetune-schedule", "constant", "--penalised-schedule", "cosine", "--allocation", "distortion",
         "--measure-margin", "0.1", "--json"],
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output
    info = json.loads(ok.stdout)
    config = info["config"]
    assert config["finetune_schedule"] == "constant" and config["penalised_schedule"] == "cosine"
    assert config["allocation"] == "distortion" and info["predicted_ms"] <= 0.017
    assert config["measure_margin"] == 0.1
    bad = CliRunner().invoke(app, [*base, "--measure-margin", "0.7"])
    assert bad.exit_code == 2 and "measure_margin must be in [0, 0.5)" in bad.output
    bad = CliRunner().invoke(app, [*base, "--allocation", "flops"])
    assert bad.exit_code == 2 and "allocation must be one of" in bad.output
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


OWN_CLASS_FILE = """
import torch
from torch import nn


class OwnMLP(nn.Module):  # a class only this file defines: the saved model pickles a reference to it
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.body(x))


def small():
    return OwnMLP(), (torch.randn(1, 64),)
"""


def test_a_run_of_a_model_class_from_a_file_loads_in_another_process_and_directory(
    tmp_path, make_table
) -> None:
    (tmp_path / "own.py").write_text(OWN_CLASS_FILE)
    model, example = import_callable(f"{tmp_path / 'own.py'}:small")()
    table = make_table(extract_layer_ops(model, example, fusion=fusion_for_runtime("onnxruntime")))
    table.save(tmp_path / "table.json")
    out = tmp_path / "run"
    args = ["compress", "--model", "own.py:small", "--data", "digits_flat", "--table", "table.json"]
    args += ["--out", str(out), "--budget-ms", "0.017", "--epochs", "1", "--finetune-epochs", "0"]
    cwd = os.getcwd()
    os.chdir(tmp_path)  # relative paths, as typed in a shell
    try:
        result = CliRunner().invoke(app, args)
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    info = json.loads((out / "run.json").read_text())
    assert info["model_spec"] == f"{(tmp_path / 'own.py').resolve()}:small"
    assert info["table"] == str((tmp_path / "table.json").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = f"from edgetrim.compress.run_folder import load_run; print(type(load_run({str(out)!r}).model).__name__)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "OwnMLP"
