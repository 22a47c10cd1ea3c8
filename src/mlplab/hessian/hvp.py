"""Exact Hessian-vector products of the mean cross-entropy of a NumPy model.

:class:`ModelHessian` gives Hv by Pearlmutter's R-operator, R{·} = d/dr (·)(θ + r v) at r = 0:
one forward and one backward pass of R{·} through the model, each module applying its own rules
(``r_forward``/``r_backward`` beside its ``backward``; the formulas: docs/hessian.md,
"Hessian–vector products: the R-operator"). The plain passes do not depend on v, so their tapes
are recorded once and kept. A module without an exact rule (batch normalisation or dropout in
train mode) makes the whole product fall back to central differences of gradients, and says so
in ``method``. All of it works in float64: :func:`float64_model` rebuilds a model at that precision.
"""

from __future__ import annotations

import math
import time

import numpy as np

from mlplab.models import MLP
from mlplab.nn import Dropout, Module, SoftmaxCrossEntropy
from mlplab.nn.base import RDirection


class ParameterSpace:
    """All parameters of ``model`` as one vector, in ``named_parameters`` order.

    ``views(vector)`` splits a flat vector into per-parameter arrays (views, not copies), as
    ``{id(module): {key: array}}`` (the layout of :class:`~mlplab.nn.base.RDirection`); ``get``/``set`` read and write the model's parameters.
    """

    def __init__(self, model: Module):
        self.entries: list[tuple[str, Module, str, int, tuple[int, ...]]] = []
        offset = 0
        for module_name, module in model.named_modules():
            for key, param in module.params.items():
                name = f"{module_name}.{key}" if module_name else key
                self.entries.append((name, module, key, offset, param.shape))
                offset += param.size
        self.size = offset

    @property
    def names(self) -> list[str]:
        return [entry[0] for entry in self.entries]

    def views(self, vector: np.ndarray) -> dict[int, dict[str, np.ndarray]]:
        views: dict[int, dict[str, np.ndarray]] = {}
        for _, module, key, offset, shape in self.entries:
            views.setdefault(id(module), {})[key] = vector[offset : offset + math.prod(shape)].reshape(shape)
        return views

    def get(self) -> np.ndarray:
        arrays = [module.params[key].reshape(-1) for _, module, key, _, _ in self.entries]
        return np.concatenate(arrays) if arrays else np.zeros(0)

    def set(self, vector: np.ndarray) -> None:
        for _, module, key, offset, shape in self.entries:
            module.params[key][...] = vector[offset : offset + math.prod(shape)].reshape(shape)

    def gradient(self) -> np.ndarray:
        arrays = [module.grads[key].reshape(-1) for _, module, key, _, _ in self.entries]
        return np.concatenate(arrays) if arrays else np.zeros(0)


def float64_model(model):
    """A float64 copy of a NumPy :class:`~mlplab.models.MLP` (same config, same weights, same mode)."""
    config = model.config()
    copy = MLP(config.pop("n_inputs"), config.pop("n_hidden"), config.pop("n_classes"), dtype=np.float64, **config)
    copy.load_state_dict(
        {
            key: np.asarray(value, dtype=np.float64) if np.issubdtype(np.asarray(value).dtype, np.floating) else value
            for key, value in model.state_dict().items()
        }
    )
    return copy.train(model.training)


def missing_exact_product(model: Module) -> str | None:
    """None if every module of ``model`` has an exact R-operator rule, else what lacks one."""
    for name, module in model.named_modules():
        reason = module.r_missing()
        if reason is not None:
            return f"{name or 'model'} ({reason})"
    return None


def _softmax_loss(logits: np.ndarray, labels: np.ndarray, total: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Summed cross-entropy of a chunk, softmax p and dL/dz = (p − onehot)/total of the mean loss."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=1))
    rows = np.arange(len(labels))
    loss_sum = float(np.sum(lse - shifted[rows, labels]))
    probs = np.exp(shifted - lse[:, None])
    dlogits = probs.copy()
    dlogits[rows, labels] -= 1
    dlogits /= total
    return loss_sum, probs, dlogits


class ModelHessian:
    """The Hessian of the mean cross-entropy of ``model`` on ``(x, y)`` with respect to all its
    parameters, as a matrix-free operator: ``hvp(v)`` (or ``H(v)``) returns H v.

    x: (N, n_inputs), y: (N,) class indices. The model's modes are used as they are (eval mode
    for the analysis); ``batch_size`` rows are processed at a time, which bounds the memory.
    ``method``: "auto" (the R-operator where every module has a rule, else finite differences),
    "r-operator" or "finite-difference". ``loss`` and ``gradient`` (flat, in ``space`` order)
    are those at the current parameters; ``products`` and ``seconds`` count the products made.
    """

    def __init__(self, model: Module, x: np.ndarray, y: np.ndarray, *, batch_size: int = 1000, method: str = "auto"):
        if method not in ("auto", "r-operator", "finite-difference"):
            raise ValueError(
                f"ModelHessian: method must be 'auto', 'r-operator' or 'finite-difference', got {method!r}"
            )
        x = np.asarray(x)
        y = np.asarray(y, dtype=np.int64)
        if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
            raise ValueError(f"ModelHessian: need x (N, D) and y (N,) with N >= 1, got {x.shape} and {y.shape}")
        if batch_size < 1:
            raise ValueError(f"ModelHessian: batch_size must be positive, got {batch_size}")
        self.model = model
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.space = ParameterSpace(model)
        self.dim = self.space.size
        self.fallback_reason = missing_exact_product(model)
        if method == "auto":
            method = "finite-difference" if self.fallback_reason else "r-operator"
        elif method == "r-operator" and self.fallback_reason:
            raise ValueError(f"ModelHessian: no exact Hessian-vector product through {self.fallback_reason}")
        self.method = method
        self.products = 0
        self.seconds = 0.0
        self._chunks = [(start, min(start + self.batch_size, len(y))) for start in range(0, len(y), self.batch_size)]
        if method == "r-operator":
            self._tapes: list[dict] = []
            self.loss, self.gradient = self._base_pass()
        else:
            self._buffers = _snapshot_state(model)
            self.loss, self.gradient = self._loss_and_gradient()

    @property
    def shape(self) -> tuple[int, int]:
        return (self.dim, self.dim)

    def _base_pass(self) -> tuple[float, np.ndarray]:
        """The plain passes, once: each chunk's tape keeps what every later product needs."""
        total = len(self.y)
        loss_sum = 0.0
        gradient = np.zeros(self.dim)
        for start, stop in self._chunks:
            tape: dict = {}
            logits = self.model.record_forward(self.x[start:stop], tape)
            chunk_loss, probs, dlogits = _softmax_loss(logits, self.y[start:stop], total)
            self.model.record_backward(dlogits, tape, need_input_grad=False)
            tape["probs"] = probs
            loss_sum += chunk_loss
            gradient += self.space.gradient()
            self._tapes.append(tape)
        self.model.clear_cache()
        return loss_sum / total, gradient

    def _loss_and_gradient(self) -> tuple[float, np.ndarray]:
        """Mean loss and gradient through the modules' own passes (the finite-difference path)."""
        total = len(self.y)
        loss_sum = 0.0
        gradient = np.zeros(self.dim)
        _restore_state(self.model, self._buffers)
        for start, stop in self._chunks:
            logits = self.model.forward(self.x[start:stop])
            chunk_loss, _, dlogits = _softmax_loss(logits, self.y[start:stop], total)
            self.model.backward(dlogits)
            loss_sum += chunk_loss
            gradient += self.space.gradient()
        _restore_state(self.model, self._buffers)
        self.model.clear_cache()
        return loss_sum / total, gradient

    def hvp(self, vector: np.ndarray) -> np.ndarray:
        """H v for a flat vector v of length ``dim`` (float64)."""
        vector = np.asarray(vector, dtype=np.float64).reshape(-1)
        if vector.size != self.dim:
            raise ValueError(f"ModelHessian.hvp: vector has {vector.size} entries, the model has {self.dim} parameters")
        begin = time.perf_counter()
        result = self._r_operator(vector) if self.method == "r-operator" else self._finite_difference(vector)
        self.products += 1
        self.seconds += time.perf_counter() - begin
        return result

    __call__ = hvp
    matvec = hvp

    def _r_operator(self, vector: np.ndarray) -> np.ndarray:
        """One R-forward and one R-backward per chunk, by the modules' own rules."""
        total = len(self.y)
        out = np.zeros(self.dim)
        direction = RDirection(self.space.views(vector), self.space.views(out))
        for tape in self._tapes:
            direction.rx = {}
            rlogits = self.model.r_forward(None, tape, direction)
            assert rlogits is not None  # the model's R-forward always ends in logits
            rdlogits = SoftmaxCrossEntropy.r_gradient(tape["probs"], rlogits, total)
            self.model.r_backward(rdlogits, tape, direction, need_input_grad=False)
        return out

    def _finite_difference(self, vector: np.ndarray) -> np.ndarray:
        norm = float(np.linalg.norm(vector))
        if norm == 0:
            return np.zeros(self.dim)
        theta = self.space.get()
        # central differences: truncation error ~ step², rounding ~ ε/step, balanced near ε^(1/3)
        step = np.cbrt(np.finfo(np.float64).eps) * max(1.0, float(np.linalg.norm(theta))) / norm
        try:
            self.space.set(theta + step * vector)
            _, plus = self._loss_and_gradient()
            self.space.set(theta - step * vector)
            _, minus = self._loss_and_gradient()
        finally:
            self.space.set(theta)
        return (plus - minus) / (2 * step)

    def dense(self) -> np.ndarray:
        """The full (dim, dim) Hessian, one product per column: for small models and tests."""
        eye = np.eye(self.dim)
        columns = np.stack([self.hvp(eye[i]) for i in range(self.dim)], axis=1)
        return 0.5 * (columns + columns.T)


def _snapshot_state(model: Module) -> list:
    """Buffers and dropout generator states, restored before each gradient so that train-mode
    batch norm and dropout see the same statistics and masks at every parameter value."""
    saved: list[tuple] = []
    for _, module in model.named_modules():
        for key, value in module.buffers.items():
            saved.append((module.buffers, key, np.array(value, copy=True)))
        if isinstance(module, Dropout):
            saved.append((module.rng, None, module.rng.bit_generator.state))
    return saved


def _restore_state(model: Module, saved: list) -> None:
    for owner, key, value in saved:
        if key is None:
            owner.bit_generator.state = value
        else:
            owner[key][...] = value
