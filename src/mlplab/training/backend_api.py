"""The backend interface: what the training loop drives, and the registry that finds backends.

The loop never asks which framework runs. A backend is any class with the methods of
:class:`Backend` (a ``typing.Protocol``: nothing needs to inherit from it). Backends are found by
name in :data:`BACKENDS`, whose entries are ``"module:Class"`` strings: the registry names the
torch backend without importing it, so ``mlplab.training`` never imports ``mlplab.torch`` and
torch stays an optional extra. A new backend is one class and one line here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mlplab.errors import ConfigError, MissingDependencyError


@dataclass(frozen=True)
class StepResult:
    """What one training step measured: the batch's mean loss, its correct count, and with
    ``track=True`` the per-layer gradient statistics (a list of :class:`mlplab.gradflow.LayerGradients`;
    None when the step was not asked to measure them)."""

    loss: float
    correct: int
    layer_stats: list | None = None


@runtime_checkable
class Backend(Protocol):
    """A model, its optimiser and its generators, driven one batch at a time.

    Arrays cross the interface as NumPy: ``x`` float32/64 of shape (B, D), ``y`` int64 of shape (B,).
    State dicts use the same names on every backend (``layers.0.weight``, ...), and optimiser
    state the form of :meth:`mlplab.optim.Optimizer.state_dict`, so either backend continues,
    evaluates or checks the other's checkpoint.
    """

    #: the registry name (``numpy``, ``torch``), written into checkpoints
    name: str
    #: the model itself (framework-specific; :meth:`numpy_model` is the portable view)
    model: Any

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float, *, track: bool = False) -> StepResult:
        """One optimiser step on the batch at learning rate ``lr``; ``track`` also measures the
        per-layer gradient statistics of this step (the update is the same either way)."""

    def predict_logits(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Logits (N, classes) in eval mode; the training mode is restored."""

    def state_dict(self) -> dict[str, np.ndarray]:
        """Model weights and buffers as NumPy arrays."""

    def load_state_dict(self, state: dict) -> None:
        """Load a :meth:`state_dict` (of either backend); every key must match."""

    def optimizer_state(self) -> dict:
        """``{"type", "step", "hyper", "state"}`` as :meth:`mlplab.optim.Optimizer.state_dict`."""

    def load_optimizer_state(self, state: dict) -> None:
        """Restore an :meth:`optimizer_state` (of either backend)."""

    def rng_state(self) -> dict:
        """JSON-able state of the backend's own generators (dropout masks)."""

    def load_rng_state(self, state: dict) -> None:
        """Restore a :meth:`rng_state`; a state this backend cannot use is ignored."""

    def model_config(self) -> dict:
        """The MLP's constructor arguments (:meth:`mlplab.models.MLP.config`)."""

    def numpy_model(self):
        """The current weights as a NumPy :class:`mlplab.models.MLP`."""


#: backend name -> ``"module:Class"``; a class is imported only when its backend is asked for
BACKENDS = {
    "numpy": "mlplab.training.backends:NumpyBackend",
    "torch": "mlplab.torch.backend:TorchBackend",
}
#: the class a torch backend runs as on one rank of a torchrun launch (WORLD_SIZE > 1)
DISTRIBUTED_BACKENDS = {"torch": "mlplab.torch.distributed:DistributedTorchBackend"}
#: backends that need an optional extra, and the line that says how to install it
EXTRAS = {"torch": "--backend torch needs PyTorch: pip install 'mlplab[torch]' (or pip install torch)"}


def backend_class(name: str, *, distributed: bool = False) -> type:
    """The class registered as backend ``name`` (imported now)."""
    from mlplab.plugins import load

    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    spec = DISTRIBUTED_BACKENDS.get(name, BACKENDS[name]) if distributed else BACKENDS[name]
    try:
        return load(spec)
    except ImportError as exc:
        if name in EXTRAS and name in str(getattr(exc, "name", "") or exc):
            raise MissingDependencyError(EXTRAS[name]) from None
        raise


def make_backend(config, n_inputs: int, n_classes: int, seed: np.random.SeedSequence) -> Backend:
    """The backend ``config.backend`` names, with a model of ``n_inputs`` -> ``n_classes``."""
    distributed = int(os.environ.get("WORLD_SIZE", 1)) > 1  # one rank of a torchrun launch
    cls = backend_class(config.backend, distributed=distributed and config.backend in DISTRIBUTED_BACKENDS)
    return cls(config, n_inputs, n_classes, seed)
