"""Load a model from a ``path/to/file.py:fn`` or ``package.module:fn`` spec.

``fn()`` returns an ``nn.Module`` or ``(module, example_inputs)``; when only a module is returned the
caller passes ``input_shape``. A model that returns a mapping with ``logits`` (a Hugging Face
``ModelOutput``) is wrapped in :class:`LogitsOutput`, so training, tracing and export see one tensor.
Every failure is a one-line ``ModelSpecError``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgetrim.errors import ModelSpecError

logger = logging.getLogger(__name__)

USER_MODULE_PREFIX = "_edgetrim_user_"  # modules imported from file.py specs


class LogitsOutput(nn.Module):
    """``model(*x)["logits"]``: a classifier whose forward returns a mapping (transformers' outputs)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(*inputs)["logits"]


@dataclass
class LoadedModel:
    """A model in eval mode with the example inputs that define its shapes."""

    module: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    spec: str


def resolve_spec(spec: str) -> str:
    """Expand a bare built-in zoo name ("resnet_small") to ``edgetrim.examples.models:resnet_small``."""
    if ":" in spec:
        return spec
    from edgetrim.examples.models import MODEL_ZOO

    if spec in MODEL_ZOO:
        return f"edgetrim.examples.models:{spec}"
    raise ModelSpecError(
        f"model spec {spec!r} must look like path/to/file.py:fn or package.module:fn, "
        f"or name a built-in model ({', '.join(MODEL_ZOO)})"
    )


def user_module_name(path: str | Path) -> str:
    """The module name a ``file.py`` spec is imported under: the same in every process (a pickled
    model's classes are found by it when a saved run is loaded again)."""
    digest = hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:16]
    return f"{USER_MODULE_PREFIX}{digest}"


def is_file_spec(spec: str) -> bool:
    where = spec.rpartition(":")[0]
    return where.endswith(".py") or "/" in where or where.startswith(".")


def absolute_spec(spec: str) -> str:
    """``spec`` with a file path made absolute (what a saved run records to import the file again)."""
    if not is_file_spec(spec):
        return spec
    where, _, attr = spec.rpartition(":")
    return f"{Path(where).resolve()}:{attr}"


def import_callable(spec: str, *, what: str = "model") -> Any:
    """The object a ``path/to/file.py:fn`` or ``package.module:fn`` spec names (``what`` words errors).

    Example:
        >>> import_callable("edgetrim.examples.data:digits", what="data").__name__
        'digits'
    """
    where, _, attr = spec.rpartition(":")
    if not attr:
        raise ModelSpecError(f"{what} spec {spec!r} names no function after ':'")
    if not where:
        raise ModelSpecError(f"{what} spec {spec!r} must look like path/to/file.py:fn or package.module:fn")
    if is_file_spec(spec):
        path = Path(where)
        if not path.is_file():
            raise ModelSpecError(f"{what} file {where} does not exist")
        mod_name = user_module_name(path)
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ModelSpecError(f"cannot import {where} as a Python file")
        module = sys.modules.get(mod_name)
        if module is None:  # a file named by both --model and --data is imported once
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[mod_name] = module  # dataclasses / pickling need the module registered
            try:
                loader_spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[mod_name]
                raise ModelSpecError(f"importing {where} failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(where)
        except Exception as exc:
            raise ModelSpecError(
                f"cannot import {what} module {where!r}: {type(exc).__name__}: {exc}"
            ) from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ModelSpecError(f"{where} has no attribute {attr!r}") from None


def _import_target(spec: str) -> Any:
    return import_callable(resolve_spec(spec))


def _random_inputs(module: nn.Module, shape: Sequence[int]) -> list[tuple[torch.Tensor, ...]]:
    """Candidate random inputs of ``shape``: floats, then, for a model with ``nn.Embedding`` layers,
    token ids drawn below the smallest of their vocabularies (every table they are looked up in has
    them)."""
    out = [(torch.randn(*shape),)]
    vocabs = [m.num_embeddings for m in module.modules() if isinstance(m, nn.Embedding)]
    if vocabs:
        out.append((torch.randint(0, min(vocabs), tuple(shape)),))
    return out


def load_model(spec: str, *, input_shape: Sequence[int] | None = None) -> LoadedModel:
    """Import and call the model factory named by ``spec``.

    Example:
        >>> m = load_model("edgetrim.examples.models:lenet5")  # doctest: +SKIP
        >>> m.example_inputs[0].shape  # doctest: +SKIP
        torch.Size([1, 1, 8, 8])
    """
    spec = resolve_spec(spec)
    factory = _import_target(spec)
    if not callable(factory):
        raise ModelSpecError(f"{spec} is not callable")
    try:
        result = factory()
    except Exception as exc:
        raise ModelSpecError(f"calling {spec}() failed: {type(exc).__name__}: {exc}") from exc
    example: tuple[torch.Tensor, ...] | None = None
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], nn.Module):
        module, raw = result
        example = (raw,) if isinstance(raw, torch.Tensor) else tuple(raw)
    elif isinstance(result, nn.Module):
        module = result
    else:
        raise ModelSpecError(
            f"{spec}() returned {type(result).__name__}; expected an nn.Module or (module, example_inputs)"
        )
    candidates = [example] if input_shape is None else _random_inputs(module, input_shape)
    if candidates[0] is None:
        raise ModelSpecError(
            f"{spec}() returned only a module: pass --input-shape, e.g. --input-shape 1,3,64,64"
        )
    module.eval()
    first_error: Exception | None = None
    for example in candidates:
        assert example is not None
        try:
            with torch.no_grad():
                out = module(*example)
            break
        except Exception as exc:  # float input to an nn.Embedding: the ids are tried next
            first_error = first_error or exc
    else:
        assert first_error is not None and candidates[0] is not None
        raise ModelSpecError(
            f"{spec} does not run on inputs of shape {[tuple(t.shape) for t in candidates[0]]}: "
            f"{type(first_error).__name__}: {first_error}"
        ) from first_error
    if example is not candidates[0]:
        logger.info("%s reads token ids: --input-shape gives random ids below its smallest vocabulary", spec)
    if isinstance(out, Mapping) and isinstance(out.get("logits"), torch.Tensor):
        logger.info("%s returns a %s; edgetrim uses its 'logits'", spec, type(out).__name__)
        module = LogitsOutput(module).eval()
    return LoadedModel(module=module, example_inputs=example, spec=spec)
