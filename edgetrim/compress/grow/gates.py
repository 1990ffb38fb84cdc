"""Pure math of growing by structured continuous sparsification (Yuan et al., ICLR 2021).

Every structural unit u (a filter, a layer) has a logit s_u. Its soft gate is ``sigmoid(beta_u * s_u)``
(Eq. 5-6); its temperature ``beta_u = beta0 * gamma ** t_u`` rises only in epochs where the unit was
sampled on (Eq. 7, per-unit counters t_u); the budget controller sets the regulariser weight
``lambda = lambda_base * (u_target - u_current)`` in the sparsity convention (u = fraction removed), so
it is negative (a reward for growth) while the network is smaller than the budget (Eq. 4).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def gate_probability(logits: Tensor, beta: Tensor | float) -> Tensor:
    """``sigmoid(beta * s)``: the soft gate and the Bernoulli probability of each unit."""
    return torch.sigmoid(beta * logits)


def temperature(counts: Tensor, *, beta0: float = 1.0, gamma: float) -> Tensor:
    """Per-unit temperature ``beta0 * gamma ** t`` (``t`` = epochs the unit was sampled on)."""
    return beta0 * torch.pow(torch.as_tensor(gamma, dtype=torch.float32), counts.float())


def default_gamma(epochs: int, final_beta: float = 100.0) -> float:
    """``gamma = final_beta ** (1 / T)``: a unit sampled every epoch ends at ``beta = final_beta``."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    return final_beta ** (1.0 / epochs)


def budget_lambda(lambda_base: float, target_sparsity: float, current_sparsity: float) -> float:
    """Eq. 4: ``lambda_base * (u - u_G)``, signed: < 0 while the net is sparser than the target.

    Never clamp or take the absolute value: the negative phase is what makes the network grow.
    """
    return lambda_base * (target_sparsity - current_sparsity)


def sparsity_of(resource: float, full_resource: float) -> float:
    """``u_G = 1 - R(G) / R(full)`` for a resource R (parameters, MACs or milliseconds)."""
    if full_resource <= 0:
        raise ValueError(f"full_resource must be > 0, got {full_resource}")
    return 1.0 - resource / full_resource


def sample_units(prob: Tensor, generator: torch.Generator, *, at_least_one: bool = True) -> Tensor:
    """Bernoulli draw ``q ~ Bern(prob)``; with ``at_least_one`` the most probable unit is forced on
    when nothing was drawn (a layer with zero channels cannot exist)."""
    q = torch.rand(prob.shape, generator=generator) < prob.detach()
    if at_least_one and not bool(q.any()):
        q[int(prob.detach().argmax())] = True
    return q


def final_mask(logits: Tensor, *, at_least_one: bool = True) -> Tensor:
    """The architecture kept at the end: ``s > 0`` (sigmoid(beta s) -> Heaviside as beta grows)."""
    keep = logits.detach() > 0
    if at_least_one and not bool(keep.any()):
        keep[int(logits.detach().argmax())] = True
    return keep


def log_gamma_steps(beta_final: float, beta0: float, gamma: float) -> int:
    """Number of on-epochs after which a unit reaches ``beta_final`` (for reporting)."""
    return math.ceil(math.log(beta_final / beta0) / math.log(gamma))
