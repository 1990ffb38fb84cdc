"""The one timing loop every target uses, for one-op models and whole models alike (torch-free).

How invoke overhead is handled, consistently:

* Every target times exactly one *invoke* of its runtime per call of ``fn`` (``session.run`` for
  onnxruntime, ``interpreter.invoke`` for LiteRT, ``module(*inputs)`` under ``no_grad`` for torch),
  with inputs bound once beforehand. One-op models and whole models go through the same
  :func:`time_callable` and the same per-invoke path, so both include exactly one invoke overhead
  per measurement.
* Fast calls are repeated ``inner_loops`` times per sample (chosen so one sample lasts at least
  ``min_sample_ms``) and divided, which keeps timer resolution and ``perf_counter_ns`` overhead out of
  the numbers.
* Profiling sessions additionally measure the runtime's empty-invoke cost once and subtract it from
  every op entry of a table (see ``edgetrim.profiler.session``); the table stores it as
  ``meta["invoke_overhead_ms"]`` so whole-model prediction can add it back exactly once.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgetrim.profiler.stats import median_ci_rel, summarize
from edgetrim.types import LatencyStats

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TimingConfig:
    """How long and how often to time one callable.

    Args:
        warmup: untimed calls before sampling (caches, lazy allocation, JIT/XNNPACK set-up).
        min_runs: samples always taken.
        max_runs: samples never exceeded.
        rel_ci: stop once the ~95% CI half-width of the median is below this fraction of it.
        time_cap_s: stop sampling after this much wall time (``min_runs`` are still taken).
        min_sample_ms: a sample lasts at least this long; faster calls are looped.
        inner_loops: fixed calls per sample, or ``None`` to choose from ``min_sample_ms``.
    """

    warmup: int = 5
    min_runs: int = 10
    max_runs: int = 200
    rel_ci: float = 0.02
    time_cap_s: float = 0.5
    min_sample_ms: float = 0.2
    inner_loops: int | None = None

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.min_runs < 1:
            raise ValueError(f"min_runs must be >= 1, got {self.min_runs}")
        if self.max_runs < self.min_runs:
            raise ValueError(f"max_runs ({self.max_runs}) must be >= min_runs ({self.min_runs})")
        if not 0.0 < self.rel_ci < 1.0:
            raise ValueError(f"rel_ci must be in (0, 1), got {self.rel_ci}")
        if self.time_cap_s <= 0:
            raise ValueError(f"time_cap_s must be > 0, got {self.time_cap_s}")
        if self.min_sample_ms < 0:
            raise ValueError(f"min_sample_ms must be >= 0, got {self.min_sample_ms}")
        if self.inner_loops is not None and self.inner_loops < 1:
            raise ValueError(f"inner_loops must be >= 1 or None, got {self.inner_loops}")

    @classmethod
    def quick(cls) -> TimingConfig:
        """A coarse, fast setting for smoke runs and tests (numbers are noisier)."""
        return cls(warmup=2, min_runs=5, max_runs=20, rel_ci=0.05, time_cap_s=0.2, min_sample_ms=0.05)

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "warmup": self.warmup,
            "min_runs": self.min_runs,
            "max_runs": self.max_runs,
            "rel_ci": self.rel_ci,
            "time_cap_s": self.time_cap_s,
            "min_sample_ms": self.min_sample_ms,
            "inner_loops": self.inner_loops,
        }


def choose_inner_loops(
    fn: Callable[[], object], cfg: TimingConfig, *, sync: Callable[[], None] | None = None
) -> int:
    """Calls per sample so that one sample lasts at least ``cfg.min_sample_ms`` (at most 10,000)."""
    if cfg.inner_loops is not None:
        return cfg.inner_loops
    t0 = time.perf_counter_ns()
    fn()
    if sync is not None:
        sync()
    once_ms = (time.perf_counter_ns() - t0) / 1e6
    if once_ms <= 0:
        return 10_000
    return int(min(10_000, max(1, math.ceil(cfg.min_sample_ms / once_ms))))


def time_callable(
    fn: Callable[[], object], cfg: TimingConfig, *, sync: Callable[[], None] | None = None
) -> LatencyStats:
    """Time ``fn()`` (one runtime invoke) until the median is stable or the time cap is hit.

    Args:
        fn: the call to time, inputs already bound.
        cfg: the timing configuration.
        sync: called after each sample's calls, before the clock stops (``torch.cuda.synchronize``
            for asynchronous devices).

    Returns:
        LatencyStats of the per-call latency in ms.

    Example:
        >>> stats = time_callable(lambda: sum(range(100)), TimingConfig.quick())
        >>> stats.median_ms > 0
        True
    """
    for _ in range(cfg.warmup):
        fn()
    if sync is not None:
        sync()
    loops = choose_inner_loops(fn, cfg, sync=sync)
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < cfg.max_runs:
        t0 = time.perf_counter_ns()
        for _ in range(loops):
            fn()
        if sync is not None:
            sync()
        samples.append((time.perf_counter_ns() - t0) / 1e6 / loops)
        if len(samples) < cfg.min_runs:
            continue
        if median_ci_rel(samples) <= cfg.rel_ci:
            break
        if time.perf_counter() - start >= cfg.time_cap_s:
            logger.debug("time cap %.2fs hit after %d samples", cfg.time_cap_s, len(samples))
            break
    return summarize(samples, warmup=cfg.warmup)
