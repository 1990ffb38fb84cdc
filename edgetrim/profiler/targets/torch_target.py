"""``torch-cpu`` and ``torch-cuda``: eager PyTorch under ``inference_mode``.

``torch.set_num_threads(threads)`` is process-wide: the target sets it around each timing and restores it.
CUDA timings synchronise the device before the clock stops.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from edgetrim.errors import EdgetrimError, TargetUnavailableError
from edgetrim.profiler.device import local_device_info
from edgetrim.profiler.targets.base import LocalTarget, OpRequest
from edgetrim.profiler.timing import TimingConfig, time_callable
from edgetrim.types import DeviceInfo, LatencyStats

logger = logging.getLogger(__name__)


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise TargetUnavailableError("torch is not installed: pip install 'edgetrim[torch]'") from exc
    return torch


class TorchTarget(LocalTarget):
    """Eager PyTorch on the CPU or a CUDA GPU."""

    runtime = "torch"

    def __init__(
        self, name: str, *, threads: int = 1, cores: Sequence[int] | None = None, cuda: bool = False
    ):
        torch = _torch()
        self.cuda = cuda
        if cuda and not torch.cuda.is_available():
            built = torch.version.cuda or "none"
            raise TargetUnavailableError(
                f"{name}: no CUDA GPU visible to torch (torch built for CUDA {built})"
            )
        self._torch = torch
        super().__init__(name, threads=threads, cores=cores)

    @property
    def device(self) -> str:
        return "cuda" if self.cuda else "cpu"

    def _make_info(self) -> DeviceInfo:
        torch = self._torch
        device = torch.cuda.get_device_name() if self.cuda else None
        extra = {"cuda": str(torch.version.cuda)} if self.cuda else {}
        return local_device_info(
            target=self.name,
            runtime=self.runtime,
            runtime_version=torch.__version__.split("+")[0],
            threads=self.threads,
            affinity=self.affinity,
            device=device,
            extra=extra,
        )

    def _time(
        self, module: Any, inputs: tuple[Any, ...], timing: TimingConfig, *, prepared: bool = False
    ) -> LatencyStats:
        torch = self._torch
        if not prepared:  # exported programs' modules refuse .eval(); they are already inference graphs
            module = module.eval().to(self.device)
        inputs = tuple(t.to(self.device) for t in inputs)
        sync = torch.cuda.synchronize if self.cuda else None
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)  # only while timing: creating a target changes nothing
        try:
            with torch.inference_mode():
                return time_callable(lambda: module(*inputs), timing, sync=sync)
        finally:
            torch.set_num_threads(previous)

    def measure_ops(
        self, requests: Sequence[OpRequest], timing: TimingConfig
    ) -> Iterator[tuple[OpRequest, LatencyStats]]:
        from edgetrim.profiler.builders import build_torch_op

        for req in requests:
            module, inputs = build_torch_op(*req)
            yield req, self._time(module, inputs, timing)

    def invoke_overhead(self, timing: TimingConfig) -> LatencyStats:
        """Cost of calling a module that does nothing (``nn.Identity`` on a one-element tensor)."""
        torch = self._torch
        return self._time(torch.nn.Identity(), (torch.zeros(1),), timing)

    def measure_model(
        self, module: Any, example_inputs: tuple[Any, ...], timing: TimingConfig
    ) -> LatencyStats:
        return self._time(module, tuple(example_inputs), timing)

    def measure_artifact(self, path: str | Path, timing: TimingConfig) -> LatencyStats:
        """Time a ``torch.export`` program (``.pt2``) on the example inputs saved with it."""
        torch = self._torch
        path = Path(path)
        if not path.is_file():
            raise EdgetrimError(f"model file {path} does not exist")
        if path.suffix != ".pt2":
            raise EdgetrimError(f"{self.name} runs torch.export .pt2 files, got {path.name}")
        program = torch.export.load(str(path))
        example = getattr(program, "example_inputs", None)
        if not example:
            raise EdgetrimError(f"{path.name} carries no example inputs; re-export it with torch.export")
        args, _kwargs = example
        if self.cuda:  # an exported program is pinned to the device it was exported on
            raise EdgetrimError(
                f"{self.name} does not time .pt2 programs; use torch-cpu or measure the model"
            )
        return self._time(program.module(), tuple(args), timing, prepared=True)
