"""Gradient checks: analytic backward passes against central finite differences, in float64.

For a module y = f(x) we check the scalar L = Σ (y ⊙ R) with a fixed random R, whose gradient
is exactly what ``backward(R)`` returns. Each numerical derivative is (L(θ+h) − L(θ−h)) / 2h.
The reported error is max|a − n| / max(1e-8, max|a| + max|n|), maxima over all elements: the
largest absolute discrepancy relative to the gradient's own scale. (An element-by-element ratio
would flag entries that are zero in exact arithmetic, such as the gradient of a bias followed by
batch normalisation, where both a and n are rounding noise.)

With ``where`` (a :class:`mlplab.training.arrays.Placement`: ``mlplab gradcheck --array-library
torch``) the modules, inputs and probes are moved to that library and device and the same checks
run there, finite differences in float64 on that library; the NumPy generators draw every number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from mlplab.nn import (
    ELU,
    GELU,
    BatchNorm1d,
    CrossEntropy,
    Dropout,
    LeakyReLU,
    Linear,
    Module,
    ReLU,
    Residual,
    Sequential,
    Sigmoid,
    Softmax,
    SoftmaxCrossEntropy,
    Tanh,
)
from mlplab.nn.activations import ACTIVATIONS
from mlplab.xp import namespace, to_numpy

DEFAULT_TOLERANCE = 1e-6


#: Gradients whose entries are all below this are zero in exact arithmetic (the bias of a Linear
#: followed by batch normalisation): both sides are rounding noise, and only their difference counts.
NOISE_LEVEL = 1e-8


@dataclass
class CheckResult:
    module: str
    quantity: str
    max_relative_error: float
    tolerance: float = DEFAULT_TOLERANCE
    max_abs_error: float = 0.0
    scale: float = 1.0

    @property
    def passed(self) -> bool:
        if self.max_relative_error <= self.tolerance:
            return True
        return bool(self.scale <= 2 * NOISE_LEVEL and self.max_abs_error <= NOISE_LEVEL)


def _result(module: str, quantity: str, analytic, numeric, tol: float) -> CheckResult:
    analytic, numeric = np.asarray(analytic, dtype=np.float64), np.asarray(numeric, dtype=np.float64)
    scale = float(np.max(np.abs(analytic)) + np.max(np.abs(numeric))) if analytic.size else 0.0
    abs_error = float(np.max(np.abs(analytic - numeric))) if analytic.size else 0.0
    return CheckResult(module, quantity, relative_error(analytic, numeric), tol, abs_error, scale)


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """max|a − n| / max(1e-8, max|a| + max|n|) over all elements; 0 for empty arrays."""
    analytic, numeric = np.asarray(analytic, dtype=np.float64), np.asarray(numeric, dtype=np.float64)
    if analytic.shape != numeric.shape:
        raise ValueError(f"relative_error: shapes differ, {analytic.shape} and {numeric.shape}")
    if analytic.size == 0:
        return 0.0
    scale = np.max(np.abs(analytic)) + np.max(np.abs(numeric))
    return float(np.max(np.abs(analytic - numeric)) / max(1e-8, scale))


def numerical_gradient(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of the scalar function ``f()`` with respect to the array ``x``,
    which is perturbed in place (one element at a time) and restored."""
    grad = np.zeros(x.shape, dtype=np.float64)
    flat = x.reshape(-1)  # a view: perturbing it perturbs x
    if flat.base is None and x.size and not np.shares_memory(flat, x):  # pragma: no cover - defensive
        raise ValueError("numerical_gradient needs a contiguous array")
    gflat = grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        plus = f()
        flat[i] = old - h
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * h)
    return grad


def _numerical_gradient_on(f, target, where, h: float = 1e-6) -> np.ndarray:
    """:func:`numerical_gradient` for an array of another library: each perturbed value is
    written into ``target`` whole (``target[...] = ...``, the standard's only in-place write),
    since the standard promises no writable flat view."""
    host = np.array(to_numpy(target), dtype=np.float64, copy=True)
    grad = np.zeros(host.shape, dtype=np.float64)
    flat, gflat = host.reshape(-1), grad.reshape(-1)

    def put() -> None:
        target[...] = where.asarray(host, dtype=target.dtype)

    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        put()
        plus = float(f())
        flat[i] = old - h
        put()
        minus = float(f())
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * h)
    put()
    return grad


def _elsewhere(where) -> bool:
    return where is not None and not where.is_numpy


def _gradient(f, target, where, h: float) -> np.ndarray:
    return _numerical_gradient_on(f, target, where, h) if _elsewhere(where) else numerical_gradient(f, target, h)


def _on(where, array):
    """``array`` on the library and device of ``where`` (unchanged for NumPy)."""
    return where.asarray(array) if _elsewhere(where) else array


def _moved(module: Module, where) -> Module:
    if not _elsewhere(where):
        return module
    moved = cast(Any, module).to(where.xp, where.device)
    return module if moved is None else moved


def _host_copy(array) -> np.ndarray:
    return np.array(to_numpy(array), copy=True)


def _dropout_states(module: Module):
    """Snapshots of every dropout generator, so each forward in a check draws the same masks."""
    rngs = {id(m.rng): m.rng for _, m in module.named_modules() if isinstance(m, Dropout)}
    return [(rng, rng.bit_generator.state) for rng in rngs.values()]


def check_module(
    module: Module,
    x: np.ndarray,
    *,
    seed: int = 0,
    h: float = 1e-6,
    tol: float = DEFAULT_TOLERANCE,
    name: str | None = None,
    where=None,
) -> list[CheckResult]:
    """Check ``module``'s input gradient and every parameter gradient at ``x`` (float64)."""
    name = name or type(module).__name__
    module = _moved(module, where)
    x = _on(where, np.array(x, dtype=np.float64, copy=True))
    xp = namespace(x)
    states = _dropout_states(module)

    def run(inp):
        for rng, state in states:
            rng.bit_generator.state = state
        return module.forward(inp)

    out = run(x)
    # A stream of its own: R drawn with the same seed as x would make L = Σ f(x) ⊙ x, a
    # degenerate probe whose gradient nearly cancels.
    weights = _on(where, np.random.default_rng([seed, 0x5EED]).standard_normal(tuple(out.shape)))
    dx = _host_copy(module.backward(weights))
    analytic = {pname: _host_copy(grad) for pname, _, grad in module.named_parameters()}

    def loss():
        return float(xp.sum(run(x) * weights))

    results = [_result(name, "input", dx, _gradient(loss, x, where, h), tol)]
    for pname, param, _ in module.named_parameters():
        results.append(_result(name, pname, analytic[pname], _gradient(loss, param, where, h), tol))
    for rng, state in states:
        rng.bit_generator.state = state
    return results


def check_loss(
    loss_module: CrossEntropy | SoftmaxCrossEntropy,
    inputs: np.ndarray,
    labels,
    *,
    h: float = 1e-6,
    tol: float = DEFAULT_TOLERANCE,
    name: str | None = None,
    where=None,
) -> CheckResult:
    """Check a loss's stateless ``backward(inputs, labels)`` against finite differences;
    ``labels`` are class indices (batch,) or target distributions (batch, classes)."""
    name = name or type(loss_module).__name__
    inputs = _on(where, np.array(inputs, dtype=np.float64, copy=True))
    labels = np.asarray(labels)
    labels = _on(where, labels.astype(np.int64 if labels.ndim == 1 else np.float64, copy=False))
    analytic = _host_copy(loss_module.backward(inputs, labels))
    numeric = _gradient(lambda: loss_module.forward(inputs, labels), inputs, where, h)
    return _result(name, "input", analytic, numeric, tol)


def check_model(
    model: Module,
    x: np.ndarray,
    labels,
    loss_module: CrossEntropy | SoftmaxCrossEntropy | None = None,
    *,
    h: float = 1e-6,
    tol: float = DEFAULT_TOLERANCE,
    name: str | None = None,
    where=None,
) -> list[CheckResult]:
    """Check a whole model followed by a loss: dL/dx and dL/dθ for every parameter θ."""
    name = name or type(model).__name__
    loss_module = loss_module or SoftmaxCrossEntropy()
    model = _moved(model, where)
    x = _on(where, np.array(x, dtype=np.float64, copy=True))
    labels = _on(where, np.asarray(labels, dtype=np.int64))
    states = _dropout_states(model)

    def loss():
        for rng, state in states:
            rng.bit_generator.state = state
        return loss_module.forward(model.forward(x), labels)

    loss()
    logits = model.forward(x) if not states else None
    if logits is None:
        for rng, state in states:
            rng.bit_generator.state = state
        logits = model.forward(x)
    dx = _host_copy(model.backward(loss_module.backward(logits, labels)))
    analytic = {pname: _host_copy(grad) for pname, _, grad in model.named_parameters()}
    results = [_result(name, "input", dx, _gradient(loss, x, where, h), tol)]
    for pname, param, _ in model.named_parameters():
        results.append(_result(name, pname, analytic[pname], _gradient(loss, param, where, h), tol))
    return results


def run_all(
    seed: int = 0, tol: float = DEFAULT_TOLERANCE, *, array_library: str = "numpy", device: str = "auto"
) -> list[CheckResult]:
    """Every module type and small MLPs with each option: what ``mlplab gradcheck`` prints; with
    ``array_library`` (and ``device``) the same checks on that library's arrays."""
    from mlplab.models import MLP
    from mlplab.training.arrays import placement

    where = placement(array_library, device)

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((6, 5))
    results: list[CheckResult] = []
    results += check_module(Linear(5, 4, rng=rng), x, tol=tol, name="Linear", where=where)
    for module in (ELU(alpha=1.3), ReLU(), LeakyReLU(0.1), Tanh(), Sigmoid(), GELU(), GELU("none"), Softmax()):
        label = type(module).__name__ + ("(none)" if getattr(module, "approximate", "") == "none" else "")
        results += check_module(module, x, tol=tol, name=label, where=where)
    bn = BatchNorm1d(5)
    results += check_module(bn, x, tol=tol, name="BatchNorm1d(train)", where=where)
    # (bn already lives where the first check moved it)
    bn.buffers["running_var"][...] = _on(where, rng.uniform(0.5, 2.0, 5))
    bn.buffers["running_mean"][...] = _on(where, rng.standard_normal(5))
    results += check_module(bn.eval(), x, tol=tol, name="BatchNorm1d(eval)", where=where)
    results += check_module(Dropout(0.4, rng=seed), x, tol=tol, name="Dropout(train)", where=where)
    results += check_module(
        Residual(Sequential(Linear(5, 5, rng=rng), Tanh())), x, tol=tol, name="Residual", where=where
    )
    labels = rng.integers(0, 5, size=6)
    logits = rng.standard_normal((6, 5))
    results.append(check_loss(SoftmaxCrossEntropy(), logits, labels, tol=tol, where=where))
    results.append(
        check_loss(
            SoftmaxCrossEntropy(label_smoothing=0.1),
            logits,
            labels,
            tol=tol,
            name="SoftmaxCrossEntropy(smoothing)",
            where=where,
        )
    )
    probs = rng.uniform(0.05, 1.0, (6, 5))
    probs /= probs.sum(axis=1, keepdims=True)
    results.append(check_loss(CrossEntropy(), probs, labels, tol=tol, where=where))
    # --mixup's targets: two one-hot rows mixed, λ·onehot(y) + (1 − λ)·onehot(y[π]), smoothed on top
    mixed = 0.7 * np.eye(5)[labels] + 0.3 * np.eye(5)[labels[::-1]]
    results.append(
        check_loss(
            SoftmaxCrossEntropy(label_smoothing=0.1),
            logits,
            mixed,
            tol=tol,
            name="SoftmaxCrossEntropy(soft)",
            where=where,
        )
    )

    xm = rng.standard_normal((8, 6))
    ym = rng.integers(0, 3, size=8)
    variants: list[tuple[str, dict]] = [("MLP", {})]
    variants += [(f"MLP[{a}]", {"activation": a}) for a in ACTIVATIONS if a != "elu"]  # elu: the default MLP
    variants += [
        ("MLP[batch_norm]", {"use_batch_norm": True}),
        ("MLP[residual]", {"residual": True}),
        ("MLP[residual+batch_norm]", {"residual": True, "use_batch_norm": True}),
        ("MLP[dropout, eval]", {"dropout": 0.3, "eval": True}),
        ("MLP[softmax regression]", {"hidden": []}),
    ]
    for label, options in variants:
        options = dict(options)
        hidden = options.pop("hidden", [7, 7])
        to_eval = options.pop("eval", False)
        model = MLP(6, hidden, 3, seed=seed, **options)
        if to_eval:
            model.eval()
        results += check_model(model, xm, ym, name=label, tol=tol, where=where)
    return results
