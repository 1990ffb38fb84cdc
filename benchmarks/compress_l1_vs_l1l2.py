"""Acceptance 1 (paper section 3.2) on digits: an input mask on an MLP with BatchNorm, l1 vs l1/l2.

The mask ``alpha`` (one entry per input pixel) multiplies the input of ``Linear -> BN -> ReLU ->
Linear``; the FLOPs of the first layer are ``||alpha||_0 x hidden``. From the same pre-trained start
(``alpha = 1``), SGD with momentum, as in the paper:

* ``l1l2`` (Eq. 5, the method): ``CE + lambda * s(alpha) / d`` with ``s = sqrt(d) ||alpha||_1 / ||alpha||_2``,
  ``alpha >= 0`` by projection ``alpha <- max(0, alpha)`` after every step;
* ``l1`` (Eq. 3, the paper's l1 arm): ``CE + lambda * ||alpha||_1 / d`` with ``alpha`` unconstrained and
  plain SGD steps (no projection): the penalty the paper shows failing under BatchNorm;
* ablations of the projection (``--ablations``): ``l1_projected`` (Eq. 3 plus the projection) and
  ``l1l2_unprojected`` (Eq. 4 without it).

Both penalties equal ``lambda`` at ``alpha = 1``. Tracked per epoch: exact zeros of ``alpha`` (all
pixels and the informative ones), entries below 1e-2 / 1e-3 of ``max |alpha|``, mean and variance of
``|alpha|`` and its coefficient of variation (scale free), ``||W_1||_F`` and the effective
``||W_1 diag(alpha)||_F``, both penalties, first-layer MACs (exact zeros) and validation accuracy.
The paper's claim: l1/l2 reaches exact zeros; l1 shrinks mean and variance of ``|alpha|`` without
zeros while ``||W_1||_F`` grows (BatchNorm undoes a uniform shrink). Figures are over ``--seeds``
(pre-training and SGD order); the plot shows the first seed.

Writes benchmarks/results/compress_l1_vs_l1l2.json and .png.

    .venv/bin/python benchmarks/compress_l1_vs_l1l2.py [--epochs 30] [--lam 2.0] [--lr 0.05]
        [--seeds 0,1,2] [--ablations] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from edgetrim.compress.surrogate import l1_penalty, soft_count
from edgetrim.examples.data import digits_loaders
from edgetrim.examples.models import mlp_bn
from edgetrim.examples.training import evaluate_accuracy, train_classifier

OUT = Path(__file__).resolve().parent / "results"


class InputMasked(nn.Module):
    """``net(x * alpha)`` with a non-negative mask on the input features."""

    def __init__(self, net: nn.Module, d: int) -> None:
        super().__init__()
        self.net = net
        self.alpha = nn.Parameter(torch.ones(d))  # (d,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * self.alpha)


def first_linear(model: nn.Module) -> nn.Linear:
    return next(m for m in model.modules() if isinstance(m, nn.Linear))


def informative_pixels(loader) -> torch.Tensor:
    """Input features that vary over the training set (digits has always-blank border pixels, whose
    mask entries get no loss gradient, so any penalty zeroes them: they say nothing about the method)."""
    xs = torch.cat([xb for xb, _ in loader])  # (N, 64)
    return xs.std(dim=0) > 0


def run(
    start: nn.Module, train, val, *, arm: str, lam: float, epochs: int, lr: float, seed: int
) -> list[dict]:
    penalty = "l1l2" if arm.startswith("l1l2") else "l1"
    project = arm in ("l1l2", "l1_projected")
    model = InputMasked(copy.deepcopy(start), 64)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    d = model.alpha.numel()
    rows = []
    live = informative_pixels(train)
    torch.manual_seed(seed)
    for epoch in range(epochs + 1):
        if epoch > 0:
            model.train()
            for xb, yb in train:
                reg = soft_count(model.alpha) if penalty == "l1l2" else l1_penalty(model.alpha)
                loss = loss_fn(model(xb), yb) + lam * reg / d
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if project:
                    with torch.no_grad():
                        model.alpha.clamp_(min=0.0)  # projection: exact zeros
        a = model.alpha.detach().abs()
        w1 = first_linear(model.net).weight.detach()  # (hidden, 64)
        hidden = w1.shape[0]
        top = float(a.max())
        rows.append(
            {
                "epoch": epoch,
                "zeros": int((a == 0).sum()),
                "zeros_informative": int((a[live] == 0).sum()),
                "informative": int(live.sum()),
                "below_1e-2_of_max": int((a < 1e-2 * top).sum()),
                "below_1e-3_of_max": int((a < 1e-3 * top).sum()),
                "mean_abs_alpha": float(a.mean()),
                "var_abs_alpha": float(a.var(unbiased=False)),
                "var_abs_alpha_informative": float(a[live].var(unbiased=False)),
                "cv_abs_alpha": float(a.std(unbiased=False) / a.mean()) if float(a.mean()) > 0 else 0.0,
                "soft_count": float(soft_count(a)),
                "l1": float(a.sum()),
                "w1_fro": float(w1.norm()),
                "w1_alpha_fro": float((w1 * model.alpha.detach()).norm()),
                "accuracy": evaluate_accuracy(model, val),
                "first_layer_macs": int((a != 0).sum()) * hidden,
            }
        )
    return rows


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("zeros", "exact zeros in alpha"),
        ("mean_abs_alpha", "mean |alpha|"),
        ("var_abs_alpha", "var |alpha|"),
        ("w1_fro", "||W1||_F"),
        ("first_layer_macs", "first-layer MACs (exact zeros)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(20, 3.6))
    for name, rows in results.items():
        ep = [r["epoch"] for r in rows]
        for ax, (key, _) in zip(axes, panels):
            ax.plot(ep, [r[key] for r in rows], label=name)
    for ax, (_, title) in zip(axes, panels):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


SUMMARY_KEYS = (
    "zeros", "zeros_informative", "below_1e-2_of_max", "below_1e-3_of_max", "mean_abs_alpha",
    "var_abs_alpha", "cv_abs_alpha", "w1_fro", "w1_alpha_fro", "soft_count", "accuracy", "first_layer_macs",
)  # fmt: skip


def summarise(per_seed: list[list[dict]]) -> dict:
    """Final-epoch value of every key over seeds (mean, min, max) plus the start values."""
    out: dict = {"seeds": len(per_seed)}
    for k in SUMMARY_KEYS:
        xs = [rows[-1][k] for rows in per_seed]
        out[k] = {"mean": statistics.fmean(xs), "min": min(xs), "max": max(xs)}
    start = per_seed[0][0]
    out["start"] = {k: start[k] for k in ("mean_abs_alpha", "var_abs_alpha", "w1_fro", "first_layer_macs")}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--lam", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--ablations", action="store_true", help="also l1 with projection, l1/l2 without")
    p.add_argument("--quick", action="store_true", help="5 epochs, one seed, no file written")
    args = p.parse_args()
    if args.quick:
        args.epochs, args.seeds = 5, "0"
    torch.set_num_threads(1)
    train, val = digits_loaders(flat=True)
    arms = ["l1l2", "l1"] + (["l1_projected", "l1l2_unprojected"] if args.ablations else [])
    t0 = time.perf_counter()
    histories: dict[str, list[list[dict]]] = {a: [] for a in arms}
    dense = []
    for seed in [int(x) for x in args.seeds.split(",")]:
        torch.manual_seed(seed)
        start, _ = mlp_bn()
        dense.append(train_classifier(start, train, val, epochs=args.pretrain_epochs, lr=3e-3, seed=seed))
        for arm in arms:
            histories[arm].append(
                run(start, train, val, arm=arm, lam=args.lam, epochs=args.epochs, lr=args.lr, seed=seed)
            )
    summary = {arm: summarise(h) for arm, h in histories.items()}
    print(json.dumps(summary, indent=2))
    if args.quick:
        return
    OUT.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": "compress_l1_vs_l1l2",
        "args": vars(args),
        "dense_accuracy": dense,
        "seconds": time.perf_counter() - t0,
        "summary": summary,
        "history_first_seed": {arm: h[0] for arm, h in histories.items()},
    }
    (OUT / "compress_l1_vs_l1l2.json").write_text(json.dumps(doc, indent=2))
    plot({arm: h[0] for arm, h in histories.items()}, OUT / "compress_l1_vs_l1l2.png")


if __name__ == "__main__":
    main()
