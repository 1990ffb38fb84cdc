"""The multi-split recipe benchmark's argument parsing and paired summary (pure logic)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def rs(load_benchmark):
    return load_benchmark("compress_recipe_splits")


def test_split_ranges(rs) -> None:
    assert rs.parse_splits("0-3,7") == [0, 1, 2, 3, 7]
    assert rs.parse_splits("5") == [5]


def test_overrides_are_numeric_config_fields(rs) -> None:
    assert rs.parse_overrides(["gate_lr=0.002", "measure_steps=2"], "v") == {
        "gate_lr": 0.002,
        "measure_steps": 2,
    }
    assert isinstance(rs.parse_overrides(["measure_steps=2"], "v")["measure_steps"], int)
    assert rs.parse_overrides(["gate_lr=1e-9"], "v") == {"gate_lr": 1e-9}
    with pytest.raises(SystemExit, match="bad override 'optimizer=sgd'"):
        rs.parse_overrides(["optimizer=sgd"], "ours:2:4:optimizer=sgd")  # not numeric
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        rs.parse_overrides(["gate_lr"], "ours:2:4:gate_lr")


def test_summary_pairs_by_split_and_lists_failed_splits(rs) -> None:
    rows = [
        {"split": 0, "variant": "a", "accuracy": 0.90},
        {"split": 1, "variant": "a", "accuracy": 0.92},
        {"split": 2, "variant": "a", "accuracy": 0.94},
        {"split": 0, "variant": "b", "accuracy": 0.91},
        {"split": 1, "variant": "b", "accuracy": 0.95},
        {"split": 2, "variant": "b", "error": "ValueError: no pruning ratio up to 0.95 meets the budget"},
    ]
    s = rs.summarise(rows, ["a", "b"])
    assert s["per_variant"]["a"]["mean"] == pytest.approx(0.92) and s["per_variant"]["b"]["n"] == 2
    pair = s["paired_vs_a"]["b"]  # splits 0 and 1 only: +1 and +3 points
    assert pair["n"] == 2 and pair["mean_points"] == pytest.approx(2.0)
    assert pair["better_on"] == 2 and pair["worse_on"] == 0
    assert s["failed_splits"] == {"b": [2]}


def test_variants_parse_to_config_arguments(rs) -> None:
    assert rs.parse_variant("tp8") is None and rs.parse_variant("tp") is None
    assert rs.parse_variant("ours:2:4") == {"epochs": 2, "finetune_epochs": 4}
    assert rs.parse_variant("ours:2:4:gate_lr=0.002") == {"epochs": 2, "finetune_epochs": 4, "gate_lr": 0.002}
    for bad in ("ours:x:4", "ours:2", "bogus", "mine:2:4"):
        with pytest.raises(SystemExit, match="unknown variant"):
            rs.parse_variant(bad)
    with pytest.raises(SystemExit, match="the script sets those"):
        rs.parse_variant("ours:2:4:epochs=3")
    with pytest.raises(SystemExit, match=r"bad override 'measure_steps=2\.5'"):
        rs.parse_variant("ours:2:4:measure_steps=2.5")
