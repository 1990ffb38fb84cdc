"""The ``adb:SERIAL`` target: one-op models and whole models timed by ``benchmark_model`` on a phone.

Same contract as the local targets (``info``, ``fusion``, ``measure_ops``, ``measure_model``,
``measure_artifact``), so ``edgetrim profile`` / ``measure`` and the tables work unchanged. The
one-op .tflite models are built on the host (``build_tflite_op``), pushed in batches and run by one
device-side script per batch; see :mod:`edgetrim.profiler.adb.runner`.

Beyond the contract, :meth:`AdbTarget.measure_artifact_per_op` gives an exported model's total *and*
its per-op split (the tool's ``--enable_op_profiling`` "Run Order" table, scaled to the plain run's
median minus the invoke overhead), which ``edgetrim.deploy.remeasure`` maps to layers.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetrim.errors import DeviceError, EdgetrimError
from edgetrim.profiler.adb.fingerprint import PhoneInfo, big_cores, device_info
from edgetrim.profiler.adb.parser import BenchmarkOutput, node_outputs, to_latency_stats
from edgetrim.profiler.adb.runner import BenchmarkFlags, PhoneRunner, RunnerConfig, load_binary
from edgetrim.profiler.adb.transport import AdbTransport, resolve_serial
from edgetrim.types import DeviceInfo, LatencyStats, OpContext, OpKind

if TYPE_CHECKING:
    from edgetrim.model_ops import FusionRules
    from edgetrim.profiler.timing import TimingConfig

logger = logging.getLogger(__name__)

OpRequest = tuple[OpContext, int, int]
PREFIX = "adb:"


@dataclass(frozen=True)
class OpTime:
    """One op of a profiled run: the tool's node name, its node type and its time per run.

    ``ms`` is scaled to the un-profiled run (see :meth:`AdbTarget.measure_artifact_per_op`);
    ``profiled_ms`` is the tool's "avg ms" as printed. ``outputs`` / ``node_index`` come from an
    interpreter node's name ``[out_0, out_1]:INDEX``; a delegate's internal op (``Delegate/...:N``)
    has neither.
    """

    name: str
    node_type: str
    ms: float
    profiled_ms: float
    outputs: tuple[str, ...] = ()
    node_index: int | None = None

    @property
    def delegated(self) -> bool:
        """True for a delegate's internal op (e.g. XNNPACK's), named by its op, not its tensors."""
        return self.node_index is None


@dataclass(frozen=True)
class OpProfile:
    """Whole-model statistics of an un-profiled run plus the per-op split of a profiled run.

    ``sum(op.ms for op in ops) == total.median_ms - overhead_ms`` (to float rounding) by construction.
    """

    total: LatencyStats
    ops: tuple[OpTime, ...]
    profiled_ms: float
    scale: float
    overhead_ms: float


def is_delegate_node(node_type: str) -> bool:
    """True for the interpreter node a delegate replaced a subgraph with (``TfLiteXNNPackDelegate``)."""
    return "delegate" in node_type.lower()


def split_profile(
    total: LatencyStats, profiled: BenchmarkOutput, *, overhead_ms: float = 0.0, label: str = "model"
) -> OpProfile:
    """Scale the per-op rows of a profiled run to ``total.median_ms - overhead_ms``.

    Op profiling slows every op (a timer pair and a record per op), and the per-op rows leave out
    the interpreter's per-invoke bookkeeping, so neither their sum nor the profiled run's total is
    the model's latency. As for onnxruntime's profiler in ``edgetrim.deploy.remeasure``: the shares
    between ops come from the profile, the absolute scale from the un-profiled median minus the
    per-invoke overhead (``overhead_ms``, e.g. ``table.meta["invoke_overhead_ms"]``).

    When the tool prints a "Delegate internal" table (older releases), its rows stand in for the
    delegate node of the interpreter table, so nothing is counted twice.
    """
    if overhead_ms < 0:
        raise ValueError(f"overhead_ms must be >= 0, got {overhead_ms}")
    rows = list(profiled.op_rows)
    if profiled.delegate_rows:  # the delegate's own ops replace the delegate node(s) that ran them
        rows = [r for r in rows if not is_delegate_node(r.node_type)] + list(profiled.delegate_rows)
    profiled_ms = math.fsum(r.avg_ms for r in rows)
    if not rows or profiled_ms <= 0:
        raise DeviceError(
            f"benchmark_model printed no per-op times for {label}: the tool must support "
            "--enable_op_profiling=true (LiteRT / TF >= 2.x builds do)"
        )
    scale = max(total.median_ms - overhead_ms, 0.0) / profiled_ms
    ops = []
    for r in rows:
        outs, index = node_outputs(r.name)
        ops.append(OpTime(r.name, r.node_type, r.avg_ms * scale, r.avg_ms, outs, index))
    return OpProfile(
        total=total, ops=tuple(ops), profiled_ms=profiled_ms, scale=scale, overhead_ms=overhead_ms
    )


def parse_cores(text: str | None) -> tuple[int, ...] | None:
    """``"4-7"`` / ``"6,7"`` / ``"0-3,6"`` into core indices (None for empty)."""
    if not text:
        return None
    cores: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        try:
            cores += list(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise EdgetrimError(f"--cores must look like 4-7 or 6,7, got {text!r}") from None
    return tuple(sorted(set(cores)))


class AdbTarget:
    """A phone over adb running LiteRT's ``benchmark_model``.

    Args:
        serial: adb serial (``adb devices``); None picks the only attached phone.
        threads: ``--num_threads`` of the tool.
        cores: CPU cores to pin to with ``taskset``; default: the fastest cluster (widened to
            ``threads`` cores) from the per-core max frequencies.
        benchmark_binary: host path of ``benchmark_model``; default ``$EDGETRIM_BENCHMARK_MODEL``.
        config: batching, thermal and retry settings.

    Example:
        target = AdbTarget("R58M123ABC", benchmark_binary="~/Downloads/benchmark_model")
        stats = target.measure_artifact("model.tflite", TimingConfig())
    """

    runtime = "litert-benchmark_model"

    def __init__(
        self,
        serial: str | None = None,
        *,
        threads: int = 1,
        cores: Sequence[int] | None = None,
        benchmark_binary: str | Path | None = None,
        config: RunnerConfig | None = None,
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.binary = load_binary(benchmark_binary)
        self.serial = resolve_serial(serial)
        self.name = f"{PREFIX}{self.serial}"
        self.threads = threads
        self.config = config or RunnerConfig()
        self.runner = PhoneRunner(AdbTransport(self.serial), self.binary, config=self.config)
        self.phone: PhoneInfo = self.runner.open()
        n = len(self.phone.core_max_khz)
        if cores is not None:
            bad = [c for c in cores if not 0 <= c < n]
            if bad:
                raise DeviceError(f"--cores {bad} out of range: {self.serial} has cores 0-{n - 1}")
            self.cores = tuple(sorted(set(cores)))
        else:
            self.cores = big_cores(self.phone.core_max_khz, threads) or tuple(range(max(n, 1)))
        warning = self.runner.governor_warning(self.cores)
        if warning:
            logger.warning(warning)
        self._info = device_info(
            self.phone,
            threads=threads,
            cores=self.cores,
            tool_version=self.binary.version,
            tool_sha256=self.binary.sha256,
        )

    def info(self) -> DeviceInfo:
        return self._info

    @property
    def fusion(self) -> FusionRules:
        from edgetrim.model_ops import fusion_for_runtime

        return fusion_for_runtime(self.runtime)

    def measurement_log(self) -> list[dict[str, Any]]:
        """Per batch: models, temperature (°C) at its start and cool-down wait (for table metadata)."""
        return [b.to_dict() for b in self.runner.batches]

    def _flags(self, timing: TimingConfig) -> BenchmarkFlags:
        return BenchmarkFlags.from_timing(timing, threads=self.threads, op_profiling=self.config.op_profiling)

    def measure_ops(
        self, requests: Sequence[OpRequest], timing: TimingConfig
    ) -> Iterator[tuple[OpRequest, LatencyStats]]:
        """Build every one-op model on the host, run them in batches on the phone, yield as they finish."""
        from edgetrim.profiler.builders import build_tflite_op

        pending = list(requests)
        size = self.config.batch_size
        for start in range(0, len(pending), size):
            chunk = [(req, build_tflite_op(*req)) for req in pending[start : start + size]]
            for req, out in self.runner.run(chunk, self._flags(timing), self.cores):
                yield req, to_latency_stats(out)

    def invoke_overhead(self, timing: TimingConfig) -> LatencyStats:
        """Cost of one invoke of a model that does almost nothing (a one-element RESHAPE), on the phone."""
        from edgetrim.profiler.builders import build_tflite_op

        noop = build_tflite_op(OpContext(OpKind.OTHER, variant="reshape"), 1, 1)
        return self.measure_bytes(noop, timing, label="invoke overhead (no-op model)")

    def measure_bytes(self, content: bytes, timing: TimingConfig, *, label: str = "model") -> LatencyStats:
        """Time one .tflite given as bytes."""
        return to_latency_stats(self._run_one(content, self._flags(timing), label))

    def measure_artifact(self, path: str | Path, timing: TimingConfig) -> LatencyStats:
        """Time an exported ``.tflite`` on the phone."""
        p = self._artifact(path)
        return self.measure_bytes(p.read_bytes(), timing, label=p.name)

    def measure_artifact_per_op(
        self, path: str | Path, timing: TimingConfig, *, overhead_ms: float = 0.0
    ) -> OpProfile:
        """Time an exported ``.tflite`` on the phone, in total and per op.

        Two runs of the tool, one after the other: one plain (the total; op profiling off even when
        the target's config turns it on), one with ``--enable_op_profiling=true`` (the per-op "Run
        Order" table). The per-op times are scaled so that they sum to the plain run's median minus
        ``overhead_ms``; see :func:`split_profile`.

        Raises:
            DeviceError: the tool printed no per-op table (a build without op profiling).
        """
        p = self._artifact(path)
        content = p.read_bytes()
        plain = replace(self._flags(timing), op_profiling=False)
        total = to_latency_stats(self._run_one(content, plain, p.name))
        flags = replace(self._flags(timing), op_profiling=True)
        profiled = self._run_one(content, flags, f"{p.name} (op profiling)")
        return split_profile(total, profiled, overhead_ms=overhead_ms, label=p.name)

    def _run_one(self, content: bytes, flags: BenchmarkFlags, label: str) -> BenchmarkOutput:
        for _, out in self.runner.run([(label, content)], flags, self.cores):
            return out
        raise DeviceError(f"{self.name} returned no result for {label}")  # pragma: no cover

    def _artifact(self, path: str | Path) -> Path:
        p = Path(path)
        if p.suffix != ".tflite":
            raise EdgetrimError(
                f"{self.name} runs .tflite models only, got {p.name}: export with --format tflite"
            )
        if not p.is_file():
            raise EdgetrimError(f"{p} does not exist")
        return p

    def measure_model(
        self, module: Any, example_inputs: tuple[Any, ...], timing: TimingConfig
    ) -> LatencyStats:
        """Convert a torch module with litert-torch on the host, then time it on the phone."""
        from edgetrim.profiler.targets.litert_target import convert_tflite_for_timing

        with tempfile.TemporaryDirectory(prefix="edgetrim-adb-") as tmp:
            path = Path(tmp) / "model.tflite"
            convert_tflite_for_timing(module, example_inputs, path)
            return self.measure_bytes(path.read_bytes(), timing, label=type(module).__name__)

    def __repr__(self) -> str:
        return f"AdbTarget(name={self.name!r}, threads={self.threads}, cores={self.cores})"


def make_adb_target(
    name: str, *, threads: int = 1, cores: Sequence[int] | None = None, **options: Any
) -> AdbTarget:
    """Factory for the target registry: ``adb:SERIAL`` (or ``adb:`` for the only attached phone)."""
    if not name.startswith(PREFIX):
        raise EdgetrimError(f"adb target names look like adb:SERIAL, got {name!r}")
    serial = name[len(PREFIX) :] or None
    config = options.pop("config", None) or RunnerConfig.from_env()
    if options.get("op_profiling"):
        config = replace(config or RunnerConfig(), op_profiling=True)
    options.pop("op_profiling", None)
    binary = options.pop("benchmark_binary", None) or os.environ.get("EDGETRIM_BENCHMARK_MODEL")
    if options:
        raise EdgetrimError(f"unknown options for {name}: {sorted(options)}")
    return AdbTarget(serial, threads=threads, cores=cores, benchmark_binary=binary, config=config)
