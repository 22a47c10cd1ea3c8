"""Mini-batches over (x, y) arrays, shared by both backends.

One call of :func:`batches` is one pass (epoch) over the data. With ``shuffle`` the pass follows
a permutation drawn from ``rng`` -- exactly one ``rng.permutation(n)`` call, made at the first
``next()`` -- so a training loop that saves ``rng.bit_generator.state`` at the start of an epoch
can resume in the middle of it with the same state and ``start=k``.

Yielded arrays may be views of ``x``/``y`` (unshuffled, no augmentation) or views of buffers
that the next batch overwrites: consume a batch before asking for the next, and copy it to keep it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from mlplab import validation
from mlplab.errors import ConfigError


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Batches in one pass over ``n`` samples: n // batch_size with ``drop_last``, else rounded up."""
    n, batch_size = int(n), _positive(batch_size, "batch_size")
    return n // batch_size if drop_last else -(-n // batch_size)


def batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool = False,
    rng: np.random.Generator | None = None,
    drop_last: bool = False,
    augment: Callable[[np.ndarray], np.ndarray] | None = None,
    start: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Iterate over ``(xb, yb)``: xb float32 (batch, D) C-contiguous, yb int64 (batch,).

    Training: ``shuffle=True, rng=<Generator>, drop_last=True`` (351 batches of 128 from 45,000).
    Evaluation: the defaults, in order with the last partial batch (40 batches of 128 from 5,000).
    ``augment(xb) -> xb`` is applied to each gathered batch (it may work in place; ``x`` itself is
    never modified). ``start=k`` skips the first k batches of the pass without gathering them.
    """
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ConfigError(f"batches needs x (N, D) and y (N,) of equal length, got {x.shape} and {y.shape}")
    batch_size = _positive(batch_size, "batch_size")
    total = num_batches(len(x), batch_size, drop_last)
    start = validation.integer(start, "start", low=0, high=total, what="batches in this pass")
    if shuffle and not isinstance(rng, np.random.Generator):
        raise ConfigError("shuffle=True needs rng, a numpy.random.Generator (the source of each epoch's order)")
    if augment is not None and not callable(augment):
        raise ConfigError(f"augment must be None or a callable, got {augment!r}")
    return _iterate(x, y, batch_size, bool(shuffle), rng, total, augment, int(start))


def _iterate(x, y, batch_size, shuffle, rng, total, augment, start):
    n = len(x)
    order = rng.permutation(n) if shuffle else None
    views_ok = (
        order is None and augment is None and x.dtype == np.float32 and x.flags.c_contiguous and y.dtype == np.int64
    )
    if not views_ok:
        # One buffer for the whole pass: np.take(..., out=, mode="clip") gathers rows straight into
        # it (measured ~1.5x faster than x[idx], which allocates and faults in fresh pages per batch;
        # "clip" skips the bounds-check copy that the default mode makes when out= is given).
        size = min(batch_size, n)
        x_buffer = np.empty((size, x.shape[1]), np.float32)
        y_buffer = np.empty(size, np.int64)
    for i in range(start, total):
        lo, hi = i * batch_size, min((i + 1) * batch_size, n)
        if views_ok:
            xb, yb = x[lo:hi], y[lo:hi]
        else:
            xb, yb = x_buffer[: hi - lo], y_buffer[: hi - lo]
            if order is None:
                np.copyto(xb, x[lo:hi], casting="same_kind")
                np.copyto(yb, y[lo:hi], casting="unsafe")
            else:
                index = order[lo:hi]
                if x.dtype == np.float32:
                    np.take(x, index, axis=0, out=xb, mode="clip")
                else:
                    np.copyto(xb, x[index], casting="same_kind")
                if y.dtype == np.int64:
                    np.take(y, index, out=yb, mode="clip")
                else:
                    np.copyto(yb, y[index], casting="unsafe")
            if augment is not None:
                xb = augment(xb)
        yield xb, yb


def _positive(value, name: str) -> int:
    return validation.integer(value, name)
