"""Unpickling NumPy arrays without running code: only the constructors an array needs are resolved.

CIFAR-10's "python version" is a set of pickled dicts of arrays; a tampered file must not be able
to import and call anything else.
"""

from __future__ import annotations

import codecs
import io
import pickle
from typing import ClassVar

import numpy as np

from mlplab.errors import DataError


def _numpy_multiarray():
    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy 1.x
        from numpy.core import multiarray
    return multiarray


class _BatchUnpickler(pickle.Unpickler):
    """Resolves only the globals a pickled NumPy array needs; anything else is refused."""

    _multiarray = _numpy_multiarray()
    ALLOWED: ClassVar[dict] = {
        ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
        ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
        ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module, name):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def unpickle_arrays(payload: bytes, where: str, what: str) -> dict:
    """The dict pickled in ``payload`` (bytes keys decoded as Latin-1); DataError if it is not one."""
    try:
        value = _BatchUnpickler(io.BytesIO(payload), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any failure to decode is a malformed file
        raise DataError(f"{where} is not a readable {what} ({type(exc).__name__}: {exc})") from None
    if not isinstance(value, dict):
        raise DataError(f"{where} is not a {what} (a {type(value).__name__}, not a dict)")
    return {key.decode("latin1") if isinstance(key, bytes) else key: item for key, item in value.items()}
