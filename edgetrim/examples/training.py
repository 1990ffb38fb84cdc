"""A plain, deterministic classifier training loop for dense baselines on the example data.

Adam + cross-entropy, fixed seed, CPU or whatever device the model's parameters live on. Compression
passes that need their own loop can still reuse :func:`evaluate_accuracy`, and the ``penalty`` /
``after_step`` hooks cover simple regularisers and mask or prox updates.

Example:
    >>> from edgetrim.examples.data import digits_loaders
    >>> from edgetrim.examples.models import digits_cnn
    >>> model, _ = digits_cnn(widths=(16, 32))
    >>> train, val = digits_loaders()
    >>> acc = train_classifier(model, train, val, epochs=1, lr=3e-3, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["evaluate_accuracy", "run_epochs", "train_classifier"]


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def evaluate_accuracy(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` over ``loader`` (eval mode, no grad; the mode is restored).

    Raises:
        ValueError: if the loader yields no samples.
    """
    device = _device_of(model)
    was_training = model.training
    model.eval()
    correct = 0
    total = 0
    try:
        with torch.no_grad():
            for xb, yb in loader:
                logits = model(xb.to(device))  # (B, num_classes)
                correct += int((logits.argmax(dim=1).cpu() == yb).sum())
                total += len(yb)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluate_accuracy got an empty loader")
    return correct / total


def total_steps(loader: Iterable[Any], epochs: int) -> int | None:
    """``epochs x len(loader)``, or None for a loader without a length (a generator)."""
    try:
        return epochs * len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def lr_schedule(
    optimizer: torch.optim.Optimizer, schedule: str, total_steps: int | None
) -> Callable[[], None]:
    """A per-step callable that applies ``schedule`` (``"constant"`` or ``"cosine"``) to ``optimizer``.

    Cosine decays every parameter group's learning rate from its initial value to 0 over
    ``total_steps`` optimiser steps; a loader without a length (``total_steps`` None) stays constant.

    Raises:
        ValueError: for an unknown schedule.
    """
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    if schedule == "constant" or not total_steps:
        return lambda: None
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps).step


def run_epochs(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    schedule: str = "constant",
    penalty: Callable[[], torch.Tensor] | None = None,
    after_step: Callable[[], None] | None = None,
) -> list[float]:
    """``epochs`` passes of cross-entropy training with a built ``optimizer``; the mean loss per epoch.

    The one training loop of the examples and of ``compress``' fine-tune: the caller owns the optimizer
    (its kind, its hooks such as held sparsity masks) and the seeding. Batches go to the model's device;
    ``schedule`` is applied per step (:func:`lr_schedule`), then ``after_step``. The model is left in
    eval mode.
    """
    device = _device_of(model)
    loss_fn = nn.CrossEntropyLoss()
    step_lr = lr_schedule(optimizer, schedule, total_steps(loader, epochs))
    losses = []
    for epoch in range(epochs):
        model.train()
        total_loss = 0.0
        batches = 0
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            loss = loss_fn(model(xb), yb)
            if penalty is not None:
                loss = loss + penalty()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step_lr()
            if after_step is not None:
                after_step()
            total_loss += float(loss.detach())
            batches += 1
        losses.append(total_loss / max(batches, 1))
        logger.info("epoch %d/%d: train loss %.4f", epoch + 1, epochs, losses[-1])
    model.eval()
    return losses


def train_classifier(
    model: nn.Module,
    train_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    val_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: int = 5,
    lr: float = 1e-3,
    seed: int = 0,
    weight_decay: float = 0.0,
    penalty: Callable[[], torch.Tensor] | None = None,
    after_step: Callable[[], None] | None = None,
    schedule: str = "constant",
) -> float:
    """Train ``model`` in place with Adam on cross-entropy and return its validation accuracy in [0, 1].

    The global torch RNG is seeded with ``seed`` for the duration of the call (and restored after), so
    the shuffling of a default ``DataLoader`` and any dropout are reproducible. The model is left in
    eval mode.

    Args:
        model: classifier producing ``(B, num_classes)`` logits.
        train_loader / val_loader: iterables of ``(x, y)`` batches.
        epochs: passes over ``train_loader`` (>= 1).
        lr: Adam learning rate.
        seed: seed for the torch RNG during training.
        weight_decay: Adam weight decay.
        penalty: optional zero-argument callable whose scalar tensor is added to every batch loss.
        after_step: optional callable run after every optimiser step (e.g. re-apply masks, prox map).
        schedule: ``"constant"`` learning rate, or ``"cosine"``: decayed per step from ``lr`` to 0 over
            the run (a fine-tune then ends on small steps instead of wherever the last batch left it).

    Returns:
        Validation accuracy after the last epoch.

    Raises:
        ValueError: for ``epochs < 1`` or ``lr <= 0``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        run_epochs(
            model, train_loader, optimizer, epochs=epochs, schedule=schedule, penalty=penalty,
            after_step=after_step,
        )  # fmt: skip
        # Inside the fork too: iterating any DataLoader draws a base seed from the global RNG.
        accuracy = evaluate_accuracy(model, val_loader)
    model.eval()
    logger.info("validation accuracy %.4f", accuracy)
    return accuracy
