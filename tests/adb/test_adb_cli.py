"""`edgetrim profile / tables validate / predict / measure / devices` with an adb:SERIAL target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgetrim.cli import app
from edgetrim.lookup_tables import load_table

MODEL = """
import torch
from torch import nn


def tiny():
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    return model, (torch.randn(1, 8),)
"""


@pytest.fixture
def model_spec(tmp_path: Path) -> str:
    path = tmp_path / "tiny_model.py"
    path.write_text(MODEL)
    return f"{path}:tiny"


def _run(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_profile_validate_predict_measure(
    phone, bench_binary: Path, model_spec: str, tmp_path: Path, monkeypatch
):
    monkeypatch.delenv("EDGETRIM_BENCHMARK_MODEL")  # the flag, not the environment, names the binary
    table_path = tmp_path / "phone.json"
    target = f"adb:{phone.serial}"
    common = ["--benchmark-binary", str(bench_binary)]
    summary = _json(_run("profile", "--target", target, "--model", model_spec, "--out", str(table_path),
                         "--quick", "--no-refine", "--max-points", "40", "--json", *common))  # fmt: skip
    assert summary["target"] == target and summary["points"] >= 2
    table = load_table(table_path)
    assert table.device.runtime == "litert-benchmark_model"
    assert table.device.device == "Google Pixel 7 (Tensor G2)"
    assert table.meta["measurement_log"] and table.meta["invoke_overhead_ms"] >= 0

    monkeypatch.setenv("EDGETRIM_BENCHMARK_MODEL", str(bench_binary))  # tables validate has no flag
    report = _json(_run("tables", "validate", str(table_path), "--target", target, "--points", "3", "--quick",
                        "--json"))  # fmt: skip
    assert report  # held-out points measured on the phone and compared

    pred = _json(
        _run("predict", "--table", str(table_path), "--model", model_spec, "--target", target, "--json")
    )
    assert pred["total_ms"] > 0

    measured = _json(_run("measure", "--target", target, "--model", model_spec, "--quick", "--json", *common))
    assert measured["median_ms"] > 0 and measured["fingerprint"] == summary["fingerprint"]
    assert measured["device"]["extra"]["soc"] == "Tensor G2"


def test_unplug_then_resume_from_the_cli(
    make_phone,
    bench_binary: Path,
    model_spec: str,
    tmp_path: Path,
    adb_server,
    monkeypatch: pytest.MonkeyPatch,
):
    phone = make_phone(unplug_after_bench_runs=5, unplug_s=float("inf"))
    monkeypatch.setenv("EDGETRIM_ADB_RETRIES", "2")  # default: 4 retries, backoff from 2 s
    monkeypatch.setenv("EDGETRIM_ADB_BACKOFF_S", "0.2")
    table_path = tmp_path / "phone.json"
    args = ["profile", "--target", f"adb:{phone.serial}", "--model", model_spec, "--out", str(table_path),
            "--quick", "--no-refine", "--max-points", "24", "--json"]  # fmt: skip
    first = _run(*args)
    assert first.exit_code == 2
    err = first.stderr.strip().splitlines()
    assert err[-1].startswith("error: phone") and "--resume" in err[-1]
    kept = load_table(table_path).n_points()
    assert kept >= 1

    phone.refuse_until = 0.0  # plugged back in
    adb_server.connect(phone.serial)
    summary = _json(_run(*args, "--resume", "--drift-tolerance", "0"))  # a count of missing points only
    assert summary["points"] > kept
    assert summary["points_measured"] == summary["points"] - kept


def test_devices_lists_phones_with_fingerprints(make_phone, bench_binary: Path):
    a = make_phone(model="Pixel 7")
    b = make_phone(model="Pixel 8", soc_model="Tensor G3")
    out = _json(_run("devices", "--json"))
    rows = {r["name"]: r for r in out["targets"]}
    assert "ort-cpu" in rows  # local targets next to the phones
    assert rows[f"adb:{a.serial}"]["available"] and rows[f"adb:{b.serial}"]["available"]
    assert "Pixel 8 (Tensor G3)" in rows[f"adb:{b.serial}"]["fingerprint"]
    assert rows[f"adb:{b.serial}"]["info"]["extra"]["abi"] == "arm64-v8a"
    plain = _run("devices")
    assert plain.exit_code == 0 and f"adb:{a.serial}" in plain.stdout


def test_profile_phones_two_at_once(make_phone, bench_binary: Path, tmp_path: Path):
    a = make_phone(model="Pixel 7")
    b = make_phone(model="Galaxy S23", manufacturer="samsung", soc_model="SM8550")
    spec = tmp_path / "grid.json"
    spec.write_text(json.dumps({"contexts": [{"context": {"kind": "linear"}, "max_in": 8, "max_out": 8}]}))
    out = _json(_run("profile-phones", "--spec", str(spec), "--out-dir", str(tmp_path / "tables"), "--quick",
                     "--no-refine", "--max-points", "10", "--json"))  # fmt: skip
    phones = {p["target"]: p for p in out["phones"]}  # no --target: every attached phone
    assert set(phones) == {f"adb:{a.serial}", f"adb:{b.serial}"}
    assert all(p["error"] is None and p["points"] == 10 for p in phones.values())
    tables = [load_table(p["table"]) for p in phones.values()]
    assert len({t.device.fingerprint() for t in tables}) == 2
    assert {t.device.device for t in tables} == {"Google Pixel 7 (Tensor G2)", "samsung Galaxy S23 (SM8550)"}
