"""The benchmark_model output parser on recorded-format outputs of several tool versions.

The fixture files reproduce the tool's documented output format (bare lines up to TF 2.12, ``INFO: ``
prefixes from 2.13, percentiles from 2.16, logcat tags, op-profiling tables); they are reconstructed
from published runs, not captured on a phone here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetrim.profiler.adb.fingerprint import big_cores, cpu_mask, parse_phone_info, parse_temps_c
from edgetrim.profiler.adb.parser import (
    BenchmarkParseError,
    op_latency_ms,
    parse_benchmark_output,
    parse_run_stat,
    to_latency_stats,
)
from edgetrim.profiler.adb.runner import BenchmarkFlags, batch_script, parse_df_available_kb

FIX = Path(__file__).parent / "fixtures"


def _read(name: str) -> str:
    return (FIX / name).read_text()


@pytest.mark.parametrize(
    ("name", "count", "avg_ms", "median_ms", "warmup"),
    [
        ("tf1.15_legacy_average.txt", 50, 62.6191, 62.6191, 8),
        ("tf2.4_fully_connected.txt", 9434, 0.104105, 0.104105, 4232),
        ("tf2.13_conv2d_info.txt", 113, 8.87173, 8.87173, 53),
        ("litert2.16_depthwise_percentiles.txt", 50, 1.24027, 1.239, 5),
        ("logcat_all_same.txt", 3, 140.990, 140.990, 1),
        ("tf2.9_op_profiling_builtin.txt", 50, 0.40248, 0.40248, 5),
        ("litert2.16_op_profiling_xnnpack.txt", 64, 1.73105, 1.722, 5),
    ],
)
def test_versions_parse_to_the_printed_numbers(
    name: str, count: int, avg_ms: float, median_ms: float, warmup: int
):
    out = parse_benchmark_output(_read(name))
    stats = to_latency_stats(out)
    assert out.inference.count == count
    assert stats.n == count and stats.warmup == warmup
    # exact decimal conversions of the printed microseconds: 1e-9 absolute
    assert stats.mean_ms == pytest.approx(avg_ms, abs=1e-9)
    assert stats.median_ms == pytest.approx(median_ms, abs=1e-9)
    assert out.inference_avg_ms == pytest.approx(avg_ms, abs=1e-9)
    assert (
        out.inference.min_us / 1000
        <= stats.p10_ms
        <= stats.median_ms
        <= stats.p90_ms
        <= out.inference.max_us / 1000
    )


def test_summary_fields_and_scientific_notation():
    out = parse_benchmark_output(_read("tf2.13_conv2d_info.txt"))
    assert (out.init_ms, out.first_ms, out.warmup_avg_ms) == pytest.approx((64.364, 15.426, 9.40475))
    stat = parse_run_stat(
        "count=50 first=2990275 curr=2913402 min=2727568 max=3189954 avg=2.95034e+06 std=109798"
    )
    assert stat is not None and stat.avg_us == pytest.approx(2950340.0)


def test_percentile_form_interpolates_p10_p90_from_p5_p95():
    stats = to_latency_stats(parse_benchmark_output(_read("litert2.16_depthwise_percentiles.txt")))
    # median 1239, p5 1238, p95 1247 us; p10/p90 scaled by z(0.9)/z(0.95) = 0.7791
    assert stats.p10_ms == pytest.approx((1239 - 1 * 0.77914) / 1000, abs=1e-6)
    assert stats.p90_ms == pytest.approx((1239 + 8 * 0.77914) / 1000, abs=1e-6)


def test_a_median_under_the_microsecond_tick_falls_back_to_the_mean():
    text = _read("litert2.16_depthwise_percentiles.txt").replace(
        "count=50 first=1249 curr=1240 min=1238 max=1252 avg=1240.27 std=2 p5=1238 median=1239 p95=1247",
        "count=50 first=1 curr=0 min=0 max=1 avg=0.42 std=0 p5=0 median=0 p95=1",
    )
    stats = to_latency_stats(parse_benchmark_output(text))
    assert stats.median_ms == pytest.approx(0.42 / 1000)  # the printed median, 0, is under the tick
    assert stats.p10_ms <= stats.median_ms <= stats.p90_ms


def test_op_profiling_tables_builtin_ops():
    out = parse_benchmark_output(_read("tf2.9_op_profiling_builtin.txt"))
    assert [r.node_type for r in out.op_rows] == ["CONV_2D", "ADD"]
    assert [r.name for r in out.op_rows] == ["[conv_out;relu]:0", "[residual_add]:1"]
    assert out.op_rows[0].avg_ms == pytest.approx(0.289) and out.op_rows[0].first_ms == pytest.approx(0.402)
    assert [(t.node_type, t.count) for t in out.node_types] == [("CONV_2D", 1), ("ADD", 1)]
    assert [r.node_type for r in out.init_rows] == ["AllocateTensors"]
    assert op_latency_ms(out) == pytest.approx(0.398)
    assert op_latency_ms(out, node_types=("CONV_2D",)) == pytest.approx(0.289)
    # the profiling section's own "Timings (microseconds): count=50 ..." must not replace the run stats
    assert out.inference.avg_us == pytest.approx(402.48)


def test_op_profiling_tables_xnnpack_names_with_spaces():
    out = parse_benchmark_output(_read("litert2.16_op_profiling_xnnpack.txt"))
    assert [r.node_type for r in out.op_rows] == [
        "Convolution (NHWC, F32) IGEMM",
        "Global Average Pooling (NWC, F32)",
    ]
    assert out.op_rows[1].name == "Delegate/Global Average Pooling (NWC, F32):1"
    assert sum(t.percent for t in out.node_types) == pytest.approx(100.0)
    assert [r.node_type for r in out.init_rows] == ["ModifyGraphWithDelegate", "AllocateTensors"]


def test_failed_run_raises_with_the_tools_error():
    with pytest.raises(BenchmarkParseError, match="Could not open"):
        parse_benchmark_output(_read("failed_missing_graph.txt"))
    with pytest.raises(BenchmarkParseError):
        parse_benchmark_output("")


def test_crlf_line_ends_parse_the_same():
    text = _read("tf2.13_conv2d_info.txt")
    assert to_latency_stats(parse_benchmark_output(text.replace("\n", "\r\n"))) == to_latency_stats(
        parse_benchmark_output(text)
    )


def test_fingerprint_parsing_and_big_cores():
    text = (
        "[ro.build.version.release]: [13]\n[ro.build.version.sdk]: [33]\n[ro.product.cpu.abi]: [arm64-v8a]\n"
        "[ro.product.manufacturer]: [samsung]\n[ro.product.model]: [SM-S911B]\n[ro.soc.manufacturer]: [Qualcomm]\n"
        "[ro.soc.model]: [SM8550]\n[ro.board.platform]: [kalama]\n@@ET SYSFS\n"
        + "".join(
            f"/sys/devices/system/cpu/cpu{i}/cpufreq/cpuinfo_max_freq:{f}\n"
            for i, f in enumerate([2016000] * 3 + [2803200] * 2 + [2803200] * 2 + [3360000])
        )
        + "".join(f"/sys/devices/system/cpu/cpu{i}/cpufreq/scaling_governor:walt\n" for i in range(8))
        + "/sys/class/thermal/thermal_zone0/type:cpu-0-0\n/sys/class/thermal/thermal_zone1/type:battery\n@@ET END\n"
    )
    phone = parse_phone_info("R5CW123", text)
    assert (phone.model, phone.soc, phone.board, phone.android_release, phone.abi) == (
        "SM-S911B",
        "Qualcomm SM8550",
        "kalama",
        "13",
        "arm64-v8a",
    )
    assert phone.core_max_khz[7] == 3360000 and phone.governors == ("walt",) * 8
    assert big_cores(phone.core_max_khz) == (7,)
    assert big_cores(phone.core_max_khz, threads=4) == (3, 4, 5, 6, 7)
    assert cpu_mask((3, 4, 5, 6, 7)) == "f8"
    temps = parse_temps_c(
        "/sys/class/thermal/thermal_zone0/temp:41200\n/sys/class/thermal/thermal_zone1/temp:30\n"
        "/sys/class/thermal/thermal_zone2/temp:-40\n",
        phone.thermal_zones,
    )
    assert temps == {"cpu-0-0": pytest.approx(41.2), "battery": pytest.approx(30.0)}


def test_batch_script_and_df():
    flags = BenchmarkFlags(threads=2, warmup_runs=3, num_runs=20, max_secs=1.5)
    script = batch_script("/data/local/tmp/edgetrim/benchmark_model", ["a.tflite", "b.tflite"], flags, "c0")
    lines = script.splitlines()
    assert lines[0] == "echo '@@ET BEGIN 0'" and lines[-1] == "echo '@@ET DONE'"
    assert lines[1].startswith("taskset c0 /data/local/tmp/edgetrim/benchmark_model --graph=a.tflite")
    assert "--num_threads=2" in lines[1] and "--warmup_runs=3" in lines[1] and "--num_runs=20" in lines[1]
    assert lines[2] == 'echo "@@ET END 0 $?"'
    df = "Filesystem      1K-blocks    Used Available Use% Mounted on\n/dev/block/dm-8 115249236 3712340 111406896   4% /data\n"
    assert parse_df_available_kb(df) == 111406896


def test_runner_config_from_environment():
    from edgetrim.errors import DeviceError
    from edgetrim.profiler.adb.runner import RunnerConfig

    cfg = RunnerConfig.from_env({"EDGETRIM_ADB_RETRIES": "7", "EDGETRIM_ADB_BACKOFF_S": "0.5",
                                 "EDGETRIM_ADB_OP_PROFILING": "true", "UNRELATED": "x"})  # fmt: skip
    assert (cfg.retries, cfg.backoff_s, cfg.op_profiling, cfg.batch_size) == (7, 0.5, True, 16)
    with pytest.raises(DeviceError, match="EDGETRIM_ADB_BATCH_SIZE"):
        RunnerConfig.from_env({"EDGETRIM_ADB_BATCH_SIZE": "many"})
    with pytest.raises(DeviceError, match="batch_size must be >= 1"):
        RunnerConfig.from_env({"EDGETRIM_ADB_BATCH_SIZE": "0"})


@settings(max_examples=60, deadline=None)
@given(
    samples=st.lists(st.floats(min_value=1, max_value=5e6), min_size=1, max_size=40),
    percentiles=st.booleans(),
    prefix=st.sampled_from(["", "INFO: ", "I tflite  : "]),
)
def test_any_printed_statistic_parses_to_ordered_stats(samples: list[float], percentiles: bool, prefix: str):
    """Whatever the tool prints for a phase (all-same form included), the stats come back ordered."""
    from adb_sim.bench import _Stat

    line = prefix + _Stat(samples).text(percentiles)
    stat = parse_run_stat(line)
    ints = [round(x) for x in samples]
    assert stat is not None and stat.count == len(samples)
    assert (stat.min_us, stat.max_us) == (min(ints), max(ints))
    text = f"{line}\n{prefix}{line}\n{prefix}Inference timings in us: Init: 1, First inference: 2, Warmup (avg): 3, Inference (avg): {stat.avg_us}\n"
    stats = to_latency_stats(parse_benchmark_output(text))  # LatencyStats itself checks p10 <= median <= p90
    assert min(ints) / 1000 <= stats.p10_ms <= stats.p90_ms <= max(ints) / 1000
