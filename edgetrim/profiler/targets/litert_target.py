"""``litert-cpu``: the ai-edge-litert Interpreter with its default XNNPACK delegate."""

from __future__ import annotations

import importlib.metadata
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetrim.errors import EdgetrimError, ExportError, TargetUnavailableError
from edgetrim.profiler.builders import build_tflite_op
from edgetrim.profiler.device import local_device_info
from edgetrim.profiler.targets.base import LocalTarget, OpRequest
from edgetrim.profiler.timing import TimingConfig, time_callable
from edgetrim.types import DeviceInfo, LatencyStats

logger = logging.getLogger(__name__)


def _interpreter_cls() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise TargetUnavailableError(
            "ai-edge-litert is not installed: pip install 'edgetrim[tflite]'"
        ) from exc
    return Interpreter


def convert_tflite_for_timing(module: Any, example_inputs: tuple[Any, ...], path: Path) -> None:
    """torch -> .tflite through litert-torch (``convert(model.eval(), inputs).export(path)``)."""
    try:
        import litert_torch
    except ImportError as exc:
        raise TargetUnavailableError("litert-torch is not installed: pip install 'edgetrim[tflite]'") from exc
    try:
        litert_torch.convert(module.eval(), tuple(example_inputs)).export(str(path))
    except Exception as exc:
        raise ExportError(f"litert-torch conversion failed: {type(exc).__name__}: {exc}") from exc


class LiteRtTarget(LocalTarget):
    """LiteRT interpreter (XNNPACK) with ``num_threads = threads``."""

    runtime = "litert"

    def __init__(self, name: str, *, threads: int = 1, cores: Sequence[int] | None = None) -> None:
        self._cls = _interpreter_cls()
        super().__init__(name, threads=threads, cores=cores)

    def _make_info(self) -> DeviceInfo:
        return local_device_info(
            target=self.name,
            runtime=self.runtime,
            runtime_version=importlib.metadata.version("ai-edge-litert"),
            threads=self.threads,
            affinity=self.affinity,
            extra={"delegate": "xnnpack"},
        )

    def interpreter(self, *, content: bytes | None = None, path: str | Path | None = None) -> Any:
        try:
            if content is not None:
                interp = self._cls(model_content=content, num_threads=self.threads)
            else:
                interp = self._cls(model_path=str(path), num_threads=self.threads)
            interp.allocate_tensors()
        except Exception as exc:
            raise EdgetrimError(f"LiteRT cannot load the model: {type(exc).__name__}: {exc}") from exc
        return interp

    def time_interpreter(self, interp: Any, timing: TimingConfig) -> LatencyStats:
        """Bind random inputs once, then time one ``invoke()`` per call."""
        rng = np.random.default_rng(0)
        for det in interp.get_input_details():
            dtype = det["dtype"]
            if np.issubdtype(dtype, np.floating):
                value = rng.standard_normal(det["shape"]).astype(dtype)
            else:
                value = np.zeros(det["shape"], dtype=dtype)
            interp.set_tensor(det["index"], value)
        return time_callable(interp.invoke, timing)

    def measure_ops(
        self, requests: Sequence[OpRequest], timing: TimingConfig
    ) -> Iterator[tuple[OpRequest, LatencyStats]]:
        for req in requests:
            ctx, in_w, out_w = req
            yield (
                req,
                self.time_interpreter(self.interpreter(content=build_tflite_op(ctx, in_w, out_w)), timing),
            )

    def invoke_overhead(self, timing: TimingConfig) -> LatencyStats:
        """Cost of one ``invoke()`` of a model that does almost nothing (a one-element RESHAPE)."""
        from edgetrim.profiler.builders import build_tflite_op as build
        from edgetrim.types import OpContext, OpKind

        noop = build(OpContext(OpKind.OTHER, variant="reshape"), 1, 1)
        return self.time_interpreter(self.interpreter(content=noop), timing)

    def measure_model(
        self, module: Any, example_inputs: tuple[Any, ...], timing: TimingConfig
    ) -> LatencyStats:
        with tempfile.TemporaryDirectory(prefix="edgetrim-litert-") as tmp:
            path = Path(tmp) / "model.tflite"
            convert_tflite_for_timing(module, tuple(example_inputs), path)
            return self.measure_artifact(path, timing)

    def measure_artifact(self, path: str | Path, timing: TimingConfig) -> LatencyStats:
        path = Path(path)
        if not path.is_file():
            raise EdgetrimError(f"model file {path} does not exist")
        if path.suffix != ".tflite":
            raise EdgetrimError(f"{self.name} runs .tflite files, got {path.name}")
        return self.time_interpreter(self.interpreter(path=path), timing)
