"""Find every activation site of a model and swap it for a :class:`ParametricActivation`.

Sites are found with ``torch.fx``, so functional calls (``F.relu(x)``, ``torch.relu(x)``,
``x.relu()``) count as well as modules (``nn.ReLU``). A module instance called twice is two sites.
Each site gets its own activation module, named ``safs_act_<i>`` in graph order; the ordered list of
site names is the SAFS chromosome's index.

When the model cannot be traced (data-dependent control flow), surgery falls back to replacing
activation *modules* only and logs a warning that functional sites were missed.
"""

from __future__ import annotations

import copy
import logging
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from edgetrim.compress.safs.activations import BakedActivation, ParametricActivation

logger = logging.getLogger(__name__)

ACTIVATION_MODULES: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.Hardswish: "hardswish",
    nn.SiLU: "swish",
    nn.GELU: "gelu",
    nn.ELU: "elu",
    nn.SELU: "selu",
    nn.Tanh: "tanh",
    nn.Softplus: "softplus",
    nn.Mish: "mish",
    nn.LeakyReLU: "prelu",
    nn.PReLU: "prelu",
}
"""Activation module types that count as sites, with the operator that reproduces them."""

ACTIVATION_FUNCTIONS: dict[object, str] = {
    F.relu: "relu",
    torch.relu: "relu",
    F.relu6: "relu6",
    F.hardswish: "hardswish",
    F.silu: "swish",
    F.gelu: "gelu",
    F.elu: "elu",
    F.selu: "selu",
    torch.tanh: "tanh",
    F.softplus: "softplus",
    F.mish: "mish",
    F.leaky_relu: "prelu",
}
ACTIVATION_METHODS: dict[str, str] = {"relu": "relu", "relu_": "relu", "tanh": "tanh"}

# Producers that runtimes fuse a following ReLU / ReLU6 into.
_FUSABLE_PRODUCERS: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Linear,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
)
_FUSABLE_FUNCTIONS = (F.conv2d, F.linear, operator.matmul)


@dataclass(frozen=True)
class ActivationSite:
    """One activation call of the original model."""

    name: str  # module name of the inserted ParametricActivation ("safs_act_0")
    origin: str  # what it replaced: "module features.2 (ReLU)" / "function relu" / "method relu"
    original_op: str  # operator of ACTIVATION_MODULES / FUNCTIONS that reproduces the original
    after_linear: bool  # its input comes straight from a conv / linear / BN (fusable for ReLU-like ops)


@dataclass
class SurgeryResult:
    """The rewritten model and its ordered activation sites."""

    model: nn.Module
    sites: list[ActivationSite]

    def activations(self) -> list[ParametricActivation]:
        """The inserted activation modules, in site order."""
        mods = dict(self.model.named_modules())
        return [mods[s.name] for s in self.sites]  # type: ignore[misc]


def _is_fusable_input(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if not node.args or not isinstance(node.args[0], fx.Node):
        return False
    src = node.args[0]
    if src.op == "call_module":
        return isinstance(modules.get(str(src.target)), _FUSABLE_PRODUCERS)
    if src.op == "call_function":
        return src.target in _FUSABLE_FUNCTIONS
    return False


def _site_op(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[str, str] | None:
    if node.op == "call_module":
        mod = modules.get(str(node.target))
        op = ACTIVATION_MODULES.get(type(mod)) if mod is not None else None
        return (op, f"module {node.target} ({type(mod).__name__})") if op else None
    if node.op == "call_function":
        op = ACTIVATION_FUNCTIONS.get(node.target)
        return (op, f"function {getattr(node.target, '__name__', node.target)}") if op else None
    if node.op == "call_method":
        op = ACTIVATION_METHODS.get(str(node.target))
        return (op, f"method {node.target}") if op else None
    return None


def replace_activations(
    model: nn.Module,
    ops: Sequence[str] | str | None = None,
    *,
    learnable: bool = False,
) -> SurgeryResult:
    """Return a copy of ``model`` whose activation sites are :class:`ParametricActivation` modules.

    Args:
        model: any module; it is deep-copied, never modified.
        ops: one operator for every site, a list with one per site, or None to keep each site's own
            operator (ReLU stays ReLU, now with alpha = beta = 1 scalars).
        learnable: initial trainability of the scalars.

    Example:
        >>> res = replace_activations(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), "symlog")
        >>> [s.original_op for s in res.sites]
        ['relu']
    """
    model = copy.deepcopy(model)
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # data-dependent control flow: modules only
        logger.warning(
            "torch.fx cannot trace %s (%s); replacing activation modules only", type(model).__name__, exc
        )
        return _replace_modules_only(model, ops, learnable=learnable)
    for node in gm.graph.nodes:
        if isinstance(node.type, str):  # string annotations (PEP 563) make GraphModule unpicklable
            node.type = None
    modules = dict(gm.named_modules())
    found: list[tuple[fx.Node, str, str, bool]] = []
    for node in gm.graph.nodes:
        hit = _site_op(node, modules)
        if hit is not None:
            found.append((node, hit[0], hit[1], _is_fusable_input(node, modules)))
    chosen = _expand_ops(ops, [f[1] for f in found])
    sites: list[ActivationSite] = []
    for i, ((node, orig_op, origin, fusable), op) in enumerate(zip(found, chosen, strict=True)):
        name = f"safs_act_{i}"
        gm.add_submodule(name, ParametricActivation(op, learnable=learnable))
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, args=(node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        sites.append(ActivationSite(name, origin, orig_op, fusable))
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    logger.info("replaced %d activation sites", len(sites))
    return SurgeryResult(gm, sites)


def _expand_ops(ops: Sequence[str] | str | None, originals: list[str]) -> list[str]:
    if ops is None:
        return list(originals)
    if isinstance(ops, str):
        return [ops] * len(originals)
    ops = list(ops)
    if len(ops) != len(originals):
        raise ValueError(f"got {len(ops)} operators for {len(originals)} activation sites")
    return ops


def _replace_modules_only(
    model: nn.Module, ops: Sequence[str] | str | None, *, learnable: bool
) -> SurgeryResult:
    targets = [(n, m) for n, m in model.named_modules() if type(m) in ACTIVATION_MODULES]
    chosen = _expand_ops(ops, [ACTIVATION_MODULES[type(m)] for _, m in targets])
    sites: list[ActivationSite] = []
    for i, ((name, mod), op) in enumerate(zip(targets, chosen, strict=True)):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, ParametricActivation(op, learnable=learnable))
        sites.append(
            ActivationSite(
                name, f"module {name} ({type(mod).__name__})", ACTIVATION_MODULES[type(mod)], False
            )
        )
        del i
    return SurgeryResult(model, sites)


def set_chromosome_(model: nn.Module, sites: Sequence[ActivationSite], chromosome: Sequence[str]) -> None:
    """Swap the operator of every site in place (scalars reset to the new operator's defaults)."""
    if len(chromosome) != len(sites):
        raise ValueError(f"chromosome has {len(chromosome)} genes for {len(sites)} sites")
    for site, op in zip(sites, chromosome, strict=True):
        parent_name, _, attr = site.name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, attr)
        learnable = (
            any(p.requires_grad for p in old.parameters()) if isinstance(old, ParametricActivation) else False
        )
        setattr(parent, attr, ParametricActivation(op, learnable=learnable))


def set_scalars_learnable_(model: nn.Module, learnable: bool) -> int:
    """Freeze or unfreeze every activation scalar; returns the number of activations touched."""
    n = 0
    for mod in model.modules():
        if isinstance(mod, ParametricActivation):
            mod.set_learnable(learnable)
            n += 1
    return n


def bake_activations_(model: nn.Module) -> int:
    """Replace every :class:`ParametricActivation` by its :class:`BakedActivation` (export form)."""
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, ParametricActivation)]
    for name, mod in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, mod.bake())
    return len(targets)


def activation_shapes(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...]
) -> dict[str, tuple[int, ...]]:
    """Input shape seen by every activation module in one forward pass (per-sample elements for cost)."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, ParametricActivation | BakedActivation):
            handles.append(
                mod.register_forward_hook(
                    lambda m, inp, out, name=name: shapes.__setitem__(name, tuple(inp[0].shape))
                )
            )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return shapes
