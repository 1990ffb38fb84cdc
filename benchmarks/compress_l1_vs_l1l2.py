"""Acceptance 1 (paper section 3.2) on digits: an input mask on an MLP with BatchNorm.

The mask ``alpha`` (one entry per input pixel) multiplies the input of ``Linear -> BN -> ReLU ->
Linear``. Trained from the same pre-trained start with projection ``alpha <- max(0, alpha)`` after every
step, once with the l1/l2 penalty ``lambda * s(alpha) / d`` and once with the l1 penalty
``lambda * ||alpha||_1 / d``. Expected: l1/l2 reaches exact zeros (a real FLOPs cut); l1 shrinks the mean
and variance of |alpha| without zeros while ||W_1||_F grows (BatchNorm undoes any uniform shrink).

Writes benchmarks/results/compress_l1_vs_l1l2.json and .png.

    .venv/bin/python benchmarks/compress_l1_vs_l1l2.py [--epochs 40] [--lam 0.5]
"""

from __future__ import annotations

import argparse
import copy
import json
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


def run(start: nn.Module, train, val, *, penalty: str, lam: float, epochs: int, lr: float) -> list[dict]:
    model = InputMasked(copy.deepcopy(start), 64)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    d = model.alpha.numel()
    rows = []
    live = informative_pixels(train)
    torch.manual_seed(0)
    for epoch in range(epochs + 1):
        if epoch > 0:
            model.train()
            for xb, yb in train:
                reg = soft_count(model.alpha) if penalty == "l1l2" else l1_penalty(model.alpha)
                loss = loss_fn(model(xb), yb) + lam * reg / d
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    model.alpha.clamp_(min=0.0)  # projection: exact zeros
        a = model.alpha.detach().abs()
        hidden = first_linear(model.net).out_features
        rows.append(
            {
                "epoch": epoch,
                "zeros": int((a == 0).sum()),
                "zeros_informative": int((a[live] == 0).sum()),
                "informative": int(live.sum()),
                "var_abs_alpha_informative": float(a[live].var()),
                "mean_abs_alpha": float(a.mean()),
                "var_abs_alpha": float(a.var()),
                "soft_count": float(soft_count(a)),
                "w1_fro": float(first_linear(model.net).weight.detach().norm()),
                "accuracy": evaluate_accuracy(model, val),
                "first_layer_macs": int((a != 0).sum()) * hidden,
            }
        )
    return rows


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for name, rows in results.items():
        ep = [r["epoch"] for r in rows]
        axes[0].plot(ep, [r["zeros"] for r in rows], label=f"{name} (all)")
        axes[0].plot(ep, [r["zeros_informative"] for r in rows], "--", label=f"{name} (informative pixels)")
        axes[1].plot(ep, [r["mean_abs_alpha"] for r in rows], label=name)
        axes[2].plot(ep, [r["var_abs_alpha"] for r in rows], label=name)
        axes[3].plot(ep, [r["w1_fro"] for r in rows], label=name)
    for ax, title in zip(axes, ["exact zeros in alpha", "mean |alpha|", "var |alpha|", "||W1||_F"]):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=0.05)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train, val = digits_loaders(flat=True)
    start, _ = mlp_bn()
    t0 = time.perf_counter()
    dense_acc = train_classifier(start, train, val, epochs=args.pretrain_epochs, lr=3e-3)
    results = {
        name: run(start, train, val, penalty=name, lam=args.lam, epochs=args.epochs, lr=args.lr)
        for name in ("l1l2", "l1")
    }
    OUT.mkdir(parents=True, exist_ok=True)
    summary = {
        name: {
            k: rows[-1][k]
            for k in (
                "zeros",
                "zeros_informative",
                "informative",
                "mean_abs_alpha",
                "var_abs_alpha",
                "w1_fro",
                "accuracy",
            )
        }
        | {"w1_fro_start": rows[0]["w1_fro"], "var_abs_alpha_start": rows[0]["var_abs_alpha"]}
        for name, rows in results.items()
    }
    doc = {
        "benchmark": "compress_l1_vs_l1l2",
        "args": vars(args),
        "dense_accuracy": dense_acc,
        "seconds": time.perf_counter() - t0,
        "summary": summary,
        "history": results,
    }
    (OUT / "compress_l1_vs_l1l2.json").write_text(json.dumps(doc, indent=2))
    plot(results, OUT / "compress_l1_vs_l1l2.png")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
