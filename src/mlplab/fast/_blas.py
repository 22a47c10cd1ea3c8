"""``y += a·x`` in one BLAS pass (the optimisers' parameter update), and ``C += α·AᵀB`` in one
BLAS product (a plain-SGD weight update folded into the weight-gradient product).

NumPy has no fused multiply-add over arrays: ``p -= lr * g`` reads and writes memory twice
(a temporary for ``lr * g``, then the subtraction), on one core. For a large weight matrix that
dominates a step with a small batch (a 2048×3072 float32 update: 5.6 ms against 1.4 ms).
BLAS's ``axpy`` does it in one pass on every core, and NumPy's own BLAS has it: NumPy wheels
from PyPI ship OpenBLAS as ``scipy_openblas64``, whose symbols ``scipy_cblas_saxpy64_`` and
``scipy_cblas_daxpy64_`` (64-bit integer interface) are called here through ctypes.

``gemm_tn_update`` calls ``scipy_cblas_sgemm64_``/``dgemm64_`` of the same library the same way.

It must be the *same* library NumPy's ``matmul`` uses: a second OpenBLAS (SciPy's) brings a
second thread pool whose spinning threads slowed the matrix products threefold when tried. When
that library cannot be found or fails a self-check, :func:`axpy` uses NumPy's two passes.
"""

from __future__ import annotations

import ctypes
import glob
import os

import numpy as np

_I64, _POINTER = ctypes.c_int64, ctypes.c_void_p
# CBLAS's enumerations (plain C ints, also in the 64-bit integer interface)
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _load():
    """The (saxpy, daxpy, sgemm, dgemm) functions of NumPy's bundled OpenBLAS, or None."""
    if os.environ.get("MLPLAB_NO_BLAS_AXPY"):
        return None
    root = os.path.dirname(os.path.dirname(np.__file__))
    patterns = [
        os.path.join(root, "numpy.libs", "libscipy_openblas64_*"),  # Linux wheels
        os.path.join(os.path.dirname(np.__file__), ".dylibs", "libscipy_openblas64_*"),
    ]  # macOS wheels
    for pattern in patterns:
        for path in glob.glob(pattern):
            try:
                library = ctypes.CDLL(path)
                functions = []
                for name, ctype in (
                    ("scipy_cblas_saxpy64_", ctypes.c_float),
                    ("scipy_cblas_daxpy64_", ctypes.c_double),
                ):
                    function = getattr(library, name)
                    function.argtypes = [_I64, ctype, _POINTER, _I64, _POINTER, _I64]
                    function.restype = None
                    functions.append(function)
                for name, ctype in (
                    ("scipy_cblas_sgemm64_", ctypes.c_float),
                    ("scipy_cblas_dgemm64_", ctypes.c_double),
                ):
                    function = getattr(library, name)
                    # order, transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc
                    function.argtypes = (
                        [ctypes.c_int] * 3 + [_I64] * 3 + [ctype, _POINTER, _I64, _POINTER, _I64, ctype, _POINTER, _I64]
                    )
                    function.restype = None
                    functions.append(function)
            except (OSError, AttributeError):
                continue
            if _self_check(*functions):
                return tuple(functions)
    return None


def _self_check(saxpy, daxpy, sgemm, dgemm) -> bool:
    for dtype, function in ((np.float32, saxpy), (np.float64, daxpy)):
        x = np.arange(1, 8, dtype=dtype)
        y = np.full(7, 2.0, dtype=dtype)
        function(7, -0.5, x.ctypes.data, 1, y.ctypes.data, 1)
        if not np.array_equal(y, 2.0 - 0.5 * np.arange(1, 8, dtype=dtype)):
            return False
    for dtype, function in ((np.float32, sgemm), (np.float64, dgemm)):
        a = np.arange(6, dtype=dtype).reshape(3, 2)  # small integers: every result is exact
        b = np.arange(12, dtype=dtype).reshape(3, 4) - 5
        c = np.ones((2, 4), dtype=dtype)
        function(
            _ROW_MAJOR, _TRANS, _NO_TRANS, 2, 4, 3, -2.0, a.ctypes.data, 2, b.ctypes.data, 4, 1.0, c.ctypes.data, 4
        )
        if not np.array_equal(c, 1.0 - 2.0 * (a.T @ b)):
            return False
    return True


_FUNCTIONS = _load()
#: whether the one-pass BLAS update is in use (else NumPy's two passes)
AVAILABLE = _FUNCTIONS is not None


def _blas_function(x: np.ndarray, y: np.ndarray):
    """The BLAS axpy that can update ``y`` from ``x`` in place, or None (NumPy's two passes then)."""
    if (
        _FUNCTIONS is not None
        and x.dtype == y.dtype
        and x.shape == y.shape
        and y.dtype in (np.float32, np.float64)
        and x.flags.c_contiguous
        and y.flags.c_contiguous
        and y.flags.writeable
    ):
        return _FUNCTIONS[0] if y.dtype == np.float32 else _FUNCTIONS[1]
    return None


def axpy(a: float, x: np.ndarray, y: np.ndarray, scratch: np.ndarray | None = None) -> None:
    """y += a·x in place (x and y of one shape and dtype). ``scratch`` (like y) serves the
    NumPy fallback, which then allocates nothing."""
    function = _blas_function(x, y)
    if function is not None:
        function(y.size, a, x.ctypes.data, 1, y.ctypes.data, 1)
        return
    if scratch is None:
        y += a * x
    else:
        np.multiply(x, a, out=scratch)
        y += scratch


def gemm_tn_update(alpha: float, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> bool:
    """c += alpha · aᵀ b in one BLAS product, in place: a (K, M), b (K, N), c (M, N), all
    C-contiguous of one float dtype. Returns False, leaving c untouched, when BLAS cannot take
    these arrays (the caller then computes the product and the update itself).

    With c a weight matrix, a the output gradient and b the layer input, this is the plain-SGD
    step W ← W − lr·dYᵀX with alpha = −lr: the gradient is never written out, which saves a
    pass over a matrix the size of W and the separate update (see mlplab.fast.step)."""
    if (
        _FUNCTIONS is None
        or not (a.dtype == b.dtype == c.dtype)
        or c.dtype not in (np.float32, np.float64)
        or a.ndim != 2
        or b.ndim != 2
        or c.shape != (a.shape[1], b.shape[1])
        or a.shape[0] != b.shape[0]
        or not (a.flags.c_contiguous and b.flags.c_contiguous and c.flags.c_contiguous and c.flags.writeable)
    ):
        return False
    if c.size == 0:  # nothing to update (and BLAS would reject a zero leading dimension)
        return True
    (k, m), n = a.shape, b.shape[1]
    function = _FUNCTIONS[2] if c.dtype == np.float32 else _FUNCTIONS[3]
    # Row-major C = alpha·op(A)·op(B) + 1·C with op(A) = Aᵀ (lda = M) and op(B) = B (ldb = N)
    function(_ROW_MAJOR, _TRANS, _NO_TRANS, m, n, k, alpha, a.ctypes.data, m, b.ctypes.data, n, 1.0, c.ctypes.data, n)
    return True


class Axpy:
    """``y += a·x`` for one fixed pair of arrays: :func:`axpy` with its checks and pointer
    lookups done once. Worth it on every step: reading ``arr.ctypes.data`` and checking the
    flags cost ~3.7 µs a call, more than the whole BLAS update of a bias vector (~1 µs).
    The plan holds both arrays, so the pointers stay valid as long as it lives."""

    __slots__ = ("function", "n", "x", "x_ptr", "y", "y_ptr")

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y
        self.function = _blas_function(x, y)
        if self.function is not None:
            self.n, self.x_ptr, self.y_ptr = y.size, x.ctypes.data, y.ctypes.data

    def matches(self, x: np.ndarray, y: np.ndarray) -> bool:
        return x is self.x and y is self.y

    def __call__(self, a: float, scratch: np.ndarray | None = None) -> None:
        if self.function is not None:
            self.function(self.n, a, self.x_ptr, 1, self.y_ptr, 1)
        else:
            axpy(a, self.x, self.y, scratch)
