"""Statistics, the order-statistic stopping rule and the timing loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetrim.profiler.stats import median_ci_indices, median_ci_rel, shift_stats, summarize
from edgetrim.profiler.timing import TimingConfig, choose_inner_loops, time_callable

samples_st = st.lists(st.floats(min_value=1e-4, max_value=1e3, allow_nan=False), min_size=1, max_size=200)


@given(samples_st)
@settings(max_examples=100, deadline=None)
def test_summarize_orders_and_matches_numpy(samples: list[float]) -> None:
    s = summarize(samples, warmup=3)
    assert s.p10_ms <= s.median_ms <= s.p90_ms
    assert s.n == len(samples) and s.warmup == 3
    # median is numpy's median exactly (no trimming): tolerance 0.
    assert s.median_ms == pytest.approx(float(np.median(samples)), rel=0, abs=0)
    # mean of kept samples lies in the sample range (up to float rounding, 1e-9 relative)
    assert min(samples) * (1 - 1e-9) <= s.mean_ms <= max(samples) * (1 + 1e-9)


def test_summarize_is_robust_to_an_outlier() -> None:
    base = [1.0, 1.01, 0.99, 1.02, 0.98, 1.0, 1.0, 1.01, 0.99, 1.0]
    s = summarize([*base, 1000.0])
    assert s.median_ms == pytest.approx(1.0, abs=1e-12)
    # mean/std drop the 1000 ms preempted sample (beyond 6 robust sigmas): within 2% of the base mean.
    assert s.mean_ms == pytest.approx(float(np.mean(base)), rel=0.02)
    assert s.std_ms < 0.1


def test_summarize_rejects_bad_samples() -> None:
    with pytest.raises(ValueError, match="at least one"):
        summarize([])
    with pytest.raises(ValueError, match="finite"):
        summarize([1.0, float("nan")])
    with pytest.raises(ValueError, match="finite"):
        summarize([-1.0])


def test_median_ci_indices_bracket_the_median() -> None:
    assert median_ci_indices(5) is None
    for n in range(8, 400):
        lo, hi = median_ci_indices(n)
        assert 0 <= lo < (n - 1) / 2 < hi <= n - 1
    assert median_ci_indices(100) == (39, 60)  # classic table value for n=100 at 95%: x(40)..x(61)


def test_median_ci_rel_shrinks_with_more_samples_and_ignores_outliers() -> None:
    rng = np.random.default_rng(0)
    small = rng.normal(1.0, 0.05, size=20)
    large = rng.normal(1.0, 0.05, size=2000)
    assert math.isinf(median_ci_rel([1.0, 1.0]))
    assert median_ci_rel(large) < median_ci_rel(small)
    # 5% of huge outliers barely move the CI of the median (order statistics): within 30% relative.
    spiked = large.copy()
    spiked[:100] = 1000.0
    assert median_ci_rel(spiked) < 1.3 * median_ci_rel(large) + 1e-3
    assert median_ci_rel([2.0] * 50) == 0.0


@given(samples_st, st.floats(min_value=0, max_value=10))
@settings(max_examples=50, deadline=None)
def test_shift_stats_keeps_order_and_floor(samples: list[float], offset: float) -> None:
    s = shift_stats(summarize(samples), offset)
    assert 0.0 <= s.p10_ms <= s.median_ms <= s.p90_ms


def test_timing_config_validates() -> None:
    with pytest.raises(ValueError, match="max_runs"):
        TimingConfig(min_runs=10, max_runs=5)
    with pytest.raises(ValueError, match="rel_ci"):
        TimingConfig(rel_ci=0.0)
    with pytest.raises(ValueError, match="inner_loops"):
        TimingConfig(inner_loops=0)
    with pytest.raises(ValueError, match="time_cap_s"):
        TimingConfig(time_cap_s=0)


def test_time_callable_counts_calls_and_respects_limits() -> None:
    calls = {"n": 0}

    def fn() -> None:
        calls["n"] += 1

    cfg = TimingConfig(warmup=3, min_runs=4, max_runs=7, rel_ci=0.5, time_cap_s=5.0, inner_loops=2)
    stats = time_callable(fn, cfg)
    assert cfg.min_runs <= stats.n <= cfg.max_runs
    assert calls["n"] == cfg.warmup + cfg.inner_loops * stats.n  # no hidden extra calls when fixed
    assert stats.warmup == 3


def test_inner_loops_auto_reaches_min_sample() -> None:
    cfg = TimingConfig(min_sample_ms=0.2)
    loops = choose_inner_loops(lambda: None, cfg)
    assert loops > 1  # an empty call is far below 0.2 ms
    assert choose_inner_loops(lambda: None, TimingConfig(inner_loops=3)) == 3


def test_time_callable_stops_on_max_runs_when_noisy() -> None:
    vals = iter(np.random.default_rng(1).uniform(0, 1, size=10_000))

    def noisy() -> None:
        x = next(vals)
        if x > 0.5:
            sum(range(2000))

    cfg = TimingConfig(warmup=0, min_runs=5, max_runs=15, rel_ci=0.001, time_cap_s=10.0, inner_loops=1)
    assert time_callable(noisy, cfg).n == 15


def test_stats_timing_device_import_without_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None; "
        "import edgetrim.profiler.stats, edgetrim.profiler.timing, edgetrim.profiler.device; "
        "from edgetrim.profiler.builders import build_onnx_op, build_tflite_op"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cores_pin_the_measuring_process_and_are_recorded() -> None:
    import subprocess
    import sys

    from edgetrim.errors import EdgetrimError
    from edgetrim.profiler.device import apply_affinity

    # in a child process: pinning is process-wide and must not leak into the test session
    code = (
        "import os; from edgetrim.profiler.targets import get_target; "
        "t = get_target('ort-cpu', cores=(0,)); "
        "print(t.info().affinity, sorted(os.sched_getaffinity(0)))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "(0,) [0]"
    with pytest.raises(EdgetrimError, match="do not exist"):
        apply_affinity((10_000,))


def test_cpu_vector_isa_reads_the_widest_extension() -> None:
    from edgetrim.profiler.device import cpu_vector_isa

    assert cpu_vector_isa("processor : 0\nflags : fpu sse avx avx2 avx512f avx512bw\n") == "avx512"
    assert cpu_vector_isa("flags\t\t: fpu sse avx avx2 fma\n") == "avx2"
    assert cpu_vector_isa("Features : fp asimd evtstrm aes\n") == "neon"
    assert cpu_vector_isa("model name : x\n") == ""


def test_device_name_carries_the_isa_so_tables_from_other_vector_units_do_not_match() -> None:
    from edgetrim.profiler.device import cpu_vector_isa, local_device_info

    info = local_device_info(target="t", runtime="r", runtime_version="1", threads=1)
    isa = cpu_vector_isa()
    assert (f"({isa})" in info.fingerprint()) == bool(isa)
