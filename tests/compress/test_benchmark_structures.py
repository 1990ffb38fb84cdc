"""The baselines benchmark's compress-only structures (``latency_fit`` / ``flops_fit`` arms) on a real fit."""

from __future__ import annotations

import pytest

from edgetrim.compress.api import model_latency_ms
from edgetrim.lookup_tables.predict import total_flops
from edgetrim.model_ops import extract_layer_ops, fusion_for_runtime


def _ms(table, model, example) -> float:
    return model_latency_ms(
        table, extract_layer_ops(model, example, fusion=fusion_for_runtime("onnxruntime"))
    )


def _flops(model, example) -> float:
    return total_flops(extract_layer_ops(model, example))


@pytest.fixture(scope="module")
def cvb(load_benchmark):
    return load_benchmark("compress_vs_baselines")


def test_fitted_structure_meets_a_latency_budget_and_falls_back_to_the_smallest(cvb, trained_mlp) -> None:
    model, example, train, val, table, budget = trained_mlp
    dense_ms = _ms(table, model, example)
    fitted = cvb.fitted_structure(model, example, table, train, val, budget_ms=budget)
    fitted_ms = _ms(table, fitted, example)
    assert fitted_ms <= budget < dense_ms
    smallest = cvb.fitted_structure(model, example, table, train, val, budget_ms=1e-9)
    smallest_ms = _ms(table, smallest, example)
    assert smallest_ms < fitted_ms  # below the floor: the smallest reachable model, not an error
    assert _ms(table, model, example) == dense_ms  # the trained model itself is left as it was


def test_fitted_structure_meets_a_flops_budget(cvb, trained_mlp) -> None:
    model, example, train, val, table, _ = trained_mlp
    dense = _flops(model, example)
    fitted = cvb.fitted_structure(model, example, table, train, val, budget_flops=0.5 * dense)
    assert _flops(fitted, example) <= 0.5 * dense
    assert _flops(fitted, example) > 0.2 * dense  # fitted to the budget, not cut to the floor


def test_layer_widths_name_every_layer_at_its_materialised_width(cvb, trained_mlp) -> None:
    model, example, train, val, table, budget = trained_mlp
    dense = cvb.layer_widths(model)
    fitted = cvb.layer_widths(cvb.fitted_structure(model, example, table, train, val, budget_ms=budget))
    assert list(fitted) == list(dense)  # the same layers, by the same names
    assert sum(fitted.values()) < sum(dense.values())  # narrower where the fit cut channels
    assert list(dense.values())[:2] == [40, 24]  # the MLP's hidden widths as built
