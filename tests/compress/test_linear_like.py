"""GPT-style Conv1D projections swapped for the nn.Linear they compute; the generation cache off."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgetrim.compress.linear_like import convert_transposed_linears, disable_generation_cache
from edgetrim.model_ops import is_transposed_linear


def test_conv1d_becomes_the_linear_it_computes() -> None:
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(12, 8), nn.ReLU(), Conv1D(5, 12))
    for p in model.parameters():
        nn.init.normal_(p)
    x = torch.randn(2, 3, 8)
    want = model(x)
    assert all(is_transposed_linear(model[i]) for i in (0, 2)) and not is_transposed_linear(nn.Linear(8, 12))
    assert convert_transposed_linears(model) == ["0", "2"]
    assert [type(m).__name__ for m in model] == ["Linear", "ReLU", "Linear"]
    assert (model[0].in_features, model[0].out_features) == (8, 12)
    torch.testing.assert_close(model(x), want)
    hooked = nn.Sequential(Conv1D(4, 4))
    hooked[0].register_forward_hook(lambda *a: None)
    assert convert_transposed_linears(hooked) == []  # its hook would be lost


def test_generation_cache_is_turned_off_wherever_a_config_enables_it() -> None:
    class Config:
        use_cache = True

    inner = nn.Linear(2, 2)
    inner.config = Config()  # type: ignore[assignment]
    model = nn.Sequential(inner)
    assert disable_generation_cache(model) == ["0"] and inner.config.use_cache is False
    assert disable_generation_cache(model) == []
