"""Whitening preprocessing for image data: per-image standardisation and ZCA.

- ``per_image``: each image minus its own mean, divided by its own standard deviation (over
  all its pixels and channels); removes brightness and contrast differences between images.
- ``zca``: x ← (x − μ) W with W = U diag(1/√(λ + ε)) Uᵀ from the eigendecomposition C = U Λ Uᵀ
  of the training split's feature covariance. It decorrelates neighbouring pixels while keeping
  the image layout (W is symmetric, so the result still looks like an edge-enhanced image, and
  crops and flips still make sense). ε (``zca_epsilon``) damps the small eigenvalues — the
  fine, noisy directions; 0.1 suits per-channel normalised CIFAR-10, whose eigenvalues sum to 3072.
- ``pca``: x ← (x − μ) V, the coordinates of each image in the ``pca_components`` leading
  principal directions V (D, K) of the training split: fewer features (768 of CIFAR-10's 3072
  keep 99.7 % of the variance), so the first layer costs a quarter. The covariance is made
  mirror-symmetric (averaged with that of the mirrored images) and diagonalised separately on
  the even (left-right symmetric) and odd (antisymmetric) images, so every direction is either
  unchanged or negated by a mirror: the rows are no longer images (``image_shape`` becomes
  None), but ``data.mirror`` (±1 per feature) mirrors them, ``x * mirror``, for flip
  augmentation and test-time flip averaging. The coordinates are not rescaled: their variances
  stay the eigenvalues. Random crops need pixels: with ``project_train=False`` the training split
  stays images and ``data.projection`` maps each training batch to coordinates after it has been
  augmented (what the training loop does when crops are on). docs/presets.md measures what this buys.

Statistics come from the training split only. The ZCA matrix and the PCA basis are cached in
``$MLPLAB_CACHE/zca`` and ``$MLPLAB_CACHE/pca``, keyed by what they depend on (data source
checksum, split, normalisation, ε or K).
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np

from mlplab.data.core import CHUNK_ROWS, DatasetSplits, cache_root, warn
from mlplab.errors import ConfigError

#: THE list of whitening methods (``--whitening``; config validation reads it from here)
WHITENINGS = ("none", "per_image", "zca", "pca")


def per_image_standardize(x: np.ndarray, eps: float = 1e-6) -> None:
    """Standardise each row of ``x`` (N, D) in place: zero mean, unit standard deviation."""
    for start in range(0, len(x), CHUNK_ROWS):
        chunk = x[start : start + CHUNK_ROWS]
        chunk -= chunk.mean(axis=1, keepdims=True)
        chunk /= np.sqrt(np.mean(chunk * chunk, axis=1, keepdims=True) + eps)


def fit_zca(x: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """The mean (D,) and the symmetric ZCA matrix W (D, D), float32, from the rows of ``x`` (N, D)."""
    mean = x.mean(axis=0, dtype=np.float64)
    cov = _covariance(x, mean)
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    scale = 1.0 / np.sqrt(np.maximum(eigenvalues, 0.0) + epsilon)
    w = (eigenvectors * scale) @ eigenvectors.T
    return mean.astype(np.float32), w.astype(np.float32)


def apply_zca(x: np.ndarray, mean: np.ndarray, w: np.ndarray) -> None:
    """x ← (x − mean) W in place, a chunk of rows at a time (no second copy of x)."""
    for start in range(0, len(x), CHUNK_ROWS):
        chunk = x[start : start + CHUNK_ROWS]
        chunk -= mean
        chunk[...] = chunk @ w


def mirror_pairs(image_shape) -> np.ndarray:
    """``pairs[i]``: the feature that feature ``i`` becomes in the left-right mirrored image."""
    c, h, w = image_shape
    return np.arange(c * h * w).reshape(c, h, w)[..., ::-1].reshape(-1)


def _covariance(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    cov = np.zeros((x.shape[1], x.shape[1]), dtype=np.float64)
    for start in range(0, len(x), 8 * CHUNK_ROWS):
        chunk = x[start : start + 8 * CHUNK_ROWS] - mean.astype(np.float32)
        cov += chunk.T @ chunk  # float32 products, float64 sum over chunks
    return cov / len(x)


def fit_pca(x: np.ndarray, components: int, image_shape=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The mean (D,), basis V (D, K), mirror signs (K,) and eigenvalues (K,) of the ``components``
    leading principal directions of the rows of ``x`` (N, D); V and the mean are float32.

    With ``image_shape``, statistics are those of the images and their mirror images together,
    and each direction is even (sign +1: a mirrored image has the same coordinate) or odd (−1).
    Pixel i and its mirror j = pairs[i] span one even direction (eᵢ + eⱼ)/√2 and one odd one
    (eᵢ − eⱼ)/√2; in that basis the symmetric covariance has no even-odd entries, so each half
    is diagonalised on its own and the leading K of both halves are kept. Without it, the signs
    are all +1 and mean nothing (no mirror)."""
    d = x.shape[1]
    if image_shape is None:
        mean = x.mean(axis=0, dtype=np.float64)
        eigenvalues, eigenvectors = np.linalg.eigh(_covariance(x, mean))
        order = np.argsort(eigenvalues)[::-1][:components]
        signs = np.ones(len(order))
        basis = eigenvectors[:, order]
        return mean.astype(np.float32), basis.astype(np.float32), signs.astype(np.float32), eigenvalues[order]
    pairs = mirror_pairs(image_shape)
    mean = x.mean(axis=0, dtype=np.float64)
    mean = (mean + mean[pairs]) / 2
    cov = _covariance(x, mean)
    cov = (cov + cov[np.ix_(pairs, pairs)]) / 2
    left = np.flatnonzero(np.arange(d) < pairs)  # one pixel of each mirror pair
    right = pairs[left]
    halves = []
    for sign in (1.0, -1.0):
        # Q (D, D/2): the orthonormal even (sign +1) or odd (−1) directions; Qᵀ C Q is that half
        q = np.zeros((d, len(left)))
        q[left, np.arange(len(left))] = 1 / np.sqrt(2)
        q[right, np.arange(len(left))] = sign / np.sqrt(2)
        values, vectors = np.linalg.eigh(q.T @ cov @ q)
        halves.append((values, q @ vectors, np.full(len(values), sign)))
    values = np.concatenate([h[0] for h in halves])
    vectors = np.concatenate([h[1] for h in halves], axis=1)
    signs = np.concatenate([h[2] for h in halves])
    order = np.argsort(values, kind="stable")[::-1][:components]
    return mean.astype(np.float32), vectors[:, order].astype(np.float32), signs[order].astype(np.float32), values[order]


def pca_offset(mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """mean V (K,), float32, summed in float64."""
    return (mean.astype(np.float64) @ basis.astype(np.float64)).astype(np.float32)


def apply_pca(x: np.ndarray, mean: np.ndarray, basis: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
    """(x − mean) V, a new float32 array (N, K), computed as x V − mean V a chunk of rows at a
    time (no centred copy of x: this runs on every training batch when crops are on);
    ``offset`` is mean V when known (:func:`pca_offset`)."""
    out = np.empty((len(x), basis.shape[1]), dtype=np.float32)
    if offset is None:
        offset = pca_offset(mean, basis)
    for start in range(0, len(x), CHUNK_ROWS):
        block = out[start : start + CHUNK_ROWS]
        np.matmul(x[start : start + CHUNK_ROWS], basis, out=block)
        block -= offset
    return out


def _cached_fit(path, fit, shapes: dict, what: str, use_cache: bool) -> tuple[dict, bool]:
    """The arrays ``fit()`` returns (a dict), read from ``path`` when a stored copy has every
    name with the expected shape, else fitted and stored there (atomically; a failed write only
    warns). Returns (arrays, whether they came from the cache)."""
    if use_cache and path.exists():
        try:
            with np.load(path) as stored:
                arrays = {name: stored[name] for name in shapes}
            if all(arrays[name].shape == shape for name, shape in shapes.items()):
                return arrays, True
        except (OSError, ValueError, KeyError):
            pass
    arrays = fit()
    if use_cache:
        try:
            from mlplab.storage import atomic_write

            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f: np.savez(f, **arrays))
        except OSError as exc:
            warn(f"could not cache {what} in {path.parent}: {exc.strerror or exc}")
    return arrays, False


def _zca_key(data: DatasetSplits, epsilon: float) -> str:
    info = data.info or {}
    parts = {
        k: info.get(k)
        for k in ("md5", "size_bytes", "source", "normalization", "mean", "std", "validation_size", "split_seed")
    }
    parts.update(name=data.name, epsilon=epsilon, train=len(data.train), features=data.num_features)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def whiten(
    data: DatasetSplits,
    method: str = "none",
    *,
    zca_epsilon: float = 0.1,
    pca_components: int = 768,
    project_train: bool = True,
    use_cache: bool = True,
) -> DatasetSplits:
    """Whiten every split of ``data`` in place with statistics of its training split; returns ``data``."""
    if method not in WHITENINGS:
        raise ConfigError(f"--whitening: unknown method {method!r} (choose from {', '.join(WHITENINGS)})")
    if method == "none":
        return data
    started = time.perf_counter()
    splits = [data.train, data.validation, data.test]
    if method == "per_image":
        for split in splits:
            per_image_standardize(split.x)
        data.info = {**(data.info or {}), "whitening": "per_image"}
        return data
    if method == "pca":
        return _whiten_pca(data, pca_components, use_cache, started, project_train)
    if not zca_epsilon > 0:
        raise ConfigError(f"--zca-epsilon must be positive, got {zca_epsilon!r}")
    d = data.num_features
    stored, cached = _cached_fit(
        cache_root() / "zca" / f"{_zca_key(data, zca_epsilon)}.npz",
        lambda: dict(zip(("mean", "w"), fit_zca(data.train.x, zca_epsilon))),
        {"mean": (d,), "w": (d, d)},
        "the ZCA matrix",
        use_cache,
    )
    mean, w = stored["mean"], stored["w"]
    for split in splits:
        apply_zca(split.x, mean, w)
    data.info = {
        **(data.info or {}),
        "whitening": "zca",
        "zca_epsilon": zca_epsilon,
        "zca_cached": cached,
        "whitening_seconds": round(time.perf_counter() - started, 3),
    }
    return data


class Projection:
    """x ↦ (x − mean) V: training batches of images to principal coordinates, after augmentation."""

    def __init__(self, mean: np.ndarray, basis: np.ndarray) -> None:
        self.mean, self.basis = mean, basis
        self.offset = pca_offset(mean, basis)

    @property
    def features(self) -> int:
        return int(self.basis.shape[1])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return apply_pca(x, self.mean, self.basis, self.offset)

    def __repr__(self) -> str:
        return f"Projection({self.basis.shape[0]} -> {self.features})"


def _whiten_pca(
    data: DatasetSplits, components: int, use_cache: bool, started: float, project_train: bool = True
) -> DatasetSplits:
    if isinstance(components, bool) or not isinstance(components, int) or not 1 <= components <= data.num_features:
        raise ConfigError(
            f"--pca-components must be a whole number from 1 to the {data.num_features} features "
            f"of {data.name}, got {components!r}"
        )
    image_shape = data.image_shape

    def fit() -> dict:
        mean, basis, signs, eigenvalues = fit_pca(data.train.x, components, image_shape)
        variance = np.float64(_total_variance(data.train.x, mean))
        return {"mean": mean, "basis": basis, "signs": signs, "eigenvalues": eigenvalues, "total_variance": variance}

    stored, cached = _cached_fit(
        cache_root() / "pca" / f"{_pca_key(data, components)}.npz",
        fit,
        {
            "mean": (data.num_features,),
            "basis": (data.num_features, components),
            "signs": (components,),
            "eigenvalues": (components,),
            "total_variance": (),
        },
        "the PCA basis",
        use_cache,
    )
    mean, basis, signs, eigenvalues = stored["mean"], stored["basis"], stored["signs"], stored["eigenvalues"]
    total_variance = float(stored["total_variance"])
    offset = pca_offset(mean, basis)
    if project_train or image_shape is None:
        data.train.x = apply_pca(data.train.x, mean, basis, offset)
        data.image_shape = None
    else:  # training rows stay images, for crops; each batch is projected after augmentation
        data.projection = Projection(mean, basis)
    for split in (data.validation, data.test):
        split.x = apply_pca(split.x, mean, basis, offset)
    data.mirror = signs if image_shape is not None else None
    data.info = {
        **(data.info or {}),
        "whitening": "pca",
        "pca_components": components,
        "pca_variance_kept": round(float(eigenvalues.sum()) / total_variance, 5),
        "pca_even": int(np.count_nonzero(signs > 0)) if image_shape is not None else None,
        "pca_cached": cached,
        "whitening_seconds": round(time.perf_counter() - started, 3),
    }
    return data


def _total_variance(x: np.ndarray, mean: np.ndarray) -> float:
    """The summed variance of the features about ``mean``: the trace of the covariance."""
    total = 0.0
    for start in range(0, len(x), CHUNK_ROWS):
        chunk = x[start : start + CHUNK_ROWS] - mean
        total += float(np.einsum("ij,ij->", chunk, chunk, dtype=np.float64))
    return total / len(x)


def _pca_key(data: DatasetSplits, components: int) -> str:
    return "pca-" + _zca_key(data, float(components))
