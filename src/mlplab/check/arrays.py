"""Small numeric helpers shared by the probes: tolerances, constant factors, central differences."""

from __future__ import annotations

import numpy as np

from mlplab.gradcheck import relative_error

#: learner against mlplab, both float64 closed forms: only rounding separates them
REFERENCE_TOL = 1e-7
#: learner's backward against central differences of the learner's forward (docs/backprop.md, "Checking the derivations")
FD_TOL = 1e-6
FD_STEP = 1e-6


def rel_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """docs/backprop.md's relative error; inf for different shapes, NaN-safe (NaN counts as inf)."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return float("inf")
    if not np.all(np.isfinite(actual)):
        return float("inf")
    return relative_error(actual, expected)


def close(actual, expected, tol: float = REFERENCE_TOL) -> bool:
    return rel_error(actual, expected) <= tol


def constant_factor(actual, expected, tol: float = 1e-6) -> float | None:
    """c when actual = c · expected (c ≠ 1) up to rounding, else None."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape or not np.all(np.isfinite(actual)):
        return None
    norm = float(np.sum(expected * expected))
    if norm == 0:
        return None
    c = float(np.sum(actual * expected)) / norm
    if abs(c - 1) < 1e-9 or c == 0:
        return None
    return c if rel_error(actual, c * expected) <= tol else None


def describe_factor(c: float, batch: int) -> str:
    """' ÷ 64 (= S, the batch size)' style wording for a constant factor c."""

    def near(a, b):
        return abs(a - b) <= 1e-6 * abs(b)

    if batch > 1:
        if near(c, 1 / batch):
            return f"÷ {batch} (= S, the batch size)"
        if near(c, batch):
            return f"× {batch} (= S, the batch size)"
        if near(c, 1 / batch**2):
            return f"÷ {batch * batch} (= S², the batch size squared)"
        if near(c, -1 / batch):
            return f"÷ −{batch} (= −S)"
        if near(c, -batch):
            return f"× −{batch} (= −S)"
    if near(c, -1):
        return "× −1 (the sign is flipped)"
    return f"× {c:.6g}"


def sample_indices(shape: tuple[int, ...], count: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Up to ``count`` distinct multi-indices of an array of ``shape`` (all of them when it is small)."""
    size = int(np.prod(shape))
    flat = np.arange(size) if size <= count else rng.choice(size, count, replace=False)
    return [tuple(int(v) for v in np.unravel_index(i, shape)) for i in flat]


def central_differences(f, array: np.ndarray, indices, h: float = FD_STEP) -> np.ndarray:
    """(f() after array[i] += h − f() after array[i] −= h) / 2h at each index; ``array`` is restored."""
    out = np.empty(len(indices))
    for k, index in enumerate(indices):
        saved = array[index]
        array[index] = saved + h
        plus = f()
        array[index] = saved - h
        minus = f()
        array[index] = saved
        out[k] = (plus - minus) / (2 * h)
    return out
