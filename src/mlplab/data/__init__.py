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

Every data set is a :class:`~mlplab.data.source.DataSource` loaded by one template,
:func:`mlplab.data.source.load` (option checks, split, normalisation, chunked conversion,
prepared-split cache, ``info``). To add a data set:

1. write ``data/<name>.py`` with its constants (class names, image shape, pixel maximum,
   published mean/std, default validation size, URLs and checksums if it is downloaded);
2. give it a ``locate(root, download, progress)`` that finds or downloads its files, and a
   ``decode(located, rebuild) -> Decoded`` that returns uint8 rows (N, D) and int64 labels
   (in memory, or ``.npy`` files in a cache entry to get the prepared-split cache), a checksum
   warning if any, and a few ``info`` entries; a ``split`` only if it is not a seeded permutation
   with a separate test set;
3. build ``NAME = DataSource(...)`` from them and add it to ``DATASETS`` in :mod:`registry`:
   ``--dataset``, config validation and :func:`get_dataset` then know it; add its name to the
   README's ``--dataset`` list too (tests/test_registries.py compares the two).
   :mod:`~mlplab.data.digits` is the shortest example, :mod:`~mlplab.data.cifar10` the fullest.
"""

from __future__ import annotations

from mlplab.data.batches import batches, num_batches
from mlplab.data.cifar10 import load_cifar10
from mlplab.data.core import Dataset, DatasetSplits, DataWarning, cache_root, default_data_dir
from mlplab.data.registry import DATASETS, dataset_names, get_dataset
from mlplab.data.source import DataSource, Decoded

__all__ = [
    "DATASETS",
    "DataSource",
    "DataWarning",
    "Dataset",
    "DatasetSplits",
    "Decoded",
    "batches",
    "cache_root",
    "dataset_names",
    "default_data_dir",
    "get_dataset",
    "load_cifar10",
    "num_batches",
]
