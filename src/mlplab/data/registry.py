"""The data sets the CLI's ``--dataset`` chooses from, behind one call: :func:`get_dataset`."""

from __future__ import annotations

from collections.abc import Callable

from mlplab.data.core import DatasetSplits
from mlplab.errors import ConfigError


def _cifar10(data_dir=None, **options):
    from mlplab.data.cifar10 import load_cifar10

    return load_cifar10(data_dir, **options)


def _digits(data_dir=None, **options):
    from mlplab.data.digits import load_digits

    return load_digits(data_dir, **options)


def _mnist(data_dir=None, **options):
    from mlplab.data.mnist import load_mnist

    return load_mnist(data_dir, **options)


def _fashion_mnist(data_dir=None, **options):
    from mlplab.data.mnist import load_fashion_mnist

    return load_fashion_mnist(data_dir, **options)


#: name -> loader, in the order the CLI lists them
DATASETS: dict[str, Callable[..., DatasetSplits]] = {
    "cifar10": _cifar10,
    "digits": _digits,
    "mnist": _mnist,
    "fashion-mnist": _fashion_mnist,
}
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
