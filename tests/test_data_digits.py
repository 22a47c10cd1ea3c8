"""mlplab.data.digits: scikit-learn's 8x8 digits, the test suite's real data."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")

from mlplab.data import get_dataset  # noqa: E402
from mlplab.data.digits import load_digits  # noqa: E402
from mlplab.errors import ConfigError  # noqa: E402


def test_shapes_and_metadata():
    splits = load_digits()
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (1077, 360, 360)
    assert splits.name == "digits" and splits.image_shape == (1, 8, 8)
    assert splits.num_features == 64 and splits.num_classes == 10
    for part in (splits.train, splits.validation, splits.test):
        assert part.x.dtype == np.float32 and part.x.flags.c_contiguous and part.y.dtype == np.int64


def test_split_is_stratified_disjoint_and_fixed():
    a, b = load_digits(), load_digits()
    for part in ("train", "validation", "test"):
        np.testing.assert_array_equal(getattr(a, part).x, getattr(b, part).x)
    for part, size in ((a.test, 360), (a.validation, 360)):
        counts = np.bincount(part.y, minlength=10)
        assert np.all(np.abs(counts - size / 10) <= 1.5), counts
    rows = {row.tobytes() for part in (a.train, a.validation, a.test) for row in part.x}
    assert len(rows) > 1790  # the splits share no image (the digits set has a few duplicates)


def test_test_set_does_not_depend_on_the_split_seed():
    a, b = load_digits(split_seed=1), load_digits(split_seed=2)
    np.testing.assert_array_equal(a.test.x, b.test.x)
    assert not np.array_equal(a.validation.x, b.validation.x)


def test_validation_size_option():
    splits = load_digits(validation_size=100)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (1337, 100, 360)
    with pytest.raises(ConfigError, match="validation_size"):
        load_digits(validation_size=1437)


def test_normalisation():
    raw = load_digits(normalize=False)
    assert raw.train.x.min() == 0 and raw.train.x.max() == 1
    trained = load_digits(normalization="train")
    assert abs(trained.train.x.mean()) < 1e-5 and abs(trained.train.x.std() - 1) < 1e-5
    published = load_digits()
    assert abs(published.train.x.mean()) < 0.05 and abs(published.train.x.std() - 1) < 0.05


def test_softmax_regression_reaches_90_percent():
    """The data is learnable as loaded: plain softmax regression, full-batch gradient descent."""
    splits = get_dataset("digits")
    x, y = splits.train.x.astype(np.float64), splits.train.y
    weights = np.zeros((64, 10))
    onehot = np.eye(10)[y]
    for _ in range(200):
        logits = x @ weights
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        weights -= 0.5 * x.T @ (p - onehot) / len(x)
    accuracy = np.mean(np.argmax(splits.test.x @ weights, axis=1) == splits.test.y)
    assert accuracy >= 0.9, accuracy


def test_missing_scikit_learn_names_the_install_command(monkeypatch):
    import sys

    from mlplab.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    with pytest.raises(MissingDependencyError, match="pip install scikit-learn"):
        load_digits()
