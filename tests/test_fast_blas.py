"""The one-pass parameter update (mlplab.fast._blas) against NumPy."""

from __future__ import annotations

import numpy as np
import pytest

from mlplab.fast import _blas


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("use_blas", [True, False])
def test_axpy_matches_numpy(monkeypatch, dtype, use_blas):
    if not use_blas:
        monkeypatch.setattr(_blas, "_FUNCTIONS", None)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 53)).astype(dtype)
    y = rng.standard_normal((37, 53)).astype(dtype)
    expected = y.astype(np.float64) - 0.3 * x.astype(np.float64)
    target = y  # updated in place
    _blas.axpy(-0.3, x, y, np.empty_like(y))
    assert y is target
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-6 if dtype == np.float32 else 1e-14)


def test_axpy_non_contiguous_falls_back():
    x = np.arange(20.0).reshape(4, 5)[:, ::2]
    y = np.ones((4, 3))
    _blas.axpy(2.0, x, y)
    np.testing.assert_array_equal(y, 1 + 2 * x)


def test_blas_found_with_numpy_wheels():
    # NumPy wheels from PyPI ship scipy_openblas64; other builds fall back (and that is fine).
    import glob
    import os

    bundled = glob.glob(os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs", "libscipy_openblas64_*"))
    if not bundled:
        pytest.skip("this NumPy does not bundle scipy_openblas64")
    assert _blas.AVAILABLE


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_tn_update_matches_numpy(dtype):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((33, 7)).astype(dtype)   # (K, M)
    b = rng.standard_normal((33, 19)).astype(dtype)  # (K, N)
    c = rng.standard_normal((7, 19)).astype(dtype)   # (M, N)
    expected = c.astype(np.float64) - 0.25 * (a.astype(np.float64).T @ b.astype(np.float64))
    target = c
    if not _blas.gemm_tn_update(-0.25, a, b, c):
        pytest.skip("this NumPy does not bundle scipy_openblas64")
    assert c is target
    np.testing.assert_allclose(c, expected, rtol=0, atol=2e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("case", ["transposed a", "strided b", "read-only c", "mixed dtypes", "shapes", "no blas"])
def test_gemm_tn_update_refuses_what_blas_cannot_take(monkeypatch, case):
    rng = np.random.default_rng(2)
    a, b, c = rng.standard_normal((5, 3)), rng.standard_normal((5, 4)), rng.standard_normal((3, 4))
    if case == "transposed a":
        a = np.ascontiguousarray(a.T).T
    elif case == "strided b":
        b = rng.standard_normal((5, 8))[:, ::2]
    elif case == "read-only c":
        c.flags.writeable = False
    elif case == "mixed dtypes":
        a = a.astype(np.float32)
    elif case == "shapes":
        b = rng.standard_normal((4, 4))
    else:
        monkeypatch.setattr(_blas, "_FUNCTIONS", None)
    before = c.copy()
    assert _blas.gemm_tn_update(-1.0, a, b, c) is False
    np.testing.assert_array_equal(c, before)
