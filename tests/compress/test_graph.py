"""Coupled channel groups and physical slicing on every zoo architecture."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgetrim.compress.gates import ChannelGates
from edgetrim.compress.graph import Role, find_channel_groups, materialize_channels
from edgetrim.errors import ModelSpecError
from edgetrim.examples.models import MODEL_ZOO

ZOO = sorted(MODEL_ZOO)


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", ZOO, ids=ZOO)
def test_random_pruning_materialises_with_parity(name: str) -> None:
    torch.manual_seed(0)
    model, example = MODEL_ZOO[name]()
    model.eval()
    groups = find_channel_groups(model, example)
    assert groups, f"{name}: no prunable group found"
    gates = ChannelGates(model, groups)
    with torch.no_grad():
        for a in gates.alphas:  # random gates, about half exact zeros, at least one survivor
            a.copy_(torch.rand_like(a) * (torch.rand_like(a) > 0.5))
            a[0] = 1.0
    x = torch.randn(3, *example[0].shape[1:])
    with torch.no_grad():
        masked = model(x)
        small = gates.materialize(example)
        dense_out = small(x)
    # fp32 reordering tolerance (STYLE rule 19)
    torch.testing.assert_close(dense_out, masked, rtol=1e-4, atol=1e-5)
    assert _n_params(small) < _n_params(model)
    assert dense_out.shape == masked.shape  # classifier outputs never pruned


def test_groups_couple_residual_se_and_depthwise() -> None:
    model, example = MODEL_ZOO["mobilenetv3_small"]()
    groups = find_channel_groups(model, example)
    roles = {r for g in groups for r in (m.role for m in g.members)}
    assert {Role.PRODUCER, Role.CONSUMER, Role.DEPTHWISE, Role.NORM} <= roles
    # a residual group has more than one producer (the branches of the add)
    assert any(len(g.names(Role.PRODUCER)) > 1 for g in groups)


def test_attention_heads_form_one_group_of_head_dim_units() -> None:
    model, example = MODEL_ZOO["bert_encoder_small"]()
    groups = find_channel_groups(model, example)
    heads = [g for g in groups if g.unit > 1]
    assert len(heads) == 2  # one per encoder layer
    assert all(g.unit == model.layers[0].attn.head_dim and g.num_units == 4 for g in heads)
    gates = ChannelGates(model, groups)
    assert [a.numel() for g, a in zip(groups, gates.alphas) if g.unit > 1] == [4, 4]  # one gate per head
    gates.detach_hooks()
    small = materialize_channels(model, example, {heads[0].id: torch.arange(heads[0].unit * 2)})
    layer = dict(small.named_modules())[heads[0].root_name.rsplit(".", 1)[0]]
    assert layer.num_heads == 2


def test_final_classifier_and_input_are_never_grouped() -> None:
    model, example = MODEL_ZOO["lenet5"]()
    groups = find_channel_groups(model, example)
    last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    first = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    assert all(last not in g.names(Role.PRODUCER) for g in groups)
    assert all(first not in g.names(Role.CONSUMER) for g in groups)


def test_untraceable_model_names_the_module() -> None:
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ok = nn.Linear(4, 8)
            self.broken = nn.Linear(5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.broken(self.ok(x))

    with pytest.raises(ModelSpecError, match="'broken'"):
        find_channel_groups(Bad(), (torch.randn(1, 4),))


def test_keep_must_be_valid() -> None:
    model, example = MODEL_ZOO["mlp"]()
    with pytest.raises(ValueError, match="at least one"):
        materialize_channels(model, example, {0: torch.tensor([], dtype=torch.long)})


def test_gate_scale_fast_path_matches_the_scatter_path() -> None:
    from edgetrim.examples.models import resnet_small

    torch.manual_seed(0)
    model, example = resnet_small(widths=(8, 16))
    gates = ChannelGates(model, find_channel_groups(model, example))
    assert gates._in_order  # ResNet consumers read one group each, in order
    assert gates._identity  # ... most of them every channel of it: the scale is alpha itself
    with torch.no_grad():
        for a in gates.alphas:
            a.uniform_(0.0, 2.0)

    def forward_and_grads():
        for a in gates.alphas:
            a.grad = None
        out = model(*example)
        out.square().sum().backward()
        return out.detach(), [a.grad.clone() for a in gates.alphas]

    out_fast, grads_fast = forward_and_grads()
    fast = {
        n: gates._scale_for(n, e[0][1].numel(), torch.device("cpu"), torch.float32)
        for n, e in gates._plan.items()
    }
    gates._identity, gates._in_order = set(), set()
    out_slow, grads_slow = forward_and_grads()
    for n, e in gates._plan.items():
        slow = gates._scale_for(n, e[0][1].numel(), torch.device("cpu"), torch.float32)
        assert torch.equal(fast[n], slow), n
    assert torch.allclose(out_fast, out_slow, atol=0, rtol=0)
    for gf, gs in zip(grads_fast, grads_slow):
        assert torch.allclose(gf, gs, rtol=1e-6, atol=1e-7)
