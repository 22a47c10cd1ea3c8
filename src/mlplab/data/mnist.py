"""MNIST and Fashion-MNIST from their standard IDX ``.gz`` files.

Files are looked for in ``<data_dir>/<name>/``, torchvision's ``<data_dir>/MNIST/raw/`` (or
``FashionMNIST/raw/``) and ``<data_dir>`` itself, gzip-compressed or not; when absent and
``download`` is true they are downloaded into ``<data_dir>/<name>/`` with their official MD5s.
Local files with other checksums are used if their structure is valid, with a one-line warning.
The 60,000 training images are split 55,000 / 5,000 by ``split_seed`` as for CIFAR-10.
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from mlplab.data.core import DatasetSplits
from mlplab.data.download import DownloadError, download_file, md5_of
from mlplab.data.source import DataSource, Decoded, load
from mlplab.errors import DataError

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
IMAGE_SHAPE = (1, 28, 28)
IMAGES_MAGIC = 0x00000803  # unsigned bytes, three dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, one dimension

#: per data set: download mirrors (``env`` overrides them with one base URL), official MD5s,
#: class names, published statistics (units of pixel / 255) and the folder names searched
FLAVOURS: dict[str, dict[str, Any]] = {
    "mnist": {
        "title": "MNIST",
        "mirrors": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        "env": "MLPLAB_MNIST_URL",
        "md5": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        "class_names": [str(d) for d in range(10)],
        "mean": (0.1307,),
        "std": (0.3081,),
        "folders": ("mnist", "MNIST/raw"),
    },
    "fashion-mnist": {
        "title": "Fashion-MNIST",
        "mirrors": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        "env": "MLPLAB_FASHION_MNIST_URL",
        "md5": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        "class_names": [
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ],
        "mean": (0.2860,),
        "std": (0.3530,),
        "folders": ("fashion-mnist", "FashionMNIST/raw"),
    },
}
MAX_TRAIN = 60_000


def load_mnist(
    data_dir=None,
    validation_size: int = 5000,
    split_seed: int = 42,
    download: bool = True,
    normalize: bool = True,
    normalization: str | None = "published",
    progress: bool = True,
    *,
    flavour: str = "mnist",
) -> DatasetSplits:
    """MNIST (or ``flavour='fashion-mnist'``) as splits: x float32 (N, 784), y int64 (N,)."""
    return load(SOURCES[flavour], data_dir, validation_size, split_seed, download, normalize, normalization, progress)


def load_fashion_mnist(data_dir=None, **options) -> DatasetSplits:
    """Fashion-MNIST; the options of :func:`load_mnist`."""
    return load_mnist(data_dir, flavour="fashion-mnist", **options)


def _find(flavour: str, root: Path, download: bool, progress: bool):
    """(folder, {key: path}, spec, downloaded?) of the four IDX files, downloaded if allowed."""
    spec = FLAVOURS[flavour]
    folder, paths = _locate(root, spec)
    if folder is not None:
        return folder, paths, spec, False
    where = ", ".join(str(root / f) for f in spec["folders"])
    if not download:
        raise DataError(
            f"{spec['title']} not found in {where} or {root} (looked for {', '.join(FILES.values())}); "
            f"pass --data-dir (or set MLPLAB_DATA) to the folder that holds them, "
            f"or allow downloading them (download=True)"
        )
    folder, paths = _download(root, spec, progress, where)
    return folder, paths, spec, True


def _decode(found, rebuild: bool) -> Decoded:
    """The IDX files read into memory (small enough not to need a cache), checksums compared."""
    del rebuild  # nothing is cached
    folder, paths, spec, downloaded = found
    train_x = _read_images(paths["train_images"])
    train_y = _read_labels(paths["train_labels"], len(train_x))
    test_x = _read_images(paths["test_images"])
    test_y = _read_labels(paths["test_labels"], len(test_x))
    checksums = {name: md5_of(path) for name, path in paths.items()}
    official = all(checksums[key] == spec["md5"][FILES[key]] for key in FILES)
    warning = (
        None
        if official
        else (
            f"{spec['title']} in {folder} is not the official release (file MD5s differ from the published ones); "
            f"its structure is valid ({len(train_x):,} training and {len(test_x):,} test images, labels 0-9), "
            f"so it is used as is"
        )
    )
    info = {
        "source": os.path.abspath(folder),
        "md5": {FILES[key]: value for key, value in checksums.items()},
        "official_checksum": official,
        "downloaded": downloaded,
    }
    return Decoded(
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        n_train=len(train_x),
        n_test=len(test_x),
        info=info,
        warning=warning,
        where=f" in {folder}",
    )


def _source(flavour: str) -> DataSource:
    spec = FLAVOURS[flavour]

    def room() -> tuple[int, str]:
        return MAX_TRAIN, f"{spec['title']} has {MAX_TRAIN:,} training images and at least one must stay for training"

    return DataSource(
        name=flavour,
        title=spec["title"],
        class_names=tuple(spec["class_names"]),
        image_shape=IMAGE_SHAPE,
        pixel_max=255,
        mean=spec["mean"],
        std=spec["std"],
        default_validation_size=5000,
        validation_room=room,
        locate=functools.partial(_find, flavour),
        decode=_decode,
    )


#: the two data sets this module reads, as registered in :mod:`mlplab.data.registry`
SOURCES = {flavour: _source(flavour) for flavour in FLAVOURS}
MNIST, FASHION_MNIST = SOURCES["mnist"], SOURCES["fashion-mnist"]


def _locate(root: Path, spec: dict):
    """(folder, {key: path}) of the first folder holding all four files, or (None, None)."""
    for folder in [root / f for f in spec["folders"]] + [root]:
        paths = {}
        for key, name in FILES.items():
            for candidate in (folder / name, folder / name[: -len(".gz")]):
                try:
                    if candidate.is_file():
                        paths[key] = candidate
                        break
                except OSError as exc:
                    raise DataError(f"cannot read the data folder {folder}: {exc.strerror or exc}") from None
        if len(paths) == len(FILES):
            return folder, paths
    return None, None


def _download(root: Path, spec: dict, progress: bool, where: str):
    folder = root / spec["folders"][0]
    override = os.environ.get(spec["env"])
    mirrors = (override,) if override else spec["mirrors"]
    paths = {}
    for key, name in FILES.items():
        dest = folder / name
        if dest.is_file():
            paths[key] = dest
            continue
        failures = []
        for base in mirrors:
            try:
                paths[key] = download_file(
                    base.rstrip("/") + "/" + name, dest, spec["md5"][name], progress=progress, description=name
                )
                break
            except DownloadError as exc:
                failures.append(str(exc))
        else:
            raise DataError(
                f"{spec['title']} not found in {where} or {root} and {'; '.join(failures)}; put the four "
                f"IDX .gz files in {folder}, or pass --data-dir (or set MLPLAB_DATA) to a folder holding them"
            )
    return folder, paths


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(
            f"{path} is truncated or corrupted ({exc or 'it ends early'}); delete it and download it again"
        ) from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def _header(payload: bytes, path: Path, magic: int, dims: int) -> tuple[int, ...]:
    need = 4 * (1 + dims)
    if len(payload) < need:
        raise DataError(f"{path} is not an IDX file (only {len(payload)} bytes)")
    values = np.frombuffer(payload, ">u4", count=1 + dims)
    if int(values[0]) != magic:
        raise DataError(
            f"{path} is not an IDX file of {'images' if dims == 3 else 'labels'} "
            f"(magic number {int(values[0]):#010x}, expected {magic:#010x})"
        )
    shape = tuple(int(v) for v in values[1:])
    expected = need + int(np.prod(shape))
    if len(payload) != expected:
        raise DataError(
            f"{path} holds {len(payload):,} bytes but its header {shape} needs {expected:,} (truncated or corrupted)"
        )
    return shape


def _read_images(path: Path) -> np.ndarray:
    payload = _read_bytes(path)
    shape = _header(payload, path, IMAGES_MAGIC, 3)
    if shape[1:] != IMAGE_SHAPE[1:]:
        raise DataError(f"{path} holds images of {shape[1]}x{shape[2]} pixels; expected 28x28")
    if shape[0] == 0:
        raise DataError(f"{path} holds no images")
    return np.frombuffer(payload, np.uint8, offset=16).reshape(shape[0], shape[1] * shape[2])


def _read_labels(path: Path, count: int) -> np.ndarray:
    payload = _read_bytes(path)
    (n,) = _header(payload, path, LABELS_MAGIC, 1)
    if n != count:
        raise DataError(f"{path} holds {n:,} labels for {count:,} images")
    labels = np.frombuffer(payload, np.uint8, offset=8).astype(np.int64)
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise DataError(f"{path} has labels outside 0-9 ({bad.size} of them, e.g. {labels[bad[0]]} at index {bad[0]})")
    return labels
