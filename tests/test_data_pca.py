"""``--whitening pca``: coordinates in the leading principal directions, with a mirror.

The basis is checked against NumPy's eigendecomposition and scikit-learn's PCA of the images
and their mirror images together; the mirror signs against really mirrored images; and the
training loop's flips and test-time flip averaging in coordinates against the same in pixels.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from mlplab.data import Dataset, DatasetSplits, get_dataset
from mlplab.data.augment import RandomCropFlip, RandomMirror, flip_horizontal, mirror_rows
from mlplab.data.whitening import apply_pca, fit_pca, mirror_pairs, whiten
from mlplab.errors import ConfigError

SHAPE = (2, 3, 4)  # channels, height, width: 24 features


def image_splits(seed=0, n=2000) -> DatasetSplits:
    """Images with correlated, not mirror-symmetric pixels (so symmetrising matters)."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(SHAPE))
    mixing = rng.standard_normal((d, d)) * np.linspace(2.0, 0.2, d)

    def split(rows):
        x = (rng.standard_normal((rows, d)) @ mixing + np.linspace(-1, 1, d)).astype(np.float32)
        return Dataset(x, rng.integers(0, 3, rows))

    return DatasetSplits(
        split(n), split(300), split(300), ["a", "b", "c"], "toy", image_shape=SHAPE, info={"md5": f"toy{seed}"}
    )


def test_mirror_pairs_is_the_pixel_permutation_of_flip_horizontal():
    x = np.arange(2 * 24, dtype=np.float32).reshape(2, 24)
    np.testing.assert_array_equal(x[:, mirror_pairs(SHAPE)], flip_horizontal(x, SHAPE))


def test_basis_is_the_eigendecomposition_of_the_mirror_symmetric_covariance():
    x = image_splits().train.x
    mean, basis, signs, eigenvalues = fit_pca(x, 10, SHAPE)
    both = np.concatenate([x, flip_horizontal(x, SHAPE)]).astype(np.float64)
    np.testing.assert_allclose(mean, both.mean(0), atol=1e-5)
    cov = np.cov(both.T, bias=True)
    expected = np.sort(np.linalg.eigvalsh(cov))[::-1][:10]
    np.testing.assert_allclose(eigenvalues, expected, rtol=1e-6)
    np.testing.assert_allclose(basis.T @ basis, np.eye(10), atol=1e-5)  # orthonormal
    np.testing.assert_allclose(cov @ basis, basis * eigenvalues, atol=1e-4 * eigenvalues[0])  # eigenvectors
    assert set(np.unique(signs)) <= {-1.0, 1.0} and 0 < np.count_nonzero(signs > 0) < 10


def test_basis_agrees_with_scikit_learn():
    decomposition = pytest.importorskip("sklearn.decomposition")
    x = image_splits().train.x
    mean, basis, _, eigenvalues = fit_pca(x, 8, SHAPE)
    both = np.concatenate([x, flip_horizontal(x, SHAPE)]).astype(np.float64)
    reference = decomposition.PCA(n_components=8, svd_solver="full").fit(both)
    np.testing.assert_allclose(reference.mean_, mean, atol=1e-5)
    # scikit-learn divides by n - 1, the covariance here by n
    np.testing.assert_allclose(reference.explained_variance_ * (len(both) - 1) / len(both), eigenvalues, rtol=1e-5)
    # the same directions, each up to its sign
    np.testing.assert_allclose(np.abs(np.sum(reference.components_.T * basis, axis=0)), 1, atol=1e-4)


def test_mirrored_images_have_coordinates_times_the_signs():
    data = image_splits()
    mean, basis, signs, _ = fit_pca(data.train.x, 12, SHAPE)
    x = data.test.x
    mirrored = apply_pca(flip_horizontal(x, SHAPE), mean, basis)
    np.testing.assert_allclose(mirrored, apply_pca(x, mean, basis) * signs, atol=1e-4)
    np.testing.assert_allclose(mirror_rows(apply_pca(x, mean, basis), mirror=signs), mirrored, atol=1e-4)


def test_all_components_keep_everything():
    data = image_splits()
    raw = data.test.x.copy()
    mean, basis, _, _ = fit_pca(data.train.x, 24, SHAPE)
    np.testing.assert_allclose(apply_pca(raw, mean, basis) @ basis.T + mean, raw, atol=1e-4)


def test_whiten_pca_replaces_every_split_and_records_it():
    data = image_splits()
    whiten(data, "pca", pca_components=6, use_cache=False)
    assert data.num_features == 6 and data.validation.x.shape == (300, 6) and data.test.x.shape == (300, 6)
    assert data.image_shape is None and data.mirror is not None and data.mirror.shape == (6,)
    assert data.info["whitening"] == "pca" and data.info["pca_components"] == 6
    assert 0 < data.info["pca_variance_kept"] < 1
    assert data.train.x.dtype == np.float32 and data.train.x.flags.c_contiguous
    # centred on the images and their mirror images together, leading directions first, not rescaled
    both = np.concatenate([data.train.x, data.train.x * data.mirror]).astype(np.float64)
    np.testing.assert_allclose(both.mean(0), 0, atol=1e-4)
    variances = both.var(0)
    assert np.all(np.diff(variances) <= 1e-5 * variances[0]) and variances[-1] > 0.01


def test_pca_basis_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MLPLAB_CACHE", str(tmp_path))
    first = whiten(image_splits(), "pca", pca_components=5)
    second = whiten(image_splits(), "pca", pca_components=5)
    assert first.info["pca_cached"] is False and second.info["pca_cached"] is True
    np.testing.assert_array_equal(first.train.x, second.train.x)
    np.testing.assert_array_equal(first.mirror, second.mirror)
    assert first.info["pca_variance_kept"] == second.info["pca_variance_kept"]
    whiten(image_splits(), "pca", pca_components=7)  # another K, another entry
    assert len(list((tmp_path / "pca").glob("*.npz"))) == 2


@pytest.mark.parametrize("components", [0, 25, 2.5, True])
def test_components_out_of_range_are_refused(components):
    with pytest.raises(ConfigError, match="--pca-components"):
        whiten(image_splits(), "pca", pca_components=components, use_cache=False)


def test_non_image_data_gets_plain_pca_without_a_mirror():
    data = image_splits()
    data.image_shape = None
    whiten(data, "pca", pca_components=4, use_cache=False)
    assert data.mirror is None and data.num_features == 4


def test_random_mirror_flips_the_samples_random_crop_flip_flips():
    data = image_splits()
    mean, basis, signs, _ = fit_pca(data.train.x, 24, SHAPE)
    images = data.train.x[:64].copy()
    coordinates = apply_pca(images, mean, basis)
    flipped_images = RandomCropFlip(SHAPE, padding=0, rng=7)(images.copy())
    flipped_coordinates = RandomMirror(signs, rng=7)(coordinates.copy())
    np.testing.assert_allclose(flipped_coordinates, apply_pca(flipped_images, mean, basis), atol=1e-4)
    changed = np.any(flipped_images != images, axis=1)
    assert 10 < np.count_nonzero(changed) < 54


def test_random_mirror_refuses_bad_signs_and_shapes():
    with pytest.raises(ConfigError, match=r"\+1 and -1"):
        RandomMirror(np.array([1.0, 0.5]))
    with pytest.raises(ConfigError, match="expected rows of 2 features"):
        RandomMirror(np.array([1.0, -1.0]))(np.zeros((3, 4), np.float32))


def test_training_with_pca_flips_and_flip_averaging_on_digits(tmp_path):
    """The whole path through the CLI on the bundled digits (8 x 8, mirror-symmetric pairs):
    training, the run folder's record, and ``mlplab evaluate`` giving the same test accuracy."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "mlplab", "train", "--dataset", "digits", "--whitening", "pca",
               "--pca-components", "24", "--augment", "--augment-padding", "0", "--tta-flip",
               "--hidden-dims", "32", "--epochs", "4", "--out", str(out), "-q", "--no-report"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["options"]["whitening"] == "pca" and config["data"]["pca_components"] == 24
    assert summary["test_accuracy"] > 0.7  # 4 epochs of plain SGD on 24 coordinates
    evaluated = subprocess.run(
        [sys.executable, "-m", "mlplab", "evaluate", str(out), "--json"], capture_output=True, text=True, timeout=300
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-12)


def test_crops_on_coordinates_are_one_clear_line():
    from mlplab.data.augment import batch_augmentation

    data = whiten(image_splits(), "pca", pca_components=6, use_cache=False)
    with pytest.raises(ConfigError, match="--augment-padding 0"):
        batch_augmentation(data, augment=True, padding=2, rng=0)
    assert isinstance(batch_augmentation(data, augment=True, padding=0, rng=0), RandomMirror)


def test_crops_then_projection_when_the_training_images_are_kept():
    """``project_train=False``: the training rows stay images, the model's width is K, and each
    batch is cropped and flipped as images, then projected."""
    from mlplab.data.augment import ThenProject, batch_augmentation

    data = image_splits()
    images = data.train.x.copy()
    whiten(data, "pca", pca_components=6, project_train=False, use_cache=False)
    assert data.num_features == 6 and data.train.x.shape == images.shape and data.image_shape == SHAPE
    np.testing.assert_array_equal(data.train.x, images)
    assert data.validation.x.shape == (300, 6) and data.mirror is not None
    augment = batch_augmentation(data, augment=True, padding=1, rng=5)
    assert isinstance(augment, ThenProject) and augment.rng is augment.augment.rng
    batch = augment(images[:40].copy())
    expected = apply_pca(
        RandomCropFlip(SHAPE, padding=1, rng=5)(images[:40].copy()), data.projection.mean, data.projection.basis
    )
    np.testing.assert_array_equal(batch, expected)
    assert batch.shape == (40, 6)
    with pytest.raises(ConfigError, match="augmentation is off"):
        batch_augmentation(data, augment=False, padding=1, rng=5)


def test_training_with_pca_and_crops_through_the_cli(tmp_path):
    """Crops need images: the loop keeps the training images and projects each batch; the
    run then evaluates (and `mlplab evaluate` re-evaluates) on coordinates."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "mlplab", "train", "--dataset", "digits", "--whitening", "pca",
               "--pca-components", "24", "--augment", "--augment-padding", "1", "--tta-flip",
               "--hidden-dims", "32", "--epochs", "3", "--out", str(out), "-q", "--no-report"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    evaluated = subprocess.run(
        [sys.executable, "-m", "mlplab", "evaluate", str(out), "--json"], capture_output=True, text=True, timeout=300
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-12)


def test_flip_averaging_in_coordinates_is_flip_averaging_in_pixels():
    """A linear model on all 24 coordinates is a linear model on pixels: mirrored evaluation
    through the signs equals mirrored evaluation through flipped images."""
    from mlplab.metrics import chunked_log_probs

    data = image_splits()
    mean, basis, signs, _ = fit_pca(data.train.x, 24, SHAPE)
    w = np.random.default_rng(1).standard_normal((24, 3)).astype(np.float32)
    x = data.test.x
    on_pixels = [
        lp for *_, lp in chunked_log_probs(lambda xb: (xb - mean) @ basis @ w, x, 128, tta_flip=True, image_shape=SHAPE)
    ]
    on_coordinates = [
        lp
        for *_, lp in chunked_log_probs(lambda zb: zb @ w, apply_pca(x, mean, basis), 128, tta_flip=True, mirror=signs)
    ]
    np.testing.assert_allclose(np.concatenate(on_pixels), np.concatenate(on_coordinates), atol=1e-4)


def test_pca_on_digits_through_get_dataset():
    data = whiten(get_dataset("digits"), "pca", pca_components=16, use_cache=False)
    assert data.num_features == 16 and data.mirror is not None
    assert data.info["pca_variance_kept"] > 0.8


@pytest.mark.parametrize("padding", [0, 1])
def test_interrupted_pca_run_resumes_bit_for_bit(tmp_path, padding):
    """Flips in coordinates (padding 0) or crops on kept images then projection (padding 1):
    either way a run stopped mid-epoch and resumed equals the run left alone."""
    import mlplab
    from mlplab.errors import TrainingInterrupted
    from test_reliability import InterruptAt, assert_same_run

    options = dict(dataset="digits", whitening="pca", pca_components=20, augment=True, augment_padding=padding,
                   tta_flip=True, hidden_dims=[32], optimizer="adamw", lr=0.01, schedule="cosine",
                   batch_size=64, epochs=3, quiet=True, report=False)  # fmt: skip
    mlplab.train(out=str(tmp_path / "full"), **options)
    with pytest.raises(TrainingInterrupted):
        mlplab.train(out=str(tmp_path / "cut"), listeners=[InterruptAt(30)], **options)
    mlplab.train(resume=str(tmp_path / "cut"), quiet=True)
    assert_same_run(tmp_path / "full", tmp_path / "cut")


@pytest.mark.parametrize("padding", [0, 2])
def test_numpy_and_torch_train_alike_on_principal_coordinates(tmp_path, padding):
    """The PyTorch twin gets the same projected (and cropped, flipped) batches: in float64 the
    two backends' runs agree to rounding, test-time flip averaging in coordinates included."""
    pytest.importorskip("torch")
    import mlplab

    options = dict(dataset="digits", whitening="pca", pca_components=20, augment=True, augment_padding=padding,
                   tta_flip=True, hidden_dims=[32], use_batch_norm=True, optimizer="adamw", lr=0.01,
                   epochs=2, dtype="float64", device="cpu", quiet=True, report=False)  # fmt: skip
    runs = [mlplab.train(backend=name, out=str(tmp_path / name), **options) for name in ("numpy", "torch")]
    for a, b in zip(runs[0].history, runs[1].history):
        assert a["train_accuracy"] == b["train_accuracy"] and a["val_accuracy"] == b["val_accuracy"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9)
    assert runs[0].test_accuracy == runs[1].test_accuracy
