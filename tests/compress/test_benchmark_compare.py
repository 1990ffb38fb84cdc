"""The baselines benchmark's comparison at equal measured latency and at equal accuracy (pure logic)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def cvb(load_benchmark):
    return load_benchmark("compress_vs_baselines")


def _row(method, frac, seed, acc, ms, budget=1.0):
    return {
        "model": "m", "fraction": frac, "method": method, "seed": seed, "budget_ms": budget,
        "accuracy": acc, "measured": {"median_ms": ms}, "measured_vs_budget": ms / budget,
        "adheres_1_10": ms <= 1.1 * budget, "predicted_ms": ms,
    }  # fmt: skip


def test_summary_over_seeds_and_errors(cvb) -> None:
    rows = [_row("ours", 0.5, s, a, 0.5) for s, a in enumerate((0.9, 0.92, 0.94))]
    rows.append({"model": "m", "fraction": 0.35, "method": "tp", "budget_ms": 0.35, "error": "ValueError: x"})
    s = cvb.summarise(rows)
    assert s[0]["accuracy"]["mean"] == pytest.approx(0.92) and s[0]["accuracy"]["n"] == 3
    assert s[0]["accuracy"]["std"] == pytest.approx(0.02) and s[0]["accuracy"]["min"] == 0.9
    assert s[1]["error"] == "ValueError: x" and "accuracy" not in s[1]


def test_equal_latency_and_equal_accuracy_comparisons(cvb) -> None:
    rows = []
    for s in range(2):  # ours: (0.4 ms, 0.90), (0.6 ms, 0.94); flops_reg slower at each accuracy
        rows += [_row("ours", 0.35, s, 0.90, 0.4), _row("ours", 0.5, s, 0.94, 0.6)]
        rows += [_row("flops_reg", 0.35, s, 0.90, 0.5), _row("uniform", 0.5, s, 0.925 + 0.03 * s, 0.5)]
        rows += [_row("flops_fit", 0.5, s, 0.93, 0.8)]  # ours reaches 0.93 at 0.55 ms
        rows += [_row("tp_magnitude", 0.5, s, 0.80, 0.3), _row("tp_magnitude_r8", 0.7, s, 0.99, 0.9)]
    c = cvb.compare("m", cvb.summarise(rows))
    by = {(r["method"], r["fraction"]): r for r in c["equal_measured_latency"]}
    u = by[("uniform", 0.5)]  # at 0.5 ms ours interpolates to 0.92 vs 0.94 +- 0.021 (2 seeds)
    assert u["ours_acc_at_latency"] == pytest.approx(0.92) and u["diff"] == pytest.approx(-0.02)
    assert u["verdict"] == "within noise"
    assert by[("flops_reg", 0.35)]["verdict"] == "ours >="  # 0.9 at 0.5 ms: ours 0.92 there
    assert by[("tp_magnitude", 0.5)]["verdict"].startswith("outside")  # faster than all of ours
    r8 = by[("tp_magnitude_r8", 0.7)]  # slower than all of ours: ours' best (0.94) vs 0.99
    assert r8["ours_acc_at_latency"] == pytest.approx(0.94) and r8["verdict"] == "baseline better"
    assert by[("flops_fit", 0.5)]["verdict"] == "ours >="  # at 0.8 ms ours' best is 0.94
    lf = {r["method"]: r for r in c["latency_vs_flops_at_equal_accuracy"]}
    assert set(lf) == {"flops_reg", "flops_fit"}
    assert lf["flops_reg"]["ours_ms_at_accuracy_at_most"] == pytest.approx(0.4)
    assert lf["flops_reg"]["ratio_at_most"] == pytest.approx(0.8)
    assert lf["flops_fit"]["ours_ms_at_accuracy"] == pytest.approx(0.55)  # 0.90 -> 0.94 over 0.4 -> 0.6 ms
    assert lf["flops_fit"]["ratio"] == pytest.approx(0.55 / 0.8)


def test_a_baseline_within_the_measurement_tolerance_of_ours_fastest_point_is_compared(cvb) -> None:
    rows = []
    for s in range(2):
        rows += [_row("ours", 0.35, s, 0.90, 0.40), _row("ours", 0.5, s, 0.94, 0.6)]
        rows += [_row("tp_magnitude_r8", 0.35, s, 0.95, 0.395), _row("uniform", 0.35, s, 0.99, 0.30)]
    strict = {r["method"]: r for r in cvb.compare("m", cvb.summarise(rows))["equal_measured_latency"]}
    assert strict["tp_magnitude_r8"]["verdict"].startswith("outside")  # 1.25% faster: no tolerance
    by = {r["method"]: r for r in cvb.compare("m", cvb.summarise(rows), tol=0.02)["equal_measured_latency"]}
    r8 = by["tp_magnitude_r8"]  # within 2% of ours' fastest point: compared with it, and it wins
    assert r8["equal_within_tolerance"] and r8["ours_acc_at_latency"] == pytest.approx(0.90)
    assert r8["verdict"] == "baseline better"
    assert by["uniform"]["verdict"].startswith("outside")  # 25% faster stays outside


def test_budget_plan_runs_ours_alone_at_its_extra_budgets(cvb) -> None:
    plan = cvb.budget_plan("0.7,0.35", "0.25,0.35,0.5", "ours,uniform,tp_magnitude")
    assert plan == [
        (0.7, ["ours", "uniform", "tp_magnitude"]),
        (0.5, ["ours"]),
        (0.35, ["ours", "uniform", "tp_magnitude"]),  # already a shared budget: every method once
        (0.25, ["ours"]),
    ]
    assert cvb.budget_plan("0.5", "0.25", "uniform") == [(0.5, ["uniform"])]  # ours not asked for
    assert cvb.budget_plan("0.5", "", "ours") == [(0.5, ["ours"])]


def test_uniform_width_rounded_as_mobilenet_rounds(cvb) -> None:
    assert cvb._divisible(0.6 * 24, 24, 1, 8) == 16  # 14.4 -> nearest multiple of 8
    assert cvb._divisible(0.55 * 100, 100, 1, 8) == 56
    assert cvb._divisible(11.0, 64, 1, 8) == 16  # 8 would be below 90% of 11
    assert cvb._divisible(4.8, 16, 1, 8) == 8  # never below the divisor
    assert cvb._divisible(7.2, 6, 1, 8) == 6  # never above the full width
    assert cvb._divisible(20.0, 40, 5, 8) == 25  # whole units (heads of 5)


def test_uniform_r8_model_has_widths_in_multiples_of_8(cvb) -> None:
    import torch

    from edgetrim.examples.models import resnet_small

    torch.manual_seed(0)
    model, example = resnet_small(widths=(24, 40, 64), image_size=8)
    small = cvb.uniform_model(model, example, 0.6, round_to=8)
    convs = [m for m in small.modules() if isinstance(m, torch.nn.Conv2d)]
    assert {c.out_channels for c in convs} <= {16, 24, 40}  # 14.4 -> 16, 24 -> 24, 38.4 -> 40
    assert small(*example).shape == (1, 10)
    plain = cvb.uniform_model(model, example, 0.6)
    assert {c.out_channels for c in plain.modules() if isinstance(c, torch.nn.Conv2d)} == {15, 24, 39}


def test_rows_of_another_run_join_on_the_dense_ratio(cvb, tmp_path) -> None:
    def run(dense_ms, rows, out):
        for r in rows:
            r["dense_measured"] = {"median_ms": dense_ms}
        return {"args": {"out": out, "tolerance": 0.0}, "rows": rows}

    main = run(0.2, [_row("ours", 0.5, s, 0.9, 0.1, budget=0.1) for s in range(2)], "main.json")
    for r in main["rows"]:
        r["measured"]["ratio_to_dense"] = 0.5
    extra_rows = [_row("ours", 0.25, s, 0.85, 0.02, budget=0.025) for s in range(2)]
    for r in extra_rows:
        r["measured"]["ratio_to_dense"] = 0.2  # the extra run's dense measured 0.1 ms
    extra = run(0.1, extra_rows, "extra.json")
    extra["rows"].append({"model": "m", "fraction": 0.25, "method": "ours", "seed": 2, "budget_ms": 0.025,
                          "error": "BudgetError: x"})  # fmt: skip
    joined = cvb.rescaled_rows(extra, main)
    assert joined[-1]["error"] == "BudgetError: x" and joined[-1]["from_run"] == "extra.json"
    joined = joined[:-1]
    assert [r["measured"]["median_ms"] for r in joined] == pytest.approx([0.04, 0.04])  # 0.2 x 0.2
    assert joined[0]["budget_ms"] == pytest.approx(0.05) and joined[0]["budget_ms_own_run"] == 0.025
    assert joined[0]["measured_vs_budget"] == pytest.approx(0.8) and joined[0]["from_run"] == "extra.json"
    import json

    (tmp_path / "main.json").write_text(json.dumps(main))
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    for _ in range(2):  # merging twice replaces the first merge
        cvb.recompare(tmp_path / "main.json", [tmp_path / "extra.json"])
    doc = json.loads((tmp_path / "main.json").read_text())
    assert len(doc["rows"]) == 5
    assert next(s for s in doc["summary"] if s["fraction"] == 0.25)["failed_seeds"] == [2]
    curve = doc["comparison"][0]["ours_curve"]
    assert [c["fraction"] for c in curve] == [0.25, 0.5]
    assert [c["measured_ms"] for c in curve] == pytest.approx([0.04, 0.1])


def test_tuning_split_of_the_distorted_digits_keeps_every_original_on_one_side(load_benchmark) -> None:
    """digits_hard holds distorted copies of every training original (copy-major): a tuning image must
    not be a copy of a fitting image, so the fit/tune split is made on the originals."""
    tuning = load_benchmark("compress_schedule_tuning")
    n, copies = 50, 3
    fit, tune = tuning.tuning_rows(n, copies, seed=5)
    assert len(fit) + len(tune) == n * copies and not set(fit) & set(tune)
    assert len(tune) == copies * int(n * tuning.TUNE_SHARE)
    assert {int(r) % n for r in fit}.isdisjoint({int(r) % n for r in tune})  # row r is original r % n
    again = tuning.tuning_rows(n, copies, seed=5)
    assert all((a == b).all() for a, b in zip(again, (fit, tune)))
    assert not (tuning.tuning_rows(n, copies, seed=6)[1] == tune).all()


def _steps_loop(cvb, speed: float, budget: float = 1.0):
    """closed_loop over structures priced 0.5 / 0.9 / 0.99 / 1.03 / 1.2 on the table, each measuring
    ``speed`` x its price."""
    steps = (0.5, 0.9, 0.99, 1.03, 1.2)

    def make_at(tb):
        fitting = [s for s in steps if s <= tb]
        if not fitting:
            raise ValueError("nothing fits")
        return max(fitting)

    return cvb.closed_loop(make_at, lambda m: m, lambda m: speed * m, budget)


def test_closed_loop_tries_wider_when_within_and_tightens_when_over(cvb) -> None:
    model, _, rounds = _steps_loop(cvb, 0.96)  # 0.99 measures 0.95: a wider step still fits
    assert [r["predicted_ms"] for r in rounds] == [0.99, 1.03] and model == 1.03
    model, _, rounds = _steps_loop(cvb, 1.05)  # 0.99 measures over: tighten to 0.9, then stop
    assert [r["predicted_ms"] for r in rounds] == [0.99, 0.9] and model == 0.9
    model, _, rounds = _steps_loop(cvb, 0.8)  # 1.2 measures 0.96; nothing wider exists
    assert [r["predicted_ms"] for r in rounds] == [0.99, 1.2] and model == 1.2
