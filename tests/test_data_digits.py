"""mlplab.data.digits: the 8x8 digits shipped with mlplab (scikit-learn's copy), the test suite's real data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlplab.data import digits as digits_module
from mlplab.data import get_dataset
from mlplab.data.digits import load_digits
from mlplab.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parent.parent


def test_bundled_arrays_are_scikit_learns_digits_bit_for_bit():
    datasets = pytest.importorskip("sklearn.datasets")
    bunch = datasets.load_digits()
    pixels, labels = digits_module.read_bundled()
    assert pixels.dtype == np.uint8 and labels.dtype == np.uint8
    # Compared in scikit-learn's own dtypes: every float64 pixel and int64 label must come back exact.
    np.testing.assert_array_equal(pixels.astype(bunch.data.dtype), bunch.data, strict=True)
    np.testing.assert_array_equal(labels.astype(bunch.target.dtype), bunch.target, strict=True)
    # And the images mlplab hands out are those pixels, in the order of the split's indices.
    splits = load_digits(normalize=False)
    assert np.array_equal(np.sort(np.concatenate([splits.train.y, splits.validation.y, splits.test.y])),
                          np.sort(bunch.target))


def test_regeneration_script_agrees_with_the_shipped_file(tmp_path):
    pytest.importorskip("sklearn.datasets")
    script = REPO / "scripts" / "make_digits.py"
    check = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    # Two runs write the same bytes (fixed zip timestamps), and np.load reads them back.
    first, second = tmp_path / "a.npz", tmp_path / "b.npz"
    for out in (first, second):
        subprocess.run([sys.executable, str(script), "--out", str(out)], check=True, capture_output=True)
    assert first.read_bytes() == second.read_bytes()
    with np.load(first) as archive, np.load(REPO / "src" / "mlplab" / "data" / "digits.npz") as shipped:
        for name in ("pixels", "labels"):
            np.testing.assert_array_equal(archive[name], shipped[name], strict=True)


def test_origin_and_licence_are_stated_next_to_the_data():
    notice = " ".join((Path(digits_module.__file__).parent / "digits-NOTICE.txt").read_text().split())
    for words in ("Optical Recognition of Handwritten Digits", "Alpaydin", "CC BY 4.0", "BSD 3-Clause",
                  "scripts/make_digits.py"):
        assert words in notice


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


def test_loads_without_scikit_learn(monkeypatch):
    for name in ("sklearn", "sklearn.datasets"):
        monkeypatch.setitem(sys.modules, name, None)  # any import of it fails
    splits = load_digits()
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (1077, 360, 360)


def test_a_damaged_data_file_is_one_data_error(monkeypatch, tmp_path):
    damaged = tmp_path / "digits.npz"
    damaged.write_bytes(b"PK\x03\x04 not really a zip file")
    monkeypatch.setattr(digits_module, "data_file", lambda: damaged)
    with pytest.raises(DataError, match="digits data shipped with mlplab.*damaged.*reinstall"):
        load_digits()
    np.savez(damaged, pixels=np.zeros((3, 64), np.uint8), labels=np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="unexpected arrays"):
        load_digits()
