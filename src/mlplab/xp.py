"""The array library a computation runs on (docs/array-api.md).

mlplab's hand-derived modules are written against the Python array API standard: a function
takes the namespace ``xp`` from its arrays (``xp = namespace(x)``) and calls ``xp.matmul``,
``xp.sum`` and so on, so the same derivation runs on NumPy, PyTorch tensors (CPU or CUDA), CuPy
or the strict reference implementation ``array-api-strict``. NumPy arrays get NumPy itself, not
a wrapper: the NumPy path is bit for bit what it always was, and ``mlplab.fast`` may take over.
The other libraries are reached through ``array-api-compat`` (an optional extra), imported only
when an array of theirs is seen or a run asks for them.

Random numbers, checkpoints and the data stay NumPy: they are drawn or kept on the host and moved
with :func:`asarray` (:func:`to_numpy` brings them back), so every library follows the same
trajectory up to floating-point rounding.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import numpy as np

from mlplab.errors import ConfigError, MissingDependencyError

#: ``--array-library`` choices: the name a user types → the module whose namespace it gives
LIBRARIES = {"numpy": "numpy", "torch": "torch", "cupy": "cupy", "array-api-strict": "array_api_strict"}
#: what to install for each (the one-line error names it)
INSTALL = {
    "torch": "pip install 'mlplab[array-api]' torch==2.13.0 (the CPU build; see README)",
    "cupy": "pip install 'mlplab[array-api]' cupy-cuda12x (a CUDA GPU is needed)",
    "array-api-strict": "pip install 'mlplab[array-api]'",
}


def _compat():
    try:
        return importlib.import_module("array_api_compat")
    except ImportError:
        raise MissingDependencyError(
            "arrays other than NumPy's need the array-api-compat package: pip install 'mlplab[array-api]'"
        ) from None


def namespace(*arrays: Any) -> Any:
    """The array-API namespace of ``arrays``: NumPy itself for NumPy arrays (and Python or NumPy
    scalars), else what ``array_api_compat.array_namespace`` gives."""
    if all(isinstance(a, (np.ndarray, np.generic, int, float, bool)) or a is None for a in arrays):
        return np
    return _compat().array_namespace(*(a for a in arrays if a is not None and not isinstance(a, (int, float, bool))))


def is_numpy(xp: Any) -> bool:
    """Whether ``xp`` is NumPy (where ``out=`` and the NumPy fast path may be used)."""
    return xp is np or getattr(xp, "__name__", "") in ("numpy", "array_api_compat.numpy")


def library(name: str) -> Any:
    """The namespace of ``--array-library NAME``; one line naming what to install when it is missing."""
    if name not in LIBRARIES:
        raise ConfigError(f"--array-library must be one of {', '.join(LIBRARIES)}, got {name!r}")
    if name == "numpy":
        return np
    try:
        module: ModuleType = importlib.import_module(LIBRARIES[name])
    except ImportError:
        raise MissingDependencyError(f"--array-library {name}: {name} is not installed: {INSTALL[name]}") from None
    if name == "array-api-strict":
        return module  # the standard itself
    return _compat().array_namespace(module.asarray([0.0]))


def asarray(array: Any, xp: Any, *, device: Any = None, dtype: Any = None) -> Any:
    """``array`` (NumPy or another library's) as an array of ``xp`` on ``device``."""
    if xp is np:
        result = to_numpy(array)
        return result if dtype is None else result.astype(dtype, copy=False)
    if device is None:
        return xp.asarray(array, dtype=dtype)
    return xp.asarray(array, dtype=dtype, device=device)


def to_numpy(array: Any) -> np.ndarray:
    """A NumPy array with the values of ``array`` (copied from a GPU when it lives there)."""
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "get") and type(array).__module__.startswith("cupy"):
        return array.get()
    if type(array).__module__.startswith("torch"):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def device(array: Any) -> Any:
    """The device ``array`` lives on ("cpu" for NumPy)."""
    if isinstance(array, np.ndarray):
        return "cpu"
    return _compat().device(array)
