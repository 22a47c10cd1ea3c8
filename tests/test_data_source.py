"""mlplab.data.source: the one loading template, driven by a data set written only from constants and a decode."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from mlplab.data import DATASETS, DataSource, DataWarning, Decoded
from mlplab.errors import ConfigError

N_POOL, N_TEST = 40, 12


def toy(warning=None) -> tuple[DataSource, dict]:
    """A 2-channel 2x3 data set with pixels 0..8, held in memory, as a newcomer would add one."""
    rng = np.random.default_rng(1)
    arrays = {
        "train_x": rng.integers(0, 9, (N_POOL, 12), dtype=np.uint8),
        "train_y": np.arange(N_POOL, dtype=np.int64) % 3,
        "test_x": rng.integers(0, 9, (N_TEST, 12), dtype=np.uint8),
        "test_y": np.arange(N_TEST, dtype=np.int64) % 3,
    }
    located = []

    def locate(root, download, progress):
        located.append(root)
        return "here"

    def decode(found, rebuild):
        assert found == "here"
        return Decoded(**arrays, n_train=N_POOL, n_test=N_TEST, info={"source": "memory"}, warning=warning)

    source = DataSource(
        name="toy", title="Toy", class_names=("a", "b", "c"), image_shape=(2, 2, 3), pixel_max=8,
        mean=(0.5, 0.25), std=(0.5, 0.125), default_validation_size=10,
        validation_room=lambda: (N_POOL, "toy has 40 training images"), locate=locate, decode=decode,
    )
    return source, arrays


def test_a_new_data_set_needs_only_constants_and_a_decode(tmp_path):
    source, arrays = toy()
    splits = source(tmp_path, split_seed=3)
    order = np.random.default_rng(3).permutation(N_POOL)
    val_idx, train_idx = np.sort(order[:10]), np.sort(order[10:])
    np.testing.assert_array_equal(splits.validation.y, arrays["train_y"][val_idx])
    np.testing.assert_array_equal(splits.train.y, arrays["train_y"][train_idx])
    np.testing.assert_array_equal(splits.test.y, arrays["test_y"])
    # published statistics, per channel: the first 6 columns are channel 0, the last 6 channel 1
    mean = np.repeat([0.5, 0.25], 6)
    std = np.repeat([0.5, 0.125], 6)
    expected = (arrays["train_x"][val_idx] / 8 - mean) / std
    np.testing.assert_allclose(splits.validation.x, expected, rtol=1e-6, atol=1e-6)
    assert splits.validation.x.dtype == np.float32 and splits.train.y.dtype == np.int64
    assert splits.name == "toy" and splits.class_names == ["a", "b", "c"] and splits.image_shape == (2, 2, 3)
    assert splits.info["dataset"] == "toy" and splits.info["source"] == "memory"
    assert splits.info["validation_size"] == 10 and splits.info["split_seed"] == 3
    assert "prepared_cache_hit" not in splits.info  # nothing decoded into a cache entry


def test_train_normalisation_and_raw_pixels():
    source, arrays = toy()
    raw = source(normalize=False, validation_size=0)
    np.testing.assert_allclose(raw.test.x, arrays["test_x"] / 8, rtol=1e-6)
    trained = source(normalization="train", validation_size=0)
    planes = trained.train.x.reshape(N_POOL, 2, 6).astype(np.float64)
    np.testing.assert_allclose(planes.mean(axis=(0, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(planes.std(axis=(0, 2)), 1, atol=1e-5)


def test_options_are_checked_before_anything_is_located():
    source, _ = toy()
    with pytest.raises(ConfigError, match="validation_size must be an integer from 0 to 39 \\(toy has 40"):
        source(validation_size=40)
    with pytest.raises(ConfigError, match="split_seed"):
        source(split_seed=-1)


def test_the_decode_warning_is_one_data_warning():
    source, _ = toy(warning="Toy is not   the official\nrelease")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source()
    assert [str(w.message) for w in caught if issubclass(w.category, DataWarning)] == ["Toy is not the official release"]


def test_every_registered_data_set_is_a_data_source():
    assert all(isinstance(source, DataSource) and source.name == name for name, source in DATASETS.items())
