"""The backends the training loop can drive: the registry that finds them by name, and the NumPy backend.

Every backend offers the interface of :class:`mlplab.backend_api.Backend`. :data:`BACKENDS` maps a
name to a ``"module:Class"`` string, imported only when that backend is asked for: the registry
names the torch backend without importing it, so ``mlplab.training`` never imports
``mlplab.torch`` and torch stays an optional extra. A new backend is one class and one line here.
"""

from __future__ import annotations

import os
from typing import Any, cast

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


def _classes(y, xp):
    """The class each target row counts as for the correct count: the label itself, or the
    largest entry of a soft target row (B, C) such as mixup's."""
    return xp.argmax(y, axis=1) if y.ndim == 2 else y


class NumpyBackend:
    """The MLP with a hand-written backward pass and a :mod:`mlplab.optim` optimiser.

    ``fast`` (default: the ``MLPLAB_FAST`` environment variable, on unless it says ``0``) runs
    each step through :class:`mlplab.fast.step.FusedStep`, which folds a plain-SGD update into
    the large layers' weight-gradient products; ``fast=False`` runs the textbook step, module by
    module, with the same result (see :mod:`mlplab.fast`).

    ``config.array_library`` other than ``numpy`` runs the same modules on that library's arrays
    (:mod:`mlplab.training.arrays`): the model is built from the NumPy generators as always and
    moved to the device; batches arrive as NumPy arrays or already on the device (from
    :meth:`batches`); the fast path, written for NumPy, is left out. What crosses the
    :class:`~mlplab.backend_api.Backend` interface outward (state dicts, optimiser state,
    logits) is NumPy on every library, so checkpoints are alike."""

    name = "numpy"

    def __init__(
        self,
        config: TrainConfig,
        n_inputs: int,
        n_classes: int,
        seed: np.random.SeedSequence,
        *,
        fast: bool | None = None,
    ):
        from mlplab.training.arrays import DeviceBatches, placement

        self.config = config
        self.dtype = np.dtype(np.float64 if config.dtype == "float64" else np.float32)
        self.where = placement(getattr(config, "array_library", "numpy"), config.device)
        self.array_library = self.where.library
        self.device = self.where.name
        self.shape = (n_inputs, n_classes)
        self.model = self._placed(build_model(config, n_inputs, n_classes, seed, self.dtype))
        self.loss = SoftmaxCrossEntropy(label_smoothing=config.label_smoothing)
        self.optimizer = make_optimizer(config, self.model.parameters())
        self.fast = fast_path.enabled(fast) and self.where.is_numpy
        self.fused_step: FusedStep | None = None
        if self.fast:
            self.fused_step = FusedStep(self.model, self.loss, self.optimizer)
        #: the loop gathers training batches through this when it is set (None on NumPy: the host batches)
        self.batches = None if self.where.is_numpy else DeviceBatches(self.where)
        #: evaluation splits copied to the device once (id of the host array -> (it, the copy or None))
        self._eval_copies: dict[int, tuple[np.ndarray, Any]] = {}

    def _placed(self, model: MLP) -> MLP:
        """``model`` with its parameters, gradients and buffers on this backend's library and device."""
        if self.where.is_numpy:
            return model
        moved = cast(Any, model).to(self.where.xp, self.where.device)  # Module.to: moves the tree in place
        return model if moved is None else moved

    def _fused(self) -> FusedStep:
        assert self.fused_step is not None  # built in __init__ whenever self.fast is on
        return self.fused_step

    def model_config(self) -> dict:
        return self.model.config()

    def _resident(self, x: np.ndarray):
        """The device copy of an evaluation split, made at its first evaluation when it fits
        (:func:`~mlplab.training.arrays.split_on_device`); None: it goes over chunk by chunk."""
        from mlplab.training.arrays import split_on_device

        entry = self._eval_copies.get(id(x))
        if entry is None or entry[0] is not x:
            copy = self._inputs(x)[0] if split_on_device(self.where, x, x[:0]) else None
            entry = self._eval_copies[id(x)] = (x, copy)
        return entry[1]

    def _inputs(self, x, y=None):
        """A batch as arrays of this backend's library, x in the model's dtype."""
        if self.where.is_numpy:
            return x, y
        xp = self.where.xp
        x = self.where.asarray(x)
        if x.dtype != (xp.float64 if self.dtype == np.float64 else xp.float32):
            x = xp.astype(x, xp.float64 if self.dtype == np.float64 else xp.float32)
        return x, (None if y is None else self.where.asarray(y))

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float, *, track: bool = False) -> StepResult:
        if track:
            if not self.where.is_numpy:
                raise ConfigError(
                    f"gradient tracking measures on NumPy arrays; not available with --array-library {self.array_library}"
                )
            return self._tracked_train_step(x, y, lr)
        x, y = self._inputs(x, y)
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
        if self.where.is_numpy:
            correct = int(np.count_nonzero(logits.argmax(axis=1) == _classes(y, np)))
        else:
            xp = self.where.xp
            correct = int(xp.sum(xp.astype(xp.argmax(logits, axis=1) == _classes(y, xp), xp.int64)))
        return StepResult(float(loss), correct)

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
        correct = int(np.count_nonzero(np.argmax(logits, axis=1) == _classes(y, np)))
        return StepResult(loss, correct, stats)

    def predict_logits(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        if self.where.is_numpy:
            return self.model.predict_logits(x, batch_size)
        from mlplab.xp import to_numpy

        resident = self._resident(x)
        out = np.empty((x.shape[0], self.shape[1]), self.dtype)
        model = self.model
        was_training = model.training
        model.eval()
        try:
            for start in range(0, x.shape[0], batch_size):
                stop = min(start + batch_size, x.shape[0])  # the standard leaves slices past the end unspecified
                chunk = resident[start:stop, ...] if resident is not None else x[start:stop]
                out[start:stop] = to_numpy(model.forward(self._inputs(chunk)[0]))
        finally:
            model.clear_cache()
            model.train(was_training)
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        if self.where.is_numpy:
            return self.model.state_dict()
        from mlplab.xp import to_numpy

        return {key: np.array(to_numpy(value), copy=True) for key, value in self.model.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        if not self.where.is_numpy:
            # copied into the device arrays in place (the optimiser holds references to them)
            state = {key: self.where.asarray(np.asarray(value)) for key, value in state.items()}
        self.model.load_state_dict(state)

    def optimizer_state(self) -> dict:
        state = self.optimizer.state_dict()
        if not self.where.is_numpy:
            from mlplab.xp import to_numpy

            state["state"] = {key: np.array(to_numpy(value), copy=True) for key, value in state["state"].items()}
        return state

    def load_optimizer_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)
        if not self.where.is_numpy:
            # whatever form load_state_dict left them in, the buffers live beside their parameters
            for name, values in self.optimizer.state.items():
                self.optimizer.state[name] = [None if v is None else self.where.asarray(v) for v in values]

    def rng_state(self) -> dict:
        return {"dropout": self.model.dropout_rng.bit_generator.state}

    def load_rng_state(self, state: dict) -> None:
        if state and "dropout" in state:
            self.model.dropout_rng.bit_generator.state = state["dropout"]

    def numpy_model(self) -> MLP:
        if self.where.is_numpy:
            return self.model
        # a NumPy twin with the current weights (built, then overwritten: its seed does not matter)
        twin = build_model(self.config, self.shape[0], self.shape[1], np.random.SeedSequence(0), self.dtype)
        twin.load_state_dict(self.state_dict())
        return twin


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
