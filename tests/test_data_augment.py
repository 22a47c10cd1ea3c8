"""mlplab.data.augment: random crop with zero padding and horizontal flip, vectorised."""

from __future__ import annotations

import numpy as np
import pytest

from mlplab.data.augment import RandomCropFlip, flip_horizontal
from mlplab.errors import ConfigError

SHAPE = (3, 32, 32)


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3 * 32 * 32)).astype(np.float32)


def reference(x: np.ndarray, dy: int, dx: int, flip: bool, padding: int = 4) -> np.ndarray:
    """One image, shifted by a per-sample loop over explicit padding (the slow, obvious way)."""
    image = x.reshape(SHAPE)
    padded = np.pad(image, ((0, 0), (padding, padding), (padding, padding)))
    crop = padded[:, dy:dy + 32, dx:dx + 32]
    return (crop[:, :, ::-1] if flip else crop).reshape(-1)


def test_flip_horizontal_mirrors_each_row_of_each_plane():
    x = images(4)
    flipped = flip_horizontal(x, SHAPE)
    assert flipped.shape == x.shape and flipped.flags.c_contiguous and not np.shares_memory(flipped, x)
    np.testing.assert_array_equal(flipped.reshape(4, 3, 32, 32), x.reshape(4, 3, 32, 32)[..., ::-1])
    np.testing.assert_array_equal(flip_horizontal(flipped, SHAPE), x)


def test_crop_and_flip_match_a_per_sample_reference():
    x = images(64)
    augment = RandomCropFlip(SHAPE, padding=4, rng=np.random.default_rng(9))
    replay = np.random.default_rng(9)
    offsets = replay.integers(0, 9, size=(2, 64))
    mirror = replay.random(64) < 0.5
    out = augment(x.copy())
    for i in range(64):
        np.testing.assert_array_equal(out[i], reference(x[i], offsets[0, i], offsets[1, i], mirror[i]))
    assert 0 < mirror.sum() < 64 and len(set(map(tuple, offsets.T))) > 20


def test_works_in_place_and_keeps_shape_and_dtype():
    x = images(16)
    augment = RandomCropFlip(SHAPE, rng=0)
    out = augment(x)
    assert out is x and out.dtype == np.float32 and out.shape == (16, 3072)


def test_non_contiguous_input_is_not_modified():
    base = images(8)
    x = base[::2]
    before = x.copy()
    out = RandomCropFlip(SHAPE, rng=0)(x)
    np.testing.assert_array_equal(x, before)
    assert out.shape == x.shape and out.flags.c_contiguous


def test_no_padding_no_flip_is_the_identity():
    x = images(5)
    np.testing.assert_array_equal(RandomCropFlip(SHAPE, padding=0, flip=False, rng=0)(x.copy()), x)


def test_zero_border_and_unchanged_values():
    x = np.ones((200, 3072), np.float32)
    out = RandomCropFlip(SHAPE, padding=4, flip=False, rng=0)(x.copy())
    assert set(np.unique(out)) <= {0.0, 1.0}
    assert (out == 0).any(axis=1).mean() > 0.8  # most shifts uncover a border


def test_state_replays_and_varies_per_call():
    x = images(32)
    augment = RandomCropFlip(SHAPE, rng=np.random.default_rng(2))
    state = augment.rng.bit_generator.state
    first = augment(x.copy())
    second = augment(x.copy())
    assert not np.array_equal(first, second)
    augment.rng.bit_generator.state = state
    np.testing.assert_array_equal(augment(x.copy()), first)


def test_smaller_last_batch_and_other_shapes():
    augment = RandomCropFlip((1, 8, 8), padding=2, rng=0)
    for n in (10, 3, 10):
        x = np.random.default_rng(n).random((n, 64), dtype=np.float32)
        assert augment(x).shape == (n, 64)


@pytest.mark.parametrize("kwargs", [{"image_shape": (3, 32)}, {"image_shape": SHAPE, "padding": -1},
                                    {"image_shape": "cifar"}])
def test_bad_options(kwargs):
    with pytest.raises(ConfigError):
        RandomCropFlip(**kwargs)


def test_wrong_row_length():
    with pytest.raises(ConfigError, match="3072"):
        RandomCropFlip(SHAPE, rng=0)(np.zeros((2, 100), np.float32))
