"""The PyTorch twin of mlplab's NumPy MLP: same layers, parameter names, initialisation and
optimiser formulas, so either backend can continue, evaluate or check the other.

This subpackage is the only part of mlplab that imports torch; it needs the ``torch`` extra
(``pip install 'mlplab[torch]'``). ``MLP``, ``from_numpy`` and ``to_numpy`` come from
:mod:`mlplab.torch.model`; ``TorchBackend`` (the training loop's backend) loads on first use.
It imports only downward (models, nn, optim, config): comparing the two backends is a tool that
runs training, so it lives above, in :mod:`mlplab.compare`.
"""

from __future__ import annotations

from mlplab.errors import MissingDependencyError


class TorchNotInstalled(MissingDependencyError, ImportError):
    """PyTorch is missing: an ImportError (for ``try: import``) and an mlplab error (for the CLI)."""

    exit_code = 1


try:
    import torch as _torch  # noqa: F401
except ImportError:
    raise TorchNotInstalled(
        "this needs PyTorch, which is not installed: pip install 'mlplab[torch]'", name="torch"
    ) from None

from mlplab.torch.model import MLP, Dropout, Residual, from_numpy, to_numpy  # noqa: E402

__all__ = ["MLP", "Dropout", "Residual", "TorchBackend", "from_numpy", "resolve_device", "to_numpy"]


def __getattr__(name):
    if name in ("TorchBackend", "resolve_device"):
        from mlplab.torch import backend

        return getattr(backend, name)
    if name == "compare":
        raise AttributeError("mlplab.torch.compare moved: use `from mlplab.compare import compare`")
    raise AttributeError(f"module 'mlplab.torch' has no attribute {name!r}")
