"""Layers that compute a linear map without being ``nn.Linear``, swapped for one so they can be pruned.

OpenAI GPT / GPT-2 in Hugging Face transformers keep every projection in ``Conv1D``: ``x @ W + b``
with ``W`` stored as ``(in, out)``, the transpose of ``nn.Linear``'s. The dependency tracer has no
channel rules for it, so its channels could not be grouped; as an ``nn.Linear`` with ``W.T`` it
computes the same and prunes like any linear. The same models keep a generation cache (keys and
values concatenated across calls) that a single classification pass never reads and the tracer
cannot size; :func:`disable_generation_cache` turns it off on the copy ``compress`` works on.

Example:
    >>> import torch
    >>> class Conv1D(nn.Module):  # transformers.pytorch_utils.Conv1D's layout
    ...     def __init__(self, nf, nx):
    ...         super().__init__()
    ...         self.nf, self.weight, self.bias = nf, nn.Parameter(torch.randn(nx, nf)), nn.Parameter(torch.randn(nf))
    ...     def forward(self, x):
    ...         return x @ self.weight + self.bias
    >>> model = nn.Sequential(Conv1D(3, 4))
    >>> convert_transposed_linears(model)
    ['0']
    >>> type(model[0]).__name__, tuple(model[0].weight.shape)
    ('Linear', (3, 4))
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from edgetrim.model_ops import is_transposed_linear

logger = logging.getLogger(__name__)

__all__ = ["convert_transposed_linears", "disable_generation_cache", "is_transposed_linear"]


def convert_transposed_linears(model: nn.Module) -> list[str]:
    """Replace, in place, every transformers-style ``Conv1D`` of ``model`` by the ``nn.Linear`` that
    computes the same (weight transposed); return the names replaced. A module with hooks is left
    as it is (its hooks would be lost)."""
    converted: list[str] = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if not is_transposed_linear(child):
                continue
            full = f"{parent_name}.{name}" if parent_name else name
            if child._forward_hooks or child._forward_pre_hooks:
                logger.info("%s left as it is: hooks are registered on it", full)
                continue
            weight = child.weight.detach()
            linear = nn.Linear(weight.shape[0], weight.shape[1], device=weight.device, dtype=weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(weight.T)
                linear.bias.copy_(child.bias.detach())
            linear.train(child.training)
            setattr(parent, name, linear)
            converted.append(full)
    return converted


def disable_generation_cache(model: nn.Module) -> list[str]:
    """Set ``config.use_cache = False`` on every submodule whose config enables it; return their names."""
    changed = []
    for name, module in model.named_modules():
        config = getattr(module, "config", None)
        if getattr(config, "use_cache", None) is True:
            config.use_cache = False  # type: ignore[union-attr]
            changed.append(name or type(module).__name__)
    return changed
