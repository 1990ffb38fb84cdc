"""onnxruntime targets: ``ort-cpu`` (CPU EP) and ``ort-cuda`` (CUDA EP with IO binding).

Sessions use ``intra_op_num_threads = threads``, one inter-op thread, sequential execution and full
graph optimisation (ORT_ENABLE_ALL), so one-op graphs get the same fusions as whole models. Every
timed call is one ``run_with_iobinding`` with inputs and outputs bound beforehand (CPU and CUDA alike).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetrim.errors import EdgetrimError, TargetUnavailableError
from edgetrim.profiler.builders import build_onnx_op
from edgetrim.profiler.device import local_device_info
from edgetrim.profiler.targets.base import LocalTarget, OpRequest
from edgetrim.profiler.timing import TimingConfig, time_callable
from edgetrim.types import DeviceInfo, LatencyStats

logger = logging.getLogger(__name__)

_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise TargetUnavailableError("onnxruntime is not installed: pip install 'edgetrim[onnx]'") from exc
    return onnxruntime


def random_feeds(sess: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for every session input (symbolic dims become 1)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        dtype = _NUMPY_TYPES.get(inp.type)
        if dtype is None:
            raise EdgetrimError(f"ONNX input {inp.name!r} has type {inp.type}, which edgetrim cannot feed")
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[inp.name] = np.zeros(shape, dtype=dtype)
    return feeds


def export_onnx_for_timing(module: Any, example_inputs: tuple[Any, ...], path: Path) -> None:
    """torch -> ONNX: the dynamo exporter (needs onnxscript), else the legacy TorchScript exporter."""
    import torch

    module = module.eval()
    try:
        with torch.no_grad():
            torch.onnx.export(module, example_inputs, str(path), dynamo=True, verbose=False)
        return
    except Exception as exc:  # dynamo export fails on some graphs or without onnxscript
        logger.info("dynamo ONNX export failed (%s: %s); using the legacy exporter", type(exc).__name__, exc)
    try:
        with torch.no_grad():
            torch.onnx.export(module, example_inputs, str(path), dynamo=False, opset_version=17)
    except Exception as exc:
        raise EdgetrimError(f"ONNX export of the model failed: {type(exc).__name__}: {exc}") from exc


class OrtTarget(LocalTarget):
    """onnxruntime on the CPU or CUDA execution provider."""

    runtime = "onnxruntime"

    def __init__(
        self, name: str, *, threads: int = 1, cores: Sequence[int] | None = None, cuda: bool = False
    ):
        ort = _ort()
        self.cuda = cuda
        if cuda:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise TargetUnavailableError(
                    f"{name}: onnxruntime has no CUDA execution provider here "
                    f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu on a GPU machine"
                )
            self.providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            self.providers = ["CPUExecutionProvider"]
        self._ort = ort
        super().__init__(name, threads=threads, cores=cores)

    def _make_info(self) -> DeviceInfo:
        device = None
        extra = {"providers": ",".join(self.providers), "graph_optimization": "ORT_ENABLE_ALL"}
        if self.cuda:
            try:
                import torch

                device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cuda"
            except ImportError:
                device = "cuda"
        return local_device_info(
            target=self.name,
            runtime=self.runtime,
            runtime_version=self._ort.__version__,
            threads=self.threads,
            affinity=self.affinity,
            device=device,
            extra=extra,
        )

    def session(self, model: bytes | str | Path) -> Any:
        """An InferenceSession with this target's threads and full graph optimisation."""
        ort = self._ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        source = model if isinstance(model, bytes) else str(model)
        try:
            return ort.InferenceSession(source, so, providers=self.providers)
        except Exception as exc:
            raise EdgetrimError(f"onnxruntime cannot load the model: {type(exc).__name__}: {exc}") from exc

    def _invoker(self, sess: Any) -> Callable[[], object]:
        """One ``run_with_iobinding`` per call, inputs and outputs bound once.

        IO binding keeps output allocation and the copy into fresh numpy arrays out of the timed
        call (a one-op graph would otherwise pay, per op, a copy that inside a model never happens);
        on CUDA it also keeps host<->device copies out.
        """
        ort = self._ort
        device = "cuda" if self.cuda else "cpu"
        binding = sess.io_binding()
        for name, value in random_feeds(sess).items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, device, 0))
        for out in sess.get_outputs():
            binding.bind_output(out.name, device)
        sess.run_with_iobinding(binding)  # allocates the outputs once ...
        for out, value in zip(sess.get_outputs(), binding.get_outputs()):
            binding.bind_ortvalue_output(out.name, value)  # ... and every timed run reuses them

        def run() -> None:
            sess.run_with_iobinding(binding)
            if self.cuda:
                binding.synchronize_outputs()

        return run

    def time_session(self, sess: Any, timing: TimingConfig) -> LatencyStats:
        return time_callable(self._invoker(sess), timing)

    def measure_ops(
        self, requests: Sequence[OpRequest], timing: TimingConfig
    ) -> Iterator[tuple[OpRequest, LatencyStats]]:
        for req in requests:
            ctx, in_w, out_w = req
            yield req, self.time_session(self.session(build_onnx_op(ctx, in_w, out_w)), timing)

    def invoke_overhead(self, timing: TimingConfig) -> LatencyStats:
        """Cost of one ``run`` of a graph that does nothing (a one-element Identity)."""
        from onnx import TensorProto, helper

        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "noop", [x], [y])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 9
        return self.time_session(self.session(model.SerializeToString()), timing)

    def dispatch_overhead(self, timing: TimingConfig, *, nodes: int = 33, repeats: int = 5) -> float:
        """In-graph cost of one more node (ms): a chain of ``nodes`` Relu on one float vs one Relu.

        The profiler subtracts the empty-invoke overhead (which includes one node's dispatch) from
        every one-op point, so a model of ``n`` nodes pays this ``n - 1`` more times.
        """

        def chain(n: int) -> LatencyStats:
            from onnx import TensorProto, helper

            names = ["x", *(f"t{k}" for k in range(n - 1)), "y"]
            graph = helper.make_graph(
                [helper.make_node("Relu", [names[k]], [names[k + 1]]) for k in range(n)],
                "relu_chain",
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
            )
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            model.ir_version = 9
            return self.time_session(self.session(model.SerializeToString()), timing)

        # each chain timed several times, interleaved, lowest median kept: load only adds time, and
        # this one number is multiplied by every node of every predicted model
        ones, manys = [], []
        for _ in range(repeats):
            ones.append(chain(1).median_ms)
            manys.append(chain(nodes).median_ms)
        return max((min(manys) - min(ones)) / (nodes - 1), 0.0)

    def _conv_is_blocked(self, c_in: int, c_out: int) -> bool:
        """Whether the NCHWc transformer rewrites a one-op 1x1 conv ``c_in -> c_out`` (4x4 input)."""
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, 4, 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c_out, 4, 4])
        w = numpy_helper.from_array(np.zeros((c_out, c_in, 1, 1), np.float32), "w")
        graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "probe", [x], [y], [w])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 9
        ort = self._ort
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        with tempfile.TemporaryDirectory(prefix="edgetrim-ort-") as tmp:
            so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
            ort.InferenceSession(model.SerializeToString(), so, providers=self.providers)
            nodes = onnx.load(so.optimized_model_filepath).graph.node
        return any(n.domain == "com.microsoft.nchwc" for n in nodes)

    def nchwc_block(self) -> int | None:
        """Channel block of onnxruntime's NCHWc layout on this CPU (8 on AVX2, 16 on AVX-512), or None.

        None on CUDA or when the NCHWc transformer rewrites nothing (a one-op 1x1 conv at 16 -> 16
        stays plain). The size itself cannot be read off which convs get rewritten: recent versions
        pad channel counts up to the block, so an 8 -> 8 conv is blocked on AVX-512 (block 16) as
        well. ``ReorderOutput`` checks its input width against the real block, so the smallest
        width at which it runs is the block.
        """
        if self.cuda:
            return None
        if not hasattr(self, "_nchwc_block"):
            blocked = self._conv_is_blocked(16, 16)
            self._nchwc_block = (
                next((b for b in (8, 16) if self._reorder_output_runs(b)), None) if blocked else None
            )
        return self._nchwc_block

    def _reorder_output_runs(self, width: int) -> bool:
        """Whether ``ReorderOutput`` accepts a ``width``-channel blocked tensor (width % block == 0)."""
        from onnx import TensorProto, helper

        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width, 2, 2])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width, 2, 2])
        node = helper.make_node("ReorderOutput", ["x"], ["y"], domain="com.microsoft.nchwc", channels=width)
        graph = helper.make_graph([node], "reorder_probe", [x], [y])
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft.nchwc", 1)]
        model = helper.make_model(graph, opset_imports=opsets)
        model.ir_version = 9
        so = self._ort.SessionOptions()
        so.log_severity_level = 4  # the expected failure is an answer, not an error to print
        try:
            sess = self._ort.InferenceSession(model.SerializeToString(), so, providers=self.providers)
            sess.run(None, {"x": np.zeros((1, width, 2, 2), np.float32)})
        except Exception:  # onnxruntime raises its own error types; any failure means "not this block"
            return False
        return True

    def nchwc_conv_alignment(self, block: int) -> int | None:
        """Smallest input-width alignment at which a one-op 1x1 conv still runs blocked (NCHWc).

        onnxruntime pads channel counts up to the block, so on recent versions a conv whose input
        width is a multiple of half the block is blocked too (12 channels with block 8). Probed at
        widths ``block + block/2``, ``block + block/4`` and ``block + 1``; ``None`` when only
        multiples of the block are.
        """
        found = None
        for align in (block // 2, block // 4, 1):
            if align < 1 or not self._conv_is_blocked(block + align, block):
                break
            found = align
        return found

    def table_meta(self, timing: TimingConfig) -> dict[str, Any]:
        """Runtime facts the predictor needs: per-node dispatch cost and the NCHWc block size."""
        meta: dict[str, Any] = {
            "per_op_overhead_ms": self.dispatch_overhead(timing),
            "per_op_overhead_source": "measured: Relu chain slope",
        }
        block = self.nchwc_block()
        if block:
            meta["ort_nchwc_block"] = block
            align = self.nchwc_conv_alignment(block)
            if align:
                meta["ort_nchwc_conv_alignment"] = align
        return meta

    def measure_model(
        self, module: Any, example_inputs: tuple[Any, ...], timing: TimingConfig
    ) -> LatencyStats:
        with tempfile.TemporaryDirectory(prefix="edgetrim-ort-") as tmp:
            path = Path(tmp) / "model.onnx"
            export_onnx_for_timing(module, tuple(example_inputs), path)
            return self.measure_artifact(path, timing)

    def measure_artifact(self, path: str | Path, timing: TimingConfig) -> LatencyStats:
        path = Path(path)
        if not path.is_file():
            raise EdgetrimError(f"model file {path} does not exist")
        if path.suffix != ".onnx":
            raise EdgetrimError(f"{self.name} runs .onnx files, got {path.name}")
        return self.time_session(self.session(path), timing)
