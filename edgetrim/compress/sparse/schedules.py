"""Pure schedule functions for sparse training (floats in, floats out; no state, no model).

Conventions: ``s`` is sparsity (fraction removed), ``d = 1 - s`` density. Steps count iterations.
"""

from __future__ import annotations

import math


def cubic_sparsity(step: int, *, s_i: float, s_f: float, t0: int, tf: int) -> float:
    """Zhu & Gupta gradual schedule: ``s_t = s_f + (s_i - s_f) * (1 - (t - t0)/(tf - t0))^3``.

    Returns ``s_i`` for ``step <= t0`` and ``s_f`` for ``step >= tf``; monotone in between. (The GraNet
    paper's printed denominator ``Δt`` is a transcription error: it is ``n*Δt = tf - t0``.)
    """
    if tf <= t0:
        return s_f if step >= t0 else s_i
    if step <= t0:
        return s_i
    if step >= tf:
        return s_f
    return s_f + (s_i - s_f) * (1.0 - (step - t0) / (tf - t0)) ** 3


def cosine_death_rate(step: int, *, total: int, r0: float = 0.5, r_min: float = 0.005) -> float:
    """GraNet death rate: cosine from ``r0`` at step 0 to ``r_min`` at ``total`` (clamped after)."""
    if total <= 0:
        return r_min
    frac = min(max(step / total, 0.0), 1.0)
    return r_min + (r0 - r_min) * (1.0 + math.cos(math.pi * frac)) / 2.0


def linear_death_rate(step: int, *, total: int, r0: float = 0.5, r_min: float = 0.005) -> float:
    """Linear decay of the drop fraction from ``r0`` to ``r_min`` over ``total`` steps."""
    if total <= 0:
        return r_min
    frac = min(max(step / total, 0.0), 1.0)
    return r0 + (r_min - r0) * frac


def rigl_drop_fraction(step: int, *, alpha: float = 0.3, t_end: int) -> float:
    """RigL drop fraction ``alpha/2 * (1 + cos(pi t / T_end))``; 0 from ``T_end`` on (mask frozen)."""
    if t_end <= 0 or step >= t_end:
        return 0.0
    return alpha / 2.0 * (1.0 + math.cos(math.pi * step / t_end))


def exponential_density(k: int, *, n: int, density: float) -> float:
    """SynFlow / iterative-PaI schedule: density after round ``k`` of ``n`` is ``density**(k/n)``."""
    if n <= 0:
        raise ValueError(f"n must be >= 1, got {n}")
    return density ** (min(max(k, 0), n) / n)


def imp_rounds(sparsity: float, *, per_round: float = 0.2) -> int:
    """IMP pruning rounds to reach ``sparsity`` removing ``per_round`` of the remaining weights each round.

    ``ceil(log(1 - p) / log(1 - per_round))``; total trainings = rounds + 1 (survey Eq. 18).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if sparsity == 0.0:
        return 0
    return math.ceil(math.log(1.0 - sparsity) / math.log(1.0 - per_round) - 1e-9)


def imp_sparsity_after(rounds: int, *, per_round: float = 0.2) -> float:
    """Sparsity after ``rounds`` IMP rounds: ``1 - (1 - per_round)**rounds``."""
    return 1.0 - (1.0 - per_round) ** rounds
