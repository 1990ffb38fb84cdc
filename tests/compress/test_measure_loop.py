"""The measured loop of ``compress``: re-fit the widths while the materialised model measures over budget."""

from __future__ import annotations

import math

import pytest
import torch

from edgetrim.compress.api import compress, model_latency_ms
from edgetrim.compress.config import CompressConfig
from edgetrim.errors import BudgetError
from edgetrim.examples.data import digits_loaders
from edgetrim.examples.models import mlp
from edgetrim.examples.training import train_classifier
from edgetrim.model_ops import extract_layer_ops, fusion_for_runtime

FUSION = fusion_for_runtime("onnxruntime")


@pytest.fixture(scope="module")
def setup(make_table):
    torch.manual_seed(0)
    model, example = mlp(widths=(40, 24))
    train, val = digits_loaders(flat=True, batch_size=128)
    train_classifier(model, train, val, epochs=3, lr=3e-3)
    table = make_table(extract_layer_ops(model, example, fusion=FUSION))
    return model, example, train, val, table


def _config(**kw) -> CompressConfig:
    base = {"epochs": 2, "finetune_epochs": 1, "lr": 3e-3, "gate_lr": 0.1, "dual_lr": 1.0}
    return CompressConfig(**(base | kw))


def test_a_target_slower_than_the_table_for_pruned_models_is_refit_until_it_measures_within_budget(
    setup,
) -> None:
    # The real targets cannot be made to disagree with a table on demand, so this target is a
    # deterministic function: the dense model runs as the table says, every pruned model 1.15x slower.
    # (Without the training-target calibration, which would find the 1.15 before the final fit.)
    model, example, train, val, table = setup
    dense_params = sum(p.numel() for p in model.parameters())
    calls = []

    def measure(m, x) -> float:
        pred = model_latency_ms(table, extract_layer_ops(m, x, fusion=FUSION))
        slow = 1.0 if sum(p.numel() for p in m.parameters()) == dense_params else 1.15
        calls.append(pred * slow)
        return pred * slow

    dense_ms = model_latency_ms(table, extract_layer_ops(model, example, fusion=FUSION))
    tiny, tiny_x = mlp(widths=(1, 1))
    floor_ms = model_latency_ms(table, extract_layer_ops(tiny, tiny_x, fusion=FUSION))
    budget = 1.25 * floor_ms  # room for one tightening by 1.15 above the smallest reachable
    assert budget < dense_ms
    result = compress(
        model, example, _config(budget_ms=budget, calibrate=False), table=table, train_loader=train, val_loader=val,
        measure_fn=measure,
    )  # fmt: skip
    rep = result.report
    rounds = rep.measure_rounds
    assert len(rounds) >= 2 and rounds[0]["measured_ms"] > budget  # the first fit measured over ...
    assert rep.measured_ms is not None and rep.measured_ms <= budget  # ... the last one within
    assert rep.measured_ms in calls  # the kept structure is one that was measured ...
    kept = next(r for r in rounds if r["measured_ms"] == rep.measured_ms)
    assert rep.widths_after == dict(zip(rep.widths_after, kept["widths"]))  # ... and is what was built
    assert rep.internal_budget_ms < budget  # tightened on the table's scale
    for r in rounds:  # every round's widths fit that round's internal budget on the table
        assert r["predicted_ms"] <= r["internal_budget_ms"] + 1e-12
    assert rep.predicted_ms == pytest.approx(kept["predicted_ms"], rel=1e-12)
    within = [r for r in rounds if r["measured_ms"] <= budget]
    assert kept["predicted_ms"] == max(r["predicted_ms"] for r in within)  # the widest that fits
    assert not rep.kept_on_measurement  # predicted within the budget too


def _faster_target_and_midway_budget(setup, speed: float = 0.8):
    """A target running pruned models at ``speed`` x the table's price (the dense one as priced), and
    a budget halfway between the table's floor and the dense model."""
    model, example, _, _, table = setup
    dense_params = sum(p.numel() for p in model.parameters())

    def measure(m, x) -> float:
        pred = model_latency_ms(table, extract_layer_ops(m, x, fusion=FUSION))
        return pred * (1.0 if sum(p.numel() for p in m.parameters()) == dense_params else speed)

    dense_ms = model_latency_ms(table, extract_layer_ops(model, example, fusion=FUSION))
    tiny, tiny_x = mlp(widths=(1, 1))
    floor_ms = model_latency_ms(table, extract_layer_ops(tiny, tiny_x, fusion=FUSION))
    return measure, floor_ms + 0.5 * (dense_ms - floor_ms)


def test_a_target_faster_than_the_table_keeps_a_model_the_table_puts_over_the_budget(setup) -> None:
    # Pruned models run 0.8x of the table's price: calibration lifts the table-scale budget, so the
    # kept model is predicted over the budget and measured within it; the report says so.
    model, example, train, val, table = setup
    measure, budget = _faster_target_and_midway_budget(setup)
    result = compress(
        model, example, _config(budget_ms=budget), table=table, train_loader=train, val_loader=val, measure_fn=measure
    )  # fmt: skip
    rep = result.report
    assert rep.measured_ms is not None and rep.measured_ms <= budget < rep.predicted_ms
    assert rep.kept_on_measurement and rep.to_info()["kept_on_measurement"] is True


def test_a_measure_margin_leaves_that_share_of_the_budget_free_on_the_target(setup) -> None:
    # The same 0.8x target: without a margin the loop fills the budget as measured; with 0.2 it keeps
    # a model measuring within 0.8 x budget, so a later pass reading it up to 1.25x slower still fits.
    model, example, train, val, table = setup
    measure, budget = _faster_target_and_midway_budget(setup)
    measured = {}
    for margin in (0.0, 0.2):
        cfg = _config(budget_ms=budget, measure_margin=margin)
        res = compress(
            model, example, cfg, table=table, train_loader=train, val_loader=val, measure_fn=measure
        )
        rep = res.report
        assert rep.measured_ms is not None and rep.measured_ms == pytest.approx(measure(res.model, example))
        measured[margin] = rep.measured_ms
    assert measured[0.2] <= 0.8 * budget < measured[0.0] <= budget
    with pytest.raises(ValueError, match="measure_margin must be in"):
        CompressConfig(budget_ms=1.0, measure_margin=0.5)


def test_real_ort_cpu_measure_fn_rescales_the_internal_budget_and_reports_measured_latency(setup) -> None:
    pytest.importorskip("onnxruntime")
    from edgetrim.profiler.targets import get_target
    from edgetrim.profiler.timing import TimingConfig

    model, example, train, val, table = setup
    target = get_target("ort-cpu", threads=1)
    timing = TimingConfig(warmup=3, min_runs=10, max_runs=30, time_cap_s=0.2)

    def measure(m, x) -> float:
        return target.measure_model(m.eval(), x, timing).median_ms

    budget = 0.8 * model_latency_ms(table, extract_layer_ops(model, example, fusion=FUSION))
    result = compress(
        model, example, _config(budget_ms=budget, measure_steps=1), table=table, train_loader=train,
        val_loader=val, measure_fn=measure,
    )  # fmt: skip
    rep = result.report
    # the first fit aims at the calibrated training target; later ones at budget x predicted / measured
    assert rep.measure_rounds[0]["internal_budget_ms"] == pytest.approx(
        rep.calibration[-1]["internal_budget_ms"], rel=1e-12
    )
    for a, b in zip(rep.measure_rounds, rep.measure_rounds[1:]):
        assert b["internal_budget_ms"] == pytest.approx(
            0.98 * budget * a["predicted_ms"] / a["measured_ms"], rel=1e-9
        )
    assert 1 <= len(rep.measure_rounds) <= 2  # measure_steps=1: at most one re-fit
    assert rep.measured_ms is not None and math.isfinite(rep.measured_ms) and rep.measured_ms > 0
    assert rep.predicted_ms <= rep.internal_budget_ms + 1e-12
    assert rep.to_info()["measured_ms"] == rep.measured_ms


@pytest.mark.parametrize("speed", [0.85, 1.3])
def test_training_target_is_calibrated_on_the_target(setup, speed) -> None:
    # A target uniformly `speed` x the table: calibration sets the dual ascent's target to budget / speed
    # (before training, then after every penalised epoch but the last), so the first fit already
    # measures within budget, and on a faster target the table-scale budget is looser than the one asked.
    model, example, train, val, table = setup

    def measure(m, x) -> float:
        return speed * model_latency_ms(table, extract_layer_ops(m, x, fusion=FUSION))

    dense_ms = model_latency_ms(table, extract_layer_ops(model, example, fusion=FUSION))
    budget = 0.8 * dense_ms * speed if speed > 1 else 0.75 * dense_ms  # internal 0.8 / 0.88 x dense
    result = compress(
        model, example, _config(budget_ms=budget, epochs=3), table=table, train_loader=train,
        val_loader=val, measure_fn=measure,
    )  # fmt: skip
    rep = result.report
    cal = rep.calibration
    assert [c["after_epoch"] for c in cal] == [0, 1, 2]
    # the probes are structures fitted near the budget (the first: before training, on the budget as
    # asked), not the dense model, whose misprediction can differ from a pruned one's
    assert cal[0]["predicted_ms"] <= budget * (1 + 1e-9)
    assert all(c["widths"] != list(rep.widths_before.values()) for c in cal[1:])
    for c in cal:
        assert c["internal_budget_ms"] == pytest.approx(budget / speed, rel=1e-9)
    assert rep.measure_rounds[0]["measured_ms"] <= budget * (1 + 1e-9)
    assert rep.measured_ms is not None and rep.measured_ms <= budget * (1 + 1e-9)
    assert rep.predicted_ms <= budget / speed * (1 + 1e-9)
    if speed < 1:
        assert rep.internal_budget_ms > budget  # the table's budget is looser than the one asked
    assert [h.get("calibration") for h in rep.history[:2]] == cal[1:]


def test_no_calibration_without_measure_fn_or_when_off(setup) -> None:
    model, example, train, val, table = setup
    dense_ms = model_latency_ms(table, extract_layer_ops(model, example, fusion=FUSION))
    rep = compress(
        model, example, _config(budget_ms=0.8 * dense_ms, epochs=1), table=table, train_loader=train,
        val_loader=val,
    ).report  # fmt: skip
    assert rep.calibration == [] and rep.measure_rounds == []
    calls = []

    def measure(m, x) -> float:
        calls.append(1)
        return model_latency_ms(table, extract_layer_ops(m, x, fusion=FUSION))

    rep = compress(
        model, example, _config(budget_ms=0.8 * dense_ms, epochs=1, calibrate=False), table=table,
        train_loader=train, val_loader=val, measure_fn=measure,
    ).report  # fmt: skip
    assert rep.calibration == [] and len(calls) == len(rep.measure_rounds) >= 1
    assert rep.measure_rounds[0]["internal_budget_ms"] == pytest.approx(0.8 * dense_ms)


def test_a_budget_just_over_the_narrowest_whole_model_prediction_is_met(make_table, nchwc_layout) -> None:
    """On a table with onnxruntime's NCHWc layout the whole-model prediction adds width-dependent
    reorder costs that a per-op sum misses (most at narrow widths). compress prices widths with the
    whole-model prediction, so its smallest reachable latency is the narrowest model's own
    prediction, and a budget just above it is met without measuring (a per-op sum plus the dense
    model's offset passed such a budget up front and then found every width over it)."""
    from edgetrim.errors import BudgetError
    from edgetrim.examples.models import digits_cnn

    torch.manual_seed(0)
    model, example = digits_cnn(widths=(32, 32))
    train, val = digits_loaders(batch_size=256)
    table = nchwc_layout(make_table(extract_layer_ops(model, example, fusion=FUSION)), 2e-5)
    cfg = {"epochs": 0, "finetune_epochs": 0, "calibrate": False}
    with pytest.raises(BudgetError) as below:
        compress(
            model, example, _config(budget_ms=1e-6, **cfg), table=table, train_loader=train, val_loader=val
        )
    smallest = below.value.smallest
    for budget in (smallest * 1.0001, smallest * 1.2):
        result = compress(
            model, example, _config(budget_ms=budget, **cfg), table=table, train_loader=train, val_loader=val
        )
        own = model_latency_ms(table, extract_layer_ops(result.model, example, fusion=FUSION))
        assert result.report.predicted_ms == pytest.approx(own)
        assert smallest - 1e-12 <= own <= budget
    with pytest.raises(BudgetError, match="below the smallest reachable latency"):
        compress(
            model, example, _config(budget_ms=smallest * 0.999, **cfg), table=table, train_loader=train,
            val_loader=val,
        )  # fmt: skip


def test_widths_training_cut_below_the_budget_grow_back_toward_it(setup) -> None:
    """A penalty held high (lambda fixed by dual_lr 0) drives gates to zero far below what the budget
    pays for; the final step widens the groups again while the whole model fits the budget."""
    model, example, train, val, table = setup
    dense_ms = model_latency_ms(table, extract_layer_ops(model, example, fusion=FUSION))
    budget = 0.9 * dense_ms
    cfg = _config(budget_ms=budget, lambda_init=2000.0, dual_lr=0.0, gate_lr=0.5, calibrate=False)
    rep = compress(model, example, cfg, table=table, train_loader=train, val_loader=val).report
    asked, kept = rep.widths_requested, rep.widths_after
    assert sum(asked.values()) < sum(rep.widths_before.values())  # training pruned
    assert all(kept[g] >= asked[g] for g in asked)
    # beyond the fast side of the requested step (the table steps every 8 channels): grown back
    assert any(kept[g] > -(-asked[g] // 8) * 8 for g in asked)
    assert rep.predicted_ms <= budget + 1e-12


def test_a_budget_below_the_tables_floor_is_taken_when_the_target_measures_the_floor_within_it(setup) -> None:
    # Pruned models run 0.8x of the table's price: a budget 5% under the table's smallest structure is
    # reachable on the target. Without a measure_fn the same budget is refused up front.
    model, example, train, val, table = setup
    dense_params = sum(p.numel() for p in model.parameters())
    calls = []

    def measure(m, x) -> float:
        pred = model_latency_ms(table, extract_layer_ops(m, x, fusion=FUSION))
        calls.append(pred)
        return pred * (1.0 if sum(p.numel() for p in m.parameters()) == dense_params else 0.8)

    tiny, tiny_x = mlp(widths=(1, 1))
    floor_ms = model_latency_ms(table, extract_layer_ops(tiny, tiny_x, fusion=FUSION))
    budget = 0.95 * floor_ms
    with pytest.raises(BudgetError, match="below the smallest reachable latency"):
        compress(model, example, _config(budget_ms=budget), table=table, train_loader=train, val_loader=val)
    result = compress(
        model, example, _config(budget_ms=budget), table=table, train_loader=train, val_loader=val, measure_fn=measure
    )  # fmt: skip
    rep = result.report
    assert calls[0] == pytest.approx(floor_ms, rel=1e-9)  # the narrowest structure was measured first
    assert rep.measured_ms is not None and rep.measured_ms <= budget < rep.predicted_ms

    def slow(m, x) -> float:  # the target agrees with the table: refused, with both figures
        return model_latency_ms(table, extract_layer_ops(m, x, fusion=FUSION))

    with pytest.raises(
        BudgetError, match=r"below the smallest reachable latency .* \(measured .* on the target\)"
    ):
        compress(
            model,
            example,
            _config(budget_ms=budget),
            table=table,
            train_loader=train,
            val_loader=val,
            measure_fn=slow,
        )


def test_a_model_measuring_a_little_under_the_budget_is_widened_while_it_still_measures_within(setup) -> None:
    # Pruned models run 0.97x of the table's price and calibration is off, so the first fit measures
    # within the budget with a few percent to spare: the loop re-fits wider on the measured ratio and
    # keeps the widest structure that measured within the budget.
    model, example, train, val, table = setup
    measure, budget = _faster_target_and_midway_budget(setup, speed=0.97)
    cfg = _config(budget_ms=budget, calibrate=False)
    rep = compress(
        model, example, cfg, table=table, train_loader=train, val_loader=val, measure_fn=measure
    ).report
    first = rep.measure_rounds[0]
    assert first["predicted_ms"] <= budget and first["measured_ms"] <= budget  # within at once ...
    assert rep.predicted_ms > first["predicted_ms"]  # ... yet a wider structure was kept
    assert rep.measured_ms is not None and rep.measured_ms <= budget
    within = [r for r in rep.measure_rounds if r["measured_ms"] <= budget]
    assert rep.predicted_ms == max(r["predicted_ms"] for r in within)
