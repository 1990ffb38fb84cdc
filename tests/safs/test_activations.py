"""Every SAFS operator: reference formula at default scalars, scalar gradients, baking, ONNX parity."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from edgetrim.compress.safs.activations import (
    OPS,
    SEARCH_SPACE,
    BakedActivation,
    ParametricActivation,
    reference,
)

X = torch.linspace(-8.0, 8.0, 801)


@pytest.mark.parametrize("name", sorted(OPS))
def test_default_scalars_match_reference(name: str) -> None:
    # fp32 elementwise: rtol 1e-5 (symexp reaches e^8, hence relative), atol 1e-6 near zero.
    torch.testing.assert_close(ParametricActivation(name)(X), reference(name, X), rtol=1e-5, atol=1e-6)


def test_seed_named_operators_are_registered() -> None:
    for name in (
        "relu",
        "swish",
        "hardswish",
        "symlog",
        "symexp",
        "acon",
        "srs",
        "elu",
        "tanh",
        "prelu",
        "falu",
        "srelu",
    ):
        assert name in OPS
    assert set(SEARCH_SPACE) <= set(OPS)


def test_alpha_scales_output_beta_scales_input() -> None:
    act = ParametricActivation("tanh", alpha=2.0, beta=0.5)
    torch.testing.assert_close(act(X), 2.0 * torch.tanh(0.5 * X))
    act = ParametricActivation("symlog", alpha=3.0, beta=2.0)
    torch.testing.assert_close(act(X), 3.0 * torch.sign(2 * X) * torch.log1p((2 * X).abs()))


@pytest.mark.parametrize("name", ["relu", "symlog", "acon", "srelu", "swish"])
def test_scalars_get_gradients_only_when_learnable(name: str) -> None:
    x = (torch.randn(64) * 3).requires_grad_()
    frozen = ParametricActivation(name)
    frozen(x).sum().backward()
    assert all(p.grad is None for p in frozen.parameters())
    live = ParametricActivation(name, learnable=True)
    live(x).sum().backward()
    assert live.scalars["alpha"].grad is not None and float(live.scalars["alpha"].grad.abs()) > 0


def test_unknown_operator_and_parameter_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown activation"):
        ParametricActivation("cosine")
    with pytest.raises(ValueError, match="no parameter"):
        ParametricActivation("relu", gamma=1.0)


def test_symexp_does_not_overflow() -> None:
    y = ParametricActivation("symexp")(torch.tensor([-1e4, 1e4]))
    assert torch.isfinite(y).all()


def _random_values(name: str) -> dict[str, float]:
    g = torch.Generator().manual_seed(len(name))
    values = {k: float(v) + float(torch.rand(1, generator=g)) * 0.5 for k, v in OPS[name].params.items()}
    if name == "srelu":
        values.update(t_l=-0.5, t_r=2.0)
    return values


@pytest.mark.parametrize("name", sorted(OPS))
def test_onnx_parity_per_operator(name: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    act = ParametricActivation(name, **_random_values(name))
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), act.bake()).eval()
    x = torch.randn(2, 2, 5, 5) * 3
    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"])
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.numpy()})[0]
    want = model(x).detach().numpy()
    # exported-artifact parity, fp32: 1e-5 (relative for symexp-sized values)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    ops = {n.op_type for n in __import__("onnx").load_from_string(buf.getvalue()).graph.node}
    assert not any(o.startswith("ATen") for o in ops), ops


def test_bake_keeps_values_and_has_no_parameters() -> None:
    act = ParametricActivation("acon", alpha=1.3, beta=0.7, p2=0.2)
    baked = act.bake()
    assert isinstance(baked, BakedActivation) and not list(baked.parameters())
    torch.testing.assert_close(baked(X), act(X).detach())
