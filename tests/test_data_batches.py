"""mlplab.data.batches: epoch order, batch counts, buffers, resume and augmentation hooks."""

from __future__ import annotations

import numpy as np
import pytest

from mlplab.data import batches, num_batches
from mlplab.errors import ConfigError


def make(n: int, d: int = 6):
    x = np.arange(n * d, dtype=np.float32).reshape(n, d)
    y = np.arange(n, dtype=np.int64)
    return x, y


def collect(iterator):
    """Copies of every batch (the yielded arrays may be reused buffers)."""
    return [(xb.copy(), yb.copy()) for xb, yb in iterator]


@pytest.mark.parametrize("n, size, drop_last, expected", [
    (45_000, 128, True, 351), (45_000, 128, False, 352), (5_000, 128, False, 40), (10_000, 128, False, 79),
    (256, 128, True, 2), (100, 128, True, 0), (100, 128, False, 1), (0, 128, False, 0),
])
def test_num_batches(n, size, drop_last, expected):
    assert num_batches(n, size, drop_last) == expected


def test_training_pass_drops_the_last_partial_batch():
    x, y = make(45_000, 2)
    rng = np.random.default_rng(0)
    sizes = [len(yb) for _, yb in batches(x, y, 128, shuffle=True, rng=rng, drop_last=True)]
    assert len(sizes) == 351 and set(sizes) == {128}


def test_evaluation_pass_keeps_order_and_the_last_batch():
    x, y = make(5_000, 2)
    got = collect(batches(x, y, 128))
    assert len(got) == 40 and len(got[-1][1]) == 5_000 - 39 * 128
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in got]), y)
    np.testing.assert_array_equal(np.concatenate([xb for xb, _ in got]), x)


def test_unshuffled_batches_are_views_without_copies():
    x, y = make(300)
    xb, yb = next(batches(x, y, 128))
    assert np.shares_memory(xb, x) and np.shares_memory(yb, y)


def test_shuffled_pass_is_a_permutation_matching_x_and_y():
    x, y = make(1_000)
    got = collect(batches(x, y, 64, shuffle=True, rng=np.random.default_rng(1)))
    ys = np.concatenate([yb for _, yb in got])
    assert sorted(ys) == list(range(1_000)) and not np.array_equal(ys, y)
    for xb, yb in got:
        np.testing.assert_array_equal(xb, x[yb])
        assert xb.dtype == np.float32 and xb.flags.c_contiguous and yb.dtype == np.int64


def test_order_comes_from_one_permutation_call_per_epoch():
    x, y = make(500)
    rng = np.random.default_rng(5)
    expected = np.random.default_rng(5).permutation(500)
    it = batches(x, y, 100, shuffle=True, rng=rng)
    state = rng.bit_generator.state
    assert rng.bit_generator.state == state  # nothing is drawn before the first next()
    first = next(it)[1].copy()
    np.testing.assert_array_equal(first, expected[:100])
    after_draw = rng.bit_generator.state
    rest = np.concatenate([yb.copy() for _, yb in it])
    np.testing.assert_array_equal(rest, expected[100:])
    assert rng.bit_generator.state == after_draw  # exactly one draw for the whole epoch


def test_epochs_are_reshuffled_and_reproducible():
    x, y = make(400)

    def two_epochs(seed):
        rng = np.random.default_rng(seed)
        return [np.concatenate([yb.copy() for _, yb in batches(x, y, 50, shuffle=True, rng=rng)]) for _ in range(2)]

    a, b = two_epochs(3), two_epochs(3)
    assert not np.array_equal(a[0], a[1])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_start_resumes_mid_epoch_from_the_saved_state():
    x, y = make(1_000)
    rng = np.random.default_rng(11)
    state = rng.bit_generator.state
    full = collect(batches(x, y, 128, shuffle=True, rng=rng, drop_last=True))
    rng.bit_generator.state = state
    resumed = collect(batches(x, y, 128, shuffle=True, rng=rng, drop_last=True, start=3))
    assert len(resumed) == len(full) - 3
    for (xa, ya), (xb, yb) in zip(full[3:], resumed, strict=True):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)


def test_start_at_the_end_yields_nothing():
    x, y = make(100)
    assert list(batches(x, y, 10, start=10)) == []


def test_augment_gets_a_copy_never_the_data():
    x, y = make(200)
    original = x.copy()
    calls = []

    def negate(xb):
        calls.append(len(xb))
        xb *= -1
        return xb

    got = collect(batches(x, y, 64, augment=negate))
    np.testing.assert_array_equal(x, original)
    assert calls == [64, 64, 64, 8]
    np.testing.assert_array_equal(np.concatenate([xb for xb, _ in got]), -original)
    got = collect(batches(x, y, 64, shuffle=True, rng=np.random.default_rng(0), augment=negate))
    np.testing.assert_array_equal(x, original)
    for xb, yb in got:
        np.testing.assert_array_equal(xb, -original[yb])


def test_other_dtypes_are_converted():
    x = np.arange(20, dtype=np.float64).reshape(10, 2)
    y = np.arange(10, dtype=np.int32)
    xb, yb = next(batches(x, y, 4, shuffle=True, rng=np.random.default_rng(0)))
    assert xb.dtype == np.float32 and yb.dtype == np.int64
    np.testing.assert_array_equal(xb, x[yb])


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"batch_size": 8, "shuffle": True}, "rng"),
    ({"batch_size": 8, "start": 99}, "start"),
    ({"batch_size": 8, "start": -1}, "start"),
    ({"batch_size": 8, "augment": "flip"}, "augment"),
])
def test_bad_arguments_are_config_errors_at_the_call(kwargs, match):
    x, y = make(20)
    with pytest.raises(ConfigError, match=match):
        batches(x, y, **kwargs)


def test_mismatched_lengths():
    with pytest.raises(ConfigError, match="equal length"):
        batches(np.zeros((5, 2), np.float32), np.zeros(4, np.int64), 2)
