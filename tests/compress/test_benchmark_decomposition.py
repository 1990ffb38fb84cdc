"""The seed decomposition benchmark's summary: means per arm and differences paired by seed (pure logic)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def dec(load_benchmark):
    return load_benchmark("compress_seed_decomposition")


def _rows(method: str, accs: list[float], frac: float = 0.5) -> list[dict]:
    return [{"fraction": frac, "method": method, "seed": s, "accuracy": a} for s, a in enumerate(accs)]


def test_paired_differences_are_taken_seed_by_seed(dec) -> None:
    rows = _rows("ours", [0.80, 0.90, 0.70]) + _rows("tp_magnitude", [0.79, 0.88, 0.69])
    out = dec.summarise(rows)
    ours = next(r for r in out["per_method"] if r["method"] == "ours")
    assert ours["mean"] == pytest.approx(0.8) and ours["seeds"] == 3
    assert ours["se"] == pytest.approx(0.1 / 3**0.5)
    (pair,) = out["paired"]
    # the arms' spread is 10 points, their paired difference 1-2 points with a small standard error
    assert pair["method"] == "ours" and pair["vs"] == "tp_magnitude"
    assert pair["diff"] == pytest.approx((0.01 + 0.02 + 0.01) / 3)
    assert pair["se"] == pytest.approx(0.0057735 / 3**0.5, rel=1e-4)


def test_only_common_seeds_are_paired_and_each_reference_pair_once(dec) -> None:
    one_seed = {"fraction": 0.5, "method": "tp_magnitude", "seed": 1, "accuracy": 0.85}  # one in common
    rows = [
        *_rows("ours", [0.8, 0.9]),
        one_seed,
        *_rows("flops_reg", [0.7, 0.8]),
        *_rows("tp_magnitude_r8", [0.75, 0.8]),
    ]
    pairs = {(p["method"], p["vs"]) for p in dec.summarise(rows)["paired"]}
    assert ("ours", "tp_magnitude") not in pairs  # one seed in common: no standard error
    assert {("ours", "flops_reg"), ("ours", "tp_magnitude_r8"), ("flops_reg", "tp_magnitude_r8")} <= pairs
    assert ("tp_magnitude_r8", "flops_reg") not in pairs
