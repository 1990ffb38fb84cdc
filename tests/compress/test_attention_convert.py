"""torch's own ``nn.MultiheadAttention`` split into q/k/v/out Linears (``edgetrim.compress.attention``).

The split module must compute what torch computes (layouts, biases, kdim/vdim, every mask form, the
``is_causal`` hint, returned weights, dropout), keep torch's transformer layers on their normal path,
give whole-head channel groups, and let ``compress`` remove heads from an ``nn.TransformerEncoder``
classifier end to end (run folder and ONNX export included). Small models, CPU, nothing downloaded.
"""

from __future__ import annotations

import copy
import itertools
import logging

import numpy as np
import pytest
import torch
from torch import nn

from edgetrim.compress import api
from edgetrim.compress.api import compress, model_latency_ms, save_result
from edgetrim.compress.attention import SplitMultiheadAttention, convert_multihead_attention
from edgetrim.compress.config import CompressConfig
from edgetrim.compress.gates import ChannelGates
from edgetrim.compress.graph import find_channel_groups
from edgetrim.compress.latency_model import default_extractor
from edgetrim.compress.run_folder import load_run
from edgetrim.errors import BudgetError
from edgetrim.examples.data import digits_tokens_loaders
from edgetrim.model_ops import extract_layer_ops, fusion_for_runtime
from edgetrim.types import OpKind

from .test_graph_attention import _random_gates_materialise

E, H, B, L, S = 16, 4, 3, 5, 7  # embed width, heads, batch, target and source lengths


def _pair(**kw) -> tuple[nn.MultiheadAttention, SplitMultiheadAttention]:
    """A seeded nn.MultiheadAttention (biases non-zero, so a mixed-up bias shows) and its split copy."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, **kw).eval()
    with torch.no_grad():
        for p in (mha.in_proj_bias, mha.out_proj.bias):
            if p is not None:
                p.normal_()
    return mha, SplitMultiheadAttention.from_torch(mha)


def _masks() -> dict[str, dict[str, torch.Tensor]]:
    """Every mask form torch takes; bool masks leave key 0 allowed so no row is fully masked."""
    g = torch.Generator().manual_seed(1)
    padding = torch.zeros(B, S, dtype=torch.bool)
    padding[0, -2:] = True
    padding[2, 1] = True
    bool2 = torch.rand(L, S, generator=g) > 0.6
    bool2[:, 0] = False
    bool3 = torch.rand(B * H, L, S, generator=g) > 0.6
    bool3[..., 0] = False
    return {
        "none": {},
        "padding_bool": {"key_padding_mask": padding},
        "padding_float": {"key_padding_mask": torch.randn(B, S, generator=g)},
        "attn_2d_bool": {"attn_mask": bool2},
        "attn_2d_float": {"attn_mask": torch.randn(L, S, generator=g)},
        "attn_3d_bool": {"attn_mask": bool3},
        "attn_3d_float": {"attn_mask": torch.randn(B * H, L, S, generator=g)},
        "both_bool": {"attn_mask": bool2, "key_padding_mask": padding},
        "both_float": {"attn_mask": torch.randn(L, S, generator=g), "key_padding_mask": padding.float()},
    }  # fmt: skip


def _assert_same(want: tuple, got: tuple) -> None:
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    if want[1] is None:
        assert got[1] is None
    else:
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_dims", [False, True], ids=["same_dims", "kdim_vdim"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "seq_first"])
def test_split_module_computes_what_torch_computes(batch_first: bool, bias: bool, kv_dims: bool) -> None:
    kdim, vdim = (12, 10) if kv_dims else (None, None)
    mha, split = _pair(bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first)
    assert (split.q_proj.out_features, split.k_proj.in_features, split.v_proj.in_features) == (
        E,
        kdim or E,
        vdim or E,
    )

    def seq(n: int, d: int) -> torch.Tensor:
        return torch.randn(B, n, d) if batch_first else torch.randn(n, B, d)

    q, k, v = seq(L, E), seq(S, kdim or E), seq(S, vdim or E)
    for (_, masks), (need, average) in itertools.product(
        _masks().items(), [(False, True), (True, True), (True, False)]
    ):
        kw = {"need_weights": need, "average_attn_weights": average, **masks}
        want, got = mha(q, k, v, **kw), split(q, k, v, **kw)
        _assert_same(want, got)
        if need:
            assert got[1].shape == ((B, L, S) if average else (B, H, L, S))
        with torch.no_grad():  # torch's fused fast path (eval, no grad) against the split module
            _assert_same(mha(q, k, v, **kw), split(q, k, v, **kw))


@pytest.mark.filterwarnings("ignore:Support for mismatched")  # a bool padding with a float mask
@pytest.mark.parametrize("batch_first", [True, False])
def test_causal_hint_self_attention_and_unbatched_inputs(batch_first: bool) -> None:
    mha, split = _pair(batch_first=batch_first)
    x = torch.randn(B, L, E) if batch_first else torch.randn(L, B, E)
    causal = nn.Transformer.generate_square_subsequent_mask(L)
    no_padding = torch.zeros(B, L, dtype=torch.bool)
    for need, padding in itertools.product([False, True], [None, no_padding]):
        kw = {"attn_mask": causal, "is_causal": True, "need_weights": need, "key_padding_mask": padding}
        _assert_same(mha(x, x, x, **kw), split(x, x, x, **kw))
    for module in (mha, split):  # the hint alone is refused, as torch refuses it
        with pytest.raises(RuntimeError, match="Need attn_mask"):
            module(x, x, x, is_causal=True)
    one = torch.randn(L, E)  # unbatched: (L, E), padding (S,), per-head mask (H, L, S)
    kw = {
        "key_padding_mask": torch.tensor([False, False, True, False, True]),
        "attn_mask": torch.randn(H, L, L),
    }
    for need, average in [(False, True), (True, True), (True, False)]:
        out = split(one, one, one, need_weights=need, average_attn_weights=average, **kw)
        _assert_same(mha(one, one, one, need_weights=need, average_attn_weights=average, **kw), out)
        assert out[0].shape == (L, E)


@pytest.mark.parametrize("need_weights", [True, False])
def test_dropout_on_the_attention_weights_in_training(need_weights: bool) -> None:
    mha, split = _pair(dropout=0.5, batch_first=True)
    mha.train(), split.train()
    x = torch.randn(B, L, E)
    torch.manual_seed(3)
    want = mha(x, x, x, need_weights=need_weights, average_attn_weights=False)
    torch.manual_seed(3)
    got = split(x, x, x, need_weights=need_weights, average_attn_weights=False)
    _assert_same(want, got)  # the same dropout mask: the same draws on the same (B, H, L, S) weights
    if need_weights:
        assert bool((got[1] == 0).any()) and not torch.allclose(got[1].sum(-1), torch.ones(B, H, L))
    split.eval()
    assert not torch.equal(split(x, x, x)[0], got[0])  # no dropout in eval


def _encoder(batch_first: bool, norm_first: bool, **kw) -> nn.TransformerEncoder:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        E, H, dim_feedforward=24, dropout=0.0, batch_first=batch_first, norm_first=norm_first
    )
    return nn.TransformerEncoder(layer, num_layers=2, **kw)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True", "ignore:The PyTorch API of nested tensors")
@pytest.mark.parametrize("norm_first", [False, True], ids=["post_norm", "pre_norm"])
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "seq_first"])
def test_transformer_encoder_converted_gives_the_same_outputs(batch_first: bool, norm_first: bool) -> None:
    enc = _encoder(batch_first, norm_first)  # enable_nested_tensor left at its default
    split = copy.deepcopy(enc)
    assert convert_multihead_attention(split) == ["layers.0.self_attn", "layers.1.self_attn"]
    assert all(type(layer.self_attn) is SplitMultiheadAttention for layer in split.layers)
    assert not split.use_nested_tensor  # its padded-batch fast path needs the packed projection
    x = torch.randn(B, L, E) if batch_first else torch.randn(L, B, E)
    padding = torch.zeros(B, L, dtype=torch.bool)
    padding[1, -2:] = True
    valid = ~padding if batch_first else ~padding.T  # where a token is
    causal = nn.Transformer.generate_square_subsequent_mask(L)
    cases = [{}, {"src_key_padding_mask": padding}, {"mask": causal, "is_causal": True}]
    for training, grad, kw in itertools.product([False, True], [False, True], cases):
        enc.train(training), split.train(training)
        with torch.set_grad_enabled(grad):
            want, got = enc(x, **kw), split(x, **kw)
        # torch's nested-tensor path (eval, no grad, padding) writes zeros at padded positions; the
        # tokens themselves must agree everywhere
        torch.testing.assert_close(got[valid], want[valid], rtol=1e-5, atol=1e-5)
        if "src_key_padding_mask" not in kw:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
def test_decoder_and_full_transformer_convert_cross_attention() -> None:
    torch.manual_seed(0)
    model = nn.Transformer(E, H, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=24, dropout=0.0)
    model.eval()
    split = copy.deepcopy(model)
    names = convert_multihead_attention(split)
    assert names == [
        "encoder.layers.0.self_attn",
        "decoder.layers.0.self_attn",
        "decoder.layers.0.multihead_attn",
    ]
    src, tgt = torch.randn(S, B, E), torch.randn(L, B, E)
    causal = nn.Transformer.generate_square_subsequent_mask(L)
    with torch.no_grad():
        want = model(src, tgt, tgt_mask=causal, tgt_is_causal=True)
        got = split(src, tgt, tgt_mask=causal, tgt_is_causal=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_modules_that_cannot_be_split_exactly_are_left_with_a_reason(caplog) -> None:
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.plain = nn.MultiheadAttention(E, H)
            self.bias_kv = nn.MultiheadAttention(E, H, add_bias_kv=True)
            self.zero_attn = nn.MultiheadAttention(E, H, add_zero_attn=True)
            self.again = self.plain  # one module under two names: one split module for both

    model = Mixed()
    with caplog.at_level(logging.INFO, logger="edgetrim.compress.attention"):
        names = convert_multihead_attention(model)
    assert names == ["plain"]
    assert isinstance(model.plain, SplitMultiheadAttention) and model.again is model.plain
    assert type(model.bias_kv) is nn.MultiheadAttention and type(model.zero_attn) is nn.MultiheadAttention
    assert "'bias_kv' left as it is (its heads stay dense): add_bias_kv" in caplog.text
    assert "'zero_attn' left as it is (its heads stay dense): add_zero_attn" in caplog.text
    with pytest.raises(ValueError, match="add_bias_kv"):
        SplitMultiheadAttention.from_torch(model.bias_kv)


class TorchEncoderClassifier(nn.Module):
    """Digits rows as 8 tokens through torch's nn.TransformerEncoder; faint rows are padding
    (``src_key_padding_mask``, about one row in five), left out of the mean over tokens; 10 logits."""

    def __init__(self, *, hidden: int = 32, heads: int = 4, ffn: int = 32, batch_first: bool = True) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Linear(8, hidden)
        self.pos = nn.Parameter(torch.randn(1, 8, hidden) * 0.02)
        layer = nn.TransformerEncoderLayer(hidden, heads, ffn, dropout=0.0, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2)
        self.classifier = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = torch.arange(x.shape[1], device=x.device) == 0
        padding = (x.mean(-1) < -0.3) & ~first  # (B, S); the first row always attends
        h = self.embed(x) + self.pos  # (B, S, hidden)
        if self.batch_first:
            h = self.encoder(h, src_key_padding_mask=padding)
        else:
            h = self.encoder(h.transpose(0, 1), src_key_padding_mask=padding).transpose(0, 1)
        keep = (~padding).unsqueeze(-1).to(h.dtype)  # (B, S, 1)
        return self.classifier((h * keep).sum(1) / keep.sum(1))


def _digit_rows(n: int) -> torch.Tensor:
    x, _ = next(iter(digits_tokens_loaders()[1]))
    return x[:n]  # (n, 8, 8)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "seq_first"])
def test_converted_encoder_gives_whole_head_groups(batch_first: bool) -> None:
    torch.manual_seed(0)
    model = TorchEncoderClassifier(batch_first=batch_first).eval()
    x = _digit_rows(4)
    assert all(g.unit == 1 for g in find_channel_groups(model, (x[:1],)))  # packed: heads left dense
    convert_multihead_attention(model)
    groups = find_channel_groups(model, (x[:1],))
    heads = sorted((g.owner, g.size, g.unit) for g in groups if g.unit > 1)
    assert heads == [(f"encoder.layers.{i}.self_attn", 32, 8) for i in range(2)]
    for g in groups:
        if g.unit > 1:
            prefix = g.owner + "."
            assert set(g.names()) == {prefix + p for p in ("q_proj", "k_proj", "v_proj", "out_proj")}
    assert {g.root_name for g in groups if g.unit == 1} == {f"encoder.layers.{i}.linear1" for i in range(2)}
    small = _random_gates_materialise(model, x[:1], x)  # masked and materialised agree
    for layer in small.encoder.layers:
        attn = layer.self_attn
        widths = {attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features}
        assert widths == {attn.out_proj.in_features} == {attn.num_heads * 8} and attn.head_dim == 8


class PerHeadBias(nn.Module):
    """Self-attention with a fixed per-head additive bias, passed as a 3-D mask built for 4 heads."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, E)
        self.attn = nn.MultiheadAttention(E, H, batch_first=True)
        self.register_buffer("bias", torch.randn(H, 8, 8))  # (heads, S, S)
        self.head = nn.Linear(E, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        mask = self.bias.repeat(x.shape[0], 1, 1)  # (B*4, S, S) whatever heads the module has left
        return self.head(self.attn(h, h, h, attn_mask=mask, need_weights=False)[0].mean(1))


def test_a_per_head_mask_follows_the_heads_left() -> None:
    torch.manual_seed(0)
    model = PerHeadBias().eval()
    convert_multihead_attention(model)
    x = torch.randn(1, 8, 8)
    groups = find_channel_groups(model, (x,))
    gi = next(i for i, g in enumerate(groups) if g.unit > 1)
    gates = ChannelGates(model, groups)
    batch = torch.randn(3, 8, 8)
    with torch.no_grad():
        gates.alphas[gi].copy_(torch.tensor([0.0, 1.0, 0.0, 0.7]))  # heads 1 and 3 stay
        masked = model(batch)
        small = gates.materialize((x,))
    assert small.attn.head_index == (1, 3) and small.attn.num_heads == 2
    with torch.no_grad():
        torch.testing.assert_close(small(batch), masked, rtol=1e-5, atol=1e-5)
        per_left = small.attn(small.embed(batch), small.embed(batch), small.embed(batch), need_weights=False,
                              attn_mask=small.bias[[1, 3]].repeat(3, 1, 1))[0]  # fmt: skip
        per_all = small.attn(small.embed(batch), small.embed(batch), small.embed(batch), need_weights=False,
                             attn_mask=small.bias.repeat(3, 1, 1))[0]  # fmt: skip
    torch.testing.assert_close(per_left, per_all)  # a mask for the heads left is taken as it is


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
def test_split_attention_is_priced_op_by_op() -> None:
    torch.manual_seed(0)
    model = TorchEncoderClassifier(hidden=32, heads=4)
    x = _digit_rows(1)
    fusion = fusion_for_runtime("onnxruntime")
    packed = extract_layer_ops(model, (x,), fusion=fusion)
    convert_multihead_attention(model)
    split = extract_layer_ops(model, (x,), fusion=fusion)
    # the encoder is traced through, not priced as one opaque op
    assert not [o for o in packed + split if o.context.variant == "transformerencoder"]

    def attn_ops(ops, kind):
        return [o for o in ops if "layers.0.self_attn" in o.name and o.context.kind == kind]

    linears = attn_ops(split, OpKind.LINEAR)
    assert [(o.name.rsplit(".", 1)[-1], o.in_width, o.out_width) for o in linears] == [
        (p, 32, 32) for p in ("q_proj", "k_proj", "v_proj", "out_proj")
    ]
    assert sum(o.macs for o in linears) == sum(o.macs for o in attn_ops(packed, OpKind.LINEAR))
    matmuls = [(o.context, o.in_width, o.out_width) for o in attn_ops(split, OpKind.MATMUL)]
    assert matmuls == [(o.context, o.in_width, o.out_width) for o in attn_ops(packed, OpKind.MATMUL)]
    # no mask: the exporter writes a plain Softmax (the guarded one only for a boolean mask)
    assert [o.context.variant for o in attn_ops(split, OpKind.SOFTMAX)] == [""]
    assert matmuls[0][0].variant == "batch4"


def test_compress_removes_whole_heads_of_a_torch_encoder(make_table, tmp_path, monkeypatch) -> None:
    ort = pytest.importorskip("onnxruntime")
    from edgetrim.deploy.onnx_export import export_onnx

    torch.manual_seed(0)
    model = TorchEncoderClassifier(hidden=32, heads=4, ffn=32).eval()
    train, val = digits_tokens_loaders(batch_size=128)
    example = (_digit_rows(1),)
    extract = default_extractor("onnxruntime")
    split = copy.deepcopy(model)
    convert_multihead_attention(split)
    table = make_table(extract(split, example))  # the table profiled from the split model's ops
    dense_ms = model_latency_ms(table, extract(split, example))

    made: list[tuple[ChannelGates, dict]] = []  # the gates and the last materialisation's arguments

    class RecordingGates(ChannelGates):
        def materialize(self, example_inputs, **kw):
            made.append((self, kw))
            return super().materialize(example_inputs, **kw)

    monkeypatch.setattr(api, "ChannelGates", RecordingGates)
    with pytest.raises(BudgetError) as floor:  # the smallest reachable latency (checked before training)
        compress(
            model, example, CompressConfig(budget_ms=1e-6), table=table, train_loader=train, val_loader=val
        )
    budget = floor.value.smallest + 0.3 * (dense_ms - floor.value.smallest)  # FFN units alone cannot reach it
    cfg = CompressConfig(budget_ms=budget, epochs=1, finetune_epochs=0, lr=1e-3, gate_lr=0.1)
    res = compress(model, example, cfg, table=table, train_loader=train, val_loader=val)

    assert res.report.dense_predicted_ms == pytest.approx(dense_ms)
    assert res.report.predicted_ms <= budget + 1e-12
    assert isinstance(model.encoder.layers[0].self_attn, nn.MultiheadAttention)  # the input is untouched
    layers = res.model.encoder.layers
    heads = [layer.self_attn.num_heads for layer in layers]
    assert sum(heads) < 8, heads  # whole heads went
    for layer in layers:
        attn = layer.self_attn
        assert isinstance(attn, SplitMultiheadAttention) and attn.head_dim == 8
        widths = {attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features}
        assert widths == {attn.out_proj.in_features} == {attn.num_heads * 8}
        assert len(attn.head_index) == attn.num_heads
    assert res.report.widths_after["encoder.layers.0.self_attn.v_proj (heads of 8)"] == heads[0] * 8

    batch = next(iter(val))[0][:64]
    gates, kw = made[-1]  # the gated training model with the removed units' gates at zero
    work = gates._model_ref[0].eval()
    keep = gates.keep_indices(kw["widths"], scores=kw["scores"])
    with torch.no_grad():
        for g, alpha in zip(gates.groups, gates.alphas):
            dropped = torch.ones(g.num_units, dtype=torch.bool)
            dropped[keep[g.id][:: g.unit] // g.unit] = False
            alpha[dropped] = 0.0
        masked, got = work(batch), res.model.eval()(batch)
    torch.testing.assert_close(got, masked, rtol=1e-5, atol=1e-5)

    run = load_run(save_result(tmp_path / "run", res))
    with torch.no_grad():
        torch.testing.assert_close(run.model(batch), got, rtol=0, atol=0)
    art = export_onnx(res.model, example, tmp_path / "small.onnx")
    sess = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    onnx_out = sess.run(None, {sess.get_inputs()[0].name: batch.numpy()})[0]
    np.testing.assert_allclose(onnx_out, got.numpy(), rtol=1e-4, atol=1e-5)
