"""Optimisers with PyTorch's update formulas, and learning-rate schedules.

An optimiser takes ``model.parameters()`` — ``(param, grad)`` array pairs — and updates the
parameters in place on ``step()``. Its ``lr`` attribute is the learning rate of the next step;
a schedule sets it (``optimizer.lr = schedule(step)``), so both backends follow one formula.

To add an optimiser, write its class here (``step``, ``hyperparameters``, and the class attributes
``state_names``, ``options`` and ``torch_name``) and register it in :data:`OPTIMIZERS`: config
validation, ``--optimizer``, the NumPy backend (``cls(params, **cls.settings(config))``) and the
torch backend (``torch.optim.<torch_name>`` with the same keywords, state saved under
``state_names``) all read that entry. A schedule: a class with ``__call__`` and ``from_epochs``,
registered in :data:`SCHEDULES`. Then name it in the README's option list (a test compares them).

The updates are written against the array API standard (docs/array-api.md): the parameters,
gradients and state may be any library's arrays (all one library, on one device). Parameters are
updated with in-place operators (``p -= lr * d``) and the model writes each new gradient into
the same array (``mlplab.nn.base.into``), so the ``(param, grad)`` pairs taken at construction
stay valid on every library. The state is created in the parameters' library; ``state_dict``
returns NumPy arrays, ``load_state_dict`` moves them back to the parameters' device. The
schedules are plain Python floats.
"""

from __future__ import annotations

import inspect
import math

import numpy as np

from mlplab import validation
from mlplab.xp import asarray, namespace, to_numpy
from mlplab.xp import device as device_of


def _check_number(
    value, name: str, owner: str, *, low: float = 0.0, low_inclusive: bool = True, high: float | None = None
) -> float:
    bounds = {"low": low} if low_inclusive else {"above": low}
    return validation.number(value, f"{owner}: {name}", below=high, error=ValueError, **bounds)


class Optimizer:
    """Base class: holds the parameter/gradient pairs and a step counter."""

    #: names of the per-parameter state arrays, in the order they are saved (torch.optim's names too)
    state_names: tuple[str, ...] = ()
    #: the training options (``TrainConfig`` fields) the constructor takes besides ``lr``, under
    #: the same keyword names; the constructor's defaults give the other hyperparameters
    options: tuple[str, ...] = ()
    #: the ``torch.optim`` class with the same update formula and keyword names (None: no twin)
    torch_name: str | None = None

    @classmethod
    def settings(cls, config) -> dict:
        """Every keyword of the constructor (``lr`` and each hyperparameter) for ``config``: the
        values of :attr:`options` from it, the defaults for the rest. Both backends build their
        optimiser from this one dict, so they cannot disagree on a hyperparameter."""
        given = {"lr": config.lr, **{name: getattr(config, name) for name in cls.options}}
        bound = inspect.signature(cls).bind_partial(None, **given)
        bound.apply_defaults()
        return {name: value for name, value in bound.arguments.items() if name != "params"}

    def __init__(self, params, lr: float):
        self.pairs = [(p, g) for p, g in params]
        if not self.pairs:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        for index, (p, g) in enumerate(self.pairs):
            if p.shape != g.shape:
                raise ValueError(
                    f"{type(self).__name__}: parameter {index} has shape {p.shape} but its gradient {g.shape}"
                )
        self.lr = _check_number(lr, "lr", type(self).__name__, low_inclusive=False)
        self.step_count = 0
        self.state: dict[str, list[np.ndarray | None]] = {name: [None] * len(self.pairs) for name in self.state_names}

    def step(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def zero_grad(self) -> None:
        for _, g in self.pairs:
            if isinstance(g, np.ndarray):
                g.fill(0)
            else:
                g[...] = 0

    def hyperparameters(self) -> dict:
        return {"lr": self.lr}

    def state_dict(self) -> dict:
        """``{"type", "step", "hyper": {...}, "state": {"name.index": array}}``: enough to resume."""
        arrays = {
            f"{name}.{index}": np.array(to_numpy(value), copy=True)
            for name, values in self.state.items()
            for index, value in enumerate(values)
            if value is not None
        }
        return {"type": type(self).__name__, "step": self.step_count, "hyper": self.hyperparameters(), "state": arrays}

    def load_state_dict(self, state: dict) -> None:
        if state.get("type") != type(self).__name__:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state was saved by {state.get('type')!r}")
        self.step_count = int(state["step"])
        for key, value in state.get("hyper", {}).items():
            setattr(self, key, tuple(value) if isinstance(value, list) else value)
        for name in self.state_names:
            self.state[name] = [None] * len(self.pairs)
        for key, value in state["state"].items():
            name, index = key.rsplit(".", 1)
            index = int(index)
            if name not in self.state or index >= len(self.pairs):
                raise ValueError(f"{type(self).__name__}.load_state_dict: unexpected state {key!r}")
            if value.shape != self.pairs[index][0].shape:
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: {key} has shape {value.shape}, "
                    f"parameter {index} has {self.pairs[index][0].shape}"
                )
            param = self.pairs[index][0]
            if isinstance(param, np.ndarray):
                self.state[name][index] = np.array(value, dtype=param.dtype, copy=True)
            else:  # a copy on the parameter's device, in its dtype
                self.state[name][index] = asarray(
                    np.array(value, copy=True), namespace(param), device=device_of(param), dtype=param.dtype
                )


class SGD(Optimizer):
    """Stochastic gradient descent, as ``torch.optim.SGD``:
    g ← ∇ + λp; b ← μb + (1 − τ)g (b = g on the first step); g ← g + μb (Nesterov) or b; p ← p − lr·g.
    """

    state_names = ("momentum_buffer",)
    options = ("momentum", "nesterov", "weight_decay")
    torch_name = "SGD"

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        dampening: float = 0.0,
    ):
        super().__init__(params, lr)
        self.momentum = _check_number(momentum, "momentum", "SGD")
        self.weight_decay = _check_number(weight_decay, "weight_decay", "SGD")
        self.dampening = _check_number(dampening, "dampening", "SGD")
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("SGD: Nesterov momentum requires a momentum > 0 and zero dampening")

    def hyperparameters(self) -> dict:
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
            "dampening": self.dampening,
        }

    @property
    def plain(self) -> bool:
        """Whether the update is p ← p − lr·∇ alone (no momentum, no weight decay): the form the
        fast path folds into the weight-gradient products (:mod:`mlplab.fast.step`)."""
        return self.momentum == 0 and self.weight_decay == 0

    def step(self) -> None:
        self.step_count += 1
        buffers = self.state["momentum_buffer"]
        for index, (p, g) in enumerate(self.pairs):
            d = g + self.weight_decay * p if self.weight_decay else g
            if self.momentum:
                buf = buffers[index]
                if buf is None:  # the first step: b = d
                    buf = buffers[index] = namespace(d).asarray(d, copy=True)
                else:
                    buf *= self.momentum
                    buf += (1 - self.dampening) * d
                d = d + self.momentum * buf if self.nesterov else buf
            p -= self.lr * d


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam`` (weight decay as an L2 term added to the gradient):
    m ← β₁m + (1 − β₁)g; v ← β₂v + (1 − β₂)g²; p ← p − lr/(1 − β₁ᵗ) · m / (√v/√(1 − β₂ᵗ) + ε).
    """

    state_names = ("exp_avg", "exp_avg_sq")
    options = ("weight_decay",)
    torch_name = "Adam"
    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr)
        name = type(self).__name__
        if len(betas) != 2:
            raise ValueError(f"{name}: betas must be a pair, got {betas!r}")
        self.betas = tuple(_check_number(b, "each beta", name, high=1.0) for b in betas)
        self.eps = _check_number(eps, "eps", name)
        self.weight_decay = _check_number(weight_decay, "weight_decay", name)

    def hyperparameters(self) -> dict:
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}

    def step(self) -> None:
        self.step_count += 1
        beta1, beta2 = self.betas
        t = self.step_count
        step_size = self.lr / (1 - beta1**t)
        bias_correction2_sqrt = math.sqrt(1 - beta2**t)
        for index, (p, g) in enumerate(self.pairs):
            if self.decoupled:
                if self.weight_decay:
                    p *= 1 - self.lr * self.weight_decay
            elif self.weight_decay:
                g = g + self.weight_decay * p
            m, v = self.state["exp_avg"][index], self.state["exp_avg_sq"][index]
            xp = namespace(p)
            if m is None or v is None:  # both are created together, on the first step
                m = self.state["exp_avg"][index] = xp.zeros_like(p)
                v = self.state["exp_avg_sq"][index] = xp.zeros_like(p)
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            v += (1 - beta2) * g**2
            p -= step_size * (m / (xp.sqrt(v) / bias_correction2_sqrt + self.eps))


class AdamW(Adam):
    """AdamW, as ``torch.optim.AdamW``: decoupled weight decay p ← p(1 − lr·λ), then Adam."""

    torch_name = "AdamW"
    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(params, lr, betas, eps, weight_decay)


#: name -> optimiser class: THE list of optimisers (config validation, the CLI's choices, both
#: backends and the README read it). A class declares its ``options``, ``state_names`` and ``torch_name``.
OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def optimizer_class(name: str) -> type[Optimizer]:
    """The optimiser class registered as ``name``."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name]


# -- learning-rate schedules -------------------------------------------------------------
class Schedule:
    """The learning rate as a function of the optimisation step (0-based)."""

    def __call__(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def from_epochs(
        cls, base_lr, *, steps_per_epoch, epochs, warmup_steps, step_epochs, gamma, min_lr
    ) -> Schedule:  # pragma: no cover - abstract
        """The schedule for training options counted in epochs (see :func:`make_schedule`)."""
        raise NotImplementedError


class ConstantSchedule(Schedule):
    """lr(t) = base_lr, after an optional linear warm-up of ``warmup_steps``."""

    @classmethod
    def from_epochs(cls, base_lr, *, steps_per_epoch, epochs, warmup_steps, step_epochs, gamma, min_lr):
        return cls(base_lr, warmup_steps)

    def __init__(self, base_lr: float, warmup_steps: int = 0):
        self.base_lr = _check_number(base_lr, "base_lr", "ConstantSchedule", low_inclusive=False)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        return self.base_lr


class StepSchedule(Schedule):
    """lr(t) = base_lr · gamma^⌊t / step_size⌋ (after an optional linear warm-up)."""

    @classmethod
    def from_epochs(cls, base_lr, *, steps_per_epoch, epochs, warmup_steps, step_epochs, gamma, min_lr):
        every = step_epochs if step_epochs else max(1, epochs // 3)  # default: two decays in a run
        return cls(base_lr, every * steps_per_epoch, gamma, warmup_steps)

    def __init__(self, base_lr: float, step_size: int, gamma: float = 0.1, warmup_steps: int = 0):
        self.base_lr = _check_number(base_lr, "base_lr", "StepSchedule", low_inclusive=False)
        if int(step_size) <= 0:
            raise ValueError(f"StepSchedule: step_size must be positive, got {step_size!r}")
        self.step_size = int(step_size)
        self.gamma = _check_number(gamma, "gamma", "StepSchedule", low_inclusive=False)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        return self.base_lr * self.gamma ** (step // self.step_size)


class CosineSchedule(Schedule):
    """Linear warm-up over ``warmup_steps`` to base_lr, then a half cosine down to ``min_lr``
    at ``total_steps``: lr = min_lr + ½(base_lr − min_lr)(1 + cos(π·progress))."""

    @classmethod
    def from_epochs(cls, base_lr, *, steps_per_epoch, epochs, warmup_steps, step_epochs, gamma, min_lr):
        total = epochs * steps_per_epoch
        return cls(base_lr, total, min(warmup_steps, total), min_lr)

    def __init__(self, base_lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0):
        self.base_lr = _check_number(base_lr, "base_lr", "CosineSchedule", low_inclusive=False)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        if self.total_steps <= 0 or not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(
                f"CosineSchedule: need 0 <= warmup_steps <= total_steps and total_steps > 0, "
                f"got warmup_steps={warmup_steps}, total_steps={total_steps}"
            )
        self.min_lr = _check_number(min_lr, "min_lr", "CosineSchedule")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * progress))


#: name -> schedule class: THE list of schedules (config validation, the CLI's choices and the
#: README read it). Each class's ``from_epochs`` turns the options counted in epochs into its steps.
SCHEDULES: dict[str, type[Schedule]] = {"constant": ConstantSchedule, "step": StepSchedule, "cosine": CosineSchedule}


def make_schedule(
    name: str,
    base_lr: float,
    *,
    steps_per_epoch: int,
    epochs: int,
    warmup_epochs: float = 0,
    step_epochs: int | None = None,
    gamma: float = 0.1,
    min_lr: float = 0.0,
) -> Schedule:
    """A schedule by name (see :data:`SCHEDULES`) with its lengths given in epochs."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    warmup_steps = round(warmup_epochs * steps_per_epoch)
    return SCHEDULES[name].from_epochs(
        base_lr,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        warmup_steps=warmup_steps,
        step_epochs=step_epochs,
        gamma=gamma,
        min_lr=min_lr,
    )
