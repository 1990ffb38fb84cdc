"""Integer (token id) inputs through the deploy path: ONNX and TFLite, fp32 and int8, random and real
ids; random ids stay valid indices of the embedding they feed; ids are never quantized; float data for
an id input and ids outside the vocabulary are one-line errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

from edgetrim.compress.run_folder import save_run
from edgetrim.deploy.artifact import Precision
from edgetrim.deploy.bundle import ExportConfig, export_run
from edgetrim.deploy.data import RealData, load_real_data
from edgetrim.deploy.onnx_export import OnnxRunner, export_onnx, quantize_onnx_int8
from edgetrim.deploy.parity import ParityConfig, _random_inputs, check_parity, embedding_sizes, torch_outputs
from edgetrim.errors import ExportError

VOCAB, SEQ, DIM, CLASSES = 13, 8, 16, 4
# seed 2 gives both nets 8+ dB above the 20 dB int8 gate (untrained nets this small vary by seed)
SEED = 2


class TokenNet(nn.Module):
    """ids (B, SEQ) -> embedding -> mean over the sequence -> classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.fc = nn.Linear(DIM, CLASSES)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(ids).mean(1))


class MaskedTokenNet(nn.Module):
    """ids (int64) and a float mask: the mean over the positions the mask keeps."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.fc = nn.Linear(DIM, CLASSES)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = mask.unsqueeze(-1)
        return self.fc((self.emb(ids) * w).sum(1) / w.sum(1).clamp_min(1.0))


def _samples(seed: int, n: int, high: int = VOCAB) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, high, (n, SEQ), generator=g)
    mask = (torch.rand(n, SEQ, generator=g) > 0.25).float()
    mask[:, 0] = 1.0  # every row keeps a token
    return ids, mask, ids[:, 0] % CLASSES


def _loaders(ids: torch.Tensor, y: torch.Tensor) -> tuple[DataLoader, DataLoader]:
    return DataLoader(TensorDataset(ids[:64], y[:64]), batch_size=32), DataLoader(
        TensorDataset(ids[64:], y[64:]), batch_size=64
    )


def token_ids() -> tuple[DataLoader, DataLoader]:
    """Data spec for TokenNet: int64 ids in the vocabulary."""
    ids, _, y = _samples(100, 128)
    return _loaders(ids, y)


def masked_token_ids() -> tuple[list, list]:
    """Data spec for MaskedTokenNet: ``((ids, mask), y)`` batches."""
    ids, mask, y = _samples(101, 128)
    batches = [((ids[i : i + 32], mask[i : i + 32]), y[i : i + 32]) for i in range(0, 128, 32)]
    return batches[:2], batches[2:]


def float_token_ids() -> tuple[DataLoader, DataLoader]:
    """The right ids as float32: must be refused, not truncated."""
    ids, _, y = _samples(102, 128)
    return _loaders(ids.float(), y)


def wide_token_ids() -> tuple[DataLoader, DataLoader]:
    """int64 ids from a three times larger vocabulary than the model's."""
    ids, _, y = _samples(103, 128, high=3 * VOCAB)
    return _loaders(ids, y)


@dataclass(frozen=True)
class Case:
    model: nn.Module
    example: tuple[torch.Tensor, ...]
    data: RealData


def _case(name: str) -> Case:
    torch.manual_seed(SEED)
    ids = torch.zeros(2, SEQ, dtype=torch.long)  # all-zero ids, as a tokenizer-free example would be
    if name == "token":
        model, example, spec = TokenNet(), (ids,), f"{__name__}:token_ids"
    else:
        model, example, spec = MaskedTokenNet(), (ids, torch.ones(2, SEQ)), f"{__name__}:masked_token_ids"
    return Case(model.eval(), example, load_real_data(spec, calib_batches=2))


@pytest.fixture(scope="module", params=["token", "masked"])
def case(request: pytest.FixtureRequest) -> Case:
    return _case(request.param)


def _real_sqnr(report) -> float:
    return min(o.sqnr_db for o in report.outputs if o.source == "real")


# --- which ids are valid ------------------------------------------------------------------------


class _TypedNet(nn.Module):
    """BERT's pattern: ids into the word table, an all-zero token-type buffer into a 2-row table."""

    def __init__(self) -> None:
        super().__init__()
        self.words = nn.Embedding(VOCAB, 4)
        self.types = nn.Embedding(2, 4)
        self.register_buffer("type_ids", torch.zeros(1, SEQ, dtype=torch.long))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return (self.words(ids) + self.types(self.type_ids)).sum()


class _ViewedNet(nn.Module):
    """ids reach two tables through a view (a new tensor, equal values); the smaller table bounds them."""

    def __init__(self) -> None:
        super().__init__()
        self.big = nn.Embedding(VOCAB, 4)
        self.small = nn.Embedding(5, 4)

    def forward(self, ids: torch.Tensor, scale: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        flat = ids.view(-1, SEQ)
        return (self.big(flat) + self.small(flat)).sum() * scale.sum() + offsets.float().sum()


def test_embedding_sizes_by_identity_then_by_equal_values() -> None:
    ids = torch.zeros(1, SEQ, dtype=torch.long)
    # the 2-row token-type table receives a tensor equal to the all-zero ids: identity wins
    assert embedding_sizes(_TypedNet().eval(), (ids,)) == [VOCAB]
    viewed = (ids, torch.ones(1, 3), torch.arange(3).view(1, 3))
    assert embedding_sizes(_ViewedNet().eval(), viewed) == [5, None, None]
    assert embedding_sizes(nn.Linear(3, 2), (torch.ones(1, 3),)) == [None]


def test_random_ids_are_valid_indices_across_the_whole_table(tmp_path: Path) -> None:
    torch.manual_seed(SEED)
    model = TokenNet().eval()
    example = (torch.zeros(2, SEQ, dtype=torch.long),)
    with pytest.raises(IndexError):  # what an id outside the table does in torch
        model(torch.full((2, SEQ), VOCAB, dtype=torch.long))
    art = export_onnx(model, example, tmp_path / "m.onnx")
    runner, fed = OnnxRunner(art), []

    def recording(arrays):
        fed.append(arrays[0])
        return runner(arrays)

    # torch runs the same draws: an id outside the table would raise IndexError in check_parity
    rep = check_parity(model, example, art, recording, config=ParityConfig(n_random=40))
    ids = np.stack(fed)
    assert rep.passed and len(fed) == 40
    assert ids.dtype == np.int64 and ids.min() == 0 and ids.max() == VOCAB - 1  # inside, and all of it


def test_int8_random_draws_keep_ids_integer_and_scale_only_floats(case: Case) -> None:
    sizes = embedding_sizes(case.model, case.example)
    draws = _random_inputs(case.example, sizes, 8, 0, case.data, Precision.INT8)
    ids = np.stack([d[0] for d in draws])
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < VOCAB
    if len(case.example) == 2:  # the float mask is drawn inside the calibration range, as before
        mask = np.stack([d[1] for d in draws])
        assert mask.dtype == np.float32 and mask.min() >= 0.0 and mask.max() <= 1.0


def test_integer_input_without_an_embedding_is_drawn_from_the_values_seen() -> None:
    model = _ViewedNet().eval()
    example = (torch.zeros(1, SEQ, dtype=torch.long), torch.ones(1, 3), torch.tensor([[3, 4, 5]]))
    sizes = embedding_sizes(model, example)
    offsets = np.stack([d[2] for d in _random_inputs(example, sizes, 20, 0, None, Precision.FP32)])
    assert offsets.min() == 3 and offsets.max() == 5
    real = ([np.zeros((1, SEQ), np.int64), np.ones((1, 3), np.float32), np.array([[9, 9, 9]])], None)
    data = RealData("inline", (real,), (real,))
    offsets = np.stack([d[2] for d in _random_inputs(example, sizes, 20, 0, data, Precision.FP32)])
    assert offsets.min() >= 3 and offsets.max() == 9


# --- fp32 and int8 artifacts --------------------------------------------------------------------


def test_onnx_fp32_parity_on_random_and_real_ids(case: Case, tmp_path: Path) -> None:
    art = export_onnx(case.model, case.example, tmp_path / "m.onnx")
    assert [t.dtype for t in art.inputs] == ["int64", "float32"][: len(case.example)]
    rep = check_parity(case.model, case.example, art, OnnxRunner(art), data=case.data)
    assert rep.passed and rep.max_abs_err <= 1e-4 and rep.n_real > 0
    assert rep.accuracy_delta == pytest.approx(0.0, abs=1e-9)
    arrays = [a[:3] for a in case.data.evaluation[0][0]]
    arrays[0] = arrays[0].astype(np.int32)  # the runner casts ids to the graph's int64
    got = OnnxRunner(art)(arrays)[0]
    np.testing.assert_allclose(got, torch_outputs(case.model, arrays)[0], atol=1e-4, rtol=0)


def test_tflite_fp32_parity_on_random_and_real_ids(case: Case, tmp_path: Path) -> None:
    from edgetrim.deploy.tflite_export import TfliteRunner, export_tflite

    art = export_tflite(case.model, case.example, tmp_path / "m.tflite")
    assert art.inputs[0].dtype in ("int32", "int64") and art.inputs[0].scale is None
    rep = check_parity(case.model, case.example, art, TfliteRunner(art), data=case.data)
    assert rep.passed and rep.max_abs_err <= 1e-4 and rep.n_real > 0


def test_onnx_int8_feeds_ids_unquantized(case: Case, tmp_path: Path) -> None:
    fp32 = export_onnx(case.model, case.example, tmp_path / "m.onnx")
    q = quantize_onnx_int8(fp32, tmp_path / "q.onnx", [b[0] for b in case.data.calibration])
    assert q.inputs[0].dtype == "int64" and q.inputs[0].scale is None
    rep = check_parity(case.model, case.example, q, OnnxRunner(q), data=case.data)
    assert _real_sqnr(rep) >= 20.0


def test_tflite_int8_feeds_ids_unquantized(case: Case, tmp_path: Path) -> None:
    from edgetrim.deploy.tflite_export import TfliteRunner, export_tflite

    calib = [b[0] for b in case.data.calibration]
    art = export_tflite(
        case.model, case.example, tmp_path / "q.tflite", precision=Precision.INT8, calibration=calib
    )
    # ids stay plain integers; whether a float input takes int8 is the quantizer's choice per op
    assert art.inputs[0].dtype in ("int32", "int64") and art.inputs[0].scale is None
    rep = check_parity(case.model, case.example, art, TfliteRunner(art), data=case.data)
    assert _real_sqnr(rep) >= 20.0


# --- RUN folders, the CLI and the one-line errors -----------------------------------------------


def _token_run(path: Path, data_spec: str) -> Path:
    c = _case("token")
    info = {"kind": "compress", "model_spec": f"{__name__}:TokenNet", "data_spec": data_spec}
    return save_run(path, c.model, c.example, info)


def test_export_run_with_ids_writes_checks_and_remeasures(tmp_path: Path) -> None:
    from edgetrim.profiler.timing import TimingConfig

    run = _token_run(tmp_path / "run", f"{__name__}:token_ids")
    cfg = ExportConfig(
        formats=("onnx",), int8=True, target="ort-cpu", timing=TimingConfig.quick(), profile_runs=2
    )
    bundle = export_run(run, tmp_path / "out", cfg)
    assert [a.label for a in bundle.artifacts] == ["onnx-fp32", "onnx-int8"]
    assert all(a.parity and a.parity["passed"] and a.parity["n_real"] > 0 for a in bundle.artifacts)
    # the per-layer profile fed the example's int64 ids to onnxruntime
    assert [r.label for r in bundle.remeasured] == ["onnx-fp32", "onnx-int8"]
    assert all(r.measured_ms > 0 and r.layers for r in bundle.remeasured)


def test_float_data_for_ids_is_one_line_error(tmp_path: Path) -> None:
    from edgetrim.cli import app

    run = _token_run(tmp_path / "run", f"{__name__}:float_token_ids")
    res = CliRunner().invoke(
        app, ["export", str(run), "--format", "onnx", "--int8", "--out", str(tmp_path / "o")]
    )
    assert res.exit_code != 0 and "Traceback" not in res.output
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert "dtype float32" in line and "integer ids (int64)" in line
    c = _case("token")
    floats = RealData(
        "floats", c.data.calibration, tuple(([a.astype(np.float32)], y) for (a,), y in c.data.evaluation)
    )
    art = export_onnx(c.model, c.example, tmp_path / "m.onnx")
    with pytest.raises(ExportError, match=r"dtype float32 but the artifact expects integer ids") as err:
        check_parity(c.model, c.example, art, OnnxRunner(art), data=floats)
    assert "\n" not in str(err.value)


def test_ids_outside_the_vocabulary_are_one_line_error(tmp_path: Path) -> None:
    run = _token_run(tmp_path / "run", f"{__name__}:wide_token_ids")
    with pytest.raises(ExportError, match=rf"nn\.Embedding takes 0\.\.{VOCAB - 1}") as err:
        export_run(run, tmp_path / "out", ExportConfig(formats=("onnx",), int8=True))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out" / "model.onnx").exists()  # refused before anything was exported
