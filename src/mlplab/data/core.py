"""Shared pieces of the data package: the Dataset containers, where data and cache live, option
checks, splits, and the uint8 -> normalised float32 conversion every loader uses.

Normalisation is per channel: ``x = (pixel / pixel_max - mean[c]) / std[c]``, with ``mean`` and
``std`` in units of ``pixel / pixel_max`` (0..1). ``normalization='published'`` uses fixed
statistics shipped with mlplab; ``'train'`` computes them on the training split only, so the
validation and test splits never leak into them. ``normalize=False`` gives ``pixel / pixel_max``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlplab import validation
from mlplab.errors import ConfigError, DataError

#: THE list of normalisations (``--normalization``; config validation reads it from here)
NORMALIZATIONS = ("published", "train")

#: rows converted at a time; bounds the temporary memory of a load to a few tens of MB
CHUNK_ROWS = 2048


class DataWarning(UserWarning):
    """A data set was used despite something the user should know (e.g. a non-official checksum).

    Emitted with :func:`warnings.warn`; the message is always a single line.
    """


def warn(message: str) -> None:
    warnings.warn(DataWarning(" ".join(message.split())), stacklevel=3)


@dataclass
class Dataset:
    """One split: ``x`` float32 (N, D), C-contiguous; ``y`` int64 (N,)."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self):
        if self.x.ndim != 2 or self.y.ndim != 1 or len(self.x) != len(self.y):
            raise DataError(f"Dataset needs x (N, D) and y (N,), got x {self.x.shape} and y {self.y.shape}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.x.shape[1])


@dataclass
class DatasetSplits:
    """What every loader returns: train / validation / test splits plus metadata.

    ``image_shape`` is (channels, height, width) of one row of ``x`` (None for non-image data);
    ``mirror`` (±1 per feature, or None) mirrors rows that are not images but have a mirror:
    ``x * mirror`` is the row of the left-right mirrored image (set by ``--whitening pca``);
    ``projection`` (or None), when set, maps training rows, which are then still images of
    ``image_shape``, to the features of the validation and test rows: the training loop applies it
    to each batch after augmentation (``--whitening pca`` with random crops);
    ``info`` describes the source, checksum, normalisation and split, for a run's config.json.
    """

    train: Dataset
    validation: Dataset
    test: Dataset
    class_names: list[str]
    name: str
    image_shape: tuple[int, int, int] | None = None
    info: dict = field(default_factory=dict)
    mirror: np.ndarray | None = None
    projection: Any = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_features(self) -> int:
        """The model's input width: that of the rows it sees (after ``projection``, if any)."""
        return self.projection.features if self.projection is not None else self.train.num_features


# -- where things live -------------------------------------------------------------------------
def default_data_dir() -> Path:
    """``$MLPLAB_DATA`` if set, else ``./data``."""
    value = os.environ.get("MLPLAB_DATA")
    return Path(value).expanduser() if value else Path("data")


def cache_root() -> Path:
    """``$MLPLAB_CACHE`` if set, else ``~/.cache/mlplab``."""
    value = os.environ.get("MLPLAB_CACHE")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "mlplab"


def resolve_data_dir(data_dir) -> Path:
    return default_data_dir() if data_dir is None else Path(data_dir).expanduser()


# -- option checks (ConfigError: nothing has been read yet) ------------------------------------
def check_int(value, name: str, low: int, high: int, what: str = "") -> int:
    return validation.integer(value, name, low=low, high=high, what=what)


def check_seed(value, name: str = "split_seed") -> int:
    return validation.integer(value, name, low=0)


def resolve_normalization(normalize, normalization) -> str | None:
    """'published', 'train', or None for ``normalize=False``."""
    if not isinstance(normalize, (bool, np.bool_)):
        raise ConfigError(f"normalize must be True or False, got {normalize!r}")
    if normalization is None:
        normalization = "published"
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
    return normalization if normalize else None


# -- splits ------------------------------------------------------------------------------------
def permutation_split(n: int, validation_size: int, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) row indices, each sorted: validation is the first ``validation_size``
    entries of ``default_rng(split_seed).permutation(n)``, train the rest."""
    order = np.random.default_rng(split_seed).permutation(n)
    return np.sort(order[validation_size:]), np.sort(order[:validation_size])


def stratified_pick(labels: np.ndarray, pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` indices from ``pool`` (sorted) with each class represented in proportion.

    Quotas are floor(count * share) topped up by the largest remainders (ties: lower class).
    """
    classes, sizes = np.unique(labels[pool], return_counts=True)
    exact = count * sizes / sizes.sum()
    quota = np.floor(exact).astype(np.int64)
    remainder = count - int(quota.sum())
    if remainder:
        quota[np.argsort(-(exact - quota), kind="stable")[:remainder]] += 1
    picked = [rng.permutation(pool[labels[pool] == c])[:q] for c, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, np.int64)


# -- uint8 rows -> normalised float32 ----------------------------------------------------------
ReadRows = Callable[[int, int], np.ndarray]


def channel_stats(read_rows: ReadRows, indices: np.ndarray, channels: int, pixel_max: int):
    """Per-channel mean and std (units of pixel / pixel_max) of the rows ``indices`` (sorted).

    Integer sums of values and squares are exact, so the result does not depend on chunking.
    """
    if len(indices) == 0:
        raise ConfigError("normalization='train' needs a non-empty training split")
    total = np.zeros(channels, np.float64)
    squares = np.zeros(channels, np.float64)
    count = 0
    for start, _, rows, selected in _chunks(read_rows, indices):
        part = rows[selected - start]
        planes = part.reshape(len(part), channels, -1)
        total += planes.sum(axis=(0, 2), dtype=np.uint64)
        squares += np.square(planes, dtype=np.uint32).sum(axis=(0, 2), dtype=np.uint64)
        count += planes.shape[0] * planes.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    std[std == 0] = 1.0  # a constant channel: leave it centred rather than divide by zero
    return mean / pixel_max, std / pixel_max


def _chunks(read_rows: ReadRows, indices: np.ndarray):
    """(start, stop, rows, indices within [start, stop)) over the chunks holding ``indices``."""
    if len(indices) == 0:
        return
    start = int(indices[0]) // CHUNK_ROWS * CHUNK_ROWS
    end = int(indices[-1]) + 1
    while start < end:
        stop = min(start + CHUNK_ROWS, end)
        lo, hi = np.searchsorted(indices, [start, stop])
        if hi > lo:
            yield start, stop, read_rows(start, stop), indices[lo:hi]
        start = stop


def assemble(
    read_rows: ReadRows, n: int, split_indices: list[np.ndarray], channels: int, pixel_max: int, mean, std
) -> list[np.ndarray]:
    """One float32 (len(indices), D) array per split, filled chunk by chunk from uint8 rows.

    Each index array must be sorted; the rows keep their source order. ``mean``/``std`` None means
    ``pixel / pixel_max``. The only full-size allocations are the outputs themselves: the
    conversion writes ``pixel * (1 / (pixel_max std)) - mean / std`` straight into them.
    """
    if mean is None:
        scale: np.ndarray = np.full(channels, 1.0 / pixel_max)
        shift: np.ndarray = np.zeros(channels)
    else:
        scale = 1.0 / (pixel_max * np.asarray(std, np.float64))
        shift = -np.asarray(mean, np.float64) / np.asarray(std, np.float64)
    scale = scale.astype(np.float32)[:, None]
    shift = shift.astype(np.float32)[:, None]
    width = None
    outputs: list[np.ndarray | None] = [None] * len(split_indices)
    for s, indices in enumerate(split_indices):
        filled = 0
        for start, stop, rows, selected in _chunks(read_rows, indices):
            if width is None:
                width = rows.shape[1]
            out = outputs[s]
            if out is None:
                out = outputs[s] = np.empty((len(indices), width), np.float32)
            part = rows if len(selected) == stop - start else rows[selected - start]
            k = len(part)
            dest = out[filled : filled + k].reshape(k, channels, -1)
            np.multiply(part.reshape(k, channels, -1), scale, out=dest)
            dest += shift
            filled += k
    if width is None:
        width = read_rows(0, 1).shape[1] if n else 0
    return [out if out is not None else np.empty((0, width), np.float32) for out in outputs]
