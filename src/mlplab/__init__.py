"""mlplab: multilayer perceptrons from first principles.

A NumPy core in which every module has a hand-derived backward pass, a PyTorch twin of the
same network, and one training loop that drives either.
"""

from __future__ import annotations

from mlplab._version import __version__

__all__ = ["__version__", "train"]


def __getattr__(name):
    # Imported lazily so that `import mlplab` stays cheap (no data or plotting imports).
    if name == "train":
        from mlplab.training.loop import train

        return train
    raise AttributeError(f"module 'mlplab' has no attribute {name!r}")
