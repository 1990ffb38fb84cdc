"""What the dual ascent on lambda reads: the cost at the soft (l1/l2) widths, or at the non-zero gates."""

from __future__ import annotations

import pytest
import torch

from edgetrim.compress.config import CompressConfig
from edgetrim.compress.train import _ANCHOR_EVERY


def test_soft_signal_follows_spreading_masks_before_any_gate_is_zero(mlp_trainer) -> None:
    soft, dense = mlp_trainer(dual_signal="soft")
    hard, _ = mlp_trainer(dual_signal="hard")
    assert soft.dual_cost() == pytest.approx(dense, rel=1e-6)  # uniform masks: the dense cost
    assert hard.dual_cost() == pytest.approx(dense, rel=1e-12)
    for t in (soft, hard):  # half of every group's masks shrink to 1e-3: no exact zero yet
        with torch.no_grad():
            for a in t.gates.alphas:
                a[: a.numel() // 2] = 1e-3
    assert hard.dual_cost() == pytest.approx(dense, rel=1e-12)  # the non-zero count has not moved
    assert soft.dual_cost() < 0.97 * dense  # the l1/l2 count has (to d / sqrt 2 here)
    for t in (soft, hard):  # the same halves at exactly zero: both see the cut
        with torch.no_grad():
            for a in t.gates.alphas:
                a[: a.numel() // 2] = 0.0
    assert hard.dual_cost() < 0.85 * dense
    assert soft.dual_cost() == pytest.approx(hard.dual_cost(), rel=0.25)


def test_dual_signal_is_validated() -> None:
    with pytest.raises(ValueError, match="dual_signal"):
        CompressConfig(budget_ms=1.0, dual_signal="median")


def test_dual_reads_the_penalty_cost_it_was_handed_without_a_second_surrogate_pass(mlp_trainer) -> None:
    trainer, dense = mlp_trainer(dual_signal="soft")
    with torch.no_grad():
        for a in trainer.gates.alphas:
            a.uniform_(0.0, 1.0)
    counts = trainer.soft_counts()
    soft = trainer._soft_cost(counts)
    # the latency penalty on a latency budget is the dual's own signal: the same number either way
    assert trainer.dual_cost(counts, soft) == pytest.approx(trainer.dual_cost(), rel=1e-9)
    assert trainer.dual_cost(counts, soft) < dense


def test_flops_penalty_on_a_latency_budget_still_reads_the_latency_surrogate(mlp_trainer) -> None:
    trainer, _ = mlp_trainer(dual_signal="soft", regularizer="flops")
    with torch.no_grad():
        for a in trainer.gates.alphas:
            a.uniform_(0.0, 1.0)
    counts = trainer.soft_counts()
    flops = trainer._soft_cost(counts)  # FLOPs, not ms: must not be read as the dual's latency
    assert trainer.dual_cost(counts, flops) == pytest.approx(trainer.dual_cost(), rel=1e-9)
    assert trainer.dual_cost(counts, flops) != pytest.approx(float(flops) + trainer._soft_shift)


def test_soft_signal_is_re_anchored_at_the_real_cost_of_the_current_widths(mlp_trainer, tmp_path) -> None:
    trainer, _ = mlp_trainer(dual_signal="soft")
    with torch.no_grad():  # half of every group at exactly zero
        for a in trainer.gates.alphas:
            a[: a.numel() // 2] = 0.0
    hard = trainer.gates.widths()
    real = trainer.cost_fn(hard)  # widths off the staircase's step edges

    def signal_at_hard() -> float:  # the soft cost at the non-zero widths, shifted as the dual reads it
        return float(trainer.soft_cost_fn([torch.tensor(float(w)) for w in hard])) + trainer._soft_shift

    trainer.dual_cost()
    assert abs(signal_at_hard() - real) > 1e-3 * real  # the offset taken at the dense widths
    for _ in range(_ANCHOR_EVERY):
        now = trainer.dual_cost()
    assert signal_at_hard() == pytest.approx(real, rel=1e-9)  # re-taken where the gates are now
    trainer.save_checkpoint(tmp_path / "ckpt.pt")  # a resumed run reads the same signal at once
    resumed, _ = mlp_trainer(dual_signal="soft")
    resumed.load_checkpoint(tmp_path / "ckpt.pt")
    assert resumed.dual_cost() == pytest.approx(now, rel=1e-12)
