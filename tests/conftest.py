"""Shared fixtures. Tests never read ../shared: everything they need ships with the project."""

from __future__ import annotations

import os

import pytest

# One thread everywhere keeps timings comparable and the 2-core CI machine responsive.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def seed() -> int:
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:
        pass
    return 0
