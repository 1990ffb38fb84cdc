"""CUDA targets (marked ``gpu``; skipped without a GPU or without onnxruntime's CUDA provider)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgetrim.errors import TargetUnavailableError
from edgetrim.profiler.targets import get_target
from edgetrim.profiler.timing import TimingConfig
from edgetrim.types import OpContext, OpKind

pytestmark = pytest.mark.gpu

CTX = OpContext(OpKind.CONV2D, kernel=(3, 3), padding=(1, 1), spatial=(16, 16), activation="relu")


def _target(name: str):
    try:
        return get_target(name)
    except TargetUnavailableError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("name", ["torch-cuda", "ort-cuda"])
def test_cuda_target_measures_ops_and_models(name: str) -> None:
    target = _target(name)
    timing = TimingConfig.quick()
    info = target.info()
    assert info.target == name and info.device
    ((req, stats),) = list(target.measure_ops([(CTX, 8, 16)], timing))
    assert req == (CTX, 8, 16) and stats.median_ms > 0
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 4)
    ).eval()
    stats = target.measure_model(model, (torch.randn(1, 3, 16, 16),), timing)
    assert stats.median_ms > 0 and stats.p10_ms <= stats.median_ms <= stats.p90_ms


def test_unavailable_cuda_targets_say_why() -> None:
    from edgetrim.profiler.targets import list_targets

    for status in list_targets():
        if status.name.endswith("cuda") and not status.available:
            assert status.name in status.reason
