"""Activation-site discovery (modules and functional calls) and swapping."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgetrim.compress.safs.activations import BakedActivation, ParametricActivation
from edgetrim.compress.safs.surgery import (
    activation_shapes,
    bake_activations_,
    replace_activations,
    set_chromosome_,
    set_scalars_learnable_,
)


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc1 = nn.Linear(4 * 8 * 8, 16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv(x))  # module site
        x = F.relu(self.fc1(x.flatten(1)))  # functional site
        x = torch.relu(self.fc2(x))  # torch.* site
        x = self.act(x).relu()  # the same module again + a method site
        return self.fc3(x)


def test_finds_module_functional_and_method_sites() -> None:
    res = replace_activations(Mixed())
    origins = [s.origin for s in res.sites]
    assert len(res.sites) == 5
    assert any(o.startswith("module act") for o in origins)
    assert any(o.startswith("function relu") for o in origins)
    assert any(o.startswith("method relu") for o in origins)
    assert [s.after_linear for s in res.sites][:3] == [True, True, True]
    assert all(isinstance(a, ParametricActivation) for a in res.activations())


def test_relu_replacement_preserves_outputs() -> None:
    torch.manual_seed(0)
    model = Mixed().eval()
    res = replace_activations(model)
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(res.model.eval()(x), model(x))  # exact ops: identical up to fp32 rounding


def test_chromosome_swap_and_bake() -> None:
    torch.manual_seed(0)
    res = replace_activations(Mixed(), "relu")
    chromosome = ["symlog", "swish", "tanh", "srs", "elu"]
    set_chromosome_(res.model, res.sites, chromosome)
    assert [a.op_name for a in res.activations()] == chromosome
    assert set_scalars_learnable_(res.model, True) == 5
    assert all(p.requires_grad for a in res.activations() for p in a.parameters())
    x = torch.randn(2, 1, 8, 8)
    before = res.model.eval()(x).detach()
    assert bake_activations_(res.model) == 5
    assert sum(isinstance(m, BakedActivation) for m in res.model.modules()) == 5
    torch.testing.assert_close(res.model(x), before)


def test_activation_shapes_cover_every_site() -> None:
    res = replace_activations(Mixed())
    shapes = activation_shapes(res.model, (torch.zeros(1, 1, 8, 8),))
    assert shapes["safs_act_0"] == (1, 4, 8, 8)
    assert shapes["safs_act_1"] == (1, 16)
    assert len(shapes) == 5


def test_untraceable_model_falls_back_to_modules() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow defeats torch.fx
                return self.act(self.fc(x))
            return self.fc(x)

    res = replace_activations(Branchy(), "tanh")
    assert [s.name for s in res.sites] == ["act"]
    assert isinstance(res.model.act, ParametricActivation) and res.model.act.op_name == "tanh"


def test_rewritten_model_survives_torch_save(tmp_path) -> None:
    # string annotations (from __future__ import annotations, as in this file) once broke pickling
    res = replace_activations(Mixed(), "swish")
    bake_activations_(res.model)
    torch.save(res.model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(loaded(x), res.model(x))
