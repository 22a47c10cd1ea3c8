"""Whitening preprocessing: per-image standardisation and ZCA (fitted on the training split)."""

from __future__ import annotations

import numpy as np
import pytest

import mlplab
from mlplab.data import Dataset, DatasetSplits, get_dataset
from mlplab.data.whitening import fit_zca, per_image_standardize, whiten
from mlplab.errors import ConfigError


def correlated_splits(seed=0, n=3000, d=12) -> DatasetSplits:
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((d, d))

    def split(rows):
        x = (rng.standard_normal((rows, d)) @ mixing + 3.0).astype(np.float32)
        return Dataset(x, rng.integers(0, 2, rows))

    return DatasetSplits(split(n), split(500), split(500), ["a", "b"], "toy", info={"md5": f"toy{seed}"})


def test_per_image_standardisation():
    x = np.random.default_rng(0).uniform(0, 5, (7, 30)).astype(np.float32)
    expected = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    per_image_standardize(x)
    np.testing.assert_allclose(x, expected, atol=1e-5)


def test_zca_whitens_the_training_covariance_and_keeps_layout():
    data = correlated_splits()
    raw_train = data.train.x.copy()
    mean, w = fit_zca(raw_train, epsilon=1e-6)
    np.testing.assert_allclose(w, w.T, atol=1e-4)  # symmetric: ZCA, not PCA whitening
    whiten(data, "zca", zca_epsilon=1e-6, use_cache=False)
    cov = np.cov(data.train.x.T.astype(np.float64), bias=True)
    np.testing.assert_allclose(cov, np.eye(12), atol=2e-3)
    np.testing.assert_allclose(data.train.x.mean(0), 0, atol=1e-3)
    # validation and test use the training statistics: close to, not exactly, white
    assert np.abs(np.cov(data.test.x.T) - np.eye(12)).max() < 0.3


def test_zca_matrix_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MLPLAB_CACHE", str(tmp_path))
    first = whiten(correlated_splits(), "zca")
    second = whiten(correlated_splits(), "zca")
    assert first.info["zca_cached"] is False and second.info["zca_cached"] is True
    np.testing.assert_array_equal(first.train.x, second.train.x)
    assert len(list((tmp_path / "zca").glob("*.npz"))) == 1
    whiten(correlated_splits(), "zca", zca_epsilon=0.5)  # another epsilon, another entry
    assert len(list((tmp_path / "zca").glob("*.npz"))) == 2


def test_unknown_method_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown method"):
        whiten(correlated_splits(), "polar")


def test_training_with_whitening_on_digits(tmp_path):
    result = mlplab.train(dataset="digits", hidden_dims=[64], epochs=10, whitening="zca", zca_epsilon=0.1,
                          quiet=True, report=False)
    assert result.test_accuracy >= 0.85
    with pytest.raises(ConfigError, match="--whitening"):
        mlplab.train(dataset="digits", whitening="fancy", quiet=True)
    with pytest.raises(ConfigError, match="--zca-epsilon"):
        mlplab.train(dataset="digits", whitening="zca", zca_epsilon=0, quiet=True)


def test_digits_per_image(tmp_path):
    data = get_dataset("digits")
    whiten(data, "per_image")
    np.testing.assert_allclose(data.test.x.mean(1), 0, atol=1e-5)
