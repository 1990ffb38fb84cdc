"""Fixtures for deploy tests: hand-made compressed models written as RUN folders with ``save_run``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from edgetrim.compress.run_folder import save_run


class PrunedLowRankNet(nn.Module):
    """What a materialised compressed digits CNN looks like: odd (pruned) conv widths, and a classifier
    Linear(5*4*4 -> 10) factorised into two Linears through a rank-3 bottleneck."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 7, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(7)
        self.conv2 = nn.Conv2d(7, 5, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc_u = nn.Linear(5 * 4 * 4, 3, bias=False)  # low-rank factor U^T
        self.fc_v = nn.Linear(3, 10)  # low-rank factor V

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))  # (B, 7, 8, 8)
        x = self.pool(torch.relu(self.conv2(x)))  # (B, 5, 4, 4)
        return self.fc_v(self.fc_u(torch.flatten(x, 1)))  # (B, 10)


def _train(model: nn.Module, epochs: int = 4) -> float:
    from edgetrim.examples.data import digits_loaders

    torch.manual_seed(0)
    train, val = digits_loaders(batch_size=64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        for x, y in train:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in val:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


@pytest.fixture(scope="session")
def trained_net() -> tuple[nn.Module, float]:
    torch.manual_seed(0)
    net = PrunedLowRankNet()
    acc = _train(net)
    return net.eval(), acc


def make_run(path: Path, model: nn.Module, acc: float | None = None, **info: object) -> Path:
    base = {
        "kind": "compress",
        "model_spec": "tests.deploy.conftest:PrunedLowRankNet",
        "data_spec": "digits",
        "accuracy": acc,
        "dense_accuracy": None if acc is None else min(1.0, acc + 0.01),
        "predicted_ms": 0.05,
        "dense_predicted_ms": 0.1,
        "widths_before": {"conv1": 16, "conv2": 16, "fc": 10},
        "widths_after": {"conv1": 7, "conv2": 5, "fc": 3},
        "config": {"budget_fraction": 0.5},
    }
    base.update(info)
    return save_run(path, model, (torch.randn(1, 1, 8, 8),), base)


@pytest.fixture
def run_dir(tmp_path: Path, trained_net: tuple[nn.Module, float]) -> Path:
    net, acc = trained_net
    return make_run(tmp_path / "run", net, acc)


@pytest.fixture(scope="session")
def run_factory():
    """``make_run(path, model, acc, **info)`` for tests that need their own RUN folders."""
    return make_run
