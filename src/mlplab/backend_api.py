"""The backend interface: what the training loop drives, one batch at a time.

The loop never asks which framework runs. A backend is any class with the methods of
:class:`Backend` (a ``typing.Protocol``: nothing needs to inherit from it); a step returns a
:class:`StepResult`. This module sits below both ``mlplab.training`` and ``mlplab.torch`` so that
each can name the interface without importing the other. The registry that finds a backend by
name is :data:`mlplab.training.backends.BACKENDS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np


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

    Arrays cross the interface as NumPy: ``x`` float32/64 of shape (B, D), ``y`` int64 of shape (B,)
    or, with ``--mixup``, float target distributions of shape (B, C) (a step then counts a row as
    correct when the logits' argmax is the target's argmax).
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
