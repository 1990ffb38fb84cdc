"""Parity of an exported artifact with the PyTorch model it came from.

fp32 artifacts must agree within ``fp32_atol`` (max absolute error, default 1e-4: float32 kernels
reorder sums, which costs ~1e-6 on these model sizes, so 1e-4 catches real conversion bugs without
flaking). int8 artifacts must reach ``int8_min_sqnr_db`` (signal-to-quantization-noise ratio, default
20 dB, torchao's bar). Random inputs are always used; real batches too when data is given, and then
the classification accuracy of both is compared.

For int8, random inputs are drawn uniformly inside the range the calibration data covered (outside
it, saturation is the quantizer working as designed, not a defect), and the SQNR gate is applied on
real data when there is any, else on those random inputs.

Integer inputs (token ids) are indices, so random ones must be valid indices: they are drawn uniformly
from ``[0, n)``, ``n`` the smallest ``num_embeddings`` of the ``nn.Embedding`` modules that receive the
input directly (found with forward pre-hooks during one run on the example inputs); an integer input no
embedding reads is drawn from the range of values the example inputs and the real data hold. Integer
inputs are never quantized or scaled, in int8 checks neither.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from edgetrim.deploy.artifact import ExportArtifact, Precision
from edgetrim.deploy.data import RealData, check_input_spec, is_integer
from edgetrim.errors import ExportError

logger = logging.getLogger(__name__)

Runner = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class ParityConfig:
    """Tolerances and sample counts of the parity check."""

    n_random: int = 4
    fp32_atol: float = 1e-4
    int8_min_sqnr_db: float = 20.0
    seed: int = 0
    max_eval_samples: int = 512

    def __post_init__(self) -> None:
        if self.n_random < 1:
            raise ValueError(f"n_random must be >= 1, got {self.n_random}")
        if self.fp32_atol <= 0:
            raise ValueError(f"fp32_atol must be > 0, got {self.fp32_atol}")
        if self.max_eval_samples < 1:
            raise ValueError(f"max_eval_samples must be >= 1, got {self.max_eval_samples}")


@dataclass(frozen=True)
class OutputParity:
    """Agreement of one output over one kind of input (``random`` or ``real``)."""

    name: str
    source: str
    max_abs_err: float
    sqnr_db: float


@dataclass(frozen=True)
class ParityReport:
    """Result of :func:`check_parity`; ``passed`` is False only when ``raise_on_fail`` was off."""

    label: str
    precision: str
    gate: str  # what was required, in words
    outputs: tuple[OutputParity, ...]
    max_abs_err: float
    min_sqnr_db: float
    worst_output: str
    n_random: int
    n_real: int
    accuracy_reference: float | None
    accuracy_artifact: float | None
    passed: bool

    @property
    def accuracy_delta(self) -> float | None:
        if self.accuracy_reference is None or self.accuracy_artifact is None:
            return None
        return self.accuracy_artifact - self.accuracy_reference

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["outputs"] = [asdict(o) for o in self.outputs]
        d["accuracy_delta"] = self.accuracy_delta
        for key in ("min_sqnr_db",):
            if math.isinf(d[key]):
                d[key] = None  # JSON has no infinity: None means "bit-exact"
        for o in d["outputs"]:
            if math.isinf(o["sqnr_db"]):
                o["sqnr_db"] = None
        return d


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """10 log10(|ref|^2 / |ref - test|^2) in dB; ``inf`` when identical.

    Example:
        >>> round(sqnr_db(np.array([1.0, 1.0]), np.array([1.1, 0.9])), 1)
        20.0
    """
    ref = np.asarray(reference, np.float64)
    noise = float(np.sum((ref - np.asarray(test, np.float64)) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _to_tensor(a: np.ndarray, dtype: torch.dtype | None) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    if dtype is not None:
        return t.to(dtype)
    return t if is_integer(a.dtype) else t.float()  # ids as they are, values as float32


def torch_outputs(
    model: nn.Module, arrays: Sequence[np.ndarray], dtypes: Sequence[torch.dtype] | None = None
) -> list[np.ndarray]:
    """Run ``model`` on numpy inputs; outputs flattened to a list of numpy arrays.

    Each array is cast to its entry of ``dtypes`` (the example inputs' dtypes: ids stay int64 when the
    artifact took int32); without ``dtypes`` float arrays become float32 and integer arrays keep theirs.
    """
    kinds = list(dtypes) if dtypes is not None else [None] * len(arrays)
    with torch.no_grad():
        out = model(*(_to_tensor(a, d) for a, d in zip(arrays, kinds)))
    flat = list(out) if isinstance(out, list | tuple) else [out]
    return [o.detach().cpu().float().numpy() for o in flat]


def embedding_sizes(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> list[int | None]:
    """Per input, the smallest ``num_embeddings`` of the ``nn.Embedding`` modules it feeds directly.

    One forward run on ``example_inputs`` with a pre-hook on every embedding records what each receives.
    An input matches an embedding's input by identity (the tensor passed straight through) or, when no
    embedding receives it by identity, by equal shape and values (a ``.view`` or ``.to`` on the way).
    Identity wins because an all-zero example equals buffers such as BERT's token-type ids, whose
    embedding has 2 rows: matching those would shrink the id range to {0, 1}. ``None`` for float inputs
    and for integer inputs no embedding reads.
    """
    seen: list[tuple[torch.Tensor, int]] = []

    def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = args[0] if args else kwargs.get("input")
        if isinstance(ids, torch.Tensor):
            seen.append((ids, int(module.num_embeddings)))

    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    if not embeddings or not any(is_integer(t.dtype) for t in example_inputs):
        return [None] * len(example_inputs)
    hooks = [m.register_forward_pre_hook(record, with_kwargs=True) for m in embeddings]
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
    sizes: list[int | None] = []
    for t in example_inputs:
        if not is_integer(t.dtype):
            sizes.append(None)
            continue
        hits = [n for ids, n in seen if ids is t]
        if not hits:
            hits = [n for ids, n in seen if ids.shape == t.shape and torch.equal(ids.long(), t.long())]
        sizes.append(min(hits) if hits else None)
    return sizes


def _value_range(i: int, example: torch.Tensor, data: RealData | None) -> tuple[int, int]:
    """Smallest and largest value input ``i`` takes in the example and the real data ({0} when empty)."""
    parts = [example.detach().cpu().numpy().reshape(-1)]
    if data is not None:
        parts += [arrays[i].reshape(-1) for arrays, _ in (*data.calibration, *data.evaluation)]
    values = np.concatenate([np.asarray(p, np.int64) for p in parts])
    if values.size == 0:
        return 0, 0
    return int(values.min()), int(values.max())


def _integer_ranges(
    example_inputs: Sequence[torch.Tensor], sizes: Sequence[int | None], data: RealData | None
) -> list[tuple[int, int] | None]:
    """Per input, the inclusive range random integer draws come from; ``None`` for float inputs."""
    ranges: list[tuple[int, int] | None] = []
    for i, (t, size) in enumerate(zip(example_inputs, sizes)):
        if not is_integer(t.dtype):
            ranges.append(None)
        elif size is not None:
            ranges.append((0, size - 1))
        else:
            ranges.append(_value_range(i, t, data))
    return ranges


def check_ids_in_range(
    sizes: Sequence[int | None], example_inputs: Sequence[torch.Tensor], data: RealData, names: Sequence[str]
) -> None:
    """Raise a one-line ExportError when real ids fall outside the embedding they index.

    ``sizes`` come from :func:`embedding_sizes`. Torch would raise ``IndexError`` deep inside the model,
    and runtimes may read out of bounds.
    """
    for i, size in enumerate(sizes):
        if size is None:
            continue
        lo, hi = _value_range(i, example_inputs[i], data)
        if lo < 0 or hi >= size:
            raise ExportError(
                f"data {data.spec!r} has ids from {lo} to {hi} for input {names[i]!r}, but the model's "
                f"nn.Embedding takes 0..{size - 1}; use data made for this model's vocabulary"
            )


def _random_inputs(
    example_inputs: Sequence[torch.Tensor],
    sizes: Sequence[int | None],
    n: int,
    seed: int,
    data: RealData | None,
    precision: Precision,
) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    draws: list[list[np.ndarray]] = []
    bounds = None
    if precision is Precision.INT8 and data is not None:
        first = data.calibration[0][0]
        bounds = [(float(np.min(a)), float(np.max(a))) for a in first]
    ids = _integer_ranges(example_inputs, sizes, data)
    for _ in range(n):
        arrays = []
        for i, t in enumerate(example_inputs):
            shape = tuple(t.shape)
            if ids[i] is not None:  # valid indices in the example's dtype, never scaled
                lo, hi = ids[i]
                dtype = t.detach().cpu().numpy().dtype
                arrays.append(rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype))
            elif bounds is not None:
                lo, hi = bounds[i]
                arrays.append(rng.uniform(lo, hi, size=shape).astype(np.float32))
            else:
                arrays.append(rng.standard_normal(shape).astype(np.float32))
        draws.append(arrays)
    return draws


def _accumulate(
    per_output: list[list[tuple[np.ndarray, np.ndarray]]], names: list[str], source: str
) -> list[OutputParity]:
    rows = []
    for name, pairs in zip(names, per_output):
        if not pairs:
            continue
        ref = np.concatenate([p[0].reshape(-1) for p in pairs])
        got = np.concatenate([p[1].reshape(-1) for p in pairs])
        rows.append(
            OutputParity(
                name=name,
                source=source,
                max_abs_err=float(np.max(np.abs(ref - got))),
                sqnr_db=sqnr_db(ref, got),
            )
        )
    return rows


def _compare(
    model: nn.Module,
    runner: Runner,
    batches: Sequence[Sequence[np.ndarray]],
    names: list[str],
    source: str,
    dtypes: Sequence[torch.dtype],
) -> tuple[list[OutputParity], list[tuple[np.ndarray, np.ndarray]]]:
    per_output: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in names]
    first_outputs: list[tuple[np.ndarray, np.ndarray]] = []
    for arrays in batches:
        ref = torch_outputs(model, arrays, dtypes)
        got = runner(arrays)
        if len(ref) != len(got):
            raise ExportError(f"the artifact returns {len(got)} outputs but the model returns {len(ref)}")
        for i, (r, g) in enumerate(zip(ref, got)):
            if r.shape != g.shape:
                raise ExportError(
                    f"output {names[i]!r} has shape {g.shape} in the artifact but {r.shape} in torch"
                )
            per_output[i].append((r, g))
        first_outputs.append((ref[0], got[0]))
    return _accumulate(per_output, names, source), first_outputs


def check_parity(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    artifact: ExportArtifact,
    runner: Runner,
    *,
    data: RealData | None = None,
    config: ParityConfig | None = None,
    raise_on_fail: bool = True,
) -> ParityReport:
    """Compare ``runner`` (the artifact) with ``model`` on random and, when given, real inputs.

    Raises:
        ExportError: beyond tolerance, naming the worst output, the error and the inputs it came from.

    Example:
        >>> rep = check_parity(net, (x,), art, OnnxRunner(art))  # doctest: +SKIP
        >>> rep.max_abs_err < 1e-4  # doctest: +SKIP
        True
    """
    cfg = config or ParityConfig()
    model = model.eval()
    names = [o.name for o in artifact.outputs]
    # torch runs every input in its example's dtype: float32, or the ids' integer type
    dtypes = [t.dtype if is_integer(t.dtype) else torch.float32 for t in example_inputs]
    sizes = embedding_sizes(model, example_inputs)
    rows, _ = _compare(
        model,
        runner,
        _random_inputs(example_inputs, sizes, cfg.n_random, cfg.seed, data, artifact.precision),
        names,
        "random",
        dtypes,
    )
    n_real = 0
    acc_ref = acc_art = None
    if data is not None:
        real: list[list[np.ndarray]] = []
        labels: list[np.ndarray | None] = []
        for arrays, y in data.evaluation:
            if n_real >= cfg.max_eval_samples:
                break
            take = min(int(arrays[0].shape[0]), cfg.max_eval_samples - n_real)
            check_input_spec(artifact.inputs, arrays, what=f"data {data.spec!r}")
            real.append([a[:take] for a in arrays])
            labels.append(None if y is None else y[:take])
            n_real += take
        check_ids_in_range(sizes, example_inputs, data, [t.name for t in artifact.inputs])
        real_rows, firsts = _compare(model, runner, real, names, "real", dtypes)
        rows += real_rows
        if all(y is not None for y in labels) and firsts and firsts[0][0].ndim == 2:
            y_all = np.concatenate([y for y in labels if y is not None])
            ref_pred = np.concatenate([np.argmax(r, axis=1) for r, _ in firsts])
            art_pred = np.concatenate([np.argmax(g, axis=1) for _, g in firsts])
            acc_ref = float(np.mean(ref_pred == y_all))
            acc_art = float(np.mean(art_pred == y_all))
    if artifact.precision is Precision.FP32:
        worst = max(rows, key=lambda r: r.max_abs_err)
        passed = worst.max_abs_err <= cfg.fp32_atol
        gate = f"max abs error <= {cfg.fp32_atol:g}"
        problem = f"max abs error {worst.max_abs_err:.3g} > {cfg.fp32_atol:g}"
    else:
        gated = [r for r in rows if r.source == "real"] or rows
        worst = min(gated, key=lambda r: r.sqnr_db)
        passed = worst.sqnr_db >= cfg.int8_min_sqnr_db
        gate = f"SQNR >= {cfg.int8_min_sqnr_db:g} dB on {worst.source} inputs"
        problem = f"SQNR {worst.sqnr_db:.1f} dB < {cfg.int8_min_sqnr_db:g} dB"
    report = ParityReport(
        label=artifact.label,
        precision=artifact.precision.value,
        gate=gate,
        outputs=tuple(rows),
        max_abs_err=max(r.max_abs_err for r in rows),
        min_sqnr_db=min(r.sqnr_db for r in rows),
        worst_output=worst.name,
        n_random=cfg.n_random,
        n_real=n_real,
        accuracy_reference=acc_ref,
        accuracy_artifact=acc_art,
        passed=passed,
    )
    logger.info(
        "%s parity: max abs err %.3g, min SQNR %.1f dB",
        artifact.label,
        report.max_abs_err,
        report.min_sqnr_db,
    )
    if not passed and raise_on_fail:
        raise ExportError(
            f"{artifact.label} parity check failed on output {worst.name!r} ({worst.source} inputs): {problem}; "
            f"the artifact {artifact.path.name} does not match the PyTorch model"
        )
    return report
