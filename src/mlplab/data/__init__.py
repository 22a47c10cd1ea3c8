"""Data sets as plain arrays, and the batching and augmentation both backends share.

Every loader returns :class:`DatasetSplits` (train / validation / test :class:`Dataset` with
``x`` float32 (N, D) and ``y`` int64 (N,), plus class names, image shape and an ``info`` dict
for the run's config.json). Problems with the data raise :class:`~mlplab.errors.DataError`,
bad options :class:`~mlplab.errors.ConfigError`. Things worth knowing that do not stop a load
(a non-official checksum, an unwritable cache) are :class:`DataWarning` s from
:func:`warnings.warn`, one line each.

Environment: ``MLPLAB_DATA`` (default data folder, else ``./data``), ``MLPLAB_CACHE`` (decoded
arrays, default ``~/.cache/mlplab``), ``MLPLAB_CIFAR10_URL`` / ``MLPLAB_MNIST_URL`` /
``MLPLAB_FASHION_MNIST_URL`` (download locations).
"""

from __future__ import annotations

from mlplab.data.batches import batches, num_batches
from mlplab.data.cifar10 import load_cifar10
from mlplab.data.core import Dataset, DatasetSplits, DataWarning, cache_root, default_data_dir
from mlplab.data.registry import DATASETS, dataset_names, get_dataset

__all__ = [
    "DATASETS",
    "DataWarning",
    "Dataset",
    "DatasetSplits",
    "batches",
    "cache_root",
    "dataset_names",
    "default_data_dir",
    "get_dataset",
    "load_cifar10",
    "num_batches",
]
