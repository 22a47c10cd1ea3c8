"""Backends: what the training loop drives. The loop never asks which framework runs.

A backend owns a model and its optimiser and offers:

- ``train_step(x, y, lr) -> (mean loss, correct count)`` on one batch (x float32/64 (B, D), y int64 (B,));
- ``predict_logits(x) -> ndarray (N, C)`` in eval mode;
- ``state_dict()`` / ``load_state_dict(state)``: model weights and buffers as NumPy arrays, with
  the same names on every backend (``layers.0.weight``, ...);
- ``optimizer_state()`` / ``load_optimizer_state(state)``: :meth:`mlplab.optim.Optimizer.state_dict` form;
- ``rng_state()`` / ``load_rng_state(state)``: JSON-able state of the backend's own generators (dropout);
- ``model_config()``: the MLP's constructor arguments; ``numpy_model()``: the current weights as a NumPy MLP.
"""

from __future__ import annotations

import numpy as np

from mlplab import fast as fast_path
from mlplab.config import TrainConfig
from mlplab.errors import ConfigError, MissingDependencyError
from mlplab.fast.step import FusedStep
from mlplab.models import MLP
from mlplab.nn import SoftmaxCrossEntropy
from mlplab.optim import Optimizer, optimizer_class


def make_optimizer(config: TrainConfig, params) -> Optimizer:
    """The NumPy optimiser ``config`` asks for, over ``(param, grad)`` pairs (see :data:`mlplab.optim.OPTIMIZERS`)."""
    cls = optimizer_class(config.optimizer)
    return cls(params, **cls.settings(config))


def build_model(config: TrainConfig, n_inputs: int, n_classes: int, seed, dtype=None) -> MLP:
    """The NumPy MLP of ``config`` with its initial weights drawn from ``seed`` (a SeedSequence)."""
    dtype = dtype or (np.float64 if config.dtype == "float64" else np.float32)
    return MLP(
        n_inputs, config.hidden_dims, n_classes, activation=config.activation, use_batch_norm=config.use_batch_norm,
        dropout=config.dropout, residual=config.residual, dtype=dtype, seed=seed,
    )


class NumpyBackend:
    """The NumPy MLP with a hand-written backward pass and a :mod:`mlplab.optim` optimiser.

    ``fast`` (default: the ``MLPLAB_FAST`` environment variable, on unless it says ``0``) runs
    each step through :class:`mlplab.fast.step.FusedStep`, which folds a plain-SGD update into
    the large layers' weight-gradient products; ``fast=False`` runs the textbook step, module by
    module, with the same result (see :mod:`mlplab.fast`)."""

    name = "numpy"
    #: set by a listener to record per-layer gradient statistics on the next step (mlplab.gradflow)
    track_next_step = False
    last_gradient_stats = None

    def __init__(self, config: TrainConfig, n_inputs: int, n_classes: int, seed: np.random.SeedSequence, *, fast: bool | None = None):
        self.config = config
        self.dtype = np.dtype(np.float64 if config.dtype == "float64" else np.float32)
        self.model = build_model(config, n_inputs, n_classes, seed, self.dtype)
        self.loss = SoftmaxCrossEntropy(label_smoothing=config.label_smoothing)
        self.optimizer = make_optimizer(config, self.model.parameters())
        self.device = "cpu"
        self.fast = fast_path.enabled(fast)
        self.fused_step = None
        if self.fast:
            self.fused_step = FusedStep(self.model, self.loss, self.optimizer)

    def model_config(self) -> dict:
        return self.model.config()

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> tuple[float, int]:
        if self.track_next_step:
            return self._tracked_train_step(x, y, lr)
        if self.fast:
            loss, logits = self.fused_step.step(x, y, lr)
        else:  # the textbook step
            model = self.model
            model.train()
            logits = model.forward(x)
            loss, dlogits = self.loss.forward_backward(logits, y)
            # The gradient with respect to the data is never used: skip the first layer's dX product.
            model.backward(dlogits, need_input_grad=False)
            self.optimizer.lr = lr
            self.optimizer.step()
        correct = int(np.count_nonzero(logits.argmax(axis=1) == y))
        return loss, correct

    def _tracked_train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> tuple[float, int]:
        """``train_step`` (the same update) that also leaves each Linear's gradient norms, input
        gradient norm (the first layer's included) and update ratio in ``last_gradient_stats``."""
        from mlplab.gradflow import backward_with_input_grads, layer_statistics, linear_layers

        self.track_next_step = False
        model = self.model
        model.train()
        linears = linear_layers(model)
        weights_before = [layer.params["weight"].copy() for _, layer in linears]
        logits = model.forward(x)
        # the loss and the update that the untracked step would compute, bit for bit
        loss_fn = self.fused_step.loss if self.fast else self.loss
        loss, dlogits = loss_fn.forward_backward(logits, y)
        input_grads = backward_with_input_grads(model, dlogits)
        self.optimizer.lr = lr
        if self.fast:
            self.fused_step.updater.update(self.optimizer)
        else:
            self.optimizer.step()
        self.last_gradient_stats = layer_statistics(linears, weights_before, input_grads)
        correct = int(np.count_nonzero(np.argmax(logits, axis=1) == y))
        return loss, correct

    def predict_logits(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        return self.model.predict_logits(x, batch_size)

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)

    def optimizer_state(self) -> dict:
        return self.optimizer.state_dict()

    def load_optimizer_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)

    def rng_state(self) -> dict:
        return {"dropout": self.model.dropout_rng.bit_generator.state}

    def load_rng_state(self, state: dict) -> None:
        if state and "dropout" in state:
            self.model.dropout_rng.bit_generator.state = state["dropout"]

    def numpy_model(self) -> MLP:
        return self.model


def make_backend(config: TrainConfig, n_inputs: int, n_classes: int, seed: np.random.SeedSequence):
    """The backend ``config.backend`` names; ``torch`` needs the ``mlplab[torch]`` extra."""
    if config.backend == "numpy":
        return NumpyBackend(config, n_inputs, n_classes, seed)
    if config.backend == "torch":
        import os

        if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # one rank of a torchrun launch
            from mlplab.torch.distributed import DistributedTorchBackend

            return DistributedTorchBackend(config, n_inputs, n_classes, seed)
        try:
            from mlplab.torch.backend import TorchBackend
        except ImportError as exc:
            if "torch" in str(getattr(exc, "name", "") or exc):
                raise MissingDependencyError(
                    "--backend torch needs PyTorch: pip install 'mlplab[torch]' (or pip install torch)"
                ) from None
            raise
        return TorchBackend(config, n_inputs, n_classes, seed)
    raise ConfigError(f"unknown backend {config.backend!r}")  # pragma: no cover - validated earlier
