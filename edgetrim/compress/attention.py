"""Torch's ``nn.MultiheadAttention`` with separate q/k/v/out Linears, so whole heads can be removed.

``nn.MultiheadAttention`` keeps the q, k and v projections packed in one ``in_proj_weight``: a head
is three row blocks of one parameter, which the channel-group analysis cannot slice.
:class:`SplitMultiheadAttention` computes the same function with ``q_proj`` / ``k_proj`` / ``v_proj`` /
``out_proj`` as ``nn.Linear``s and plain ``num_heads`` / ``head_dim`` attributes (what
:mod:`edgetrim.compress.graph` reads for head groups), and :func:`convert_multihead_attention` swaps it
in for every ``nn.MultiheadAttention`` of a model whose function it reproduces exactly.

Example:
    >>> layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True).eval()
    >>> convert_multihead_attention(layer)
    ['self_attn']
    >>> type(layer.self_attn).__name__, layer.self_attn.q_proj.out_features
    ('SplitMultiheadAttention', 16)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

logger = logging.getLogger(__name__)

__all__ = ["SplitMultiheadAttention", "convert_multihead_attention", "why_not_convertible"]


def _additive(mask: Tensor | None, name: str, dtype: torch.dtype) -> Tensor | None:
    """``mask`` as a float mask added to the scores: a bool mask's True (not allowed) becomes -inf."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    if not torch.is_floating_point(mask):
        raise AssertionError(f"only bool and floating types of {name} are supported")
    return mask


class SplitMultiheadAttention(nn.Module):
    """Drop-in replacement for ``nn.MultiheadAttention`` (without ``add_bias_kv`` / ``add_zero_attn``).

    Same constructor arguments, ``forward`` signature, masks (bool: True = not allowed; float: added to
    the scores; ``attn_mask`` ``(L, S)`` or ``(B*num_heads, L, S)``; ``key_padding_mask`` ``(B, S)``),
    ``is_causal`` hint, dropout on the attention weights in training, and return value
    ``(output, weights or None)``. Without weights it runs ``F.scaled_dot_product_attention``.

    Head ``h`` owns output rows ``h*head_dim:(h+1)*head_dim`` of ``q_proj``, ``k_proj`` and ``v_proj`` and
    the same input columns of ``out_proj``; the head count is read off the projections at run time, and
    the softmax scale stays ``1/sqrt(head_dim)`` of the original heads when some are removed. ``embed_dim``
    stays the model width (the input and output width). A 3-D ``attn_mask`` may be sized for the heads
    the module was built with (what the caller's code computes) or for those left: the rows of removed
    heads are dropped (:meth:`keep_heads_`).

    There is no packed ``in_proj_weight``: it and ``in_proj_bias`` are None and ``_qkv_same_embed_dim``
    is False, which is how ``nn.TransformerEncoderLayer`` / ``nn.TransformerEncoder`` tell that their
    fused fast path (which reads the packed weight) cannot be used; they then call this ``forward``.
    Outputs match torch's; in training, dropout applied by the caller to a batch-first output draws its
    mask in another element order than on torch's (a transposed view), so the draws differ, not their
    distribution.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be a positive multiple of num_heads {num_heads}")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5  # fixed here: removing heads must not change the other heads
        self.dropout = dropout
        self.batch_first = batch_first
        # Original head of each head left, and how many there were: a 3-D attn_mask built by the caller
        # for the original heads still applies after some are removed.
        self.head_index: tuple[int, ...] = tuple(range(num_heads))
        self.mask_heads = num_heads
        # Read by torch's transformer layers before their fused fast path (see the class docstring).
        self._qkv_same_embed_dim = False
        self.register_parameter("in_proj_weight", None)
        self.register_parameter("in_proj_bias", None)
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias, **factory)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias, **factory)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)

    def keep_heads_(self, heads: Sequence[int]) -> None:
        """Record that only ``heads`` (indices among the current heads, in order) are left.

        Called after the projections were sliced (by :func:`~edgetrim.compress.graph.materialize_channels`);
        it updates ``num_heads`` and the original heads that a 3-D ``attn_mask`` is indexed by.
        """
        heads = [int(h) for h in heads]
        if not heads or not all(0 <= h < len(self.head_index) for h in heads):
            raise ValueError(f"heads must be indices in 0..{len(self.head_index) - 1}, got {heads}")
        self.head_index = tuple(self.head_index[h] for h in heads)
        self.num_heads = len(heads)

    def _split(self, x: Tensor, batch_first: bool) -> Tensor:
        """Projected ``(B, L, H*Dh)`` (batch first) or ``(L, B, H*Dh)`` -> ``(B, H, L, Dh)``."""
        heads = x.unflatten(-1, (-1, self.head_dim))  # (..., H, Dh)
        return heads.transpose(1, 2) if batch_first else heads.permute(1, 2, 0, 3)

    def _mask(
        self,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
        bsz: int,
        heads: int,
        tgt_len: int,
        src_len: int,
    ) -> Tensor | None:
        """The additive mask, broadcastable to ``(B, H, L, S)``, or None."""
        bias = None
        if attn_mask is not None:
            if attn_mask.dim() == 2:
                if tuple(attn_mask.shape) != (tgt_len, src_len):
                    raise RuntimeError(
                        f"The shape of the 2D attn_mask is {tuple(attn_mask.shape)}, but should be "
                        f"{(tgt_len, src_len)}."
                    )
                bias = attn_mask
            elif attn_mask.dim() == 3:
                rows = attn_mask.shape[0]
                if tuple(attn_mask.shape[1:]) != (tgt_len, src_len) or rows not in (
                    bsz * heads,
                    bsz * self.mask_heads,
                ):
                    raise RuntimeError(
                        f"The shape of the 3D attn_mask is {tuple(attn_mask.shape)}, but should be "
                        f"{(bsz * heads, tgt_len, src_len)}."
                    )
                if rows == bsz * heads:
                    bias = attn_mask.view(bsz, heads, tgt_len, src_len)
                else:  # sized for the original heads: keep the rows of the heads left
                    if len(self.head_index) != heads:
                        raise RuntimeError(
                            f"{heads} heads are left but {len(self.head_index)} are recorded: slice "
                            "the projections with materialize_channels or call keep_heads_"
                        )
                    full = attn_mask.view(bsz, self.mask_heads, tgt_len, src_len)
                    bias = full[:, list(self.head_index)]
            else:
                raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is not supported")
        if key_padding_mask is not None:
            if tuple(key_padding_mask.shape) != (bsz, src_len):
                raise AssertionError(
                    f"expecting key_padding_mask shape of {(bsz, src_len)}, but got "
                    f"{tuple(key_padding_mask.shape)}"
                )
            padding = key_padding_mask.view(bsz, 1, 1, src_len)
            bias = padding if bias is None else bias + padding
        return bias

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attention of ``query`` over ``key`` / ``value``; see ``nn.MultiheadAttention.forward``."""
        if query.is_nested or key.is_nested or value.is_nested:
            raise AssertionError("SplitMultiheadAttention does not take NestedTensor inputs")
        batched = query.dim() == 3
        batch_first = self.batch_first and batched
        if not batched:  # (L, E): one sequence, handled as a batch of one in (L, B, E) layout
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        out, weights = self._attend(
            query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal,
            batch_first=batch_first,
        )  # fmt: skip
        if not batched:
            out = out.squeeze(1)
            if weights is not None:
                weights = weights.squeeze(0)
        return out, weights

    def _attend(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None,
        need_weights: bool,
        attn_mask: Tensor | None,
        average_attn_weights: bool,
        is_causal: bool,
        *,
        batch_first: bool,
    ) -> tuple[Tensor, Tensor | None]:
        if batch_first:
            bsz, tgt_len, src_len = query.shape[0], query.shape[1], key.shape[1]
        else:
            bsz, tgt_len, src_len = query.shape[1], query.shape[0], key.shape[0]
        key_padding_mask = _additive(key_padding_mask, "key_padding_mask", query.dtype)
        if is_causal and attn_mask is None:
            raise RuntimeError(
                "Need attn_mask if specifying the is_causal hint. You may use the Transformer module "
                "method `generate_square_subsequent_mask` to create this mask."
            )
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None  # as torch: the hint replaces the mask in the fused kernel
        else:
            attn_mask = _additive(attn_mask, "attn_mask", query.dtype)
            is_causal = False
        q = self._split(self.q_proj(query), batch_first)
        k = self._split(self.k_proj(key), batch_first)
        v = self._split(self.v_proj(value), batch_first)
        heads = q.shape[1]
        bias = self._mask(attn_mask, key_padding_mask, bsz, heads, tgt_len, src_len)
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = torch.matmul(q * self.scale, k.transpose(-2, -1))  # (B, H, L, S)
            if bias is not None:
                scores = scores + bias
            weights = torch.softmax(scores, dim=-1)
            if dropout_p > 0.0:
                weights = F.dropout(weights, p=dropout_p)
            ctx = torch.matmul(weights, v)  # (B, H, L, Dh)
            if average_attn_weights:
                weights = weights.mean(dim=1)
        else:
            ctx = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=dropout_p, is_causal=is_causal, scale=self.scale
            )
        ctx = (ctx.transpose(1, 2) if batch_first else ctx.permute(2, 0, 1, 3)).flatten(2)
        return self.out_proj(ctx), weights

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> SplitMultiheadAttention:
        """A module computing what ``mha`` computes (weights copied); raises ValueError when it cannot."""
        why = why_not_convertible(mha)
        if why:
            raise ValueError(f"cannot convert this nn.MultiheadAttention: {why}")
        w = mha.out_proj.weight
        new = cls(
            mha.embed_dim,
            mha.num_heads,
            dropout=mha.dropout,
            bias=mha.in_proj_bias is not None,
            kdim=mha.kdim,
            vdim=mha.vdim,
            batch_first=mha.batch_first,
            device=w.device,
            dtype=w.dtype,
        )
        e = mha.embed_dim
        if (mha.out_proj.bias is not None) != (mha.in_proj_bias is not None):  # bias removed by hand
            new.out_proj = nn.Linear(e, e, bias=mha.out_proj.bias is not None, device=w.device, dtype=w.dtype)
        if mha.in_proj_weight is not None:
            weights = mha.in_proj_weight.detach().split(e)
            requires_grad = [mha.in_proj_weight.requires_grad] * 3
        else:
            projs = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
            weights = tuple(p.detach() for p in projs)
            requires_grad = [p.requires_grad for p in projs]
        biases = mha.in_proj_bias.detach().split(e) if mha.in_proj_bias is not None else (None,) * 3
        with torch.no_grad():
            for lin, wt, b, grad in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases, requires_grad):
                lin.weight.copy_(wt)
                lin.weight.requires_grad_(grad)
                if b is not None:
                    lin.bias.copy_(b)
                    lin.bias.requires_grad_(mha.in_proj_bias.requires_grad)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            new.out_proj.weight.requires_grad_(mha.out_proj.weight.requires_grad)
            if mha.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias)
                new.out_proj.bias.requires_grad_(mha.out_proj.bias.requires_grad)
        return new.train(mha.training)


def why_not_convertible(mha: nn.MultiheadAttention) -> str:
    """Why :class:`SplitMultiheadAttention` would not compute what ``mha`` computes ("" when it would)."""
    if type(mha).forward is not nn.MultiheadAttention.forward:
        return f"{type(mha).__name__} overrides forward"
    if mha.bias_k is not None or mha.bias_v is not None:
        return "add_bias_kv appends learned key/value rows"
    if mha.add_zero_attn:
        return "add_zero_attn appends a zero key/value row"
    if parametrize.is_parametrized(mha) or parametrize.is_parametrized(mha.out_proj):
        return "its weights are parametrized"
    if (
        mha._forward_hooks
        or mha._forward_pre_hooks
        or mha.out_proj._forward_hooks
        or mha.out_proj._forward_pre_hooks
    ):
        return "forward hooks are registered on it"
    return ""


def convert_multihead_attention(model: nn.Module) -> list[str]:
    """Replace, in place, every ``nn.MultiheadAttention`` of ``model`` by a :class:`SplitMultiheadAttention`
    with the same weights; return the names converted.

    A module it cannot convert exactly (``add_bias_kv``, ``add_zero_attn``, a subclass with its own
    forward, parametrized weights, hooks on it, ``model`` itself) is left as it is, with an info log
    saying why. A module reachable under several names is replaced everywhere by one new module.
    ``nn.TransformerEncoder``s whose layers were converted stop using nested tensors (their fast path
    for padded batches needs the packed projection).
    """
    parents: dict[int, list[tuple[nn.Module, str]]] = {}
    first_name: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for child_name, child in module._modules.items():  # named_children() skips a repeated child
            if isinstance(child, nn.MultiheadAttention):
                parents.setdefault(id(child), []).append((module, child_name))
                first_name.setdefault(id(child), f"{name}.{child_name}" if name else child_name)
    if isinstance(model, nn.MultiheadAttention):
        logger.info("nn.MultiheadAttention left as it is: it is the model itself, not a part of one")
    converted: list[str] = []
    replaced: dict[int, SplitMultiheadAttention] = {}
    for key, name in first_name.items():
        mha = getattr(parents[key][0][0], parents[key][0][1])
        why = why_not_convertible(mha)
        if why:
            logger.info("nn.MultiheadAttention %r left as it is (its heads stay dense): %s", name, why)
            continue
        new = SplitMultiheadAttention.from_torch(mha)
        for parent, attr in parents[key]:
            setattr(parent, attr, new)
        replaced[key] = new
        converted.append(name)
    if replaced:
        for name, module in model.named_modules():
            if isinstance(module, nn.TransformerEncoder) and getattr(module, "use_nested_tensor", False):
                layers = [getattr(layer, "self_attn", None) for layer in module.layers]
                if any(isinstance(a, SplitMultiheadAttention) for a in layers):
                    module.use_nested_tensor = False
                    logger.debug("nn.TransformerEncoder %r no longer uses nested tensors", name)
    return converted
