"""The torch backend of the training loop (the interface: :class:`mlplab.backend_api.Backend`).

It starts from the very weights :class:`~mlplab.training.backends.NumpyBackend` starts from
for the same seed (the NumPy model is built and its state loaded), runs ``torch.optim`` with
the hyperparameters of :mod:`mlplab.optim`, and saves its optimiser state in the NumPy
optimiser's format, so a checkpoint reads the same whichever backend wrote it.
"""

from __future__ import annotations

import base64

import numpy as np
import torch
from torch import nn

from mlplab.backend_api import StepResult
from mlplab.config import TrainConfig
from mlplab.errors import ConfigError
from mlplab.models import as_seed_sequence, build_model, predict_in_chunks
from mlplab.optim import OPTIMIZERS, optimizer_class
from mlplab.torch.model import MLP, TORCH_DTYPES, to_numpy

#: per-parameter state arrays of each optimiser, as each :mod:`mlplab.optim` class declares them
STATE_NAMES = {cls.__name__: cls.state_names for cls in OPTIMIZERS.values()}
OPTIMIZER_TYPES = {name: cls.__name__ for name, cls in OPTIMIZERS.items()}


def resolve_device(name: str = "auto") -> str:
    """``auto`` -> ``cuda`` when CUDA is available, else ``cpu``; ``cuda`` without CUDA is a ConfigError."""
    name = str(name or "auto").lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        why = "this PyTorch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise ConfigError(f"--device {name}: CUDA is not available ({why}); use --device cpu or auto")
    try:
        return str(torch.device(name))
    except RuntimeError:
        raise ConfigError(f"--device: unknown device {name!r} (choose from auto, cpu, cuda)") from None


def make_torch_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimiser with the update formula of :func:`mlplab.training.backends.make_optimizer`:
    the registered class's ``torch_name``, with the very keywords the NumPy optimiser gets."""
    cls = optimizer_class(config.optimizer)
    if cls.torch_name is None:
        raise ConfigError(f"--optimizer {config.optimizer} has no torch.optim twin; use --backend numpy")
    return getattr(torch.optim, cls.torch_name)(params, **cls.settings(config))


def _scalar_dtype() -> torch.dtype:
    # The dtype torch.optim gives its per-parameter "step" counters (torch.optim.optimizer._get_scalar_dtype).
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _classes(targets: torch.Tensor) -> torch.Tensor:
    """The class each target counts as for the correct count: the label, or a soft row's largest entry."""
    return targets.argmax(dim=1) if targets.ndim == 2 else targets


class TorchBackend:
    """:class:`mlplab.torch.MLP` trained with ``torch.optim`` on ``config.device``."""

    name = "torch"

    def __init__(self, config: TrainConfig, n_inputs: int, n_classes: int, seed: np.random.SeedSequence):
        self.config = config
        self.device = resolve_device(config.device)
        self.torch_device = torch.device(self.device)
        self.dtype = np.dtype(np.float64 if config.dtype == "float64" else np.float32)  # as NumpyBackend's
        self.torch_dtype = TORCH_DTYPES[self.dtype]
        seed = as_seed_sequence(seed)
        # The NumPy model of the same seed gives the initial weights: both backends start alike.
        initial = build_model(config, n_inputs, n_classes, seed, dtype=np.float64)
        dropout_seed = int(seed.spawn(1)[0].generate_state(1, np.uint64)[0] >> np.uint64(1))
        self.generator = torch.Generator(device=self.torch_device)
        self.generator.manual_seed(dropout_seed)
        self.model = MLP(
            n_inputs,
            config.hidden_dims,
            n_classes,
            activation=config.activation,
            use_batch_norm=config.use_batch_norm,
            dropout=config.dropout,
            residual=config.residual,
            dropout_generator=self.generator,
        ).to(device=self.torch_device, dtype=self.torch_dtype)
        self.model.load_state_dict(initial.state_dict(), strict=True)
        self.loss = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.optimizer = make_torch_optimizer(config, self.model.parameters())
        self.optimizer_type = OPTIMIZER_TYPES[config.optimizer]
        self.step_count = 0
        self.lr = config.lr

    # -- conversions -------------------------------------------------------------------
    def _tensor(self, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        if not (array.flags.c_contiguous and array.flags.writeable):
            array = np.array(array, order="C")  # from_numpy needs a writable, positively strided array
        # from_numpy shares the batch's memory; the only copy is the one to the device/dtype.
        return torch.from_numpy(array).to(self.torch_device, dtype, non_blocking=True)

    def _targets(self, y: np.ndarray) -> torch.Tensor:
        """Class indices (B,) as int64, or target distributions (B, C) such as mixup's in the
        model's dtype: CrossEntropyLoss takes either, and smooths a distribution as NumPy's loss does."""
        return self._tensor(y, torch.int64) if y.ndim == 1 else self._tensor(y, self.torch_dtype)

    # -- the interface -----------------------------------------------------------------
    def model_config(self) -> dict:
        return self.model.config()

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float, *, track: bool = False) -> StepResult:
        """One optimiser step on x: (batch, features), y: (batch,) int or (batch, classes) target
        distributions; returns the mean loss and correct count, and with ``track`` each Linear's gradient statistics."""
        if track:
            return self._tracked_train_step(x, y, lr)
        x, y = self._local_batch(x, y)
        self.model.train()
        inputs = self._tensor(x, self.torch_dtype)
        targets = self._targets(y)
        logits = self.forward_module(inputs)
        loss = self.loss(logits, targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.step_count += 1
        self.lr = lr
        correct = (logits.detach().argmax(dim=1) == _classes(targets)).sum()
        return StepResult(*self._batch_totals(loss.detach(), correct, targets.shape[0]))

    # Hooks that data-parallel training (mlplab.torch.distributed) overrides.
    @property
    def forward_module(self) -> nn.Module:
        """The module a training step calls: the model here, its DDP wrapper on a rank."""
        return self.model

    def _local_batch(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows of the batch this process trains on: all of them here."""
        return x, y

    def _batch_totals(self, loss: torch.Tensor, correct: torch.Tensor, rows: int) -> tuple[float, int]:
        """(mean loss, correct count) of the batch as Python numbers."""
        # One transfer (one synchronisation on a GPU) for both numbers.
        loss_value, correct_value = torch.stack((loss.to(torch.float64), correct.to(torch.float64))).tolist()
        return loss_value, int(correct_value)

    def _tracked_train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> StepResult:
        """``train_step`` (the same update) that also measures each Linear's gradient norms, input
        gradient norm (the first layer's included) and update ratio, as :class:`mlplab.gradflow.LayerGradients`."""
        from mlplab.gradflow import LayerGradients

        model = self.model
        model.train()
        linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
        layer_inputs: dict[str, torch.Tensor] = {}

        def keep_input(name):
            def hook(module, args):
                # The tensor itself: in a residual block it is also the block's input, so its
                # gradient includes the identity path, as in mlplab.gradflow's NumPy version.
                args[0].retain_grad()
                layer_inputs[name] = args[0]

            return hook

        handles = [module.register_forward_pre_hook(keep_input(name)) for name, module in linears]
        try:
            inputs = self._tensor(x, self.torch_dtype).requires_grad_(True)  # the first layer's dX, this step only
            targets = self._targets(y)
            logits = model(inputs)
            loss = self.loss(logits, targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        finally:
            for handle in handles:
                handle.remove()
        weights_before = [module.weight.detach().clone() for _, module in linears]
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.step_count += 1
        self.lr = lr

        def norm(tensor):
            return torch.linalg.vector_norm(tensor.detach(), dtype=torch.float64)

        rows = []
        for (name, module), before in zip(linears, weights_before):
            rows.append(
                torch.stack(
                    (
                        norm(module.weight.grad),
                        norm(layer_inputs[name].grad),
                        norm(module.weight.detach() - before),
                        norm(before),
                    )
                )
            )
        correct = (logits.detach().argmax(dim=1) == _classes(targets)).sum()
        summary = torch.stack((loss.detach().to(torch.float64), correct.to(torch.float64)))
        values = torch.cat((summary, *rows)).tolist()  # one transfer for everything
        loss_value, correct_value = values[0], values[1]
        stats = []
        for index, (name, _) in enumerate(linears):
            weight_grad, input_grad, change, size = values[2 + 4 * index : 6 + 4 * index]
            stats.append(LayerGradients.from_norms(name, weight_grad, input_grad, change, size))
        return StepResult(loss_value, int(correct_value), stats)

    def predict_logits(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Logits (N, classes) in eval mode, ``batch_size`` rows at a time; the mode is restored."""
        model = self.model
        was_training = model.training
        model.eval()

        def logits_of(chunk: np.ndarray) -> np.ndarray:
            return model(self._tensor(chunk, self.torch_dtype)).cpu().numpy()

        try:
            with torch.inference_mode():
                return predict_in_chunks(logits_of, x, model.n_classes, self.dtype, batch_size)
        finally:
            model.train(was_training)

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.model.numpy_state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Load NumPy arrays (or tensors) named like ``state_dict()``; every key must match."""
        targets = self.model.state_dict()
        missing = [key for key in targets if key not in state]
        unexpected = [key for key in state if key not in targets]
        if missing or unexpected:
            raise KeyError(f"MLP.load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for key, target in targets.items():
            shape = tuple(np.shape(state[key]))
            if shape != tuple(target.shape):
                raise ValueError(
                    f"MLP.load_state_dict: {key} has shape {shape}, the model expects {tuple(target.shape)}"
                )
        self.model.load_state_dict(state, strict=True)

    # -- optimiser state in mlplab.optim's format ------------------------------------------
    def _hyperparameters(self) -> dict:
        group = self.optimizer.param_groups[0]
        if self.optimizer_type == "SGD":
            return {
                "lr": self.lr,
                "momentum": group["momentum"],
                "nesterov": group["nesterov"],
                "weight_decay": group["weight_decay"],
                "dampening": group["dampening"],
            }
        return {
            "lr": self.lr,
            "betas": list(group["betas"]),
            "eps": group["eps"],
            "weight_decay": group["weight_decay"],
        }

    def optimizer_state(self) -> dict:
        """``{"type", "step", "hyper", "state": {"name.index": array}}`` as :meth:`mlplab.optim.Optimizer.state_dict`;
        indices follow ``named_parameters()``, the order of the NumPy model's parameters."""
        arrays = {}
        for index, param in enumerate(self.optimizer.param_groups[0]["params"]):
            state = self.optimizer.state.get(param, {})
            for name in STATE_NAMES[self.optimizer_type]:
                value = state.get(name)
                if value is not None:
                    arrays[f"{name}.{index}"] = value.detach().to("cpu", copy=True).numpy()
        return {"type": self.optimizer_type, "step": self.step_count, "hyper": self._hyperparameters(), "state": arrays}

    def load_optimizer_state(self, state: dict) -> None:
        """Restore a state written by :meth:`optimizer_state` (or by the NumPy backend)."""
        kind = state.get("type")
        if kind != self.optimizer_type:
            raise ValueError(f"{self.optimizer_type}.load_state_dict: the state was saved by {kind!r}")
        params = self.optimizer.param_groups[0]["params"]
        names = STATE_NAMES[kind]
        step = int(state["step"])
        per_param: dict[int, dict] = {}
        for key, value in state["state"].items():
            name, _, index = key.rpartition(".")
            if name not in names or not index.isdigit() or int(index) >= len(params):
                raise ValueError(f"{kind}.load_state_dict: unexpected state {key!r}")
            index = int(index)
            value = np.asarray(value)
            if value.shape != tuple(params[index].shape):
                raise ValueError(
                    f"{kind}.load_state_dict: {key} has shape {value.shape}, parameter {index} has {tuple(params[index].shape)}"
                )
            per_param.setdefault(index, {})[name] = torch.from_numpy(np.array(value))
        if kind != "SGD":
            for index, entry in per_param.items():
                if set(entry) != set(names):
                    raise ValueError(
                        f"{kind}.load_state_dict: parameter {index} has {sorted(entry)}, expected {list(names)}"
                    )
                # torch.optim keeps a step counter per parameter; every parameter steps every time.
                entry["step"] = torch.tensor(float(step), dtype=_scalar_dtype())
        saved = self.optimizer.state_dict()
        group = dict(saved["param_groups"][0])
        hyper = dict(state.get("hyper", {}))
        self.lr = float(hyper.get("lr", self.lr))
        group["lr"] = self.lr
        for key in ("momentum", "nesterov", "weight_decay", "dampening", "eps"):
            if key in hyper and key in group:
                group[key] = hyper[key]
        if "betas" in hyper and "betas" in group:
            group["betas"] = tuple(hyper["betas"])
        # load_state_dict casts each state tensor to its parameter's dtype and device.
        self.optimizer.load_state_dict({"state": per_param, "param_groups": [group]})
        self.step_count = step

    # -- generators ----------------------------------------------------------------------
    def rng_state(self) -> dict:
        """The dropout generator's state, JSON-able (base64 of torch's byte tensor)."""
        raw = self.generator.get_state().numpy().tobytes()
        return {"dropout": {"device": self.torch_device.type, "state": base64.b64encode(raw).decode("ascii")}}

    def load_rng_state(self, state: dict) -> None:
        entry = (state or {}).get("dropout")
        if not isinstance(entry, dict) or "state" not in entry:
            return
        if entry.get("device") != self.torch_device.type:
            return  # a CPU generator state does not fit a CUDA generator; the masks differ anyway
        raw = np.frombuffer(base64.b64decode(entry["state"]), dtype=np.uint8).copy()
        self.generator.set_state(torch.from_numpy(raw))

    def numpy_model(self):
        """The current weights as a NumPy :class:`mlplab.models.MLP` (of the run's dtype)."""
        return to_numpy(self.model, dtype=self.dtype)
