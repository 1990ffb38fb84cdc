"""``LatencyModel.whole_ms``: the whole-model prediction at any group widths, without materialising.

compress fits widths and checks budgets with it, so it must equal the table's prediction of the
materialised model itself, on tables where that prediction is more than a per-op sum (onnxruntime's
NCHWc layout: reorders at region boundaries and the ones blocked ops shed, fused Adds and
activations, per-node dispatch, invoke overhead).
"""

from __future__ import annotations

import random

import pytest
import torch

from edgetrim.compress.api import default_extractor, model_latency_ms, width_limits
from edgetrim.compress.gates import ChannelGates
from edgetrim.compress.graph import find_channel_groups
from edgetrim.compress.latency_model import LatencyModel, bind_layer_terms, context_at
from edgetrim.examples.models import MODEL_ZOO
from edgetrim.types import OpContext, OpKind

ZOO = ["digits_cnn", "resnet_small", "mobilenetv3_small", "efficientnet_b0_small", "mlp_bn"]


def _bound(name: str, make_table, nchwc_layout, *, chains: bool):
    torch.manual_seed(0)
    kwargs = (
        {"image_size": 16} if name in ("resnet_small", "mobilenetv3_small", "efficientnet_b0_small") else {}
    )
    model, example = MODEL_ZOO[name](**kwargs)
    model.eval()
    extract = default_extractor("onnxruntime")
    table = nchwc_layout(make_table(extract(model, example)), 3e-6, chains=chains)
    table.meta |= {
        "per_op_overhead_ms": 0.001,
        "invoke_overhead_ms": 0.01,
        "invoke_overhead_subtracted": True,
    }
    groups = find_channel_groups(model, example)
    cost = LatencyModel(
        table, bind_layer_terms(model, example, groups, extract=extract), [g.unit for g in groups]
    )
    return model, example, extract, table, groups, cost


@pytest.mark.parametrize("name", ZOO)
def test_whole_ms_is_the_prediction_of_the_materialised_model(name, make_table, nchwc_layout) -> None:
    model, example, extract, table, groups, cost = _bound(name, make_table, nchwc_layout, chains=True)
    sizes = [g.size for g in groups]
    assert cost.whole_ms(sizes) == pytest.approx(model_latency_ms(table, extract(model, example)), rel=1e-9)
    min_w, align = width_limits(groups, table)
    rng = random.Random(0)
    gates = ChannelGates(model, groups)
    gaps = []
    for trial in range(4):
        # aligned widths as compress' final step chooses them, and unaligned ones (other layouts)
        step = [a if trial % 2 == 0 else g.unit for a, g in zip(align, groups)]
        widths = [
            max(lo, min(size, rng.randrange(lo, size + 1, s) if size > lo else size))
            for lo, size, s in zip(min_w, sizes, step)
        ]
        small = gates.materialize(example, widths=widths)
        own = model_latency_ms(table, extract(small, example))
        assert cost.whole_ms(widths) == pytest.approx(own, rel=1e-9), widths
        gaps.append(own - cost.hard_ms(widths))
    gates.detach_hooks()
    # the layout makes the whole prediction more than a constant away from the per-op sum
    if name != "mlp_bn":
        assert max(gaps) - min(gaps) > 1e-4


def test_whole_ms_is_memoised_and_ignores_the_width_sequence_type(make_table, nchwc_layout) -> None:
    _, _, _, _, groups, cost = _bound("digits_cnn", make_table, nchwc_layout, chains=False)
    widths = [g.size // 2 for g in groups]
    first = cost.whole_ms(widths)
    assert cost.whole_ms(tuple(widths)) == first
    assert len(cost._whole) == 1


def test_whole_ms_prices_attention_ops_at_the_context_of_the_heads_kept(make_table, nchwc_layout) -> None:
    """Attention matmuls / softmax change *context* with the head count; the bound model builds that
    context at any head count, so its price is the materialised model's own (here from the
    predictor's per-element fit: the table holds the dense contexts only)."""
    model, example, extract, table, groups, cost = _bound(
        "bert_encoder_small", make_table, nchwc_layout, chains=False
    )
    sizes = [g.size for g in groups]
    assert cost.whole_ms(sizes) == pytest.approx(model_latency_ms(table, extract(model, example)), rel=1e-9)
    heads = next(i for i, g in enumerate(groups) if g.unit > 1)
    scaled = [k for k, t in enumerate(cost.terms) if t.scale is not None and t.scale[0] == heads]
    assert scaled
    half = list(sizes)
    half[heads] = sizes[heads] // 2
    gates = ChannelGates(model, groups)
    small = gates.materialize(example, widths=half)
    gates.detach_hooks()
    real = {o.name: o.context for o in extract(small, example)}
    for k in scaled:
        ctx = cost.op_at(k, half).context
        assert ctx == real[cost.terms[k].op.name] and ctx != cost.terms[k].op.context
    assert cost.whole_ms(half) == pytest.approx(model_latency_ms(table, extract(small, example)), rel=1e-9)
    assert cost.whole_ms(half) < cost.whole_ms(sizes)


def test_context_at_follows_every_number_that_changes_with_the_heads() -> None:
    dense = OpContext(OpKind.OTHER, spatial=(8, 16), tokens=64, variant="batch8")
    probe = OpContext(OpKind.OTHER, spatial=(7, 16), tokens=56, variant="batch7")
    assert context_at(dense, probe, 6) == OpContext(
        OpKind.OTHER, spatial=(2, 16), tokens=16, variant="batch2"
    )
    assert context_at(dense, probe, 0) == dense
