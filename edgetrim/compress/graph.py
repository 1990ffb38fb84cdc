"""Coupled channel groups of a model, and physical slicing of them.

A *channel group* is a set of channels that must be removed together: the output channels of a conv,
the BatchNorm after it, the depthwise conv that follows, the input channels of the next conv, every
branch of a residual add, the features a flatten feeds into a linear layer. One mask vector serves one
group (the l1/l2 reference: "one alpha per coupled group, not per layer").

Dependency analysis and slicing are delegated to Torch-Pruning's ``DependencyGraph``; this module is the
only place that imports it, so it can be replaced without touching the rest of ``compress``.

Example:
    >>> model, x = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), (torch.randn(1, 4),)
    >>> groups = find_channel_groups(model, x)
    >>> [(g.id, g.size) for g in groups]
    [(0, 8)]
    >>> small = materialize_channels(model, x, {0: torch.tensor([0, 3, 5])})
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from edgetrim.errors import ModelSpecError

logger = logging.getLogger(__name__)

__all__ = [
    "ChannelGroup",
    "GroupMember",
    "Role",
    "find_channel_groups",
    "materialize_channels",
    "output_layers",
]


class Role(enum.StrEnum):
    """What a member layer does with the group's channels."""

    PRODUCER = "producer"  # conv / linear whose output channels are the group
    CONSUMER = "consumer"  # conv / linear whose input channels (or flattened features) are the group
    DEPTHWISE = "depthwise"  # depthwise conv: channel j in -> channel j out
    NORM = "norm"  # batch norm (per-channel affine)
    OTHER = "other"  # PReLU, embeddings, bare parameters


@dataclass(frozen=True)
class GroupMember:
    """One layer touched by a group.

    ``local`` are the indices along the layer's own dimension (input features for a consumer, output
    channels otherwise) and ``root[k]`` is the group channel that ``local[k]`` belongs to: a flatten
    maps one channel to H*W features, a concatenation shifts indices.
    """

    name: str
    role: Role
    local: tuple[int, ...]
    root: tuple[int, ...]


@dataclass(frozen=True)
class ChannelGroup:
    """A set of coupled channels with one mask vector of length ``size``."""

    id: int
    size: int
    root_name: str  # the producer whose output channels index the group
    members: tuple[GroupMember, ...]
    unit: int = 1  # channels per mask entry: head_dim for attention heads, 1 otherwise
    owner: str = ""  # attention module holding head_dim (and num_heads, updated when heads go)
    # a producer whose output is split into this many blocks (q / k / v of one projection), each
    # indexed like the group: sliced member by member, not through the tracer's group
    blocks: int = 1

    @property
    def num_units(self) -> int:
        """Length of the group's mask vector (channels, or heads of ``unit`` channels)."""
        return self.size // self.unit

    def names(self, role: Role | None = None) -> list[str]:
        """Names of the member layers, optionally only those with ``role``."""
        return [m.name for m in self.members if role is None or m.role == role]


_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Norms that mix channels: a channel gated to zero still changes the mean/variance of the others, so
# such groups cannot be masked exactly and are left dense.
_MIXING_NORMS = (nn.LayerNorm, nn.GroupNorm)


# Autograd nodes of an activation x activation product: attention scores and context, written as a
# matmul or as one fused ``scaled_dot_product_attention`` (Hugging Face's default implementation).
_MATMUL_OPS = ("BmmBackward", "MmBackward0(", "MatmulBackward", "BaddbmmBackward", "ScaledDotProduct")
# Where attention modules keep the width of one head: ours and most Hugging Face models (``head_dim``),
# BERT and ViT in transformers (``attention_head_size``), a few others (``head_size``).
_HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "head_size")
# Head counts an attention module may keep as plain integers (updated when heads are removed), and
# widths derived from them (``all_head_size`` = heads x head_dim in transformers' BERT and ViT).
_HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads")
_HEAD_WIDTH_ATTRS = ("all_head_size", "split_size")  # split_size: GPT-2's q / k / v width


def _head_dim(model: nn.Module, producer_names: list[str]) -> tuple[int, str]:
    """``head_dim`` and name of the innermost module that contains every producer of an attention group."""
    if not producer_names:
        return 0, ""
    parts = [n.split(".") for n in producer_names]
    common: list[str] = []
    for tokens in zip(*parts):
        if len(set(tokens)) != 1:
            break
        common.append(tokens[0])
    by_name = dict(model.named_modules())
    while True:
        module = by_name.get(".".join(common))
        for attr in _HEAD_DIM_ATTRS if module is not None else ():
            value = getattr(module, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value, ".".join(common)
        if not common:
            return 0, ""
        common.pop()


def _tp():  # the one import of Torch-Pruning in edgetrim.compress
    import torch_pruning as tp

    return tp


def _flat_tensors(obj: object) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _flat_tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _flat_tensors(v)]
    return []


def _run_with_module_trace(
    model: nn.Module, example_inputs: Sequence[torch.Tensor]
) -> tuple[object, set[str]]:
    """Forward once; name the innermost failing module, and find the layers producing the outputs."""
    stack: list[str] = []
    produced: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, mod in model.named_modules():
        if not name:
            continue

        def pre(_m: nn.Module, _i: object, name: str = name) -> None:
            stack.append(name)

        def post(_m: nn.Module, _i: object, out: object, name: str = name) -> None:
            if stack and stack[-1] == name:
                stack.pop()
            if not list(_m.children()):
                produced[name] = _flat_tensors(out)

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    try:
        with torch.no_grad():
            out = model(*example_inputs)
    except Exception as exc:
        where = stack[-1] if stack else type(model).__name__
        raise ModelSpecError(
            f"cannot trace the model: module {where!r} failed on the example inputs "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    finally:
        for h in handles:
            h.remove()
    outs = _flat_tensors(out)
    out_ptrs = {(t.data_ptr(), t.numel()) for t in outs}
    final = {n for n, ts in produced.items() if any((t.data_ptr(), t.numel()) in out_ptrs for t in ts)}
    return out, final


def _role(tp: object, module: nn.Module, handler: object) -> Role:
    fn_name = getattr(handler, "__name__", "")
    if isinstance(module, nn.Conv2d | nn.Conv1d) and module.groups > 1:
        return Role.DEPTHWISE
    if isinstance(module, _NORM_TYPES):
        return Role.NORM
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear):
        return Role.CONSUMER if fn_name == "prune_in_channels" else Role.PRODUCER
    return Role.OTHER


def _build_graph(model: nn.Module, example_inputs: Sequence[torch.Tensor]):
    tp = _tp()
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=list(example_inputs), verbose=False
            )
    except Exception as exc:
        unknown = _unknown_parameter_modules(model)
        hint = (
            f"; layers the tracer cannot size: {', '.join(unknown[:4])}{' ...' if len(unknown) > 4 else ''}"
            " (replace them with nn.Linear / nn.Conv2d if they feed it)"
            if unknown
            else ""
        )
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelSpecError(
            f"cannot trace the model's channel dependencies{_failing_node(exc)} ({type(exc).__name__}: "
            f"{first}){hint}; or pass the module that produces it via ignore="
        ) from exc


def _failing_node(exc: BaseException) -> str:
    """`` at <node> of <inputs>``: the dependency-graph node being processed when ``exc`` was raised."""
    tb = exc.__traceback__
    name = ""
    while tb is not None:  # the innermost frame that holds a graph node names it
        node = tb.tb_frame.f_locals.get("node")
        if node is not None and hasattr(node, "name"):
            inputs = [str(getattr(n, "name", n)) for n in getattr(node, "inputs", [])]
            name = str(node.name) + (f" of {', '.join(inputs)}" if inputs else "")
        tb = tb.tb_next
    return f" at {name}" if name else ""


_SIZED_MODULES = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear, nn.Embedding, nn.PReLU,
    nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
    nn.MultiheadAttention,
)  # fmt: skip


def _unknown_parameter_modules(model: nn.Module) -> list[str]:
    """Leaf modules with parameters of a type the dependency tracer has no channel rules for (e.g.
    transformers' ``Conv1D``, a linear with its weight transposed), as ``name (Type)``."""
    return [
        f"{name} ({type(m).__name__})"
        for name, m in model.named_modules()
        if not list(m.children())
        and any(True for _ in m.parameters(recurse=False))
        and not isinstance(m, _SIZED_MODULES)
    ]


def _resolve_ignore(model: nn.Module, ignore: Iterable[str | nn.Module]) -> list[nn.Module]:
    by_name = dict(model.named_modules())
    out: list[nn.Module] = []
    for item in ignore:
        if isinstance(item, nn.Module):
            out.append(item)
        elif item in by_name:
            out.append(by_name[item])
        else:
            raise ModelSpecError(f"ignore names {item!r}, which is not a module of the model")
    return out


def _raw_groups(
    model: nn.Module, example_inputs: Sequence[torch.Tensor], ignore: Iterable[str | nn.Module]
) -> tuple[object, list[ChannelGroup]]:
    model_was_training = model.training
    model.eval()
    try:
        _, final = _run_with_module_trace(model, example_inputs)
        names = {m: n for n, m in model.named_modules()}
        by_name = dict(model.named_modules())
        ignored = _resolve_ignore(model, ignore) + [by_name[n] for n in sorted(final)]
        dg = _build_graph(model, example_inputs)
    finally:
        model.train(model_was_training)
    tp = _tp()
    groups: list[ChannelGroup] = []
    for tp_group in dg.get_all_groups(
        ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Conv1d, nn.Linear)
    ):
        members: list[GroupMember] = []
        skip_reason = ""
        root_name = ""
        size = 0
        through_matmul = False
        for k, item in enumerate(tp_group):
            dep, idxs = item.dep, item.idxs
            module = dep.target.module
            if not isinstance(module, nn.Module) or module not in names:
                # Torch-Pruning's internal ops (add, reshape, activations); an activation x activation
                # product (attention scores, context) couples whole heads, not single channels.
                through_matmul |= any(t in str(dep.target.name) for t in _MATMUL_OPS)
                continue
            name = names[module]
            if isinstance(module, _MIXING_NORMS):
                skip_reason = f"normalised together by {type(module).__name__} {name!r}"
            if isinstance(module, nn.Conv1d | nn.Conv2d) and 1 < module.groups < module.in_channels:
                skip_reason = f"grouped conv {name!r} (groups={module.groups}) is not supported"
            if isinstance(module, nn.MultiheadAttention):  # q/k/v packed in one in_proj_weight
                skip_reason = (
                    f"nn.MultiheadAttention {name!r} is left dense "
                    "(edgetrim.compress.attention.convert_multihead_attention splits what it can)"
                )
            role = _role(tp, module, dep.handler)
            if k == 0:
                root_name = name
                size = len(idxs)
            members.append(
                GroupMember(
                    name=name,
                    role=role,
                    local=tuple(int(i) for i in idxs),
                    root=tuple(int(i) for i in item.root_idxs),
                )
            )
        unit, owner, blocks = 1, "", 1
        if through_matmul and not skip_reason:
            members, folded = _fold_split_projection(members, by_name, size)
            blocks, size = size // folded, folded
            unit, owner = _head_dim(model, [m.name for m in members if m.role == Role.PRODUCER])
            if unit < 1 or size % unit:
                skip_reason = "coupled through a matmul without a head_dim attribute on the attention module"
        if skip_reason:
            logger.info("channel group rooted at %s left dense: %s", root_name, skip_reason)
            continue
        if not any(m.role == Role.CONSUMER for m in members):
            logger.info("channel group rooted at %s has no consumer layer; left dense", root_name)
            continue
        groups.append(
            ChannelGroup(
                id=len(groups),
                size=size,
                root_name=root_name,
                members=tuple(members),
                unit=unit,
                owner=owner,
                blocks=blocks,
            )
        )
    return dg, groups


def output_layers(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> list[str]:
    """Names of the leaf layers whose output is a model output (the classifier): never pruned."""
    was_training = model.training
    model.eval()
    try:
        _, final = _run_with_module_trace(model, tuple(example_inputs))
    finally:
        model.train(was_training)
    return sorted(final)


def find_channel_groups(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    *,
    ignore: Iterable[str | nn.Module] = (),
) -> list[ChannelGroup]:
    """Trace ``model`` and return its prunable coupled channel groups.

    The layers producing the model's outputs (the classifier) and the model input are never part of a
    group. Groups coupled through a LayerNorm/GroupNorm (which mixes channels) are left dense, and so
    is any group whose slicing is not exact when checked on the model itself (a coupling the
    dependency analysis missed: a functional conv on a bare parameter, a channel shuffle, a slice of a
    concatenation); a warning names its root layer.

    Args:
        model: the network; it is run once in eval mode on ``example_inputs``.
        example_inputs: tuple of tensors the model is called with.
        ignore: module names (or modules) whose output channels must be kept.

    Returns:
        Groups in a deterministic order; ``group.id`` is its position.

    Raises:
        ModelSpecError: the model cannot run or be traced (names the failing module).
    """
    example = tuple(example_inputs)
    _, groups = _raw_groups(model, example, ignore)
    return _sliceable(model, example, groups, ignore)


def _probe_inputs(example: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Random floating inputs of the example's shapes (an all-zero example would hide a bad slice)."""
    gen = torch.Generator().manual_seed(0)
    return tuple(
        torch.randn(t.shape, generator=gen).to(t.device, t.dtype) if t.is_floating_point() else t
        for t in example
    )


def _probe_drop(num_units: int) -> list[int]:
    """Units the exactness check removes: the first, the middle one and a spread of about 40% of the
    others (a mapping that only goes wrong when many channels go, through a reshape for instance,
    shows up), always leaving at least one unit."""
    if num_units <= 2:
        return [0]
    drop = {0, num_units // 2} | {u for u in range(num_units) if (7 * u + 3) % 5 < 2}
    drop.discard(num_units - 1)  # the last unit stays
    return sorted(drop)


def _slices_exactly(
    model: nn.Module,
    example: tuple[torch.Tensor, ...],
    groups: Sequence[ChannelGroup],
    which: Sequence[int],
    ignore: Iterable[str | nn.Module],
) -> str:
    """Why removing a few units of each group in ``which`` is not exact ("" when it is).

    The reference is the model with the removed channels' consumer columns set to zero (what gates at
    zero compute); the sliced copy must run and give the same outputs. A coupling the dependency
    analysis missed (a functional conv on a bare parameter, a channel shuffle, a slice of a
    concatenation) shows up here as an error or as different outputs.
    """
    x = _probe_inputs(example)
    try:
        keep: dict[int, torch.Tensor] = {}
        ref = copy.deepcopy(model).eval()
        modules = dict(ref.named_modules())
        for gid in which:  # groups of two or more units: some units go (about 40%), at least one stays
            g = groups[gid]
            drop_units = _probe_drop(g.num_units)
            drop = {u * g.unit + k for u in drop_units for k in range(g.unit)}
            keep[gid] = torch.tensor([c for c in range(g.size) if c not in drop])
            with torch.no_grad():
                for m in g.members:
                    if m.role == Role.CONSUMER:
                        cols = [loc for loc, root in zip(m.local, m.root) if root in drop]
                        modules[m.name].weight[:, cols] = 0.0
        small = materialize_channels(model, example, keep, ignore=ignore, groups=groups).eval()
        with torch.no_grad():
            want, got = _flat_tensors(ref(*x)), _flat_tensors(small(*x))
    except Exception as exc:  # any failure of the slice means: not sliceable as traced
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if len(want) != len(got):
        return f"{len(got)} outputs instead of {len(want)}"
    for a, b in zip(want, got, strict=True):
        if a.shape != b.shape:
            return f"output shape {tuple(b.shape)} instead of {tuple(a.shape)}"
        scale = max(1.0, float(a.abs().max())) if a.numel() else 1.0
        if not torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5 * scale):
            return f"outputs differ by {float((a.float() - b.float()).abs().max()):.3g}"
    return ""


def _sliceable(
    model: nn.Module,
    example: tuple[torch.Tensor, ...],
    groups: list[ChannelGroup],
    ignore: Iterable[str | nn.Module],
) -> list[ChannelGroup]:
    """The groups whose slicing is exact (checked on the model itself); the others are left dense.

    One check covers every group at once; only when it fails is each group tried together with those
    already found exact, so a model the analysis understands pays one slice and two forwards. Groups
    of a single unit cannot lose one and are returned as they are.
    """
    prunable = [i for i, g in enumerate(groups) if g.num_units > 1]
    if not prunable:
        return groups
    was_training = model.training
    try:
        if not _slices_exactly(model, example, groups, prunable, ignore):
            return groups
        exact: list[int] = []
        for i in prunable:
            why = _slices_exactly(model, example, groups, [*exact, i], ignore)
            if why:
                logger.warning(
                    "channel group rooted at %s left dense: slicing it is not exact (%s)",
                    groups[i].root_name, why,
                )  # fmt: skip
            else:
                exact.append(i)
    finally:
        model.train(was_training)
    kept = sorted({i for i in range(len(groups)) if i not in prunable} | set(exact))
    return [dataclasses.replace(groups[i], id=k) for k, i in enumerate(kept)]


def materialize_channels(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    keep: dict[int, torch.Tensor],
    *,
    ignore: Iterable[str | nn.Module] = (),
    groups: Sequence[ChannelGroup] | None = None,
) -> nn.Module:
    """Return a physically smaller deep copy of ``model`` keeping ``keep[group_id]`` channels.

    Group ids are those of ``find_channel_groups(model, example_inputs, ignore=ignore)`` or, when given,
    positions in ``groups`` (matched to the copy by their root layer); groups not in ``keep`` stay
    whole. Every kept index set must be non-empty.

    Example:
        >>> small = materialize_channels(model, x, {0: torch.tensor([0, 2])})  # doctest: +SKIP
    """
    clone = copy.deepcopy(model)
    by_name = dict(clone.named_modules())
    ignore_names = [n if isinstance(n, str) else _name_of(model, n) for n in ignore]
    dg, found = _raw_groups(clone, tuple(example_inputs), ignore_names)
    if groups is None:
        groups = found
    else:
        roots = {g.root_name for g in found}
        missing = [g.root_name for g in groups if g.root_name not in roots]
        if missing:
            raise ValueError(f"groups rooted at {missing} are not channel groups of this model")
    tp = _tp()
    for gid, kept in sorted(keep.items()):
        if gid < 0 or gid >= len(groups):
            raise ValueError(f"keep names group {gid}, but the model has {len(groups)} groups")
        group = groups[gid]
        kept_set = {int(i) for i in torch.as_tensor(kept).flatten().tolist()}
        if not kept_set:
            raise ValueError(f"group {gid} (rooted at {group.root_name}) must keep at least one channel")
        if min(kept_set) < 0 or max(kept_set) >= group.size:
            raise ValueError(f"group {gid} keeps indices outside 0..{group.size - 1}")
        remove = sorted(set(range(group.size)) - kept_set)
        if not remove:
            continue
        root = by_name[group.root_name]
        per_head = (
            _per_head_parameters(by_name[group.owner], group.num_units, group.names(), group.owner)
            if group.unit > 1 and group.owner
            else []
        )
        if group.blocks > 1:
            _slice_members(group, by_name, set(remove))
        else:
            if isinstance(root, nn.Conv1d | nn.Conv2d) and root.groups > 1:
                fn = tp.pruner.function.prune_depthwise_conv_out_channels
            else:
                fn = dg.get_pruner_of_module(root).prune_out_channels
            tp_group = dg.get_pruning_group(root, fn, remove)
            tp_group.prune(record_history=False)
        if group.unit > 1 and group.owner:
            owner = by_name[group.owner]
            _set_num_heads(owner, len(kept_set) // group.unit, group.unit)
            heads = sorted({i // group.unit for i in kept_set})
            _keep_heads_of(per_head, heads)
            keep_heads = getattr(owner, "keep_heads_", None)
            if callable(keep_heads) and len(heads) * group.unit == len(kept_set):
                # a module that maps per-head inputs (SplitMultiheadAttention's 3-D attn_mask) to the
                # heads left needs to know which ones those are, not only how many
                keep_heads(heads)
    return clone


def _slice_members(group: ChannelGroup, by_name: dict[str, nn.Module], remove: set[int]) -> None:
    """Slice a folded group's linear members directly: producers lose the output channels, consumers
    the input channels, whose root is removed."""
    tp = _tp().pruner.function
    for m in group.members:
        idxs = sorted({loc for loc, root in zip(m.local, m.root) if root in remove})
        module = by_name[m.name]
        if not isinstance(module, nn.Linear):
            raise ValueError(
                f"{m.name} ({type(module).__name__}) in a split projection group is not a linear"
            )
        if m.role == Role.PRODUCER:
            tp.prune_linear_out_channels(module, idxs)
        elif m.role == Role.CONSUMER:
            tp.prune_linear_in_channels(module, idxs)


def _fold_split_projection(
    members: list[GroupMember], by_name: dict[str, nn.Module], size: int
) -> tuple[list[GroupMember], int]:
    """One projection whose output is split into q / k / v (GPT-2's ``c_attn``, ``x.split(width)``):
    the tracer maps all of its outputs onto the output projection's inputs, which hold one block.
    Fold the group onto that block: channel ``c`` of every block is the same head channel, so a
    head goes from q, k and v at once. Unchanged when no consumer reads fewer channels than the
    group has; the slicing check on the model itself rejects the group if this mapping is wrong."""
    consumers = [m for m in members if m.role == Role.CONSUMER]
    widths = {getattr(by_name.get(m.name), "in_features", None) for m in consumers}
    if len(widths) != 1 or not isinstance(block := widths.pop(), int) or block >= size or size % block:
        return members, size
    if any(len(m.local) != size for m in consumers):
        return members, size
    folded = []
    for m in members:
        if m.role == Role.CONSUMER:
            local = tuple(range(block))
            folded.append(dataclasses.replace(m, local=local, root=local))
        else:
            folded.append(dataclasses.replace(m, root=tuple(r % block for r in m.root)))
    return folded, block


def _per_head_parameters(
    attn: nn.Module, num_heads: int, members: Iterable[str], prefix: str
) -> list[tuple[nn.Module, str, int, torch.Tensor]]:
    """The attention module's per-head parameters outside the group's layers, as they are: those
    with one dimension of the head count (Swin's relative-position bias table, ``(positions,
    heads)``), with that dimension and a copy of the values (the tracer may slice such a parameter
    by channel indices, which are not head indices)."""
    sliced = {name[len(prefix) + 1 :] for name in members if name.startswith(prefix + ".")}
    found = []
    for module_name, module in attn.named_modules():
        if module_name in sliced:
            continue  # the projections: sliced with the group
        for name, param in module.named_parameters(recurse=False):
            dims = [d for d, n in enumerate(param.shape) if n == num_heads]
            if param.dim() >= 2 and len(dims) == 1:
                found.append((module, name, dims[0], param.detach().clone()))
    return found


def _keep_heads_of(params: list[tuple[nn.Module, str, int, torch.Tensor]], heads: Sequence[int]) -> None:
    """Set each per-head parameter to the entries of ``heads`` (a wrong slice fails the exactness
    check on the model itself, which then leaves the heads dense)."""
    index = torch.tensor(list(heads))
    for module, name, dim, value in params:
        old = getattr(module, name)
        setattr(module, name, nn.Parameter(value.index_select(dim, index), old.requires_grad))


def _set_num_heads(attn: nn.Module, heads: int, head_dim: int) -> None:
    """Keep an attention module's head count (and widths derived from it) in step with its sliced
    projections; attributes that are properties are derived at run time and left alone."""
    for attrs, value in ((_HEAD_COUNT_ATTRS, heads), (_HEAD_WIDTH_ATTRS, heads * head_dim)):
        for attr in attrs:
            if isinstance(getattr(type(attn), attr, None), property) or not hasattr(attn, attr):
                continue
            if isinstance(getattr(attn, attr), int):
                setattr(attn, attr, value)


def _name_of(model: nn.Module, module: nn.Module) -> str:
    for n, m in model.named_modules():
        if m is module:
            return n
    raise ValueError("ignored module is not part of the model")
