"""ONNX and TFLite exporters: parity (fp32 max abs error 1e-4, int8 SQNR >= 20 dB) on a hand-made
pruned + low-rank model trained on digits, int8 I/O handling, and the one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgetrim.deploy.artifact import ExportFormat, Precision
from edgetrim.deploy.data import RealData, load_real_data
from edgetrim.deploy.onnx_export import DEFAULT_OPSET, OnnxRunner, export_onnx, quantize_onnx_int8
from edgetrim.deploy.parity import ParityConfig, check_parity, sqnr_db
from edgetrim.errors import ExportError

X = (torch.randn(1, 1, 8, 8),)


@pytest.fixture(scope="module")
def digits() -> RealData:
    return load_real_data("digits", calib_batches=4)


@pytest.fixture(scope="module")
def onnx_fp32(tmp_path_factory: pytest.TempPathFactory, trained_net: tuple[nn.Module, float]):
    return export_onnx(trained_net[0], X, tmp_path_factory.mktemp("onnx") / "m.onnx")


def test_a_batch_the_exporter_specialised_is_reported_as_fixed(tmp_path: Path) -> None:
    # torch's fused transformer layers export without an error but with the example's batch written
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True, dropout=0.0)
    model = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False).eval()
    art = export_onnx(model, (torch.randn(1, 6, 16),), tmp_path / "enc.onnx")
    assert not art.dynamic_batch and art.inputs[0].shape == (1, 6, 16)
    assert any("batch fixed at 1" in n for n in art.notes)


def test_sqnr_reference_values() -> None:
    ref = np.array([1.0, -1.0, 2.0, -2.0])
    assert sqnr_db(ref, ref) == float("inf")
    assert sqnr_db(ref, ref * 1.1) == pytest.approx(20.0, abs=1e-9)  # noise = 0.1 * signal


def test_onnx_fp32_is_self_contained_dynamic_and_matches(onnx_fp32, trained_net, digits) -> None:
    import onnx

    art = onnx_fp32
    proto = onnx.load(str(art.path), load_external_data=False)
    assert not [i.name for i in proto.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
    assert sorted(Path(art.path).parent.iterdir()) == [art.path]  # no side files
    assert {o.domain: o.version for o in proto.opset_import}[""] == DEFAULT_OPSET
    assert art.dynamic_batch and art.inputs[0].shape == (-1, 1, 8, 8)
    x = torch.randn(5, 1, 8, 8)  # a batch size the export never saw
    got = OnnxRunner(art)([x.numpy()])[0]
    torch.testing.assert_close(torch.from_numpy(got), trained_net[0](x).detach(), atol=1e-4, rtol=0)
    rep = check_parity(trained_net[0], X, art, OnnxRunner(art), data=digits)
    assert rep.passed and rep.max_abs_err <= 1e-4 and rep.n_real > 0
    assert rep.accuracy_delta == pytest.approx(0.0, abs=1e-9)


def test_onnx_int8_static_sqnr(onnx_fp32, trained_net, digits, tmp_path: Path) -> None:
    q = quantize_onnx_int8(onnx_fp32, tmp_path / "q.onnx", [b[0] for b in digits.calibration])
    assert q.precision is Precision.INT8
    rep = check_parity(trained_net[0], X, q, OnnxRunner(q), data=digits)
    real = [o for o in rep.outputs if o.source == "real"]
    assert real and min(o.sqnr_db for o in real) >= 20.0
    assert rep.accuracy_delta is not None and abs(rep.accuracy_delta) <= 0.05  # 8-bit: within 5 points


def test_int8_without_calibration_data_is_one_line_error(onnx_fp32, trained_net, tmp_path: Path) -> None:
    from edgetrim.deploy.tflite_export import export_tflite

    with pytest.raises(ExportError, match="needs calibration data") as e1:
        quantize_onnx_int8(onnx_fp32, tmp_path / "q.onnx", [])
    with pytest.raises(ExportError, match="needs calibration data") as e2:
        export_tflite(trained_net[0], X, tmp_path / "q.tflite", precision=Precision.INT8)
    assert "\n" not in str(e1.value) and "\n" not in str(e2.value)


def test_tflite_fp32_parity(trained_net, digits, tmp_path: Path) -> None:
    from edgetrim.deploy.tflite_export import TfliteRunner, export_tflite

    art = export_tflite(trained_net[0], X, tmp_path / "m.tflite")
    assert art.format is ExportFormat.TFLITE and art.inputs[0].dtype == "float32"
    rep = check_parity(trained_net[0], X, art, TfliteRunner(art), data=digits)
    assert rep.max_abs_err <= 1e-4
    assert rep.accuracy_delta == pytest.approx(0.0, abs=1e-9)


def test_tflite_int8_io_quantized_for_the_user(trained_net, digits, tmp_path: Path) -> None:
    from edgetrim.deploy.tflite_export import TfliteRunner, dequantize_output, export_tflite, quantize_input

    calib = [b[0] for b in digits.calibration]
    art = export_tflite(trained_net[0], X, tmp_path / "q.tflite", precision=Precision.INT8, calibration=calib)
    spec_in, spec_out = art.inputs[0], art.outputs[0]
    assert spec_in.dtype == "int8" and spec_in.scale is not None and spec_in.zero_point is not None
    assert spec_out.dtype == "int8" and spec_out.scale is not None
    x = calib[0][0][:3]
    back = dequantize_output(quantize_input(x, spec_in), spec_in)
    assert np.max(np.abs(back - x)) <= spec_in.scale / 2 + 1e-7  # round-to-nearest within the range
    rep = check_parity(trained_net[0], X, art, TfliteRunner(art), data=digits)  # float in, float out
    assert min(o.sqnr_db for o in rep.outputs if o.source == "real") >= 20.0


class _Bessel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(x)


def test_tflite_converter_failure_names_op_and_suggests_onnx(tmp_path: Path) -> None:
    from edgetrim.deploy.tflite_export import export_tflite

    with pytest.raises(ExportError) as err:
        export_tflite(_Bessel(), (torch.randn(1, 8),), tmp_path / "b.tflite")
    msg = str(err.value)
    assert "aten.special_bessel_j0" in msg and "--format onnx" in msg and "\n" not in msg
    assert not (tmp_path / "b.tflite").exists()


def test_parity_failure_names_the_worst_output(onnx_fp32, trained_net) -> None:
    inner = OnnxRunner(onnx_fp32)

    def broken(arrays):
        out = inner(arrays)
        return [out[0] + 1e-2]  # a 1e-2 error is 100x the fp32 tolerance

    with pytest.raises(ExportError, match=r"output 'output_0'.*max abs error"):
        check_parity(trained_net[0], X, onnx_fp32, broken, config=ParityConfig(n_random=2))


class _CausalAttention(nn.Module):
    """Digits rows (8 tokens of 8 pixels) through causal self-attention: the mask puts -inf into
    the scores."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.qkv, self.out = nn.Linear(8, 48), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.unflatten(-1, (2, 8)).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        ctx = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(ctx.transpose(1, 2).flatten(2).mean(1))


def test_int8_onnx_keeps_the_attention_mask_and_softmax_in_float(tmp_path: Path, digits: RealData) -> None:
    import onnx

    model = _CausalAttention().eval()
    rows = [np.asarray(b[0][0], dtype=np.float32).reshape(-1, 8, 8) for b in digits.calibration]
    fp32 = export_onnx(model, (torch.from_numpy(rows[0][:1]),), tmp_path / "m.onnx")
    q = quantize_onnx_int8(fp32, tmp_path / "q.onnx", [[r] for r in rows])
    graph = onnx.load(str(q.path)).graph
    softmax = next(n for n in graph.node if n.op_type == "Softmax")
    producers = {o: n.op_type for n in graph.node for o in n.output}
    assert producers[softmax.input[0]] != "DequantizeLinear"  # the masked scores stay float
    x = rows[1]
    got = OnnxRunner(q)([x])[0]
    assert sqnr_db(model(torch.from_numpy(x)).detach().numpy(), got) >= 20.0
