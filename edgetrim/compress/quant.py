"""Learned per-layer bit widths from {2, 4, 8, 16} by a residual decomposition with gates.

The weight of a layer is written as nested quantisation levels (straight-through rounding)::

    w_q = q2(w) + g4 (q4(w) - q2(w)) + g4 g8 (q8(w) - q4(w)) + g4 g8 g16 (q16(w) - q8(w))

with gates ``g >= 0`` (projected after every step, clamped to <= 1). A gate at exactly zero drops its
level and every finer one, so the layer runs at the last level still on. The cost is the weight
storage ``params x bits`` with the soft bit count ``2 + 2 g4 + 4 g4 g8 + 8 g4 g8 g16``.

``q_b`` is symmetric per-tensor quantisation with ``2^(b-1) - 1`` positive levels
(scale ``max|w| / (2^(b-1) - 1)``); 2 bits gives {-s, 0, s}.

Example:
    >>> layer = nn.Linear(8, 4)
    >>> q = attach_quant_(layer)
    >>> q.bits()
    16
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

logger = logging.getLogger(__name__)

__all__ = ["BITS", "NestedQuant", "QuantizedWeight", "attach_quant_", "bake_quant_", "quantize_tensor"]

BITS = (2, 4, 8, 16)


def quantize_tensor(w: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Symmetric per-tensor quantisation: ``(int codes, scale)`` with ``w ~= codes * scale``."""
    levels = 2 ** (bits - 1) - 1
    scale = w.detach().abs().max().clamp(min=1e-12) / levels
    codes = torch.clamp(torch.round(w / scale), -levels, levels)
    return codes, scale


def _ste(w: Tensor, bits: int) -> Tensor:
    """Quantise with a straight-through gradient (identity in the backward pass)."""
    codes, scale = quantize_tensor(w, bits)
    return w + (codes * scale - w).detach()


class NestedQuant(nn.Module):
    """Parametrisation ``w -> w_q`` with three gates (g4, g8, g16) in ``[0, 1]``."""

    def __init__(self) -> None:
        super().__init__()
        self.gates = nn.Parameter(torch.ones(3))

    def forward(self, w: Tensor) -> Tensor:
        q = [_ste(w, b) for b in BITS]  # q2, q4, q8, q16
        g4, g8, g16 = self.gates[0], self.gates[1], self.gates[2]
        return q[0] + g4 * (q[1] - q[0]) + g4 * g8 * (q[2] - q[1]) + g4 * g8 * g16 * (q[3] - q[2])

    def soft_bits(self) -> Tensor:
        g4, g8, g16 = self.gates[0], self.gates[1], self.gates[2]
        return 2.0 + 2.0 * g4 + 4.0 * g4 * g8 + 8.0 * g4 * g8 * g16

    def bits(self) -> int:
        """The bit width the layer runs at: the finest level whose gate chain is non-zero."""
        g = self.gates.detach()
        chain = [bool(g[0] > 0), bool(g[0] > 0 and g[1] > 0), bool(g[0] > 0 and g[1] > 0 and g[2] > 0)]
        return BITS[sum(chain)]

    @torch.no_grad()
    def project_(self) -> None:
        self.gates.clamp_(0.0, 1.0)

    @torch.no_grad()
    def harden_(self) -> None:
        """Snap the gates to {0, 1} (the chosen bit width) before the final fine-tune."""
        self.gates.copy_((self.gates > 0).float())


@dataclass(frozen=True)
class QuantizedWeight:
    """Integer representation of one layer's weight: ``weight == codes * scale`` (dequantised fp32)."""

    name: str
    bits: int
    codes: Tensor  # int8 for <= 8 bits, int16 for 16 bits
    scale: float


def attach_quant_(module: nn.Module) -> NestedQuant:
    """Register a :class:`NestedQuant` parametrisation on ``module.weight`` and return it."""
    q = NestedQuant()
    parametrize.register_parametrization(module, "weight", q)
    return q


def quant_parametrizations(model: nn.Module) -> dict[str, NestedQuant]:
    """Module name -> its NestedQuant, for every quantised layer of ``model``."""
    out = {}
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m, "weight"):
            for p in m.parametrizations["weight"]:
                if isinstance(p, NestedQuant):
                    out[name] = p
    return out


def bake_quant_(model: nn.Module, names: Iterable[str] | None = None) -> list[QuantizedWeight]:
    """Replace each quantised layer's parametrised weight by its (hardened) dequantised fp32 value.

    After hardening the gates, the value is exactly ``q_b(w)`` for the chosen ``b``; the returned
    records hold the integer codes and scale. Call on the copy being materialised.
    """
    records = []
    wanted = None if names is None else set(names)
    for name, q in quant_parametrizations(model).items():
        if wanted is not None and name not in wanted:
            continue
        module = model.get_submodule(name)
        bits = q.bits()
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        codes, scale = quantize_tensor(module.weight.detach(), bits)
        with torch.no_grad():
            module.weight.copy_(codes * scale)
        dtype = torch.int8 if bits <= 8 else torch.int16
        records.append(QuantizedWeight(name=name, bits=bits, codes=codes.to(dtype), scale=float(scale)))
    return records
