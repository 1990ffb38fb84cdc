"""extract_layer_ops on several architectures, functional ops, fusion rules and the eager fallback."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgetrim.model_ops import LITERT, ONNXRUNTIME, TORCH_EAGER, FusionRules, extract_layer_ops
from edgetrim.types import OpKind


def _summary(ops):
    return [(o.context.kind, o.context.activation, o.in_width, o.out_width) for o in ops]


class FunctionalBlock(nn.Module):
    """Conv-BN then functional relu, a residual ``x + y``, SE-style multiply, mean-pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(self.conv(x)))
        y = torch.sigmoid(self.dw(y))
        z = x + y
        s = z.mean((2, 3), keepdim=True)
        z = z * s
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(z, 1), 1))


def test_functional_ops_and_fusion_per_runtime() -> None:
    m, x = FunctionalBlock(), torch.randn(2, 4, 6, 6)
    eager = _summary(extract_layer_ops(m, (x,)))
    assert eager == [
        (OpKind.CONV2D, "none", 4, 4),
        (OpKind.BATCH_NORM, "none", 4, 4),
        (OpKind.ACTIVATION, "none", 4, 4),
        (OpKind.DEPTHWISE_CONV2D, "none", 4, 4),
        (OpKind.ACTIVATION, "none", 4, 4),
        (OpKind.ADD, "none", 4, 4),
        (OpKind.POOL, "none", 4, 4),
        (OpKind.MUL, "none", 4, 4),
        (OpKind.POOL, "none", 4, 4),
        (OpKind.OTHER, "none", 4, 4),
        (OpKind.LINEAR, "none", 4, 3),
    ]
    ort_ops = extract_layer_ops(m, (x,), fusion=ONNXRUNTIME)
    # ORT: BN folded, relu and sigmoid fused into the convs
    assert _summary(ort_ops)[:3] == [
        (OpKind.CONV2D, "relu", 4, 4),
        (OpKind.DEPTHWISE_CONV2D, "sigmoid", 4, 4),
        (OpKind.ADD, "none", 4, 4),
    ]
    assert ort_ops[0].context.bias  # folded BN gives the conv a bias
    lite = _summary(extract_layer_ops(m, (x,), fusion=LITERT))
    # LiteRT fuses relu but not sigmoid
    assert lite[:3] == [
        (OpKind.CONV2D, "relu", 4, 4),
        (OpKind.DEPTHWISE_CONV2D, "none", 4, 4),
        (OpKind.ACTIVATION, "none", 4, 4),
    ]
    conv = ort_ops[0]
    assert conv.context.spatial == (6, 6) and conv.context.tokens == 2
    assert conv.macs == 2 * 4 * 6 * 6 * 4 * 9
    mul = next(o for o in ort_ops if o.context.kind is OpKind.MUL)
    assert mul.context.variant == "bcast"
    assert [o.context.variant for o in ort_ops if o.context.kind is OpKind.POOL] == [
        "global_avg",
        "global_avg",
    ]


def test_activation_not_fused_when_conv_output_has_two_users() -> None:
    class TwoUsers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 1)

        def forward(self, x):
            y = self.conv(x)
            return F.relu(y) + y

    ops = _summary(extract_layer_ops(TwoUsers(), (torch.randn(1, 3, 4, 4),), fusion=ONNXRUNTIME))
    assert ops == [
        (OpKind.CONV2D, "none", 3, 5),
        (OpKind.ACTIVATION, "none", 5, 5),
        (OpKind.ADD, "none", 5, 5),
    ]


def test_add_relu_fusion_on_litert_only() -> None:
    class Res(nn.Module):
        def forward(self, x, y):
            return torch.relu(x + y)

    a, b = torch.randn(1, 6, 4, 4), torch.randn(1, 6, 4, 4)
    assert _summary(extract_layer_ops(Res(), (a, b), fusion=LITERT)) == [(OpKind.ADD, "relu", 6, 6)]
    assert len(extract_layer_ops(Res(), (a, b), fusion=ONNXRUNTIME)) == 2


def test_mlp_tokens_and_widths() -> None:
    m = nn.Sequential(nn.Linear(10, 7), nn.ReLU6(), nn.Linear(7, 3))
    ops = extract_layer_ops(m, (torch.randn(2, 5, 10),), fusion=LITERT)
    assert _summary(ops) == [(OpKind.LINEAR, "relu6", 10, 7), (OpKind.LINEAR, "none", 7, 3)]
    assert ops[0].context.tokens == 10 and ops[0].macs == 10 * 10 * 7
    # ORT's Gemm does not fuse Clip: relu6 stays its own op (each 3-D Gemm sits between two reshapes)
    ort_ops = extract_layer_ops(m, (torch.randn(2, 5, 10),), fusion=ONNXRUNTIME)
    assert [o.context.kind for o in ort_ops if o.context.variant != "reshape"] == [
        OpKind.LINEAR,
        OpKind.ACTIVATION,
        OpKind.LINEAR,
    ]


class Untraceable(nn.Module):
    """Data-dependent control flow defeats torch.fx; the eager fallback must handle it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = F.relu(self.conv(x))
        if y.sum() > -1e9:  # data-dependent branch
            y = y + y
        return self.fc(y.mean((2, 3)))


def test_eager_fallback_for_untraceable_model() -> None:
    ops = extract_layer_ops(Untraceable(), (torch.randn(1, 3, 5, 5),), fusion=ONNXRUNTIME)
    kinds = [o.context.kind for o in ops]
    assert kinds == [OpKind.CONV2D, OpKind.ADD, OpKind.POOL, OpKind.LINEAR]
    assert ops[0].context.activation == "relu" and ops[0].context.spatial == (5, 5)
    assert ops[1].name.startswith(":add")


class _MhaBlock(nn.Module):
    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.mha, self.norm = mha, nn.LayerNorm(16)

    def forward(self, x):
        return self.norm(x + self.mha(x, x, x, need_weights=False)[0])


def test_attention_ops() -> None:
    # torch's packed attention is priced as its split form (what compress prunes; both measured the
    # same): q / k / v / out linears and the heads' reshapes; the original module is left as it is
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    ops = extract_layer_ops(_MhaBlock(mha), (torch.randn(2, 5, 16),))
    assert [o.context.kind for o in ops if o.context.kind != OpKind.OTHER] == [
        *[OpKind.LINEAR] * 3, OpKind.MATMUL, OpKind.SOFTMAX, OpKind.MATMUL, OpKind.LINEAR, OpKind.ADD,
        OpKind.LAYER_NORM,
    ]  # fmt: skip
    assert [(o.in_width, o.out_width) for o in ops if o.context.kind == OpKind.LINEAR] == [(16, 16)] * 4
    assert any(o.context.variant == "transpose" for o in ops) and mha.in_proj_weight is not None
    # one that cannot be split (learned key / value rows) stays one atomic block
    packed = extract_layer_ops(
        _MhaBlock(nn.MultiheadAttention(16, 4, batch_first=True, add_bias_kv=True)), (torch.randn(2, 5, 16),)
    )
    assert [o.context.kind for o in packed] == [
        OpKind.LINEAR, OpKind.MATMUL, OpKind.SOFTMAX, OpKind.MATMUL, OpKind.LINEAR, OpKind.ADD, OpKind.LAYER_NORM,
    ]  # fmt: skip
    for attention in (ops, packed):  # (B * heads) batched (5 x 4) @ (4 x 5) scores, softmax over them
        scores = next(o for o in attention if o.context.kind == OpKind.MATMUL)
        softmax = next(o for o in attention if o.context.kind == OpKind.SOFTMAX)
        assert (scores.in_width, scores.out_width, scores.context.tokens, scores.context.variant) == (
            4, 5, 5, "batch8",
        )  # fmt: skip
        assert softmax.context.tokens == 2 * 4 * 5
    assert packed[6].context.tokens == 10


@pytest.mark.parametrize("name", ["mlp", "lenet5", "resnet_small", "mobilenetv3_small", "bert_encoder_small"])
def test_zoo_models_extract(name: str) -> None:
    models = pytest.importorskip("edgetrim.examples.models")
    module, example = models.MODEL_ZOO[name]()
    example = (example,) if isinstance(example, torch.Tensor) else tuple(example)
    eager = extract_layer_ops(module, example, fusion=TORCH_EAGER)
    fused = extract_layer_ops(module, example, fusion=ONNXRUNTIME)
    gemm_reshapes = [o for o in fused if o.name.endswith((":reshape_in", ":reshape_out"))]
    assert len(fused) - len(gemm_reshapes) <= len(eager)
    # MACs of convs / linears / matmuls do not depend on fusion
    assert sum(o.macs for o in fused) == sum(o.macs for o in eager) > 0
    for op in fused:
        assert op.in_width >= 1 and op.out_width >= 1
        if op.context.one_axis:
            assert op.in_width == op.out_width, op


def test_fusion_rules_validate() -> None:
    with pytest.raises(ValueError, match="unknown activations"):
        FusionRules(name="x", conv_activations=frozenset({"swish2"}))


def test_token_mean_is_a_global_pool_over_the_sequence() -> None:
    class TokenPool(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(12, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.mean(dim=1))

    ops = extract_layer_ops(TokenPool(), (torch.randn(2, 7, 12),), fusion=ONNXRUNTIME)
    pool = ops[0]
    assert pool.context.kind is OpKind.POOL and pool.context.variant == "global_avg"
    assert (pool.context.spatial, pool.context.tokens, pool.in_width) == ((7, 1), 2, 12)
    assert ops[1].context.kind is OpKind.LINEAR and ops[1].context.tokens == 2


def test_feature_axis_mean_stays_other() -> None:
    class FeatureMean(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=-1)

    (op,) = extract_layer_ops(FeatureMean(), (torch.randn(2, 7, 12),))
    assert op.context.kind is OpKind.OTHER and op.context.variant == "mean"


def test_onnxruntime_linear_on_tokens_runs_between_reshapes() -> None:
    model = nn.Sequential(nn.Linear(12, 6), nn.Linear(6, 4, bias=False))
    x = (torch.randn(1, 5, 12),)
    ort_ops = extract_layer_ops(model, x, fusion=ONNXRUNTIME)
    kinds = [(o.context.kind, o.context.variant, o.in_width) for o in ort_ops]
    assert kinds == [
        (OpKind.OTHER, "reshape", 12),
        (OpKind.LINEAR, "", 12),
        (OpKind.OTHER, "reshape", 6),
        (OpKind.LINEAR, "", 6),  # no bias: a plain MatMul, no reshapes
    ]
    assert all(o.context.tokens == 5 for o in ort_ops)
    assert [o.context.kind for o in extract_layer_ops(model, x, fusion=LITERT)] == [OpKind.LINEAR] * 2
    flat = extract_layer_ops(model, (torch.randn(5, 12),), fusion=ONNXRUNTIME)
    assert [o.context.kind for o in flat] == [OpKind.LINEAR] * 2  # 2-D input: Gemm as is


class ZooGelu(nn.Module):  # an activation class of another zoo (transformers' GELUActivation)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)


class ZooScale(nn.Module):  # a parameter-free module whose forward the classifier has no model for
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.5


class FfnWithZooActivation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.act, self.scale, self.down = nn.Linear(8, 16), ZooGelu(), ZooScale(), nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.scale(self.act(self.up(x))))


class UntraceableFfn(FfnWithZooActivation):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.sum()) > 1e9:  # data-dependent control flow: torch.fx cannot trace it
            return x
        return super().forward(x)


@pytest.mark.parametrize("model", [FfnWithZooActivation, UntraceableFfn], ids=["fx", "eager"])
def test_parameter_free_modules_of_other_zoos_are_priced_by_what_they_call(model) -> None:
    ops = extract_layer_ops(model(), (torch.randn(2, 8),), fusion=ONNXRUNTIME)
    acts = [o for o in ops if o.context.kind == OpKind.ACTIVATION]
    assert [o.context.key() for o in acts] == ["activation/t2/gelu"]
    assert not any(o.context.variant in ("zoogelu", "zooscale") for o in ops)  # no unknown OTHER op


class SamePaddedConvs(nn.Module):
    """TensorFlow-style "same" padding written out: F.pad / nn.ZeroPad2d before convs with padding 0,
    one reflect pad, and a pooler whose one window covers the whole map (kernel > map, ceil_mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.zero = nn.Conv2d(3, 8, 3, stride=2), nn.ZeroPad2d((0, 1, 0, 1))
        self.c2, self.c3 = nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 8, 3)
        self.pool = nn.AvgPool2d(64, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c1(F.pad(x, (0, 1, 0, 1)))
        x = self.c2(self.zero(x))
        x = self.c3(F.pad(x, (1, 1, 1, 1), mode="reflect"))
        return self.pool(x).flatten(1)


@pytest.mark.parametrize("fusion", [ONNXRUNTIME, TORCH_EAGER, LITERT], ids=lambda f: f.name)
def test_zero_pads_fold_into_the_next_conv_where_the_runtime_fuses_them(fusion, caplog) -> None:
    ops = extract_layer_ops(SamePaddedConvs(), (torch.randn(1, 3, 16, 16),), fusion=fusion)
    pads = [o.context.variant for o in ops if o.context.kind == OpKind.OTHER and "pad" in o.context.variant]
    # onnxruntime's PadFusion takes the two zero pads into the convs; the reflect pad stays everywhere
    assert pads == (["pad"] if fusion is ONNXRUNTIME else ["pad", "zeropad2d", "pad"])
    pool = next(o for o in ops if o.context.kind == OpKind.POOL)
    assert pool.context.spatial == (7, 7)
    if fusion is LITERT:  # litert-torch pads the map to the window: not a global pool there
        assert pool.context.variant == "avg" and pool.context.kernel == (64, 64)
        assert "use nn.AdaptiveAvgPool2d(1)" in caplog.text
    else:
        assert pool.context.variant == "global_avg" and "pooling window" not in caplog.text


class FusedAttentionBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.out = nn.Linear(16, 48), nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.view(1, 6, 2, 8).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, 6, 16))


class MaskedAttentionBlock(FusedAttentionBlock):
    """``mask``: "bool", "float", "none", or "export" (a boolean mask only while exporting, as
    transformers builds it: in eager mode it skips an all-true mask)."""

    def __init__(self, mask: str) -> None:
        super().__init__()
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.view(1, 6, 2, 8).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        mask = None
        if self.mask == "bool" or (self.mask == "export" and torch.compiler.is_exporting()):
            mask = torch.arange(6)[None, :] >= 0  # all true, built from constants only
        elif self.mask == "float":
            mask = torch.zeros(6, 6)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(ctx.transpose(1, 2).reshape(1, 6, 16))


@pytest.mark.parametrize(
    ("fusion", "mask", "variant"),
    [(ONNXRUNTIME, "bool", "sdpa"), (ONNXRUNTIME, "export", "sdpa"), (ONNXRUNTIME, "none", ""),
     (ONNXRUNTIME, "float", ""), (TORCH_EAGER, "bool", ""), (LITERT, "bool", "")],
)  # fmt: skip
def test_fused_attention_softmax_is_priced_as_the_runtime_runs_it(fusion, mask: str, variant: str) -> None:
    # torch's exporter guards the softmax (Add, Softmax, IsNaN, Where) only for a boolean mask
    ops = extract_layer_ops(MaskedAttentionBlock(mask), (torch.randn(1, 6, 16),), fusion=fusion)
    softmax = [o for o in ops if o.context.kind == OpKind.SOFTMAX]
    assert [(o.context.tokens, o.context.variant, o.in_width) for o in softmax] == [(12, variant, 6)]
    assert [o.context.variant for o in ops if o.context.kind == OpKind.MATMUL] == ["batch2", "batch2"]
    # the mask is computed from constants: folded by the exporter, so not priced
    assert not [o for o in ops if o.context.variant in ("ge", "arange", "zeros")]


@pytest.mark.parametrize("mask", ["none", "export"])
def test_the_softmax_guard_is_priced_where_the_exporter_writes_it(mask: str, tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    from edgetrim.profiler.targets.onnxruntime_target import export_onnx_for_timing

    block, x = MaskedAttentionBlock(mask).eval(), torch.randn(1, 6, 16)
    export_onnx_for_timing(block, (x,), tmp_path / "m.onnx")
    guards = [n for n in onnx.load(tmp_path / "m.onnx").graph.node if n.op_type == "IsNaN"]
    (softmax,) = [
        o for o in extract_layer_ops(block, (x,), fusion=ONNXRUNTIME) if o.context.kind == OpKind.SOFTMAX
    ]
    assert (softmax.context.variant == "sdpa") == bool(guards) == (mask == "export")


def test_extraction_runs_the_export_branch_and_restores_the_flag() -> None:
    seen = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.compiler.is_exporting())
            return torch.relu(x)

    extract_layer_ops(Probe(), (torch.randn(2, 3),))
    assert seen and all(seen) and not torch.compiler.is_exporting()


class ConstantBranches(nn.Module):
    """A positional table computed in forward from shapes and parameters only, added to the input."""

    def __init__(self) -> None:
        super().__init__()
        self.freq = nn.Parameter(torch.ones(8))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(x.shape[1]).float()[:, None] * self.freq  # (S, 8): no input values in it
        return self.act(x + pos.sin())


@pytest.mark.parametrize("front_end", ["fx", "eager"])
def test_ops_computed_from_constants_only_are_not_priced(front_end: str, monkeypatch) -> None:
    import edgetrim.model_ops as mo

    if front_end == "eager":  # the path of models torch.fx cannot trace
        monkeypatch.setattr(mo, "_calls_fx", lambda *a: (_ for _ in ()).throw(RuntimeError("untraceable")))
    ops = extract_layer_ops(ConstantBranches(), (torch.randn(1, 5, 8),), fusion=ONNXRUNTIME)
    assert [(o.context.kind, o.context.variant) for o in ops] == [
        (OpKind.ADD, ""),
        (OpKind.ACTIVATION, "relu"),
    ]
