"""Tests of the example data, model zoo and training loop (edgetrim.examples)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgetrim.errors import EdgetrimError, ModelSpecError
from edgetrim.examples import data, models
from edgetrim.examples.training import evaluate_accuracy, train_classifier

ZOO_NAMES = sorted(models.MODEL_ZOO)

# Varied and odd widths every factory must accept (what benchmarks sweep).
ODD_WIDTHS: dict[str, dict] = {
    "mlp": {"widths": (37, 61, 5)},
    "mlp_bn": {"hidden": 37},
    "lenet5": {"channels": (5, 13), "fc": (61, 37)},
    "lenet_300_100": {"widths": (301, 99)},
    "digits_cnn": {"widths": (37, 61, 19, 7)},
    "cnn3": {"widths": (7, 37, 61)},
    "resnet_small": {"widths": (13, 37, 61), "blocks_per_stage": 2},
    "mobilenetv3_small": {"width_mult": 0.77, "divisor": 1},
    "efficientnet_b0_small": {"width_mult": 0.6, "divisor": 1, "head_channels": 61},
    "bert_encoder_small": {"hidden": 37, "num_heads": 3, "head_dim": 11, "ffn": 61, "num_layers": 1},
}


def test_odd_width_table_covers_the_zoo() -> None:
    assert set(ODD_WIDTHS) == set(models.MODEL_ZOO)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_model_forward_gives_ten_logits(name: str) -> None:
    model, example = models.build(name)
    assert isinstance(example, tuple) and len(example) == 1
    assert example[0].shape[0] == 1
    assert not model.training  # factories hand back eval-mode modules
    with torch.no_grad():
        out = model(*example)
    assert out.shape == (1, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_model_torch_export_matches_eager(name: str) -> None:
    model, example = models.build(name)
    exported = torch.export.export(model, example)
    with torch.no_grad():
        # Same graph, same kernels: only fp32 reordering differences are allowed.
        torch.testing.assert_close(exported.module()(*example), model(*example), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_model_fx_traces(name: str) -> None:
    model, example = models.build(name)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        torch.testing.assert_close(traced(*example), model(*example), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet_small", "mobilenetv3_small", "bert_encoder_small"])
def test_zoo_model_exports_with_dynamic_batch(name: str) -> None:
    model, (x,) = models.build(name)
    # Export traces a batch of 2: torch specialises size-1 dimensions, so a batch-1 example cannot be dynamic.
    x2 = torch.cat([x, x])
    exported = torch.export.export(model, (x2,), dynamic_shapes=({0: torch.export.Dim("batch", max=1024)},))
    x5 = torch.randn(5, *x.shape[1:])
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x5), model(x5), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_model_builds_with_odd_widths(name: str) -> None:
    model, example = models.build(name, **ODD_WIDTHS[name])
    with torch.no_grad():
        assert model(*example).shape == (1, 10)
    dense_params = sum(p.numel() for p in models.build(name)[0].parameters())
    assert sum(p.numel() for p in model.parameters()) != dense_params


def test_odd_widths_reach_the_layers() -> None:
    model, _ = models.build("digits_cnn", widths=(37, 61))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [37, 61]
    model, _ = models.build("mobilenetv3_small", width_mult=0.77, divisor=1)
    widths = {m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)}
    assert any(w % 2 == 1 for w in widths), widths


@pytest.mark.parametrize("name", ["digits_cnn", "lenet5", "resnet_small", "mobilenetv3_small", "cnn3"])
def test_image_models_take_16x16(name: str) -> None:
    model, (x,) = models.build(name, image_size=16)
    assert x.shape == (1, 1, 16, 16)
    with torch.no_grad():
        assert model(x).shape == (1, 10)


def test_num_classes_is_respected() -> None:
    for name in ZOO_NAMES:
        model, example = models.build(name, num_classes=3)
        with torch.no_grad():
            assert model(*example).shape == (1, 3), name


def test_model_structure_features() -> None:
    resnet, _ = models.build("resnet_small")
    blocks = [m for m in resnet.modules() if isinstance(m, models.BasicBlock)]
    assert any(isinstance(b.shortcut, nn.Sequential) for b in blocks)  # projection shortcut exists
    mnv3, _ = models.build("mobilenetv3_small")
    assert any(isinstance(m, nn.Hardsigmoid) for m in mnv3.modules())
    assert any(isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1 for m in mnv3.modules())
    assert any(isinstance(m, models.InvertedResidual) and m.use_residual for m in mnv3.modules())
    effnet, _ = models.build("efficientnet_b0_small")
    mbconvs = [m for m in effnet.modules() if isinstance(m, models.InvertedResidual)]

    def block_input(m: models.InvertedResidual) -> int:
        return m.depthwise[0].in_channels if isinstance(m.expand, nn.Identity) else m.expand[0].in_channels

    # Expand ratio = depthwise width / block input width: 1 (no expand conv) and 6 both occur.
    assert {m.depthwise[0].in_channels // block_input(m) for m in mbconvs} == {1, 6}
    assert isinstance(mbconvs[0].expand, nn.Identity)
    assert any(isinstance(m, nn.SiLU) for m in effnet.modules())
    assert all(isinstance(m.se, models.SqueezeExcite) for m in mbconvs)


def test_bert_prune_heads_keeps_the_other_heads_exact() -> None:
    model, (x,) = models.build("bert_encoder_small", hidden=32, num_heads=4)
    attn = model.layers[0].attn
    assert (attn.num_heads, attn.head_dim) == (4, 8)
    h = torch.randn(2, 8, 32)  # (B, S, hidden)
    # Reference: zero head 1's value rows, so its contribution to `out` vanishes.
    with torch.no_grad():
        attn.v.weight[8:16] = 0.0
        attn.v.bias[8:16] = 0.0
        expected = attn(h)
    assert attn.prune_heads_([0, 2, 3]) == 3
    assert attn.q.out_features == attn.out.in_features == 24
    with torch.no_grad():
        # Same arithmetic minus zero terms: fp32 reordering tolerance.
        torch.testing.assert_close(attn(h), expected, rtol=1e-4, atol=1e-5)
        assert model(x).shape == (1, 10)
    with pytest.raises(ValueError, match="distinct heads"):
        attn.prune_heads_([0, 0])


def test_bert_stale_head_attributes_fail_loudly() -> None:
    model, (x,) = models.build("bert_encoder_small", hidden=32, num_heads=4)
    attn = model.layers[0].attn
    attn.num_heads = 3  # projections still 32 wide
    with pytest.raises(RuntimeError, match="update num_heads/head_dim"):
        model(x)


def test_unknown_model_name_lists_known_ones() -> None:
    with pytest.raises(ModelSpecError, match=r"unknown model 'resnet9000'.*digits_cnn"):
        models.build("resnet9000")


def test_bad_width_is_a_model_spec_error() -> None:
    with pytest.raises(ModelSpecError, match="cnn3"):
        models.build("cnn3", widths=(8, 8))
    with pytest.raises(ModelSpecError, match="unexpected keyword"):
        models.build("mlp", width_mult=2.0)


def test_model_spec_loader_accepts_zoo_factories() -> None:
    from edgetrim.model_spec import load_model

    loaded = load_model("edgetrim.examples.models:lenet5")
    assert loaded.example_inputs[0].shape == (1, 1, 8, 8)


# --- data --------------------------------------------------------------------------------------------


def test_digits_arrays_split_is_stratified_disjoint_and_seeded() -> None:
    a = data.digits_arrays(seed=0, flat=True)
    n = len(a.y_train) + len(a.y_val)
    assert n == 1797
    assert abs(len(a.y_val) / n - 0.25) < 0.01
    # Every class holds its share in validation within one sample per class.
    for label in range(10):
        share = (a.y_val == label).sum() / ((a.y_val == label).sum() + (a.y_train == label).sum())
        assert abs(share - 0.25) < 0.02, (label, share)
    # No sample appears in both splits (rows of the flattened images are unique enough to check).
    train_rows = {r.tobytes() for r in a.x_train}
    overlap = sum(r.tobytes() in train_rows for r in a.x_val)
    dup_within = len(a.x_train) - len(train_rows)
    assert overlap <= dup_within + 2  # load_digits has a handful of exact duplicate images
    again = data.digits_arrays(seed=0, flat=True)
    np.testing.assert_array_equal(again.y_val, a.y_val)
    other = data.digits_arrays(seed=1, flat=True)
    assert not np.array_equal(other.y_val, a.y_val)


def test_digits_split_indices_are_disjoint() -> None:
    y = np.repeat(np.arange(10), 20)
    train_idx, val_idx = data._stratified_split(y, val_fraction=0.3, seed=3)
    assert not set(train_idx) & set(val_idx)
    assert len(train_idx) + len(val_idx) == len(y)
    assert np.bincount(y[val_idx]).tolist() == [6] * 10


def test_digits_standardised_with_train_stats() -> None:
    a = data.digits_arrays()
    # Standardised with the training split's own mean/std: exact up to float32 rounding.
    assert abs(float(a.x_train.mean())) < 1e-4
    assert abs(float(a.x_train.std()) - 1.0) < 1e-3
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({}, (1, 8, 8)),
        ({"flat": True}, (64,)),
        ({"image_size": 16}, (1, 16, 16)),
        ({"image_size": 32}, (1, 32, 32)),
    ],
)
def test_digits_loader_shapes(kwargs: dict, shape: tuple[int, ...]) -> None:
    train, val = data.digits_loaders(batch_size=32, **kwargs)
    xb, yb = next(iter(train))
    assert tuple(xb.shape) == (32, *shape)
    assert yb.dtype == torch.int64 and yb.shape == (32,)
    assert int(yb.min()) >= 0 and int(yb.max()) <= 9
    assert len(val.dataset) == 450


def test_digits_tokens_loader_shape() -> None:
    train, _ = data.digits_tokens_loaders(batch_size=16)
    xb, _ = next(iter(train))
    assert tuple(xb.shape) == (16, 8, 8)


def test_digits_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        data.digits_arrays(val_fraction=1.0)
    with pytest.raises(ValueError, match="image_size"):
        data.digits_arrays(image_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        data.digits_loaders(batch_size=0)


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("digits", (1, 8, 8)),
        ("digits_flat", (64,)),
        ("digits_tokens", (8, 8)),
        ("digits16", (1, 16, 16)),
        ("digits_hard", (1, 16, 16)),
    ],
)
def test_data_specs_resolve(name: str, shape: tuple[int, ...]) -> None:
    spec = data.data_spec(name)
    assert spec == f"edgetrim.examples.data:{name}"
    _train, val = data.load_data(spec)
    assert tuple(next(iter(val))[0].shape[1:]) == shape


def test_data_spec_errors_are_one_line() -> None:
    with pytest.raises(EdgetrimError, match="unknown data set 'mnist'"):
        data.data_spec("mnist")
    with pytest.raises(EdgetrimError, match="no attribute 'nope'"):
        data.load_data("edgetrim.examples.data:nope")
    with pytest.raises(EdgetrimError, match="cannot import data module"):
        data.load_data("edgetrim.no_such_module:fn")
    with pytest.raises(EdgetrimError, match=r"data file missing/loaders\.py does not exist"):
        data.load_data("missing/loaders.py:fn")


def test_data_spec_names_a_function_in_a_file(tmp_path) -> None:
    """``--data file.py:fn`` as ``--model file.py:fn``; one file may hold both and is imported once."""
    from edgetrim.model_spec import import_callable, load_model

    src = tmp_path / "mine.py"
    src.write_text(
        "import torch\n"
        "from torch.utils.data import DataLoader, TensorDataset\n"
        "def net():\n"
        "    return torch.nn.Linear(4, 3), (torch.randn(1, 4),)\n"
        "def loaders():\n"
        "    ds = TensorDataset(torch.randn(8, 4), torch.arange(8) % 3)\n"
        "    return DataLoader(ds, batch_size=4), DataLoader(ds, batch_size=8)\n"
    )
    loaded = load_model(f"{src}:net")
    _train, val = data.load_data(f"{src}:loaders")
    x, _ = next(iter(val))
    assert loaded.module(x).shape == (8, 3)
    assert import_callable(f"{src}:loaders") is import_callable(f"{src}:loaders", what="data")


# --- training ----------------------------------------------------------------------------------------


def test_train_digits_cnn_above_90_percent() -> None:
    torch.manual_seed(0)
    model, _ = models.build("digits_cnn")
    train, val = data.digits_loaders(seed=0)
    acc = train_classifier(model, train, val, epochs=2, lr=3e-3, seed=0)
    assert acc > 0.90
    assert not model.training
    assert evaluate_accuracy(model, val) == pytest.approx(acc, abs=0)  # eval is deterministic


def test_train_classifier_is_deterministic() -> None:
    train, val = data.digits_loaders(flat=True)
    accs, weights = [], []
    for _ in range(2):
        torch.manual_seed(0)
        model, _ = models.build("mlp", widths=(32,))
        accs.append(train_classifier(model, train, val, epochs=1, lr=1e-2, seed=7))
        weights.append(model.classifier.weight.detach().clone())
    assert accs[0] == accs[1]
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=0)  # same seed, same bits on CPU


def test_train_classifier_hooks_run_and_rng_is_restored() -> None:
    train, val = data.digits_loaders(flat=True, batch_size=256)
    model, _ = models.build("mlp_bn", hidden=16)
    calls = {"penalty": 0, "after": 0}

    def penalty() -> torch.Tensor:
        calls["penalty"] += 1
        return model.fc1.weight.abs().sum() * 0.0

    def after() -> None:
        calls["after"] += 1

    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    train_classifier(model, train, val, epochs=1, lr=1e-2, seed=0, penalty=penalty, after_step=after)
    assert calls["penalty"] == calls["after"] == len(train)
    torch.testing.assert_close(torch.rand(1), expected, rtol=0, atol=0)


def test_run_epochs_trains_with_the_callers_optimizer_and_schedule() -> None:
    from edgetrim.examples.training import run_epochs

    train, val = data.digits_loaders(flat=True, batch_size=64)
    torch.manual_seed(0)
    model, _ = models.build("mlp", widths=(32,))
    before = evaluate_accuracy(model, val)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = run_epochs(model, train, opt, epochs=3, schedule="cosine")
    assert len(losses) == 3 and losses[-1] < losses[0]  # per-epoch mean loss, falling
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine ran to its end
    assert evaluate_accuracy(model, val) > max(before, 0.85)
    assert not model.training


def test_train_classifier_rejects_bad_arguments() -> None:
    train, val = data.digits_loaders(flat=True)
    model, _ = models.build("mlp")
    with pytest.raises(ValueError, match="epochs"):
        train_classifier(model, train, val, epochs=0, lr=1e-3, seed=0)
    with pytest.raises(ValueError, match="lr"):
        train_classifier(model, train, val, epochs=1, lr=0.0, seed=0)


def test_cosine_schedule_decays_every_group_to_zero_and_constant_leaves_lr_alone() -> None:
    from edgetrim.examples.training import lr_schedule

    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam(
        [{"params": [w], "lr": 0.1}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1.0}]
    )
    step = lr_schedule(opt, "cosine", 10)
    seen = []
    for _ in range(10):
        step()
        seen.append(opt.param_groups[0]["lr"])
    assert seen == sorted(seen, reverse=True)  # monotone decay
    assert seen[4] == pytest.approx(0.05)  # half-way: half the learning rate
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.0, abs=1e-12)
    opt2 = torch.optim.SGD([w], lr=0.3)
    keep = lr_schedule(opt2, "constant", 10)
    for _ in range(5):
        keep()
    assert opt2.param_groups[0]["lr"] == 0.3
    with pytest.raises(ValueError, match="schedule"):
        lr_schedule(opt2, "linear", 10)


def test_train_classifier_rejects_an_unknown_schedule() -> None:
    train, val = data.digits_loaders(flat=True, batch_size=256)
    model, _ = models.build("mlp", widths=(8,))
    with pytest.raises(ValueError, match="schedule"):
        train_classifier(model, train, val, epochs=1, schedule="step")


def test_cosine_training_from_a_loader_without_a_length_keeps_a_constant_rate() -> None:
    from edgetrim.examples.training import total_steps

    train, val = data.digits_loaders(flat=True, batch_size=256)
    assert total_steps(train, 3) == 3 * len(train)
    batches = list(train)
    assert total_steps(iter(batches), 3) is None  # a generator: no length, no schedule to fit
    model, _ = models.build("mlp", widths=(8,))
    acc = train_classifier(model, (b for b in batches), val, epochs=1, lr=1e-2, schedule="cosine")
    assert acc > 0.2  # it trained (chance is 0.1) instead of failing on the missing length


# --- distorted digits --------------------------------------------------------------------------------


def test_distort_digits_is_seeded_and_copy_major() -> None:
    from edgetrim.examples.distort import distort_digits

    imgs = torch.from_numpy(data._load_images(16)[0][:5])
    a = distort_digits(imgs, copies=3, seed=7)
    assert tuple(a.shape) == (15, 16, 16) and a.dtype == torch.float32
    torch.testing.assert_close(distort_digits(imgs, copies=3, seed=7), a, rtol=0, atol=0)
    assert not torch.equal(distort_digits(imgs, copies=3, seed=8), a)
    # copies of one image differ from each other (each draws its own warp, distractor and noise)
    assert not torch.allclose(a[0], a[5], atol=0.05)


def test_distort_digits_without_randomness_is_the_identity() -> None:
    from edgetrim.examples.distort import DistortConfig, distort_digits

    still = DistortConfig(
        rotate_deg=0.0, scale=(1.0, 1.0), shear=0.0, shift=0.0, distractor_gain=(0.0, 0.0), gain=(1.0, 1.0),
        noise=0.0,
    )  # fmt: skip
    imgs = torch.from_numpy(data._load_images(16)[0][:4])
    torch.testing.assert_close(distort_digits(imgs, copies=2, seed=0, config=still), imgs.repeat(2, 1, 1))


def test_distort_shift_moves_the_digit_centre_where_asked() -> None:
    from edgetrim.examples.distort import DistortConfig, _affine, _warp

    cfg = DistortConfig(rotate_deg=0.0, scale=(1.0, 1.0), shear=0.0)
    img = torch.zeros(1, 16, 16)
    img[0, 7:9, 7:9] = 1.0  # a blob at the centre (pixel 7.5)
    gen = torch.Generator().manual_seed(0)
    moved = _warp(img, _affine(1, cfg, gen, torch.tensor([[0.5, -0.25]])))[0]
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    cx, cy = float((moved * xs).sum() / moved.sum()), float((moved * ys).sum() / moved.sum())
    # normalised x +0.5 is a quarter of the width (4 px) to the right; y -0.25 is 2 px up
    assert cx == pytest.approx(7.5 + 4.0, abs=0.05) and cy == pytest.approx(7.5 - 2.0, abs=0.05)


def test_distort_digits_rejects_bad_arguments() -> None:
    from edgetrim.examples.distort import distort_digits

    with pytest.raises(ValueError, match="copies"):
        distort_digits(torch.zeros(3, 8, 8), copies=0, seed=0)
    with pytest.raises(ValueError, match="N >= 2"):
        distort_digits(torch.zeros(1, 8, 8), copies=1, seed=0)


def test_digits_hard_keeps_the_digits_split_and_standardises_with_train_stats() -> None:
    a = data.digits_hard_arrays(seed=3, train_copies=2, val_copies=3)
    plain = data.digits_arrays(seed=3)
    assert a.x_train.shape == (2 * len(plain.y_train), 1, 16, 16)
    assert a.x_val.shape == (3 * len(plain.y_val), 1, 16, 16)
    np.testing.assert_array_equal(a.y_train, np.tile(plain.y_train, 2))
    np.testing.assert_array_equal(a.y_val, np.tile(plain.y_val, 3))
    assert abs(float(a.x_train.mean())) < 1e-4 and abs(float(a.x_train.std()) - 1.0) < 1e-3
    again = data.digits_hard_arrays(seed=3, train_copies=2, val_copies=3)
    np.testing.assert_array_equal(again.x_val, a.x_val)


def test_digits_hard_is_harder_than_digits_for_a_linear_model() -> None:
    from sklearn.linear_model import LogisticRegression

    def linear_accuracy(a: data.DigitsArrays) -> float:
        flat = LogisticRegression(max_iter=300).fit(a.x_train.reshape(len(a.x_train), -1), a.y_train)
        return float(flat.score(a.x_val.reshape(len(a.x_val), -1), a.y_val))

    easy = linear_accuracy(data.digits_arrays(image_size=16))
    hard = linear_accuracy(data.digits_hard_arrays(train_copies=1, val_copies=1))
    assert easy > 0.9 and hard < easy - 0.25, (easy, hard)


def test_digits_hard_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="image_size"):
        data.digits_hard_arrays(image_size=8)
    with pytest.raises(ValueError, match="copies"):
        data.digits_hard_arrays(val_copies=0)
    with pytest.raises(ValueError, match="val_fraction"):
        data.digits_hard_arrays(val_fraction=0.0)
