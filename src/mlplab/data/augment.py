"""Image augmentation on flat batches, vectorised over the batch.

Rows of ``x`` are images in channel-major layout: (C, H, W) flattened, as CIFAR stores them.
Augmentation is for training batches only; evaluation never calls it.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mlplab import validation
from mlplab.errors import ConfigError


def _image_shape(image_shape) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in image_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) <= 0:
        raise ConfigError(f"image_shape must be (channels, height, width), got {image_shape!r}")
    return shape


def _as_images(x: np.ndarray, shape: tuple[int, int, int], who: str) -> np.ndarray:
    if x.ndim != 2 or x.shape[1] != shape[0] * shape[1] * shape[2]:
        raise ConfigError(
            f"{who}: expected rows of {shape[0] * shape[1] * shape[2]} features "
            f"(image shape {shape}), got an array of shape {x.shape}"
        )
    return x.reshape(len(x), *shape)


def flip_horizontal(x: np.ndarray, image_shape) -> np.ndarray:
    """Mirror every image left-right: x (N, C*H*W) -> a new C-contiguous array of the same shape
    (for test-time flip averaging)."""
    shape = _image_shape(image_shape)
    images = _as_images(x, shape, "flip_horizontal")
    return np.ascontiguousarray(images[..., ::-1]).reshape(x.shape)


def mirror_rows(x: np.ndarray, image_shape=None, mirror=None) -> np.ndarray:
    """The rows of the mirrored images: ``flip_horizontal`` for image rows, ``x * mirror`` for
    rows in mirror-symmetric coordinates (``data.mirror``, after ``--whitening pca``)."""
    if mirror is not None:
        return x * mirror
    return flip_horizontal(x, image_shape)


class RandomMirror:
    """Random horizontal flips of rows in mirror-symmetric coordinates: row ← row * ``mirror``
    with probability 1/2. The coins are drawn as :class:`RandomCropFlip` draws them without
    crops (one ``random`` draw of B per call), so the same seed mirrors the same samples."""

    rng: np.random.Generator

    def __init__(self, mirror: np.ndarray, rng=None) -> None:
        self.mirror = np.asarray(mirror, dtype=np.float32)
        if self.mirror.ndim != 1 or not np.all(np.abs(self.mirror) == 1):
            raise ConfigError("RandomMirror: mirror must be a vector of +1 and -1 entries")
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    def __call__(self, xb: np.ndarray) -> np.ndarray:
        if xb.ndim != 2 or xb.shape[1] != len(self.mirror):
            raise ConfigError(
                f"RandomMirror: expected rows of {len(self.mirror)} features, got an array of shape {xb.shape}"
            )
        if len(xb) == 0:
            return xb
        out = xb if xb.flags.writeable else xb.copy()
        mirror = self.rng.random(len(xb)) < 0.5
        out[mirror] *= self.mirror.astype(xb.dtype, copy=False)
        return out

    def __repr__(self) -> str:
        return f"RandomMirror(features={len(self.mirror)})"


class RandomCropFlip:
    """Random crop after zero padding, and random horizontal flip, for (B, C*H*W) float32 batches.

    Each image is shifted by (dy, dx), each uniform in [-padding, padding], with the uncovered
    border filled by 0 -- in normalised data, the mean colour -- and mirrored with probability
    1/2 when ``flip``. All randomness comes from ``self.rng`` (a numpy Generator; save and restore
    ``rng.bit_generator.state`` to replay it): per call, one ``integers`` draw of 2*B offsets and
    one ``random`` draw of B flip coins. The batch is modified in place when it is C-contiguous.
    """

    padding: int
    flip: bool
    rng: np.random.Generator

    def __init__(self, image_shape, padding: int = 4, flip: bool = True, rng=None) -> None:
        self.image_shape = _image_shape(image_shape)
        self.padding = validation.integer(padding, "padding", low=0)
        self.flip = bool(flip)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self._padded: np.ndarray | None = None

    def __call__(self, xb: np.ndarray) -> np.ndarray:
        images = _as_images(xb, self.image_shape, "RandomCropFlip")
        batch = len(images)
        if batch == 0:
            return xb
        out = images if xb.flags.c_contiguous and xb.flags.writeable else images.copy()
        p = self.padding
        if p:
            c, h, w = self.image_shape
            if self._padded is None or len(self._padded) < batch or self._padded.dtype != xb.dtype:
                # the zero border is written once; later calls overwrite only the interior
                self._padded = np.zeros((batch, c, h + 2 * p, w + 2 * p), xb.dtype)
            padded = self._padded[:batch]
            padded[:, :, p : p + h, p : p + w] = images
            offsets = self.rng.integers(0, 2 * p + 1, size=(2, batch))
            # windows[b, c, i, j] is the h x w crop whose top-left corner is (i, j) of the padded
            # image; one fancy index gathers every sample's crop in a single C loop.
            windows = sliding_window_view(padded, (h, w), axis=(2, 3))
            out[...] = windows[np.arange(batch), :, offsets[0], offsets[1]]
        if self.flip:
            mirror = self.rng.random(batch) < 0.5
            out[mirror] = out[mirror, :, :, ::-1]
        return xb if out is images else out.reshape(xb.shape)

    def __repr__(self) -> str:
        return f"RandomCropFlip(image_shape={self.image_shape}, padding={self.padding}, flip={self.flip})"


class Mixup:
    """Mixup (Zhang et al. 2018) of a training batch: ``mixup(xb, yb) -> (x_mixed, targets)``
    (docs/backprop.md, "Mixup").

    Per call, λ ~ Beta(α, α) (one ``beta`` draw, rounded to a multiple of 2⁻²⁴) and a permutation π of the batch (one
    ``permutation`` draw), then x ← λ·x + (1 − λ)·x[π] and t ← λ·onehot(y) + (1 − λ)·onehot(y[π]):
    targets float32 (B, num_classes), each row summing to 1. ``xb`` (B, D) and ``yb`` (B,) int may
    be NumPy arrays or another array library's (the draws are NumPy's either way); neither is
    modified. Save and restore ``rng.bit_generator.state`` to replay the draws.
    """

    rng: np.random.Generator

    def __init__(self, num_classes: int, alpha: float, rng=None) -> None:
        self.num_classes = validation.integer(num_classes, "num_classes", low=1)
        self.alpha = validation.number(alpha, "alpha", above=0)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    def __call__(self, xb, yb):
        from mlplab.xp import asarray, device, is_numpy, namespace

        if xb.ndim != 2 or yb.ndim != 1 or xb.shape[0] != yb.shape[0]:
            raise ConfigError(f"Mixup: expected x (B, D) and labels (B,), got shapes {xb.shape} and {yb.shape}")
        xp = namespace(xb, yb)
        # λ on the grid of 2⁻²⁴ (a change below 3·10⁻⁸): λ and 1 − λ are then exact in float32, so
        # every target row sums to exactly 1, which the loss's gradient (p − t)/S takes for granted.
        # A Python float keeps x's dtype.
        lam = round(float(self.rng.beta(self.alpha, self.alpha)) * 2**24) / 2**24
        order = self.rng.permutation(xb.shape[0])
        if not is_numpy(xp):
            order = asarray(order, xp, device=device(xb))
        mixed = lam * xb + (1 - lam) * xp.take(xb, order, axis=0)
        classes = xp.arange(self.num_classes, dtype=yb.dtype, device=device(yb))
        one_hot = xp.astype(yb[:, None] == classes, xp.float32)
        targets = lam * one_hot + (1 - lam) * xp.take(one_hot, order, axis=0)
        return mixed, targets

    def batches(self, stream):
        """Each ``(xb, yb)`` of ``stream`` mixed: an iterator of ``(x_mixed, targets)``."""
        for xb, yb in stream:
            yield self(xb, yb)

    def __repr__(self) -> str:
        return f"Mixup(num_classes={self.num_classes}, alpha={self.alpha:g})"


def batch_augmentation(data, *, augment: bool, padding: int, rng):
    """The training batches' augmentation for ``data`` (a DatasetSplits): crops and flips of
    image rows (then ``data.projection``, when the model takes other features), flips of
    mirror-symmetric coordinates (``data.mirror``), or None when off."""
    if not augment:
        if getattr(data, "projection", None) is not None:
            raise ConfigError("training rows are images awaiting a projection, but augmentation is off")
        return None
    mirror = getattr(data, "mirror", None)
    projection = getattr(data, "projection", None)
    if not data.image_shape and mirror is not None:
        if padding:
            raise ConfigError(
                "--augment: random crops need image rows, and these rows are already principal "
                "coordinates (whiten(..., project_train=False) keeps the training images); "
                "or pass --augment-padding 0"
            )
        return RandomMirror(mirror, rng=rng)
    if not data.image_shape:
        raise ConfigError(f"--augment needs an image data set; {data.name!r} has no image shape")
    crops = RandomCropFlip(data.image_shape, padding=padding, rng=rng)
    return crops if projection is None else ThenProject(crops, projection)


class ThenProject:
    """Crops and flips of training images, then their projection to the features the model
    takes (``data.projection``: principal coordinates). ``rng`` is the crops' generator."""

    def __init__(self, augment: RandomCropFlip, projection) -> None:
        self.augment, self.projection = augment, projection

    @property
    def rng(self) -> np.random.Generator:
        return self.augment.rng

    def __call__(self, xb: np.ndarray) -> np.ndarray:
        return self.projection(self.augment(xb))

    def __repr__(self) -> str:
        return f"ThenProject({self.augment!r}, {self.projection!r})"
