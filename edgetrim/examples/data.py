"""The sklearn digits data set as small, deterministic train/validation splits.

``load_digits`` ships inside scikit-learn (1,797 8x8 grey images of the digits 0-9), so nothing is
downloaded. Pixels are scaled to [0, 1], optionally upsampled bilinearly (so bigger CNNs have spatial
room), then standardised with one mean/std taken from the training split only.

Three layouts:

* images ``(N, 1, S, S)`` with ``S = image_size`` (8 by default),
* flat ``(N, S * S)`` for MLPs,
* tokens ``(N, S, S)``: each image row is one token of ``S`` features (for the BERT-style encoder).

The CLI takes ``--data module:fn`` where ``fn()`` returns ``(train_loader, val_loader)``;
:func:`digits`, :func:`digits_flat`, :func:`digits_tokens`, :func:`digits16` and :func:`digits_hard`
(distorted digits with distractors, a harder task; :func:`digits_hard_arrays`) are such functions, and
:func:`load_data` resolves a spec string.

Example:
    >>> train, val = digits_loaders(batch_size=32)
    >>> xb, yb = next(iter(train))
    >>> tuple(xb.shape), tuple(yb.shape)
    ((32, 1, 8, 8), (32,))
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from edgetrim.errors import EdgetrimError

logger = logging.getLogger(__name__)

__all__ = [
    "DATA_SPECS",
    "DigitsArrays",
    "data_spec",
    "digits",
    "digits16",
    "digits_arrays",
    "digits_flat",
    "digits_hard",
    "digits_hard_arrays",
    "digits_hard_loaders",
    "digits_loaders",
    "digits_tokens",
    "digits_tokens_loaders",
    "load_data",
]

_NATIVE_SIZE = 8  # load_digits images are 8x8
_MAX_PIXEL = 16.0  # load_digits pixel values are integers 0..16


class DigitsArrays(NamedTuple):
    """Train/validation splits as numpy arrays (float32 inputs, int64 labels)."""

    x_train: np.ndarray  # (N_train, 1, S, S), (N_train, S*S) or (N_train, S, S)
    y_train: np.ndarray  # (N_train,)
    x_val: np.ndarray  # (N_val, ...) same layout as x_train
    y_val: np.ndarray  # (N_val,)


def _stratified_split(y: np.ndarray, *, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): each class keeps its share in both splits; the same seed gives the same split."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train_idx: list[np.ndarray] = []
    val_idx: list[np.ndarray] = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        n_val = round(len(idx) * val_fraction)
        n_val = min(max(n_val, 1), len(idx) - 1)  # both splits see every class
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def _upsample(images: np.ndarray, image_size: int) -> np.ndarray:
    """Bilinear resize of (N, 8, 8) images to (N, image_size, image_size)."""
    t = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 8, 8)
    t = torch.nn.functional.interpolate(
        t, size=(image_size, image_size), mode="bilinear", align_corners=False
    )
    return t.squeeze(1).numpy()


def _load_images(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """All digits as ``(N, S, S)`` float32 in [0, 1] (bilinear upsampling when S > 8) and int64 labels."""
    if image_size < _NATIVE_SIZE:
        raise ValueError(f"image_size must be >= {_NATIVE_SIZE} (digits are 8x8), got {image_size}")
    from sklearn.datasets import load_digits  # scikit-learn is only needed here

    bunch = load_digits()
    images = (bunch.images / _MAX_PIXEL).astype(np.float32)  # (N, 8, 8) in [0, 1]
    if image_size != _NATIVE_SIZE:
        images = _upsample(images, image_size)  # (N, S, S)
    return images, bunch.target.astype(np.int64)


def _standardise(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    # One scalar mean/std (not per pixel): border pixels are constant zero, so a per-pixel std is 0 there.
    return ((images - float(reference.mean())) / float(reference.std())).astype(np.float32)


def digits_arrays(
    *,
    seed: int = 0,
    val_fraction: float = 0.25,
    flat: bool = False,
    image_size: int = 8,
    tokens: bool = False,
) -> DigitsArrays:
    """Stratified, seeded digits splits as numpy arrays, standardised with training-split statistics.

    Args:
        seed: seeds the split (same seed, same split).
        val_fraction: share of every class that goes to validation, in (0, 1).
        flat: return ``(N, S*S)`` rows instead of ``(N, 1, S, S)`` images.
        image_size: side ``S`` of the images; > 8 upsamples bilinearly (e.g. 16 or 32).
        tokens: return ``(N, S, S)`` sequences of rows (one token per image row); excludes ``flat``.

    Returns:
        :class:`DigitsArrays` ``(x_train, y_train, x_val, y_val)``; inputs float32, labels int64.

    Raises:
        ValueError: on an out-of-range argument.

    Example:
        >>> a = digits_arrays(flat=True)
        >>> a.x_train.shape[1], a.x_train.dtype.name
        (64, 'float32')
    """
    if flat and tokens:
        raise ValueError("flat and tokens are different layouts: pass at most one of them")
    images, labels = _load_images(image_size)
    train_idx, val_idx = _stratified_split(labels, val_fraction=val_fraction, seed=seed)
    images = _standardise(images, images[train_idx])
    if flat:
        images = images.reshape(len(images), -1)  # (N, S*S)
    elif not tokens:
        images = images[:, None]  # (N, 1, S, S)
    logger.debug(
        "digits split: %d train, %d val, input shape %s", len(train_idx), len(val_idx), images.shape[1:]
    )
    return DigitsArrays(images[train_idx], labels[train_idx], images[val_idx], labels[val_idx])


def digits_hard_arrays(
    *,
    seed: int = 0,
    val_fraction: float = 0.25,
    image_size: int = 16,
    train_copies: int = 2,
    val_copies: int = 8,
) -> DigitsArrays:
    """Distorted digits (:mod:`edgetrim.examples.distort`) as ``(N, 1, S, S)`` images: a harder task.

    The split is made on the original images first (the same split as :func:`digits_arrays` with the
    same seed), then every training image gets ``train_copies`` distorted copies and every validation
    image ``val_copies`` (distractors come from the same split). Many validation copies make the
    accuracy steadier than 450 images can: one validation image is ~0.2 points of plain digits'
    accuracy, one distorted copy is ~0.03.

    Args:
        seed: seeds the split and the distortions.
        val_fraction: share of every class's originals that goes to validation, in (0, 1).
        image_size: side ``S``; at least 12 (the distortions need room to move the digit).
        train_copies: distorted copies of every training image (>= 1).
        val_copies: distorted copies of every validation image (>= 1).

    Raises:
        ValueError: on an out-of-range argument.

    Example:
        >>> a = digits_hard_arrays(train_copies=1, val_copies=1)
        >>> a.x_train.shape[1:], len(a.x_val)
        ((1, 16, 16), 450)
    """
    if image_size < 12:
        raise ValueError(f"image_size must be >= 12 for the distorted digits, got {image_size}")
    if train_copies < 1 or val_copies < 1:
        raise ValueError(f"train_copies and val_copies must be >= 1, got {train_copies} and {val_copies}")
    from edgetrim.examples.distort import distort_digits

    images, labels = _load_images(image_size)
    train_idx, val_idx = _stratified_split(labels, val_fraction=val_fraction, seed=seed)
    # different generator streams for the two splits: no validation copy shares a draw with training
    x_train = distort_digits(torch.from_numpy(images[train_idx]), copies=train_copies, seed=2 * seed).numpy()
    x_val = distort_digits(torch.from_numpy(images[val_idx]), copies=val_copies, seed=2 * seed + 1).numpy()
    x_val = _standardise(x_val, x_train)
    x_train = _standardise(x_train, x_train)
    y_train = np.tile(labels[train_idx], train_copies)  # copy-major, as distort_digits returns them
    y_val = np.tile(labels[val_idx], val_copies)
    logger.debug(
        "distorted digits: %d train, %d val, %dx%d", len(y_train), len(y_val), image_size, image_size
    )
    return DigitsArrays(x_train[:, None], y_train, x_val[:, None], y_val)


def _loaders(arrays: DigitsArrays, *, batch_size: int) -> tuple[DataLoader, DataLoader]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    train_ds = TensorDataset(torch.from_numpy(arrays.x_train), torch.from_numpy(arrays.y_train))
    val_ds = TensorDataset(torch.from_numpy(arrays.x_val), torch.from_numpy(arrays.y_val))
    # A last training batch of one sample breaks BatchNorm in train mode; drop it only in that case.
    drop_last = len(train_ds) % batch_size == 1
    # Shuffling draws from the global torch RNG, so seeding torch (train_classifier does) fixes the order.
    train = DataLoader(train_ds, batch_size=batch_size, shuffle=True, drop_last=drop_last)
    val = DataLoader(val_ds, batch_size=max(batch_size, 256), shuffle=False)
    return train, val


def digits_loaders(
    *,
    batch_size: int = 64,
    seed: int = 0,
    val_fraction: float = 0.25,
    flat: bool = False,
    image_size: int = 8,
) -> tuple[DataLoader, DataLoader]:
    """Digits as ``(train_loader, val_loader)`` yielding ``(x, y)`` batches.

    ``x`` is ``(B, 1, S, S)`` float32 (``(B, S*S)`` when ``flat``), ``y`` is ``(B,)`` int64 in 0..9.
    The training loader shuffles; the validation loader does not. See :func:`digits_arrays` for the
    arguments.

    Example:
        >>> train, val = digits_loaders(flat=True, batch_size=16)
        >>> tuple(next(iter(val))[0].shape)
        (256, 64)
    """
    arrays = digits_arrays(seed=seed, val_fraction=val_fraction, flat=flat, image_size=image_size)
    return _loaders(arrays, batch_size=batch_size)


def digits_tokens_loaders(
    *,
    batch_size: int = 64,
    seed: int = 0,
    val_fraction: float = 0.25,
    image_size: int = 8,
) -> tuple[DataLoader, DataLoader]:
    """Digits as token sequences for the BERT-style encoder: ``x`` is ``(B, S, S)`` (S rows of S features).

    Example:
        >>> train, _ = digits_tokens_loaders(batch_size=8)
        >>> tuple(next(iter(train))[0].shape)
        (8, 8, 8)
    """
    arrays = digits_arrays(seed=seed, val_fraction=val_fraction, image_size=image_size, tokens=True)
    return _loaders(arrays, batch_size=batch_size)


def digits_hard_loaders(
    *,
    batch_size: int = 64,
    seed: int = 0,
    val_fraction: float = 0.25,
    image_size: int = 16,
    train_copies: int = 2,
    val_copies: int = 8,
) -> tuple[DataLoader, DataLoader]:
    """Distorted digits as ``(train_loader, val_loader)``; see :func:`digits_hard_arrays`.

    Example:
        >>> train, val = digits_hard_loaders(batch_size=16, train_copies=1, val_copies=1)
        >>> tuple(next(iter(train))[0].shape)
        (16, 1, 16, 16)
    """
    arrays = digits_hard_arrays(
        seed=seed, val_fraction=val_fraction, image_size=image_size, train_copies=train_copies,
        val_copies=val_copies,
    )  # fmt: skip
    return _loaders(arrays, batch_size=batch_size)


# --- zero-argument functions for ``--data module:fn`` ------------------------------------------------


def digits() -> tuple[DataLoader, DataLoader]:
    """Digits images ``(B, 1, 8, 8)``, batch 64, seed 0 (``--data edgetrim.examples.data:digits``)."""
    return digits_loaders()


def digits_flat() -> tuple[DataLoader, DataLoader]:
    """Digits rows ``(B, 64)`` for MLPs (``--data edgetrim.examples.data:digits_flat``)."""
    return digits_loaders(flat=True)


def digits_tokens() -> tuple[DataLoader, DataLoader]:
    """Digits token sequences ``(B, 8, 8)`` for the encoder (``--data edgetrim.examples.data:digits_tokens``)."""
    return digits_tokens_loaders()


def digits16() -> tuple[DataLoader, DataLoader]:
    """Digits upsampled to ``(B, 1, 16, 16)`` (``--data edgetrim.examples.data:digits16``)."""
    return digits_loaders(image_size=16)


def digits_hard() -> tuple[DataLoader, DataLoader]:
    """Distorted digits ``(B, 1, 16, 16)``, 2 train / 8 validation copies (``--data ...:digits_hard``)."""
    return digits_hard_loaders()


DATA_SPECS: dict[str, str] = {
    name: f"{__name__}:{name}"
    for name in ("digits", "digits_flat", "digits_tokens", "digits16", "digits_hard")
}
"""Built-in data names mapped to their ``module:fn`` spec strings."""


def data_spec(name: str) -> str:
    """The ``module:fn`` spec string of a built-in data set, e.g. ``data_spec("digits16")``.

    Raises:
        EdgetrimError: for an unknown name (the message lists the known ones).

    Example:
        >>> data_spec("digits")
        'edgetrim.examples.data:digits'
    """
    try:
        return DATA_SPECS[name]
    except KeyError:
        raise EdgetrimError(f"unknown data set {name!r}; known: {', '.join(sorted(DATA_SPECS))}") from None


def load_data(spec: str) -> tuple[DataLoader, DataLoader]:
    """Resolve a ``package.module:fn`` or ``path/to/file.py:fn`` data spec and call ``fn()`` for
    ``(train_loader, val_loader)``.

    A bare built-in name (``"digits"``) is accepted too.

    Raises:
        EdgetrimError: one line when the spec cannot be imported, called, or returns something else
        (``ModelSpecError`` when it cannot be imported).

    Example:
        >>> train, val = load_data("edgetrim.examples.data:digits_flat")
        >>> next(iter(train))[0].shape[1]
        64
    """
    if ":" not in spec:
        spec = data_spec(spec)
    from edgetrim.model_spec import import_callable

    where, _, attr = spec.rpartition(":")
    fn = import_callable(spec, what="data")  # a ModelSpecError is an EdgetrimError: one line
    if not callable(fn):
        raise EdgetrimError(f"data spec {spec!r}: {where} has no function {attr!r}")
    try:
        result = fn()
    except Exception as exc:
        raise EdgetrimError(f"calling data function {spec}() failed: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(result, tuple) and len(result) == 2):
        raise EdgetrimError(
            f"data function {spec}() must return (train_loader, val_loader), got {type(result).__name__}"
        )
    return result
