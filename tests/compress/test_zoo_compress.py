"""Every zoo architecture compresses end to end and meets a latency budget (slow: one run each), and so
does a transformers BERT on token ids (another zoo's layout: mapping output, fused attention)."""

from __future__ import annotations

import pytest
import torch

from edgetrim.compress.api import compress, model_latency_ms
from edgetrim.compress.config import Block, CompressConfig
from edgetrim.examples.data import digits_loaders, digits_tokens_loaders
from edgetrim.examples.models import MODEL_ZOO
from edgetrim.model_ops import extract_layer_ops, fusion_for_runtime

ZOO = sorted(MODEL_ZOO)


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO, ids=ZOO)
def test_zoo_model_compresses_to_a_budget(name: str, make_table) -> None:
    torch.manual_seed(0)
    model, example = MODEL_ZOO[name]()
    if name.startswith("bert"):
        train, val = digits_tokens_loaders()
    else:
        train, val = digits_loaders(flat=name.startswith(("mlp", "lenet_300")))
    ops = extract_layer_ops(model, example, fusion=fusion_for_runtime("onnxruntime"))
    table = make_table(ops)
    dense_ms = model_latency_ms(table, ops)
    blocks = {Block.PRUNE, Block.LOWRANK} if name.startswith("bert") else {Block.PRUNE}
    cfg = CompressConfig(budget_ms=0.9 * dense_ms, blocks=frozenset(blocks), epochs=1, finetune_epochs=0)
    res = compress(model, example, cfg, table=table, train_loader=train, val_loader=val)
    assert res.report.predicted_ms <= 0.9 * dense_ms + 1e-12
    with torch.no_grad():
        assert res.model(example[0]).shape == model(example[0]).shape


def test_transformers_bert_on_token_ids_compresses_to_a_budget(make_table) -> None:
    """Another zoo's encoder (a mapping output, integer ids, fused attention) through compress: the
    budget is met with whole heads removed, and the result runs on ids as the dense did."""
    transformers = pytest.importorskip("transformers")
    from sklearn.datasets import load_digits
    from torch.utils.data import DataLoader, TensorDataset

    from edgetrim.model_spec import LogitsOutput

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=17, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, num_labels=10,
    )  # fmt: skip
    model = LogitsOutput(transformers.BertForSequenceClassification(config))
    x, y = load_digits(return_X_y=True)
    ids, labels = torch.tensor(x[:600], dtype=torch.long), torch.tensor(y[:600])  # pixel intensities 0..16
    train = DataLoader(TensorDataset(ids[:400], labels[:400]), batch_size=50, shuffle=True)
    val = DataLoader(TensorDataset(ids[400:], labels[400:]), batch_size=200)
    example = (ids[:1],)
    ops = extract_layer_ops(model, example, fusion=fusion_for_runtime("onnxruntime"))
    table = make_table(ops)
    dense_ms = model_latency_ms(table, ops)
    cfg = CompressConfig(budget_ms=0.85 * dense_ms, epochs=1, finetune_epochs=1)
    res = compress(model, example, cfg, table=table, train_loader=train, val_loader=val)
    assert res.report.predicted_ms <= 0.85 * dense_ms + 1e-12
    small = res.model.model.bert.encoder.layer
    widths = [
        (layer.attention.self.num_attention_heads, layer.intermediate.dense.out_features) for layer in small
    ]
    assert sum(h for h, _ in widths) < 8  # whole heads went (3 and 2 of 4 here)
    for layer in small:
        attn = layer.attention.self
        assert attn.query.out_features == attn.all_head_size == attn.num_attention_heads * 8
    with torch.no_grad():
        assert res.model(ids[:3]).shape == (3, 10)


@pytest.mark.parametrize("family", ["regnet", "levit", "swin"])
def test_other_transformers_families_compress_to_a_budget(family: str, make_table) -> None:
    """Grouped convs (RegNet), attention-subsample blocks (LeViT) and windowed attention with a
    per-head relative-position bias table (Swin) through compress on random data."""
    from torch.utils.data import DataLoader, TensorDataset

    from edgetrim.errors import BudgetError
    from tests.compress.test_graph_attention import _hf

    model, x = _hf(family)
    torch.manual_seed(0)
    xs, ys = torch.randn(32, *x.shape[1:]), torch.randint(0, 2, (32,))
    train = DataLoader(TensorDataset(xs, ys), batch_size=16)
    ops = extract_layer_ops(model, (x,), fusion=fusion_for_runtime("onnxruntime"))
    table = make_table(ops)
    dense_ms = model_latency_ms(table, ops)
    with pytest.raises(BudgetError) as info:  # where the smallest structure lies on this table
        compress(
            model,
            (x,),
            CompressConfig(budget_ms=1e-6, epochs=1),
            table=table,
            train_loader=train,
            val_loader=train,
        )
    budget = 0.5 * (dense_ms + info.value.smallest)
    cfg = CompressConfig(budget_ms=budget, epochs=1, finetune_epochs=0, gate_lr=0.2)
    res = compress(model, (x,), cfg, table=table, train_loader=train, val_loader=train)
    assert res.report.predicted_ms <= budget + 1e-12 < dense_ms
    assert sum(res.report.widths_after.values()) < sum(res.report.widths_before.values())
    with torch.no_grad():
        assert res.model(xs[:2]).shape == model(xs[:2]).shape


def test_gpt2_compresses_through_its_conv1d_projections(make_table) -> None:
    """GPT-2 keeps its projections in Conv1D (transposed linears), q / k / v in one projection split
    by width, and a generation cache: compress works on a copy with nn.Linear projections and no
    cache, prunes MLP units and whole heads (each head's q, k and v blocks together) and leaves the
    caller's model as it was."""
    from torch.utils.data import DataLoader, TensorDataset

    from edgetrim.errors import BudgetError
    from tests.compress.test_graph_attention import _hf

    model, x = _hf("gpt2")
    torch.manual_seed(0)
    ids, labels = torch.randint(0, 100, (32, x.shape[1])), torch.randint(0, 2, (32,))
    train = DataLoader(TensorDataset(ids, labels), batch_size=16)
    ops = extract_layer_ops(model, (x,), fusion=fusion_for_runtime("onnxruntime"))
    conv1d = [o for o in ops if o.name.endswith("mlp.c_fc")]
    assert [(o.context.kind.value, o.in_width, o.out_width) for o in conv1d] == [("linear", 32, 128)] * 2
    table = make_table(ops)
    dense_ms = model_latency_ms(table, ops)
    with pytest.raises(BudgetError) as info:  # the smallest structure on this table
        compress(
            model, (x,), CompressConfig(budget_ms=1e-6), table=table, train_loader=train, val_loader=train
        )
    budget = 0.5 * (info.value.smallest + dense_ms)
    cfg = CompressConfig(budget_ms=budget, epochs=1, finetune_epochs=0, gate_lr=0.2)
    res = compress(model, (x,), cfg, table=table, train_loader=train, val_loader=train)
    assert res.report.predicted_ms <= budget
    widths = res.report.widths_after
    heads = {f"model.transformer.h.{i}.attn.c_attn (heads of 8)" for i in range(2)}
    assert set(widths) == {f"model.transformer.h.{i}.mlp.c_fc" for i in range(2)} | heads
    assert sum(widths.values()) < sum(res.report.widths_before.values())
    for i, layer in enumerate(res.model.model.transformer.h):
        kept = widths[f"model.transformer.h.{i}.attn.c_attn (heads of 8)"]
        attn = layer.attn
        assert isinstance(attn.c_attn, torch.nn.Linear) and attn.c_attn.out_features == 3 * kept
        assert attn.c_proj.in_features == attn.split_size == kept == attn.num_heads * 8
        assert layer.mlp.c_fc.out_features == widths[f"model.transformer.h.{i}.mlp.c_fc"]
    assert type(model.model.transformer.h[0].mlp.c_fc).__name__ == "Conv1D" and model.model.config.use_cache
    with torch.no_grad():
        assert res.model(ids[:2]).shape == model(ids[:2]).shape
