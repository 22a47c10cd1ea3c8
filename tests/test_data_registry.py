"""mlplab.data.get_dataset and the shared containers and defaults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlplab.data import (
    DATASETS,
    Dataset,
    DatasetSplits,
    DataWarning,
    cache_root,
    dataset_names,
    default_data_dir,
    get_dataset,
)
from mlplab.errors import ConfigError, DataError


def test_known_names():
    assert dataset_names() == list(DATASETS) == ["cifar10", "digits", "mnist", "fashion-mnist"]


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'; known: cifar10, digits, mnist, fashion-mnist"):
        get_dataset("imagenet")


def test_unknown_option():
    with pytest.raises(ConfigError, match="unknown data option.*batchsize"):
        get_dataset("digits", batchsize=3)


def test_aliases_and_case():
    assert get_dataset("Digits").name == "digits"


def test_none_options_take_the_dataset_default():
    splits = get_dataset("digits", validation_size=None, normalization=None, split_seed=None)
    assert len(splits.validation) == 360 and splits.info["split_seed"] == 42


def test_cifar10_goes_to_load_cifar10(synthetic_cifar, tmp_path):
    synthetic_cifar.write_archive(tmp_path)
    with pytest.warns(DataWarning):
        splits = get_dataset("cifar10", tmp_path, validation_size=50, download=False)
    assert isinstance(splits, DatasetSplits) and splits.name == "cifar10" and len(splits.validation) == 50


def test_data_dir_defaults_to_env_then_dot_data(monkeypatch, tmp_path):
    monkeypatch.setenv("MLPLAB_DATA", str(tmp_path / "env-data"))
    assert default_data_dir() == tmp_path / "env-data"
    with pytest.raises(DataError, match="env-data"):
        get_dataset("cifar10", download=False)
    monkeypatch.delenv("MLPLAB_DATA")
    assert default_data_dir() == Path("data")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=str(tmp_path / "data")):
        get_dataset("cifar10", download=False)


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MLPLAB_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("MLPLAB_CACHE")
    assert cache_root() == Path.home() / ".cache" / "mlplab"


def test_dataset_container():
    part = Dataset(np.zeros((4, 3), np.float32), np.zeros(4, np.int64))
    assert len(part) == 4 and part.num_features == 3
    with pytest.raises(DataError):
        Dataset(np.zeros((4, 3), np.float32), np.zeros(5, np.int64))
