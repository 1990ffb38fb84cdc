"""Growth by continuous sparsification: gate math, controller sign, materialisation parity, budgets."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edgetrim.compress.grow import (
    BudgetKind,
    GrowConfig,
    GrowNet,
    GrowNetSpec,
    ResourceMeter,
    count_resources,
    grow_,
)
from edgetrim.compress.grow.gates import (
    budget_lambda,
    default_gamma,
    final_mask,
    gate_probability,
    sample_units,
    sparsity_of,
    temperature,
)
from edgetrim.compress.run_folder import load_run
from edgetrim.examples.data import digits_arrays

SPEC = GrowNetSpec(
    widths=(8, 8, 12, 12), pool_after=(False, True, False, False), layer_gated=(False, True, False, True)
)


def test_gate_and_temperature_math() -> None:
    s = torch.tensor([-1.0, 0.0, 2.0])
    torch.testing.assert_close(gate_probability(s, 3.0), torch.sigmoid(3.0 * s))
    gamma = default_gamma(30)
    assert gamma**30 == pytest.approx(100.0)  # a unit sampled every epoch ends at beta = 100
    torch.testing.assert_close(
        temperature(torch.tensor([0.0, 30.0]), gamma=gamma), torch.tensor([1.0, 100.0])
    )
    assert final_mask(torch.tensor([-1.0, 0.5, -0.2])).tolist() == [False, True, False]
    assert final_mask(torch.tensor([-1.0, -0.5])).tolist() == [False, True]  # never an empty layer


def test_budget_controller_sign() -> None:
    target = 0.7  # keep 30%
    assert budget_lambda(0.5, target, current_sparsity=0.99) < 0  # too small: negative, a reward to grow
    assert budget_lambda(0.5, target, current_sparsity=0.5) > 0  # too big: ordinary sparsity pressure
    assert budget_lambda(0.5, target, current_sparsity=0.7) == 0
    assert budget_lambda(0.5, target, 0.9) == pytest.approx(0.5 * (0.7 - 0.9))  # signed, never clamped
    assert sparsity_of(30.0, 100.0) == pytest.approx(0.7)


def test_sampling_is_seeded_and_never_empty() -> None:
    p = torch.full((16,), 0.01)
    a = sample_units(p, torch.Generator().manual_seed(0))
    b = sample_units(p, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and bool(a.any())


def _random_state(net: GrowNet, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for s in net.channel_logits:
            s.copy_(torch.randn(s.shape, generator=g))
        net.layer_logits.copy_(torch.tensor([1.0, -1.0]))  # layer 1 on, layer 3 skipped
        for bn in net.bns:
            bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g))
            bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) + 0.5)
    net.channel_counts = [torch.randint(0, 10, c.shape, generator=g).float() for c in net.channel_counts]
    net.gamma.fill_(default_gamma(10))


def test_materialisation_parity_and_resource_counts() -> None:
    torch.manual_seed(0)
    net = GrowNet(SPEC)
    _random_state(net, 1)
    net.eval()
    plain = net.materialize()
    assert isinstance(plain, nn.Sequential)
    assert {type(m) for m in plain} <= {
        nn.Conv2d,
        nn.BatchNorm2d,
        nn.ReLU,
        nn.MaxPool2d,
        nn.AdaptiveAvgPool2d,
        nn.Flatten,
        nn.Linear,
    }
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(plain(x), net(x), rtol=1e-5, atol=1e-5)  # gates folded exactly
    chans, layers = net.deterministic_state()
    params, _ = count_resources(SPEC, net.widths_of(chans), net.layers_on(layers))
    assert params == sum(p.numel() for p in plain.parameters())
    assert sum(isinstance(m, nn.Conv2d) for m in plain) == 3  # the skipped gated layer is gone


def test_materialised_model_exports_to_onnx() -> None:
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = GrowNet(SPEC)
    _random_state(net, 2)
    plain = net.materialize()
    x = torch.randn(2, 1, 8, 8)
    buf = io.BytesIO()
    torch.onnx.export(plain, (x,), buf, dynamo=False, input_names=["x"])
    got = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()}
    )[0]
    np.testing.assert_allclose(got, plain(x).detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def digits():
    a = digits_arrays()
    return (torch.from_numpy(a.x_train[:512]), torch.from_numpy(a.y_train[:512])), (
        torch.from_numpy(a.x_val[:200]),
        torch.from_numpy(a.y_val[:200]),
    )


def test_short_growth_grows_with_negative_lambda_and_holds_dormant_weights(digits) -> None:
    train, val = digits
    torch.manual_seed(0)
    net = GrowNet(SPEC)
    dormant_before = net.convs[2].weight.detach()[4:].clone()  # never-sampled filters of layer 2
    cfg = GrowConfig(budget_value=0.3, epochs=3, batch_size=128)
    rep = grow_(net, train, cfg, val=val)
    assert rep.history[0]["lambda1"] < 0  # starts tiny: the controller rewards growth
    assert rep.history[0]["widths"] == [1, 1, 1, 1]
    assert max(sum(r["widths"]) for r in rep.history) > 4  # it grew
    assert 0 < rep.training_macs < rep.dense_training_macs
    assert rep.params <= rep.full_params
    # filters never sampled on (counter 0) were never trained: weight decay and momentum must not move them
    grown_any = net.channel_counts[net.group_of[2]] > 0
    untouched = ~grown_any[4:]
    if bool(untouched.any()):
        torch.testing.assert_close(
            net.convs[2].weight.detach()[4:][untouched], dormant_before[untouched], rtol=0, atol=0
        )


def test_budget_accounting_params_and_flops() -> None:
    meter = ResourceMeter(SPEC, GrowConfig(budget=BudgetKind.PARAMS, budget_value=0.3))
    full, _ = count_resources(SPEC, list(SPEC.widths), [True] * 4)
    assert meter.full == full and meter.target == pytest.approx(0.7)
    assert meter.sparsity(list(SPEC.widths), [True] * 4) == pytest.approx(0.0)
    flops = ResourceMeter(SPEC, GrowConfig(budget=BudgetKind.FLOPS, budget_value=1e5))
    _, macs = count_resources(SPEC, list(SPEC.widths), [True] * 4)
    assert flops.target == pytest.approx(1 - 1e5 / macs)


def test_latency_budget_needs_a_table() -> None:
    from edgetrim.errors import EdgetrimError

    with pytest.raises(EdgetrimError, match="table"):
        ResourceMeter(SPEC, GrowConfig(budget=BudgetKind.LATENCY, budget_value=1.0))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="fraction"):
        GrowConfig(budget_value=3.0)
    with pytest.raises(ValueError, match="layer-gated"):
        GrowNetSpec(widths=(4, 8), pool_after=(False, False), layer_gated=(False, True))
    assert math.isclose(GrowConfig(epochs=10).to_dict()["epochs"], 10)


def test_grow_cli_writes_a_run_folder(tmp_path) -> None:
    from edgetrim.cli import app

    out = tmp_path / "grown"
    args = [
        "grow",
        "--data",
        "digits",
        "--budget-params",
        "0.3",
        "--widths",
        "8,8,12,12",
        "--epochs",
        "2",
        "--finetune-epochs",
        "1",
        "--out",
        str(out),
        "--json",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    run = load_run(out)
    assert run.info["kind"] == "grow" and run.info["widths_after"] == summary["widths"]
    assert run.model(*run.example_inputs).shape == (1, 10)
    assert summary["params"] == sum(p.numel() for p in run.model.parameters())


def test_grow_cli_rejects_two_budgets(tmp_path) -> None:
    from edgetrim.cli import app

    result = CliRunner().invoke(
        app,
        [
            "grow",
            "--data",
            "digits",
            "--budget-params",
            "0.3",
            "--budget-flops",
            "0.5",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 2 and "exactly one" in result.output


# ------------------------------------------------------------------------------------ latency fit
def test_fill_to_budget_lands_at_or_below_the_target() -> None:
    from edgetrim.compress.grow import fill_to_budget

    def cost(w: list[int]) -> float:
        return 1.0 * w[0] + 2.0 * w[1] + 0.5 * w[2]

    w = fill_to_budget([1, 1, 1], [8, 8, 8], cost, 12.0)
    assert cost(w) <= 12.0
    assert all(1 <= a <= 8 for a in w)
    # no single further channel fits under the target (it is as close as single steps get)
    assert all(cost([*w[:j], w[j] + 1, *w[j + 1 :]]) > 12.0 for j in range(3) if w[j] < 8)
    # over the target: it shrinks back under it
    w2 = fill_to_budget([8, 8, 8], [8, 8, 8], cost, 10.0)
    assert cost(w2) <= 10.0
    # flat cost: zero-cost steps spread over layers instead of filling one
    assert fill_to_budget([1, 1], [4, 4], lambda w: 0.0, 1.0) == [4, 4]


def test_fit_to_measured_budget_corrects_a_biased_prediction() -> None:
    from edgetrim.compress.grow import fit_to_measured_budget

    def cost(w: list[int]) -> float:  # the table over-predicts by 20%
        return 1.2 * (0.1 * w[0] + 0.2 * w[1])

    def measure(w: list[int]) -> float:
        return 0.1 * w[0] + 0.2 * w[1]

    fit = fit_to_measured_budget([1, 1], [64, 64], cost, 4.0, measure, rounds=4, method="greedy")
    scaled = fit_to_measured_budget([2, 3], [64, 64], cost, 4.0, measure, rounds=4)
    assert scaled.measured_ms is not None and 4.0 * 0.9 <= scaled.measured_ms <= 4.0
    assert fit.measured_ms is not None and fit.measured_ms <= 4.0
    assert fit.measured_ms >= 4.0 * 0.94  # the prediction alone stops ~17% short
    assert len(fit.rounds) >= 2 and fit.rounds[0]["measured_ms"] < 4.0 * 0.9
    assert fit_to_measured_budget([1, 1], [64, 64], cost, 4.0).measured_ms is None  # table only


def test_materialize_at_given_widths_takes_the_highest_logits() -> None:
    spec = GrowNetSpec(widths=(6, 8), pool_after=(True, False), layer_gated=(False, False))
    torch.manual_seed(0)
    net = GrowNet(spec)
    with torch.no_grad():
        net.channel_logits[0].copy_(torch.tensor([2.0, -1.0, -0.5, -3.0, 1.0, -2.0]))
    assert net.units_for_widths([3, 2])[0].tolist() == [True, False, True, False, True, False]
    model = net.materialize([3, 2])
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [3, 2]
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="outside"):
        net.units_for_widths([7, 2])


def test_scale_to_budget_keeps_proportions_and_the_target() -> None:
    from edgetrim.compress.grow.fit import scale_to_budget

    def cost(w: list[int]) -> float:
        return 1.0 * w[0] + 2.0 * w[1] + 0.5 * w[2]

    w = scale_to_budget([2, 4, 8], [32, 32, 32], cost, 40.0)
    assert cost(w) <= 40.0 and w[0] <= w[1] <= w[2]
    assert cost(scale_to_budget([2, 4, 8], [32, 32, 32], cost, 40.0 * 0.8)) < cost(w)
    assert scale_to_budget([2, 4], [4, 8], lambda v: 0.0, 1.0) == [4, 8]  # clipped at the maximum
    assert cost(scale_to_budget([30, 30, 30], [32, 32, 32], cost, 10.0)) <= 10.0  # shrinks when over


def _reference_bn_stats(plain: nn.Sequential, x: torch.Tensor, batch_size: int) -> list[tuple]:
    """Running statistics a fresh BatchNorm (momentum None: cumulative) collects on ``x`` in ``plain``."""
    import copy

    ref = copy.deepcopy(plain)
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    ref.train()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            ref(x[i : i + batch_size])
    return [(m.running_mean, m.running_var) for m in ref.modules() if isinstance(m, nn.BatchNorm2d)]


def test_recalibrate_bn_gives_the_final_architectures_statistics() -> None:
    torch.manual_seed(0)
    net = GrowNet(SPEC)
    _random_state(net, 3)  # running statistics are random: stale for any architecture
    x = torch.randn(40, 1, 8, 8)
    weights = {n: p.detach().clone() for n, p in net.named_parameters()}
    stale = [
        (m.running_mean.clone(), m.running_var.clone())
        for m in net.materialize()
        if isinstance(m, nn.BatchNorm2d)
    ]
    net.eval()
    net.recalibrate_bn_(x, batch_size=16)
    plain = net.materialize()
    got = [(m.running_mean, m.running_var) for m in plain if isinstance(m, nn.BatchNorm2d)]
    want = _reference_bn_stats(plain, x, batch_size=16)
    assert len(got) == len(want) == 3
    for (gm, gv), (wm, wv), (sm, _) in zip(got, want, stale, strict=True):
        torch.testing.assert_close(gm, wm, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(gv, wv, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(gm, sm)  # the stale statistics were really replaced
    for n, p in net.named_parameters():  # weights, logits and gates untouched
        torch.testing.assert_close(p.detach(), weights[n], rtol=0, atol=0)
    assert not net.training and net._calibration_batch == 0  # mode restored, sampling forward back
    torch.testing.assert_close(plain(x), net(x), rtol=1e-5, atol=1e-5)  # parity still holds


def test_growth_ends_with_recalibrated_bn_and_the_weight_schedule_is_honoured(digits) -> None:
    train, _ = digits
    rows = {}
    for schedule in ("constant", "cosine"):
        torch.manual_seed(0)
        net = GrowNet(SPEC)
        rep = grow_(
            net, train, GrowConfig(budget_value=0.3, epochs=3, batch_size=128, weight_schedule=schedule)
        )
        rows[schedule] = [r["weight_lr"] for r in rep.history]
        plain = net.materialize()
        got = [m.running_mean for m in plain if isinstance(m, nn.BatchNorm2d)]
        want = _reference_bn_stats(plain, train[0], batch_size=256)
        for g, (w, _) in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    assert rows["constant"] == [0.05, 0.05, 0.05]  # held while the architecture grows
    assert rows["cosine"][0] == 0.05 and rows["cosine"][1] < 0.05 and rows["cosine"][2] < rows["cosine"][1]
    with pytest.raises(ValueError, match="weight_schedule"):
        GrowConfig(weight_schedule="step")
