"""A small BERT-style encoder for digits rows, with prunable attention heads.

Use it through :mod:`edgetrim.examples.models` (``build("bert_encoder_small")``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from edgetrim.examples._common import ModelAndInputs, eval_pair

logger = logging.getLogger(__name__)

# --- BERT-style encoder ------------------------------------------------------------------------------


class MultiHeadSelfAttention(nn.Module):
    """Self-attention with separate ``q``/``k``/``v``/``out`` Linears and an explicit head split.

    Head ``h`` owns output rows ``h*head_dim:(h+1)*head_dim`` of ``q``, ``k`` and ``v`` and the same input
    columns of ``out``. ``num_heads`` and ``head_dim`` are plain attributes: code that slices the
    projections must update them (:meth:`prune_heads_` does it for whole heads; after Torch-Pruning with
    ``num_heads={attn.q: ..., ...}`` set ``attn.num_heads = pruner.num_heads[attn.q]`` and
    ``attn.head_dim = attn.q.out_features // attn.num_heads``). ``forward`` raises if they disagree
    with the projection widths, so a forgotten update fails loudly instead of mixing heads. The softmax
    scale stays ``1/sqrt(original head_dim)``, so removing all-zero dimensions leaves outputs unchanged.
    """

    def __init__(self, hidden: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        inner = num_heads * head_dim
        self.q = nn.Linear(hidden, inner)
        self.k = nn.Linear(hidden, inner)
        self.v = nn.Linear(hidden, inner)
        self.out = nn.Linear(inner, hidden)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = self.num_heads * self.head_dim
        widths = (self.q.out_features, self.k.out_features, self.v.out_features, self.out.in_features)
        if any(w != inner for w in widths):
            raise RuntimeError(
                f"attention widths {widths} do not match num_heads*head_dim = {self.num_heads}*{self.head_dim}: "
                "update num_heads/head_dim after pruning"
            )
        b, s, _ = x.shape  # (B, S, hidden)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, s, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, S, Dh)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale  # (B, H, S, S)
        ctx = torch.matmul(self.softmax(scores), v)  # (B, H, S, Dh)
        ctx = ctx.transpose(1, 2).reshape(b, s, inner)  # (B, S, H*Dh)
        return self.out(ctx)  # (B, S, hidden)

    @torch.no_grad()
    def prune_heads_(self, keep: Sequence[int]) -> int:
        """Keep only the heads listed in ``keep`` (in that order), slicing q/k/v/out in place.

        Returns:
            The number of heads left.

        Raises:
            ValueError: if ``keep`` is empty, repeats a head or names one that does not exist.
        """
        keep = [int(h) for h in keep]
        if not keep or len(set(keep)) != len(keep) or not all(0 <= h < self.num_heads for h in keep):
            raise ValueError(f"keep must list distinct heads in 0..{self.num_heads - 1}, got {keep}")
        rows = torch.cat([torch.arange(h * self.head_dim, (h + 1) * self.head_dim) for h in keep])
        for name in ("q", "k", "v"):
            old: nn.Linear = getattr(self, name)
            new = nn.Linear(old.in_features, len(rows), bias=old.bias is not None)
            new.weight.copy_(old.weight[rows])
            if old.bias is not None:
                new.bias.copy_(old.bias[rows])
            setattr(self, name, new)
        out = nn.Linear(len(rows), self.out.out_features, bias=self.out.bias is not None)
        out.weight.copy_(self.out.weight[:, rows])
        if self.out.bias is not None:
            out.bias.copy_(self.out.bias)
        self.out = out
        self.num_heads = len(keep)
        return self.num_heads


class EncoderLayer(nn.Module):
    """Post-LN transformer encoder layer (as in BERT): x = LN(x + attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, hidden: int, num_heads: int, head_dim: int, ffn: int) -> None:
        super().__init__()
        self.attn = MultiHeadSelfAttention(hidden, num_heads, head_dim)
        self.norm1 = nn.LayerNorm(hidden)
        self.ffn_in = nn.Linear(hidden, ffn)
        self.act = nn.GELU()
        self.ffn_out = nn.Linear(ffn, hidden)
        self.norm2 = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.ffn_out(self.act(self.ffn_in(x))))  # (B, S, hidden)


class BertEncoderSmall(nn.Module):
    """Linear token embedding + learned positions, encoder layers, mean pool over tokens, classifier."""

    def __init__(
        self,
        *,
        seq_len: int,
        token_features: int,
        hidden: int,
        num_heads: int,
        head_dim: int,
        ffn: int,
        num_layers: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(token_features, hidden)
        self.pos = nn.Parameter(torch.randn(1, seq_len, hidden) * 0.02)  # (1, S, hidden)
        self.layers = nn.Sequential(
            *[EncoderLayer(hidden, num_heads, head_dim, ffn) for _ in range(num_layers)]
        )
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.pos  # (B, S, hidden)
        h = self.layers(h)
        return self.classifier(h.mean(dim=1))  # (B, num_classes)


def bert_encoder_small(
    *,
    hidden: int = 64,
    num_heads: int = 4,
    head_dim: int | None = None,
    ffn: int = 128,
    num_layers: int = 2,
    seq_len: int = 8,
    token_features: int = 8,
    num_classes: int = 10,
) -> ModelAndInputs:
    """BERT-style encoder on digits rows: input ``(1, 8, 8)`` = 8 tokens of 8 features, 10 logits.

    ``head_dim`` defaults to ``hidden // num_heads``; ``hidden`` may be odd when ``head_dim`` is given.
    Feed it :func:`edgetrim.examples.data.digits_tokens_loaders` batches.

    Example:
        >>> m, (x,) = bert_encoder_small(hidden=37, num_heads=3, head_dim=12, ffn=61)
        >>> tuple(x.shape), tuple(m(x).shape)
        ((1, 8, 8), (1, 10))
    """
    if head_dim is None:
        head_dim = hidden // num_heads
    for name, value in (("hidden", hidden), ("num_heads", num_heads), ("head_dim", head_dim), ("ffn", ffn)):
        if value < 1:
            raise ValueError(f"bert_encoder_small {name} must be >= 1, got {value}")
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    model = BertEncoderSmall(
        seq_len=seq_len,
        token_features=token_features,
        hidden=hidden,
        num_heads=num_heads,
        head_dim=head_dim,
        ffn=ffn,
        num_layers=num_layers,
        num_classes=num_classes,
    )
    return eval_pair(model, (torch.randn(1, seq_len, token_features),))
