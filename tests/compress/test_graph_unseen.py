"""Architectures outside the zoo: every group found slices exactly, or is left dense.

Dependency analysis can miss a coupling (a functional conv on a bare parameter, a channel shuffle, a
slice of a concatenation). ``find_channel_groups`` checks the slicing on the model itself, so gates at
random values must still materialise to the same function here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgetrim.compress.gates import ChannelGates
from edgetrim.compress.graph import find_channel_groups


def cbr(i: int, o: int, k: int = 3, g: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, k, 1, k // 2, groups=g, bias=False), nn.BatchNorm2d(o), nn.ReLU())


class DenseConcat(nn.Module):  # DenseNet: every layer reads the concatenation of all earlier ones
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.l1, self.l2 = cbr(1, 16), cbr(16, 8), cbr(24, 8)
        self.trans, self.head = cbr(32, 24, 1), nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in (self.l1, self.l2):
            x = torch.cat([x, layer(x)], 1)
        return self.head(self.trans(x).mean((2, 3)))


class InceptionBranches(nn.Module):  # parallel branches concatenated, one through a max-pool
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.b1 = cbr(1, 24), cbr(24, 16, 1)
        self.b3 = nn.Sequential(cbr(24, 12, 1), cbr(12, 16))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), cbr(24, 8, 1))
        self.out, self.head = cbr(40, 32, 1), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(self.out(torch.cat([self.b1(x), self.b3(x), self.bp(x)], 1)).mean((2, 3)))


class ChannelShuffle(nn.Module):  # ShuffleNetV2 unit: split, one half through a branch, shuffle
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.head = cbr(1, 32), nn.Linear(32, 10)
        self.branch = nn.Sequential(cbr(16, 16, 1), cbr(16, 16, 3, g=16), cbr(16, 16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.stem(x).chunk(2, dim=1)
        y = torch.cat([a, self.branch(b)], 1)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(y.mean((2, 3)))


class GhostSlice(nn.Module):  # GhostNet: primary + cheap depthwise features, concatenated then cut
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.primary, self.cheap = cbr(1, 16), cbr(16, 12, 1), cbr(12, 12, 3, g=12)
        self.after, self.head = cbr(20, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.primary(self.stem(x))
        return self.head(self.after(torch.cat([p, self.cheap(p)], 1)[:, :20]).mean((2, 3)))


class FunctionalConv(nn.Module):  # a conv written as F.conv2d on a bare parameter
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c3, self.head = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(32, 32, 1), nn.Linear(32, 10)
        self.w = nn.Parameter(torch.randn(32, 16, 3, 3) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.conv2d(F.relu(self.c1(x)), self.w, padding=1))
        return self.head(F.relu(self.c3(x)).mean((2, 3)))


EXAMPLE = (torch.randn(1, 1, 16, 16),)
ARCHS = [DenseConcat, InceptionBranches, ChannelShuffle, GhostSlice, FunctionalConv]


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.__name__)
def test_random_gates_materialise_exactly(arch: type[nn.Module]) -> None:
    torch.manual_seed(0)
    model = arch().eval()
    with torch.no_grad():  # non-trivial norm statistics, so a wrong slice cannot hide behind zeros
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    groups = find_channel_groups(model, EXAMPLE)
    assert groups, "every one of these has at least one sliceable group"
    gates = ChannelGates(model, groups)
    with torch.no_grad():
        for a in gates.alphas:
            a.copy_(torch.rand_like(a) * (torch.rand_like(a) > 0.5))
            a[0] = 1.0
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        masked = model(x)
        small = gates.materialize(EXAMPLE)
        torch.testing.assert_close(small(x), masked, rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("arch", "dense_root"),
    [(ChannelShuffle, "branch.2.0"), (GhostSlice, "cheap.0"), (FunctionalConv, "c1")],
    ids=["shuffle", "ghost_slice", "functional_conv"],
)
def test_groups_the_analysis_gets_wrong_are_left_dense(
    arch: type[nn.Module], dense_root: str, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    groups = find_channel_groups(arch().eval(), EXAMPLE)
    assert dense_root not in {g.root_name for g in groups}
    assert [g.id for g in groups] == list(range(len(groups)))  # ids renumbered after the drop
    assert f"rooted at {dense_root} left dense: slicing it is not exact" in caplog.text


def test_a_model_the_analysis_understands_keeps_every_group() -> None:
    torch.manual_seed(0)
    # the concatenations shift indices but are traced correctly: stem, l1, l2, trans and the
    # branch layers all stay prunable
    assert len(find_channel_groups(DenseConcat().eval(), EXAMPLE)) == 4
    assert len(find_channel_groups(InceptionBranches().eval(), EXAMPLE)) == 6


class OneChannelAfterFunctional(nn.Module):  # a one-channel group beside a group that cannot be sliced
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c3 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(32, 1, 1)
        self.c4, self.head = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8, 10)
        self.w = nn.Parameter(torch.randn(32, 16, 3, 3) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.conv2d(F.relu(self.c1(x)), self.w, padding=1))
        return self.head(F.relu(self.c4(F.relu(self.c3(x)))).mean((2, 3)))


def test_dropping_a_group_keeps_the_one_unit_groups_and_the_exact_ones() -> None:
    groups = find_channel_groups(OneChannelAfterFunctional().eval(), EXAMPLE)
    assert sorted((g.root_name, g.size) for g in groups) == [("c3", 1), ("c4", 8)]
