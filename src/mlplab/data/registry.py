"""The data sets the CLI's ``--dataset`` chooses from, behind one call: :func:`get_dataset`."""

from __future__ import annotations

from mlplab.data.cifar10 import CIFAR10
from mlplab.data.core import DatasetSplits
from mlplab.data.digits import DIGITS
from mlplab.data.mnist import FASHION_MNIST, MNIST
from mlplab.data.source import DataSource
from mlplab.errors import ConfigError

#: name -> data set, in the order the CLI lists them: THE list of data sets (config validation,
#: ``get_dataset`` and the error for an unknown name read it). A DataSource is called like a loader.
DATASETS: dict[str, DataSource] = {source.name: source for source in (CIFAR10, DIGITS, MNIST, FASHION_MNIST)}
ALIASES = {"cifar-10": "cifar10", "fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist"}
#: the options every loader accepts (None: the data set's default)
OPTIONS = ("validation_size", "split_seed", "download", "normalize", "normalization", "progress")


def dataset_names() -> list[str]:
    return list(DATASETS)


def get_dataset(name: str, data_dir=None, **options) -> DatasetSplits:
    """Load the data set ``name`` (see :data:`DATASETS`) as :class:`DatasetSplits`.

    ``data_dir`` None means ``$MLPLAB_DATA``, else ``./data``. ``options``: any of
    validation_size, split_seed, download, normalize, normalization ('published' | 'train'),
    progress; an option given as None takes the data set's default (digits' validation set is
    360 images, the others' 5,000).
    """
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown data option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    given = {k: v for k, v in options.items() if v is not None}
    return DATASETS[key](data_dir, **given)


__all__ = ["DATASETS", "dataset_names", "get_dataset"]
