"""The 8x8 handwritten digits: 1,797 images shipped inside mlplab -- the quick demo and the tests' real data.

The arrays (``digits.npz`` beside this file, 45 kB) are exactly scikit-learn's ``load_digits()``:
the test set of the UCI "Optical Recognition of Handwritten Digits" data (Alpaydin and Kaynak,
1998; CC BY 4.0), stored as uint8. ``digits-NOTICE.txt`` states origin and licence;
``scripts/make_digits.py`` regenerates the file from scikit-learn, which mlplab itself does not need.

Split: a fixed stratified test set of 360 images (20%, chosen with a constant seed, so it never
changes), then a stratified validation set of ``validation_size`` (default 360) chosen by
``split_seed`` from the rest; train is the remainder (1,077 by default). Pixels are 0-16;
normalisation is per channel (one channel here) like the other image sets: 'published' uses the
statistics of all 1,797 images (fixed constants), 'train' those of the training split.
"""

from __future__ import annotations

import zipfile
from importlib import resources

import numpy as np

from mlplab.data.core import DatasetSplits, stratified_pick
from mlplab.data.source import DataSource, Decoded, load
from mlplab.errors import DataError

IMAGE_SHAPE = (1, 8, 8)
CLASS_NAMES = [str(d) for d in range(10)]
TOTAL = 1797
TEST_SIZE = 360
TEST_SEED = 0
DEFAULT_VALIDATION_SIZE = 360
#: mean and std of pixel / 16 over all 1,797 images
MEAN = (0.3053,)
STD = (0.3760,)
DATA_FILE = "digits.npz"


def data_file():
    """Where the shipped arrays are (a Traversable: a path, or a member of a zipped install)."""
    return resources.files("mlplab.data").joinpath(DATA_FILE)


def read_bundled() -> tuple[np.ndarray, np.ndarray]:
    """The shipped arrays: pixels uint8 (1797, 64) in 0..16 and labels uint8 (1797,) in 0..9."""
    source = data_file()
    try:
        with source.open("rb") as handle, np.load(handle, allow_pickle=False) as archive:
            pixels, labels = archive["pixels"], archive["labels"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
        raise DataError(
            f"the digits data shipped with mlplab ({source}) is missing or damaged ({reason}); reinstall mlplab"
        ) from None
    if pixels.shape != (TOTAL, 64) or labels.shape != (TOTAL,) or pixels.dtype != np.uint8 or labels.dtype != np.uint8:
        raise DataError(
            f"the digits data shipped with mlplab ({source}) has unexpected arrays "
            f"(pixels {pixels.dtype}{pixels.shape}, labels {labels.dtype}{labels.shape}); reinstall mlplab"
        )
    return pixels, labels


def load_digits(
    data_dir=None,
    validation_size: int | None = None,
    split_seed: int = 42,
    download: bool = True,
    normalize: bool = True,
    normalization: str | None = "published",
    progress: bool = True,
) -> DatasetSplits:
    """The digits as train / validation / test splits: x float32 (N, 64), y int64 (N,).

    ``data_dir``, ``download`` and ``progress`` are accepted for a uniform interface and unused:
    the data ships with mlplab.
    """
    return load(DIGITS, data_dir, validation_size, split_seed, download, normalize, normalization, progress)


def _decode(located, rebuild: bool) -> Decoded:
    del located, rebuild  # shipped with mlplab: nothing to find, nothing cached
    pixels, labels = read_bundled()
    return Decoded(
        train_x=pixels,
        train_y=labels.astype(np.int64),
        n_train=len(labels),
        info={"source": "mlplab/data/digits.npz (UCI optdigits test set, as sklearn.datasets.load_digits)"},
        info_tail={"test_seed": TEST_SEED},
    )


def _split(labels: np.ndarray, validation_size: int, split_seed: int):
    """A fixed stratified test set, then a stratified validation set by ``split_seed`` from the rest."""
    everything = np.arange(len(labels))
    test_idx = stratified_pick(labels, everything, TEST_SIZE, np.random.default_rng(TEST_SEED))
    rest = np.setdiff1d(everything, test_idx)
    val_idx = stratified_pick(labels, rest, validation_size, np.random.default_rng(split_seed))
    return np.setdiff1d(rest, val_idx), val_idx, test_idx


DIGITS = DataSource(
    name="digits",
    title="digits",
    class_names=tuple(CLASS_NAMES),
    image_shape=IMAGE_SHAPE,
    pixel_max=16,
    mean=MEAN,
    std=STD,
    default_validation_size=DEFAULT_VALIDATION_SIZE,
    validation_room=lambda: (TOTAL - TEST_SIZE, f"digits keeps {TEST_SIZE} of its {TOTAL:,} images for testing"),
    locate=lambda root, download, progress: None,
    decode=_decode,
    split=_split,
)
