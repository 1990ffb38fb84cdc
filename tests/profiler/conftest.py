"""Fixtures of the profiler tests: a tiny conv net, fast timing, a measure-counting target wrapper."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
import torch
from torch import nn

from edgetrim.profiler.timing import TimingConfig


class TinyNet(nn.Module):
    """conv-BN-ReLU -> depthwise-ReLU6 -> global pool -> linear: every table family, tiny widths."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(2, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(5, 5, 3, padding=1, groups=5), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.dw(self.conv(x))), 1))


def tiny_net() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return TinyNet().eval(), (torch.randn(1, 2, 4, 4),)


@pytest.fixture
def tiny_model() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return tiny_net()


@pytest.fixture
def fast_timing() -> TimingConfig:
    # coarse on purpose: these tests check plumbing, never timing values
    return TimingConfig(warmup=1, min_runs=3, max_runs=5, rel_ci=0.5, time_cap_s=0.05, min_sample_ms=0.0)


class CountingTarget:
    """A real target whose ``measure_ops`` records what it measured (and can stop after ``stop_after``)."""

    def __init__(self, inner, stop_after: int | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.seen: list[tuple] = []
        self.stop_after = stop_after

    def info(self):
        return self.inner.info()

    @property
    def fusion(self):
        return self.inner.fusion

    def invoke_overhead(self, timing):
        return self.inner.invoke_overhead(timing)

    def measure_ops(self, requests: Sequence, timing) -> Iterator:
        for req, stats in self.inner.measure_ops(requests, timing):
            if self.stop_after is not None and len(self.seen) >= self.stop_after:
                raise KeyboardInterrupt
            self.seen.append(req)
            yield req, stats

    def measure_model(self, module, example_inputs, timing):
        return self.inner.measure_model(module, example_inputs, timing)

    def measure_artifact(self, path, timing):
        return self.inner.measure_artifact(path, timing)


@pytest.fixture
def counting_target() -> type[CountingTarget]:
    return CountingTarget
