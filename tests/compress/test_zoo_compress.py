"""Every zoo architecture compresses end to end and meets a latency budget (slow: one run each)."""

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
