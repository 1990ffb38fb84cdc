"""Growing efficient networks by structured continuous sparsification (Yuan, Savarese, Maire; ICLR 2021).

:mod:`.gates` holds the pure math (gates, temperatures, budget controller), :mod:`.net` the gated
plain CNN and its materialisation, :mod:`.train` Algorithm 1.
"""

from edgetrim.compress.grow.net import GrowNet, GrowNetSpec, count_resources, plain_net, uniform_net
from edgetrim.compress.grow.train import (
    BudgetKind,
    GrowConfig,
    GrowReport,
    ResourceMeter,
    grow_,
    train_plain_,
)

__all__ = [
    "BudgetKind",
    "GrowConfig",
    "GrowNet",
    "GrowNetSpec",
    "GrowReport",
    "ResourceMeter",
    "count_resources",
    "grow_",
    "plain_net",
    "train_plain_",
    "uniform_net",
]
