"""Table file: round trip, every corruption case as a one-line TableError, merge, target checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgetrim.errors import TableError
from edgetrim.lookup_tables import LatencyTable, check_target, load_table, merge
from edgetrim.lookup_tables.table import SCHEMA_VERSION
from edgetrim.types import DeviceInfo, LatencyStats, OpContext, OpKind

from .synth import CONV, DEVICE, DW, LIN, residue_surface, stats, table_from


def _table() -> LatencyTable:
    t = table_from(residue_surface, CONV, [(i, o) for i in (1, 8, 13) for o in (1, 7, 8, 9, 16)])
    t.record(DW, 5, 5, LatencyStats(0.5, 0.4, 0.7, 0.52, 0.05, 11, warmup=3))
    t.record(LIN, 3, 4, stats(0.25))
    t.meta["planner"] = {"budget": 100}
    return t


def test_round_trip_keeps_everything(tmp_path: Path) -> None:
    t = _table()
    path = t.save(tmp_path / "sub" / "t.json")
    back = load_table(path)
    assert back.device == DEVICE and back.meta == t.meta and back.created == t.created
    assert back.contexts() == t.contexts()
    for ctx in t.contexts():
        assert [
            (i, o, s.median_ms, s.p10_ms, s.p90_ms, s.mean_ms, s.std_ms, s.n) for i, o, s in back.points(ctx)
        ] == [(i, o, s.median_ms, s.p10_ms, s.p90_ms, s.mean_ms, s.std_ms, s.n) for i, o, s in t.points(ctx)]
    assert LatencyTable.load(path).predict_ms(CONV, 11, 11).ms == pytest.approx(t.predict_ms(CONV, 11, 11).ms)
    data = json.loads(path.read_text())
    assert (
        data["schema_version"] == SCHEMA_VERSION and data["runtime"] == "onnxruntime" and data["threads"] == 1
    )
    assert data["contexts"][0]["columns"][:3] == ["in", "out", "median_ms"]
    assert not list(path.parent.glob(".*.tmp"))  # atomic write leaves no temporary file behind


def _write(tmp_path: Path, obj: object | str) -> Path:
    p = tmp_path / "bad.json"
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


def _good(tmp_path: Path) -> dict:
    return json.loads(_table().save(tmp_path / "good.json").read_text())


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("missing", "does not exist"),
        ("not_json", "not valid JSON"),
        ("truncated", "truncated"),
        ("not_a_table", "not an edgetrim latency table"),
        ("too_new", "newer edgetrim.*; upgrade edgetrim"),
        ("no_version", "schema_version"),
        ("missing_device", "wrong structure"),
        ("bad_context", "wrong structure"),
        ("short_point", "not a list of 8 numbers"),
        ("percentiles", "p10 <= median <= p90"),
        ("zero_width", "widths must be integers >= 1"),
        ("one_axis_mismatch", "one-axis"),
        ("nan", "non-finite"),
    ],
)
def test_each_corruption_is_a_one_line_table_error(tmp_path: Path, case: str, match: str) -> None:
    good = _good(tmp_path)
    text = json.dumps(good)
    if case == "missing":
        path = tmp_path / "nope.json"
    elif case == "not_json":
        path = _write(tmp_path, "hello, not json")
    elif case == "truncated":
        path = _write(tmp_path, text[: len(text) // 2])
    elif case == "not_a_table":
        path = _write(tmp_path, {"foo": 1})
    elif case == "too_new":
        path = _write(tmp_path, {**good, "schema_version": SCHEMA_VERSION + 1})
    elif case == "no_version":
        path = _write(tmp_path, {k: v for k, v in good.items() if k != "schema_version"})
    elif case == "missing_device":
        path = _write(tmp_path, {k: v for k, v in good.items() if k != "device"})
    elif case == "bad_context":
        good["contexts"][0]["context"]["kernel"] = [1, 2, 3]
        path = _write(tmp_path, good)
    else:
        entry = next(
            c
            for c in good["contexts"]
            if c["context"]["kind"] == ("depthwise_conv2d" if case == "one_axis_mismatch" else "conv2d")
        )
        row = entry["points"][0]
        if case == "short_point":
            entry["points"][0] = row[:5]
        elif case == "percentiles":
            row[3] = row[2] * 2  # p10 above the median
        elif case == "zero_width":
            row[0] = 0
        elif case == "one_axis_mismatch":
            row[1] = row[0] + 1
        elif case == "nan":
            path = _write(tmp_path, text.replace(str(row[2]), "NaN", 1))
        if case != "nan":
            path = _write(tmp_path, good)
    with pytest.raises(TableError, match=match) as err:
        load_table(path)
    assert "\n" not in str(err.value)


def test_merge_keeps_the_point_with_more_samples_then_the_later(tmp_path: Path) -> None:
    a, b = LatencyTable(DEVICE), LatencyTable(DEVICE)
    a.record(LIN, 4, 4, stats(1.0, n=20))
    b.record(LIN, 4, 4, stats(2.0, n=5))  # fewer samples: loses
    a.record(LIN, 8, 8, stats(1.0, n=5))
    b.record(LIN, 8, 8, stats(3.0, n=5))  # tie: the later table wins
    b.record(DW, 3, 3, stats(0.1))
    m = merge([a, b])
    assert m.stats(LIN, 4, 4).median_ms == 1.0 and m.stats(LIN, 8, 8).median_ms == 3.0
    assert m.has(DW, 3, 3) and m.n_points() == 3
    other = LatencyTable(DeviceInfo("litert-cpu", "litert", "2.3", "test-cpu"))
    other.record(LIN, 2, 2, stats(1.0))
    with pytest.raises(TableError, match="different targets"):
        merge([a, other])
    assert merge([a, other], force=True).has(LIN, 2, 2)


def test_check_target() -> None:
    t = _table()
    check_target(t, "ort-cpu")
    with pytest.raises(TableError, match=r"not 'litert-cpu'.*--allow-other-target"):
        check_target(t, "litert-cpu")
    check_target(t, "litert-cpu", allow_other=True)
    with pytest.raises(TableError, match="threads=1"):
        check_target(t, DeviceInfo("ort-cpu", "onnxruntime", "1.32.0", "test-cpu", threads=2))


def test_record_validation_and_lookup_errors() -> None:
    t = LatencyTable(DEVICE)
    with pytest.raises(ValueError, match="one width axis"):
        t.record(DW, 3, 4, stats(1.0))
    with pytest.raises(ValueError, match=">= 1"):
        t.record(LIN, 0, 4, stats(1.0))
    with pytest.raises(TableError, match="no measurements"):
        t.predict_ms(LIN, 3, 3)
    t.record(LIN, 3, 3, stats(1.0))
    with pytest.raises(TableError, match="no context 'conv2d"):
        t.context_by_key("conv2d/k1x1")
    assert t.context_by_key(LIN.key()) == LIN
    assert t.predict_ms(LIN, 0, 3).ms == 0.0  # a removed layer costs nothing


def test_lookup_tables_import_and_work_without_torch(tmp_path: Path) -> None:
    path = _table().save(tmp_path / "t.json")
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from edgetrim.lookup_tables import load_table, predict_model\n"
        "from edgetrim.lookup_tables import grid, interpolation, metrics, plot\n"
        "t = load_table(sys.argv[1]); ctx = t.contexts()[0]\n"
        "t.surface_ms(ctx); t.envelope_ms(ctx); grid.refine_points(t, ctx, tol=0.05)\n"
        "plot.plot_all(t, sys.argv[2])\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "png")], check=True)
    assert len(list((tmp_path / "png").glob("*.png"))) == 3


def test_context_keys_are_unique_for_distinct_contexts() -> None:
    a = OpContext(OpKind.POOL, kernel=(2, 2), stride=(2, 2), spatial=(8, 8), variant="avg")
    b = OpContext(OpKind.POOL, kernel=(2, 2), stride=(2, 2), spatial=(8, 8), variant="max")
    t = LatencyTable(DEVICE)
    t.record(a, 4, 4, stats(1.0))
    t.record(b, 4, 4, stats(2.0))
    assert [c.key() for c in t.contexts()] == sorted({a.key(), b.key()})
