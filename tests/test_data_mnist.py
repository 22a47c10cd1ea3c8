"""mlplab.data.mnist: MNIST / Fashion-MNIST from synthetic IDX .gz files written by the tests."""

from __future__ import annotations

import gzip
import hashlib
import struct
import warnings

import numpy as np
import pytest

from mlplab.data import DataWarning, get_dataset, mnist
from mlplab.errors import ConfigError, DataError

TRAIN, TEST = 600, 100


def idx_images(x: np.ndarray) -> bytes:
    return struct.pack(">IIII", 0x803, len(x), 28, 28) + x.astype(np.uint8).tobytes()


def idx_labels(y: np.ndarray) -> bytes:
    return struct.pack(">II", 0x801, len(y)) + y.astype(np.uint8).tobytes()


class SyntheticMnist:
    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.train_x = rng.integers(0, 256, (TRAIN, 784), dtype=np.uint8)
        self.train_y = rng.permutation(np.arange(TRAIN) % 10)
        self.test_x = rng.integers(0, 256, (TEST, 784), dtype=np.uint8)
        self.test_y = rng.permutation(np.arange(TEST) % 10)

    def files(self) -> dict[str, bytes]:
        return {
            "train-images-idx3-ubyte.gz": gz(idx_images(self.train_x)),
            "train-labels-idx1-ubyte.gz": gz(idx_labels(self.train_y)),
            "t10k-images-idx3-ubyte.gz": gz(idx_images(self.test_x)),
            "t10k-labels-idx1-ubyte.gz": gz(idx_labels(self.test_y)),
        }

    def write(self, folder, replace=None):
        folder.mkdir(parents=True, exist_ok=True)
        for name, payload in {**self.files(), **(replace or {})}.items():
            (folder / name).write_bytes(payload)
        return folder


@pytest.fixture
def synthetic_mnist(monkeypatch):
    for variable in ("MLPLAB_MNIST_URL", "MLPLAB_FASHION_MNIST_URL", "MLPLAB_DATA"):
        monkeypatch.delenv(variable, raising=False)
    return SyntheticMnist()


def load(name, data_dir, **options):
    options.setdefault("validation_size", 100)
    options.setdefault("download", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return get_dataset(name, data_dir, **options)


@pytest.mark.parametrize("name, folder", [("mnist", "mnist"), ("mnist", "MNIST/raw"),
                                          ("fashion-mnist", "fashion-mnist"), ("fashion-mnist", "FashionMNIST/raw")])
def test_loads_from_the_standard_folders(synthetic_mnist, tmp_path, name, folder):
    synthetic_mnist.write(tmp_path / folder)
    splits = load(name, tmp_path, normalize=False, validation_size=100, split_seed=3)
    assert splits.name == name and splits.image_shape == (1, 28, 28) and splits.num_features == 784
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (500, 100, 100)
    order = np.random.default_rng(3).permutation(TRAIN)
    val_idx = np.sort(order[:100])
    np.testing.assert_array_equal(np.rint(splits.validation.x * 255), synthetic_mnist.train_x[val_idx])
    np.testing.assert_array_equal(splits.validation.y, synthetic_mnist.train_y[val_idx])
    np.testing.assert_array_equal(np.rint(splits.test.x * 255), synthetic_mnist.test_x)
    assert splits.test.x.dtype == np.float32 and splits.test.y.dtype == np.int64
    assert len(splits.class_names) == 10


def test_uncompressed_files_are_accepted(synthetic_mnist, tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name, payload in synthetic_mnist.files().items():
        (folder / name[:-3]).write_bytes(gzip.decompress(payload))
    assert len(load("mnist", tmp_path).test) == TEST


def test_normalisation(synthetic_mnist, tmp_path):
    synthetic_mnist.write(tmp_path / "mnist")
    published = load("mnist", tmp_path)
    raw = load("mnist", tmp_path, normalize=False)
    np.testing.assert_allclose(published.test.x, (raw.test.x - 0.1307) / 0.3081, atol=1e-5)
    trained = load("mnist", tmp_path, normalization="train")
    assert abs(trained.train.x.astype(np.float64).mean()) < 1e-5
    assert abs(trained.train.x.astype(np.float64).std() - 1) < 1e-5


def test_non_official_checksum_warns(synthetic_mnist, tmp_path):
    synthetic_mnist.write(tmp_path / "mnist")
    with pytest.warns(DataWarning, match="not the official release"):
        get_dataset("mnist", tmp_path, validation_size=100, download=False)


def test_default_split_is_55000_5000(synthetic_mnist, tmp_path):
    synthetic_mnist.write(tmp_path / "mnist")
    with pytest.raises(ConfigError, match="below the 600 training images"):
        load("mnist", tmp_path, validation_size=None)  # the default, 5,000, does not fit 600 images


def test_missing_files_offline(tmp_path):
    with pytest.raises(DataError) as error:
        get_dataset("fashion-mnist", tmp_path, download=False)
    message = str(error.value)
    assert "Fashion-MNIST not found" in message and str(tmp_path) in message and "--data-dir" in message


def gz(payload: bytes) -> bytes:
    return gzip.compress(payload, 1, mtime=0)  # fixed bytes: pytest-xdist workers must agree on test ids


@pytest.mark.parametrize("name, payload, match", [
    ("train-images-idx3-ubyte.gz", gz(b"\x00\x00\x08\x01" + b"\x00" * 20), "magic number"),
    ("train-images-idx3-ubyte.gz", gz(struct.pack(">IIII", 0x803, 600, 28, 28) + b"\x00" * 100), "truncated or corrupted"),
    ("t10k-labels-idx1-ubyte.gz", gz(struct.pack(">II", 0x801, 100) + bytes([11] * 100)), "outside 0-9"),
    ("t10k-labels-idx1-ubyte.gz", gz(struct.pack(">II", 0x801, 99) + bytes(99)), "99 labels for 100"),
    ("train-labels-idx1-ubyte.gz", b"\x1f\x8b\x08\x00garbage", "truncated or corrupted"),
], ids=["bad-magic", "short-images", "label-11", "label-count", "not-gzip"])
def test_corrupted_files(synthetic_mnist, tmp_path, name, payload, match):
    synthetic_mnist.write(tmp_path / "mnist", replace={name: payload})
    with pytest.raises(DataError, match=match) as error:
        load("mnist", tmp_path)
    assert name in str(error.value)


def test_truncated_gzip(synthetic_mnist, tmp_path):
    files = synthetic_mnist.files()
    name = "train-images-idx3-ubyte.gz"
    synthetic_mnist.write(tmp_path / "mnist", replace={name: files[name][:1000]})
    with pytest.raises(DataError, match="truncated"):
        load("mnist", tmp_path)


def test_download_with_checksums(synthetic_mnist, tmp_path, http_server, monkeypatch):
    served = synthetic_mnist.write(tmp_path / "www")
    monkeypatch.setenv("MLPLAB_MNIST_URL", http_server(served))
    sums = {name: hashlib.md5(payload).hexdigest() for name, payload in synthetic_mnist.files().items()}
    monkeypatch.setitem(mnist.FLAVOURS["mnist"], "md5", sums)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        splits = get_dataset("mnist", tmp_path / "data", validation_size=100, progress=False)
    assert splits.info["downloaded"] is True and splits.info["official_checksum"] is True
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == sorted(sums)


def test_download_with_wrong_checksum_keeps_nothing(synthetic_mnist, tmp_path, http_server, monkeypatch):
    monkeypatch.setenv("MLPLAB_MNIST_URL", http_server(synthetic_mnist.write(tmp_path / "www")))
    with pytest.raises(DataError, match="MD5 is .* deleted"):
        get_dataset("mnist", tmp_path / "data", validation_size=100, progress=False)
    assert list((tmp_path / "data" / "mnist").iterdir()) == []
