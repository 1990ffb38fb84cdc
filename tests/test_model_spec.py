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
        ("no_such_package_xyz.mod:fn", "cannot import module"),
    ],
)
def test_bad_specs_are_one_line_errors(spec: str, message: str) -> None:
    with pytest.raises(ModelSpecError, match=message) as info:
        load_model(spec)
    assert "\n" not in str(info.value)


def test_module_without_example_inputs_asks_for_input_shape(tmp_path: Path) -> None:
    src = tmp_path / "net.py"
    src.write_text("import torch\ndef build():\n    return torch.nn.Linear(4, 3)\n")
    with pytest.raises(ModelSpecError, match="--input-shape"):
        load_model(f"{src}:build")
