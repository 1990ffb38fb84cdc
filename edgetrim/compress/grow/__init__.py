"""Growing efficient networks by structured continuous sparsification (Yuan, Savarese, Maire; ICLR 2021).

:mod:`.gates` holds the pure math (gates, temperatures, budget controller), :mod:`.net` the gated
plain CNN and its materialisation, :mod:`.train` Algorithm 1, :mod:`.fit` the final width fit that lands
a grown net on a latency budget by table and measurement.
"""

from edgetrim.compress.grow.fit import FitResult, fill_to_budget, fit_to_measured_budget, scale_to_budget
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
    "FitResult",
    "GrowConfig",
    "GrowNet",
    "GrowNetSpec",
    "GrowReport",
    "ResourceMeter",
    "count_resources",
    "fill_to_budget",
    "fit_to_measured_budget",
    "grow_",
    "plain_net",
    "scale_to_budget",
    "train_plain_",
    "uniform_net",
]
