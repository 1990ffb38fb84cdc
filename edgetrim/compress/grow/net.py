"""A plain conv net whose filters and (optional) layers are gated, grown from a one-filter seed.

``GrowNet`` holds the full-size parameters; each epoch only the sampled active units take part in the
forward pass, which slices the weight tensors (``index_select``), so compute really shrinks with the
network. Layers marked ``layer_gated`` share their input's channel gates (same width, same resolution)
and fall back to the identity when their layer gate is off (Eq. 2); they are never resolution-changing.

Gate placement: after BN and ReLU (a filter gated before BN would still emit BN's shift). Gates are
positive, so at materialisation each gate is folded into the *next* layer's input columns, which is
exact through ReLU-free max pooling and global average pooling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgetrim.compress.grow.gates import final_mask, gate_probability, temperature


@dataclass(frozen=True)
class GrowNetSpec:
    """Architecture of the full-size (maximum) network."""

    widths: tuple[int, ...] = (32, 32, 64, 64)
    pool_after: tuple[bool, ...] = (False, True, False, False)
    layer_gated: tuple[bool, ...] = (False, False, False, False)
    in_channels: int = 1
    num_classes: int = 10
    image_size: tuple[int, int] = (8, 8)
    kernel: int = 3

    def __post_init__(self) -> None:
        for name in ("widths", "pool_after", "layer_gated", "image_size"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        n = len(self.widths)
        if n == 0 or any(w < 1 for w in self.widths):
            raise ValueError(f"widths must be positive, got {self.widths}")
        if len(self.pool_after) != n or len(self.layer_gated) != n:
            raise ValueError(
                f"pool_after and layer_gated need {n} entries, got {self.pool_after}, {self.layer_gated}"
            )
        if self.layer_gated[0]:
            raise ValueError("the first layer cannot be layer-gated (its input has a different width)")
        for j in range(1, n):
            if self.layer_gated[j] and self.widths[j] != self.widths[j - 1]:
                raise ValueError(
                    f"layer {j} is layer-gated, so its width must equal layer {j - 1}'s ({self.widths[j - 1]})"
                )
        if self.kernel % 2 != 1:
            raise ValueError(f"kernel must be odd (same padding), got {self.kernel}")

    def groups(self) -> list[int]:
        """Channel-gate group of every layer: layer-gated layers share their input's group."""
        out: list[int] = []
        g = -1
        for j in range(len(self.widths)):
            if not self.layer_gated[j]:
                g += 1
            out.append(g)
        return out


def count_resources(spec: GrowNetSpec, widths: Sequence[int], layers_on: Sequence[bool]) -> tuple[int, int]:
    """(parameters, MACs per sample) of the plain network with ``widths`` per layer, skipping off layers.

    Counts conv weights + bias, BN scale + shift, and the classifier; MACs of convs and classifier.
    """
    params, macs = 0, 0
    h, w = spec.image_size
    prev = spec.in_channels
    k2 = spec.kernel * spec.kernel
    for j, width in enumerate(widths):
        if layers_on[j]:
            params += k2 * prev * width + width + 2 * width
            macs += k2 * prev * width * h * w
            prev = width
        if spec.pool_after[j]:
            h, w = h // 2, w // 2
    params += prev * spec.num_classes + spec.num_classes
    macs += prev * spec.num_classes
    return params, macs


class GrowNet(nn.Module):
    """Gated plain CNN (conv-BN-ReLU[-maxpool] x n, global average pool, linear)."""

    def __init__(
        self,
        spec: GrowNetSpec,
        *,
        seed_units: int = 1,
        logit_on: float = 2.0,
        logit_off: float = -3.0,
        logit_jitter: float = 0.5,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.group_of = spec.groups()
        n_groups = max(self.group_of) + 1
        self.group_width = [spec.widths[self.group_of.index(g)] for g in range(n_groups)]
        prev = spec.in_channels
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        for width in spec.widths:
            self.convs.append(nn.Conv2d(prev, width, spec.kernel, padding=spec.kernel // 2))
            self.bns.append(nn.BatchNorm2d(width))
            prev = width
        self.fc = nn.Linear(prev, spec.num_classes)
        # Seed: the first `seed_units` filters of every group are on, the rest off; gated layers start off.
        # Dormant logits get a small uniform jitter: with identical logits every dormant unit receives the
        # same regulariser gradient and crosses zero in the same step (all-or-nothing growth).
        self.channel_logits = nn.ParameterList(
            [
                nn.Parameter(
                    torch.where(
                        torch.arange(w) < seed_units,
                        torch.tensor(logit_on),
                        logit_off + logit_jitter * (2 * torch.rand(w) - 1),
                    )
                )
                for w in self.group_width
            ]
        )
        gated = [j for j in range(len(spec.widths)) if spec.layer_gated[j]]
        self.gated_layers = gated
        self.layer_logits = nn.Parameter(logit_off + logit_jitter * (2 * torch.rand(len(gated)) - 1))
        self.register_buffer("gamma", torch.tensor(1.0))
        self.channel_counts = [torch.zeros(w) for w in self.group_width]
        self.layer_counts = torch.zeros(len(gated))
        self.active: list[Tensor] = [
            torch.arange(w) < seed_units for w in self.group_width
        ]  # sampled q (bool)
        self.layer_active = torch.zeros(len(gated), dtype=torch.bool)
        # Set only inside recalibrate_bn_: train-mode BN (batch statistics, cumulative running average)
        # on the deterministic (s > 0) architecture instead of the sampled one.
        self._calibration_batch = 0

    # ------------------------------------------------------------------------------ gate values
    def channel_beta(self, g: int) -> Tensor:
        return temperature(self.channel_counts[g], gamma=float(self.gamma))

    def layer_beta(self) -> Tensor:
        return temperature(self.layer_counts, gamma=float(self.gamma))

    def channel_gates(self, g: int) -> Tensor:
        return gate_probability(self.channel_logits[g], self.channel_beta(g))

    def layer_gates(self) -> Tensor:
        return gate_probability(self.layer_logits, self.layer_beta())

    def soft_gate_sum(self) -> tuple[Tensor, Tensor]:
        """(sum of channel gates, sum of layer gates): the L1 terms of Eq. 6."""
        ch = sum((self.channel_gates(g).sum() for g in range(len(self.group_width))), torch.tensor(0.0))
        return ch, self.layer_gates().sum()

    def deterministic_state(self) -> tuple[list[Tensor], Tensor]:
        """The final architecture: channels and layers with ``s > 0``."""
        chans = [final_mask(s) for s in self.channel_logits]
        layers = self.layer_logits.detach() > 0
        return chans, layers

    def layers_on(self, layer_active: Tensor) -> list[bool]:
        on = [True] * len(self.spec.widths)
        for i, j in enumerate(self.gated_layers):
            on[j] = bool(layer_active[i])
        return on

    def widths_of(self, active: Sequence[Tensor]) -> list[int]:
        return [int(active[self.group_of[j]].sum()) for j in range(len(self.spec.widths))]

    # ---------------------------------------------------------------------------------- forward
    def _bn(self, j: int, y: Tensor, idx: Tensor) -> Tensor:
        bn = self.bns[j]
        if self.training:
            rm, rv = bn.running_mean[idx].clone(), bn.running_var[idx].clone()
            # calibration: cumulative average over the k-th batch (momentum 1/k), as BatchNorm with momentum None
            momentum = 1.0 / self._calibration_batch if self._calibration_batch else (bn.momentum or 0.1)
            out = F.batch_norm(y, rm, rv, bn.weight[idx], bn.bias[idx], True, momentum, bn.eps)
            with torch.no_grad():
                bn.running_mean[idx] = rm
                bn.running_var[idx] = rv
            return out
        return F.batch_norm(
            y, bn.running_mean[idx], bn.running_var[idx], bn.weight[idx], bn.bias[idx], False, 0.0, bn.eps
        )

    def forward(self, x: Tensor) -> Tensor:
        """Training: the sampled subnetwork with soft gates. Eval: the final (s > 0) architecture."""
        if self.training and not self._calibration_batch:
            active, layer_active, soft_layers = self.active, self.layer_active, True
        else:
            active, layer_active = self.deterministic_state()
            soft_layers = False
        layer_gate = self.layer_gates()
        cur = torch.arange(self.spec.in_channels)
        for j, conv in enumerate(self.convs):
            g = self.group_of[j]
            idx = active[g].nonzero().flatten()
            is_gated = self.spec.layer_gated[j]
            if is_gated:
                li = self.gated_layers.index(j)
                if not bool(layer_active[li]):
                    if self.spec.pool_after[j]:
                        x = F.max_pool2d(x, 2)
                    continue
            w = conv.weight.index_select(0, idx).index_select(1, cur)  # (C_out_active, C_in_active, k, k)
            y = F.conv2d(x, w, conv.bias.index_select(0, idx), padding=conv.padding)
            y = F.relu(self._bn(j, y, idx))
            y = y * self.channel_gates(g).index_select(0, idx).view(1, -1, 1, 1)  # (B, C, H, W) gated
            if is_gated and soft_layers:
                m = layer_gate[self.gated_layers.index(j)]
                y = m * y + (1.0 - m) * x
            x = y
            cur = idx
            if self.spec.pool_after[j]:
                x = F.max_pool2d(x, 2)
        x = x.mean(dim=(2, 3))  # (B, C) global average pool
        return F.linear(x, self.fc.weight.index_select(1, cur), self.fc.bias)

    @torch.no_grad()
    def recalibrate_bn_(self, x: Tensor, *, batch_size: int = 256) -> None:
        """Re-estimate every BatchNorm's running statistics on ``x`` for the final (s > 0) architecture.

        During growth the running statistics are exponential averages over *sampled* networks: units
        near the threshold switch on and off from epoch to epoch, the gates that scale each layer's
        input sharpen after every epoch (the temperature counters advance after the last one too), and
        the early entries come from a much smaller network. Evaluation and :meth:`materialize` use the
        deterministic architecture, whose pre-BN activations differ from all of those, so the carried
        statistics are stale. This pass replaces them with the exact (cumulative) statistics of the
        deterministic network on ``x`` (the training data); weights, logits and gates are untouched.
        """
        was = self.training
        active, _ = self.deterministic_state()
        for j, bn in enumerate(self.bns):
            idx = active[self.group_of[j]].nonzero().flatten()
            bn.running_mean[idx] = 0.0
            bn.running_var[idx] = 1.0
        self.train()
        try:
            for k, i in enumerate(range(0, len(x), batch_size), start=1):
                self._calibration_batch = k
                self(x[i : i + batch_size])
        finally:
            self._calibration_batch = 0
            self.train(was)

    # ------------------------------------------------------------------------------- materialise
    def units_for_widths(self, widths: Sequence[int]) -> list[Tensor]:
        """Per gate group, the ``widths`` units with the highest logits (the kept units come first).

        Used to land on exact widths after growth (a latency fit): a wider layer takes the dormant
        units closest to switching on, a narrower one drops the weakest kept units.
        """
        if len(widths) != len(self.spec.widths):
            raise ValueError(f"need {len(self.spec.widths)} widths, got {list(widths)}")
        out = []
        for g, logits in enumerate(self.channel_logits):
            j = self.group_of.index(g)
            k = int(widths[j])
            if not 1 <= k <= self.group_width[g]:
                raise ValueError(f"width {k} of layer {j} is outside 1..{self.group_width[g]}")
            keep = torch.zeros(self.group_width[g], dtype=torch.bool)
            keep[logits.detach().topk(k).indices] = True
            out.append(keep)
        return out

    @torch.no_grad()
    def materialize(self, widths: Sequence[int] | None = None) -> nn.Sequential:
        """The final architecture as a plain ``nn.Sequential`` (Conv2d, BatchNorm2d, ReLU, MaxPool2d,
        AdaptiveAvgPool2d, Flatten, Linear); equal to ``self.eval()(x)`` up to float rounding.

        ``widths`` overrides the kept units (see :meth:`units_for_widths`); the output then differs
        from ``self.eval()`` and wants a short fine-tune.
        """
        active, layer_active = self.deterministic_state()
        if widths is not None:
            active = self.units_for_widths(widths)
        on = self.layers_on(layer_active)
        layers: list[nn.Module] = []
        cur = torch.arange(self.spec.in_channels)
        in_scale = torch.ones(self.spec.in_channels)
        for j, conv in enumerate(self.convs):
            if on[j]:
                g = self.group_of[j]
                idx = active[g].nonzero().flatten()
                new = nn.Conv2d(len(cur), len(idx), conv.kernel_size, padding=conv.padding)
                new.weight.copy_(conv.weight[idx][:, cur] * in_scale.view(1, -1, 1, 1))
                new.bias.copy_(conv.bias[idx])
                bn = self.bns[j]
                nbn = nn.BatchNorm2d(len(idx), eps=bn.eps, momentum=bn.momentum)
                nbn.weight.copy_(bn.weight[idx])
                nbn.bias.copy_(bn.bias[idx])
                nbn.running_mean.copy_(bn.running_mean[idx])
                nbn.running_var.copy_(bn.running_var[idx])
                layers += [new, nbn, nn.ReLU()]
                cur = idx
                in_scale = self.channel_gates(g).detach()[idx]  # folded into whatever consumes these channels
            if self.spec.pool_after[j]:
                layers.append(nn.MaxPool2d(2))
        fc = nn.Linear(len(cur), self.spec.num_classes)
        fc.weight.copy_(self.fc.weight[:, cur] * in_scale.view(1, -1))
        fc.bias.copy_(self.fc.bias)
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc]
        return nn.Sequential(*layers).eval()

    def example_inputs(self) -> tuple[Tensor]:
        return (torch.zeros(1, self.spec.in_channels, *self.spec.image_size),)


def uniform_net(spec: GrowNetSpec, scale: float) -> nn.Sequential:
    """A plain net with every width scaled by ``scale`` (at least 1), all layers on, fresh init."""
    widths = [max(1, round(w * scale)) for w in spec.widths]
    layers: list[nn.Module] = []
    prev = spec.in_channels
    for j, w in enumerate(widths):
        layers += [nn.Conv2d(prev, w, spec.kernel, padding=spec.kernel // 2), nn.BatchNorm2d(w), nn.ReLU()]
        if spec.pool_after[j]:
            layers.append(nn.MaxPool2d(2))
        prev = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, spec.num_classes)]
    return nn.Sequential(*layers)


def plain_net(
    spec: GrowNetSpec, widths: Sequence[int], layers_on: Sequence[bool] | None = None
) -> nn.Sequential:
    """A fresh plain net with the given widths (for latency lookups of a candidate architecture)."""
    on = list(layers_on) if layers_on is not None else [True] * len(widths)
    layers: list[nn.Module] = []
    prev = spec.in_channels
    for j, w in enumerate(widths):
        if on[j]:
            layers += [
                nn.Conv2d(prev, w, spec.kernel, padding=spec.kernel // 2),
                nn.BatchNorm2d(w),
                nn.ReLU(),
            ]
            prev = w
        if spec.pool_after[j]:
            layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, spec.num_classes)]
    return nn.Sequential(*layers).eval()
