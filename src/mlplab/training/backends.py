"""The backends the training loop can drive: the registry that finds them by name, and the NumPy backend.

Every backend offers the interface of :class:`mlplab.backend_api.Backend`. :data:`BACKENDS` maps a
name to a ``"module:Class"`` string, imported only when that backend is asked for: the registry
names the torch backend without importing it, so ``mlplab.training`` never imports
``mlplab.torch`` and torch stays an optional extra. A new backend is one class and one line here.
"""

from __future__ import annotations

import os

import numpy as np

from mlplab import fast as fast_path
from mlplab.backend_api import Backend, StepResult
from mlplab.config import TrainConfig
from mlplab.errors import ConfigError, MissingDependencyError
from mlplab.fast.step import FusedStep
from mlplab.models import MLP, build_model
from mlplab.nn import SoftmaxCrossEntropy
from mlplab.optim import Optimizer, optimizer_class


def make_optimizer(config: TrainConfig, params) -> Optimizer:
    """The NumPy optimiser ``config`` asks for, over ``(param, grad)`` pairs (see :data:`mlplab.optim.OPTIMIZERS`)."""
    cls = optimizer_class(config.optimizer)
    return cls(params, **cls.settings(config))


class NumpyBackend:
    """The NumPy MLP with a hand-written backward pass and a :mod:`mlplab.optim` optimiser.

    ``fast`` (default: the ``MLPLAB_FAST`` environment variable, on unless it says ``0``) runs
    each step through :class:`mlplab.fast.step.FusedStep`, which folds a plain-SGD update into
    the large layers' weight-gradient products; ``fast=False`` runs the textbook step, module by
    module, with the same result (see :mod:`mlplab.fast`)."""

    name = "numpy"

    def __init__(self, config: TrainConfig, n_inputs: int, n_classes: int, seed: np.random.SeedSequence, *, fast: bool | None = None):
        self.config = config
        self.dtype = np.dtype(np.float64 if config.dtype == "float64" else np.float32)
        self.model = build_model(config, n_inputs, n_classes, seed, self.dtype)
        self.loss = SoftmaxCrossEntropy(label_smoothing=config.label_smoothing)
        self.optimizer = make_optimizer(config, self.model.parameters())
        self.device = "cpu"
        self.fast = fast_path.enabled(fast)
        self.fused_step: FusedStep | None = None
        if self.fast:
            self.fused_step = FusedStep(self.model, self.loss, self.optimizer)

    def _fused(self) -> FusedStep:
        assert self.fused_step is not None  # built in __init__ whenever self.fast is on
        return self.fused_step

    def model_config(self) -> dict:
        return self.model.config()

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float, *, track: bool = False) -> StepResult:
        if track:
            return self._tracked_train_step(x, y, lr)
        if self.fast:
            loss, logits = self._fused().step(x, y, lr)
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
        return StepResult(loss, correct)

    def _tracked_train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> StepResult:
        """``train_step`` (the same update) that also measures each Linear's gradient norms, input
        gradient norm (the first layer's included) and update ratio."""
        from mlplab.gradflow import backward_with_input_grads, layer_statistics, linear_layers

        model = self.model
        model.train()
        linears = linear_layers(model)
        weights_before = [layer.params["weight"].copy() for _, layer in linears]
        logits = model.forward(x)
        # the loss and the update that the untracked step would compute, bit for bit
        loss_fn = self._fused().loss if self.fast else self.loss
        loss, dlogits = loss_fn.forward_backward(logits, y)
        input_grads = backward_with_input_grads(model, dlogits)
        self.optimizer.lr = lr
        if self.fast:
            self._fused().updater.update(self.optimizer)
        else:
            self.optimizer.step()
        stats = layer_statistics(linears, weights_before, input_grads)
        correct = int(np.count_nonzero(np.argmax(logits, axis=1) == y))
        return StepResult(loss, correct, stats)

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
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1  # one rank of a torchrun launch
    cls = backend_class(config.backend, distributed=distributed and config.backend in DISTRIBUTED_BACKENDS)
    return cls(config, n_inputs, n_classes, seed)
