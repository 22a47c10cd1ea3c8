"""The one loading template every data set goes through: :class:`DataSource` and :func:`load`.

A data set supplies its constants (title, class names, image shape, pixel range, published
statistics, default validation size) and two functions: ``locate`` finds (or downloads) its files
and ``decode`` turns them into uint8 rows and int64 labels (:class:`Decoded`), verifying
checksums and caching on the way if it wants to. Everything after that is shared and lives here:
option checks, the train / validation split, normalisation, the chunked uint8 -> float32
conversion, the prepared-split cache (memory-mapped float32 splits, ``MLPLAB_PREPARED_CACHE``)
for data sets decoded into a cache entry, the ``info`` dict and the :class:`DatasetSplits`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlplab.data import cache
from mlplab.data.core import (
    CHUNK_ROWS,
    Dataset,
    DatasetSplits,
    assemble,
    channel_stats,
    check_int,
    check_seed,
    permutation_split,
    resolve_data_dir,
    resolve_normalization,
    warn,
)
from mlplab.errors import ConfigError, DataError, MlplabError

#: uint8 rows held in memory, or a ``.npy`` file of them that is read in chunks
Rows = np.ndarray | Path


@dataclass
class Decoded:
    """What a data set's ``decode`` hands to the template.

    ``train_x`` (N, D) uint8 is the pool the validation split is drawn from; ``test_x`` None means
    the data set's ``split`` picks the test rows from that pool too. ``info`` describes the source
    (it follows ``"dataset"`` in the run's info), ``info_tail`` comes after the split settings.
    ``entry`` is the cache entry the rows were decoded into: only then are the float32 splits
    saved for the next load, and a load that fails to read them is retried once with ``rebuild``.
    """

    train_x: Rows
    train_y: np.ndarray | Path
    test_x: Rows | None = None
    test_y: np.ndarray | Path | None = None
    info: dict = field(default_factory=dict)
    info_tail: dict = field(default_factory=dict)
    class_names: list[str] | None = None  # None: the DataSource's own
    warning: str | None = None  # one line shown after a successful load (e.g. a non-official checksum)
    where: str = ""  # appended to "training images" in the error for a too large validation set
    entry: Path | None = None
    cache_hit: bool = False
    save_prepared: bool = True
    cleanup: Callable[[], None] | None = None  # run once the arrays are built (e.g. delete a scratch folder)
    n_train: int = 0
    n_test: int = 0


def default_split(labels: np.ndarray, validation_size: int, split_seed: int):
    """(train, validation, None): a seeded permutation of the training rows, the test set apart."""
    return (*permutation_split(len(labels), validation_size, split_seed), None)


@dataclass(frozen=True)
class DataSource:
    """One data set: its constants and its decoding; calling it loads it (see :func:`load`)."""

    name: str
    title: str
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    pixel_max: int
    #: published per-channel statistics, in units of pixel / pixel_max
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_validation_size: int
    #: () -> (how many rows validation may take at most + 1, why): checked before anything is read
    validation_room: Callable[[], tuple[int, str]]
    #: (root, download, progress) -> whatever ``decode`` needs (raises DataError when absent)
    locate: Callable[[Path, bool, bool], Any]
    #: (located, rebuild) -> Decoded; ``rebuild`` asks to decode again rather than trust a cache entry
    decode: Callable[[Any, bool], Decoded]
    #: (train labels, validation_size, split_seed) -> (train, validation, test or None) sorted indices
    split: Callable = default_split

    @property
    def features(self) -> int:
        return math.prod(self.image_shape)

    def __call__(self, data_dir=None, **options) -> DatasetSplits:
        return load(self, data_dir, **options)


def load(
    source: DataSource,
    data_dir=None,
    validation_size: int | None = None,
    split_seed: int = 42,
    download: bool = True,
    normalize: bool = True,
    normalization: str | None = "published",
    progress: bool = True,
) -> DatasetSplits:
    """``source`` as train / validation / test splits: x float32 (N, D), y int64 (N,).

    Validation is chosen by ``split_seed`` (``source.split``); ``normalization``: 'published'
    (the source's statistics) or 'train' (those of the training split); ``normalize=False``
    gives pixel / pixel_max.
    """
    started = time.perf_counter()
    if validation_size is None:
        validation_size = source.default_validation_size
    room, why = source.validation_room()
    validation_size = check_int(validation_size, "validation_size", 0, room - 1, why)
    split_seed = check_seed(split_seed)
    mode = resolve_normalization(normalize, normalization)

    located = source.locate(resolve_data_dir(data_dir), download, progress)
    for attempt in range(2):
        decoded = source.decode(located, attempt > 0)
        try:
            result = _convert(source, decoded, validation_size, split_seed, mode)
            break
        except MlplabError:
            raise
        except (OSError, ValueError, KeyError) as exc:
            if decoded.entry is None:
                raise
            if not decoded.cache_hit or attempt:  # a fresh entry that cannot be read back: not a stale cache
                raise DataError(
                    f"cannot read the {source.title} cache at {decoded.entry}: {exc}; "
                    f"delete it or set MLPLAB_CACHE to another folder"
                ) from None
            cache.discard(decoded.entry)  # a damaged cache entry: decode the source again
        finally:
            if decoded.cleanup is not None:
                decoded.cleanup()
    splits, (mean, std), prepared = result
    if decoded.warning:
        warn(decoded.warning)

    info = {"dataset": source.name, **decoded.info}
    if decoded.entry is not None:
        info["prepared_cache_hit"] = prepared
    info.update(
        {
            "normalization": mode or "none",
            "mean": [float(v) for v in mean] if mean is not None else None,
            "std": [float(v) for v in std] if std is not None else None,
            "validation_size": validation_size,
            "split_seed": split_seed,
            **decoded.info_tail,
            "load_seconds": round(time.perf_counter() - started, 3),
        }
    )
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = splits
    return DatasetSplits(
        train=Dataset(train_x, train_y),
        validation=Dataset(val_x, val_y),
        test=Dataset(test_x, test_y),
        class_names=list(decoded.class_names or source.class_names),
        name=source.name,
        image_shape=source.image_shape,
        info=info,
    )


@contextlib.contextmanager
def _reader(rows: Rows, expected: tuple[int, int], what: str):
    """A chunk reader ``(start, stop) -> uint8 rows`` over ``rows``, checked against ``expected``."""
    if isinstance(rows, np.ndarray):
        yield lambda start, stop: rows[start:stop]
        return
    with cache.NpyRows(rows, CHUNK_ROWS) as reader:
        if reader.shape != expected:
            raise ValueError(f"{what}.npy has shape {reader.shape}")
        yield reader


def _labels(value, count: int) -> np.ndarray:
    labels = np.load(value) if isinstance(value, Path) else value
    if labels.shape != (count,):
        raise ValueError("label files do not match meta.json")
    return labels


def _convert(source: DataSource, decoded: Decoded, validation_size: int, split_seed: int, mode: str | None):
    """((train, validation, test) as (x, y) pairs, (mean, std), whether x came from the prepared cache)."""
    n_train = decoded.n_train
    if validation_size >= n_train:
        raise ConfigError(
            f"validation_size must be below the {n_train:,} training images{decoded.where}, got {validation_size}"
        )
    labels = _labels(decoded.train_y, n_train)
    train_idx, val_idx, test_idx = source.split(labels, validation_size, split_seed)
    separate_test = test_idx is None
    test_y = _labels(decoded.test_y, decoded.n_test) if separate_test else labels[test_idx]
    ys = (labels[train_idx], labels[val_idx], test_y)
    channels, width = source.image_shape[0], source.features

    # The float32 splits saved by an earlier load of this variant, mapped (see cache.load_prepared).
    variant = f"{mode or 'raw'}-val{validation_size}-seed{split_seed}"
    if decoded.entry is not None:
        shapes = {"train_x": (len(train_idx), width), "val_x": (len(val_idx), width), "test_x": (len(test_y), width)}
        found = cache.load_prepared(decoded.entry, variant, shapes)
        if found is not None:
            arrays, saved = found
            mean = None if saved.get("mean") is None else np.asarray(saved["mean"], np.float64)
            std = None if saved.get("std") is None else np.asarray(saved["std"], np.float64)
            stored = (arrays["train_x"], arrays["val_x"], arrays["test_x"])
            return tuple(zip(stored, ys, strict=True)), (mean, std), True

    with _reader(decoded.train_x, (n_train, width), "train_x") as rows:
        if mode == "train":
            mean, std = channel_stats(rows, train_idx, channels, source.pixel_max)
        elif mode == "published":
            mean, std = np.asarray(source.mean), np.asarray(source.std)
        else:
            mean = std = None
        pool = [train_idx, val_idx] if separate_test else [train_idx, val_idx, test_idx]
        xs = assemble(rows, n_train, pool, channels, source.pixel_max, mean, std)
    if separate_test:
        assert decoded.test_x is not None  # separate_test means the data set decoded its own test rows
        with _reader(decoded.test_x, (len(test_y), width), "test_x") as rows:
            xs += assemble(rows, len(test_y), [np.arange(len(test_y))], channels, source.pixel_max, mean, std)
    if decoded.entry is not None and decoded.save_prepared:
        cache.save_prepared(
            decoded.entry,
            variant,
            dict(zip(("train_x", "val_x", "test_x"), xs, strict=True)),
            {
                "mean": None if mean is None else [float(v) for v in mean],
                "std": None if std is None else [float(v) for v in std],
            },
        )
    return tuple(zip(xs, ys, strict=True)), (mean, std), False
