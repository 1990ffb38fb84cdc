"""The weights' learning rate during the penalised epochs (``CompressConfig.penalised_schedule``)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from edgetrim.compress.config import CompressConfig
from edgetrim.compress.train import PenaltyTrainer


def _trainer(mlp_trainer, schedule: str) -> PenaltyTrainer:
    return mlp_trainer(epochs=2, lr=0.01, gate_lr=0.05, penalised_schedule=schedule)[0]


def _batches(n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 64, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


def _lrs_per_step(trainer: PenaltyTrainer, epochs: int) -> list[tuple[float, float]]:
    seen: list[tuple[float, float]] = []
    step = trainer.optimizer.step

    def record(*args, **kwargs):
        seen.append((trainer.optimizer.param_groups[0]["lr"], trainer.optimizer.param_groups[1]["lr"]))
        return step(*args, **kwargs)

    trainer.optimizer.step = record  # type: ignore[method-assign]
    for _ in range(epochs):
        trainer.run_epoch(_batches(), torch.randn(1, 64))
        trainer.state.epoch += 1
    return seen


def test_cosine_decays_the_weights_over_the_penalised_epochs_and_leaves_the_masks(mlp_trainer) -> None:
    lrs = _lrs_per_step(_trainer(mlp_trainer, "cosine"), epochs=2)
    weights, masks = [w for w, _ in lrs], [m for _, m in lrs]
    assert len(lrs) == 8
    expected = [0.01 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]  # 4 batches x 2 epochs
    assert weights == pytest.approx(expected)
    assert all(a > b for a, b in itertools.pairwise(weights)) and weights[-1] < 0.001
    assert masks == [0.05] * 8
    constant = _lrs_per_step(_trainer(mlp_trainer, "constant"), epochs=2)
    assert constant == [(0.01, 0.05)] * 8


def test_a_resumed_run_continues_the_schedule(mlp_trainer, tmp_path) -> None:
    whole = _lrs_per_step(_trainer(mlp_trainer, "cosine"), epochs=2)
    first = _trainer(mlp_trainer, "cosine")
    _lrs_per_step(first, epochs=1)
    first.save_checkpoint(tmp_path / "ckpt.pt")
    resumed = _trainer(mlp_trainer, "cosine")
    resumed.load_checkpoint(tmp_path / "ckpt.pt")
    again = _lrs_per_step(resumed, epochs=1)
    assert [w for w, _ in again] == pytest.approx([w for w, _ in whole[4:]])  # not restarted at lr


def test_penalised_schedule_is_validated() -> None:
    with pytest.raises(ValueError, match="penalised_schedule"):
        CompressConfig(budget_ms=1.0, penalised_schedule="step")
