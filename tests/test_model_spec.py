"""Model specs: file.py:fn, package.module:fn, and bare built-in zoo names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgetrim.errors import ModelSpecError
from edgetrim.model_spec import load_model, resolve_spec


def test_bare_zoo_name_expands_to_the_examples_module() -> None:
    assert resolve_spec("lenet5") == "edgetrim.examples.models:lenet5"
    loaded = load_model("lenet5")
    assert loaded.spec == "edgetrim.examples.models:lenet5"
    assert loaded.module(*loaded.example_inputs).shape[-1] == 10


def test_unknown_bare_name_lists_the_built_in_models() -> None:
    with pytest.raises(ModelSpecError, match=r"built-in model .*lenet5"):
        load_model("no_such_model")


def test_file_spec_with_input_shape(tmp_path: Path) -> None:
    src = tmp_path / "net.py"
    src.write_text("import torch\ndef build():\n    return torch.nn.Linear(4, 3)\n")
    loaded = load_model(f"{src}:build", input_shape=(2, 4))
    assert tuple(loaded.example_inputs[0].shape) == (2, 4)
    assert isinstance(loaded.module, torch.nn.Linear)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing_dir/net.py:build", "does not exist"),
        ("edgetrim.examples.models:nope", "has no attribute"),
        ("no_such_package_xyz.mod:fn", "cannot import model module"),
    ],
)
def test_bad_specs_are_one_line_errors(spec: str, message: str) -> None:
    with pytest.raises(ModelSpecError, match=message) as info:
        load_model(spec)
    assert "\n" not in str(info.value)


TOKEN_MODEL = """
import torch
from torch import nn

class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.words, self.positions = nn.Embedding(50, 8), nn.Embedding(16, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids):
        return self.head((self.words(ids) + self.positions.weight[: ids.shape[1]]).mean(dim=1))

def build():
    return Tokens()

def broken():
    return nn.Sequential(nn.Embedding(10, 4), nn.Linear(5, 2))  # 4 -> 5: fails on any input
"""


def test_input_shape_for_a_model_reading_token_ids_gives_ids_in_every_vocabulary(tmp_path: Path) -> None:
    src = tmp_path / "tokens.py"
    src.write_text(TOKEN_MODEL)
    (ids,) = load_model(f"{src}:build", input_shape=(2, 12)).example_inputs
    assert ids.dtype == torch.int64 and tuple(ids.shape) == (2, 12)
    assert int(ids.min()) >= 0 and int(ids.max()) < 16  # below the smaller vocabulary
    with pytest.raises(ModelSpecError, match=r"does not run on inputs of shape \[\(2, 12\)\]: RuntimeError"):
        load_model(f"{src}:broken", input_shape=(2, 12))


def test_module_without_example_inputs_asks_for_input_shape(tmp_path: Path) -> None:
    src = tmp_path / "net.py"
    src.write_text("import torch\ndef build():\n    return torch.nn.Linear(4, 3)\n")
    with pytest.raises(ModelSpecError, match="--input-shape"):
        load_model(f"{src}:build")


MAPPING_MODEL = """
import torch
from torch import nn

class Classifier(nn.Module):  # returns a mapping, as transformers' models do
    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return {"logits": self.head(h), "hidden_states": h}

def build():
    torch.manual_seed(0)
    return Classifier(), (torch.randn(1, 6),)
"""


def test_a_model_returning_a_mapping_is_used_through_its_logits(tmp_path: Path) -> None:
    import pickle

    from edgetrim.compress.graph import find_channel_groups

    src = tmp_path / "mapping_net.py"
    src.write_text(MAPPING_MODEL)
    loaded = load_model(f"{src}:build")
    x = torch.randn(5, 6)
    with torch.no_grad():
        out = loaded.module(x)
        assert isinstance(out, torch.Tensor)
        torch.testing.assert_close(out, loaded.module.model(x)["logits"])
    # the hidden layer is prunable, the classifier is the output
    assert [g.root_name for g in find_channel_groups(loaded.module, loaded.example_inputs)] == ["model.body"]
    pickle.dumps(loaded.module)  # RUN folders store the module


def test_a_model_returning_a_tensor_is_not_wrapped() -> None:
    loaded = load_model("lenet5")
    assert type(loaded.module).__name__ != "LogitsOutput"
