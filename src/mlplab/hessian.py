"""The loss Hessian of a NumPy MLP, never formed: exact Hessian-vector products, its extreme
eigenvalues, its trace, its spectral density and a verdict on the kind of critical point.

- :class:`ModelHessian` gives Hv for the mean cross-entropy over a fixed data set by Pearlmutter's
  R-operator: one forward pass of R{·} = d/dr (·)(θ + r v) at r = 0 and one backward pass of it,
  through the same modules the model is made of (the formulas: docs/hessian.md). The plain
  forward and backward quantities do not depend on v, so they are computed once and kept; each
  product then costs about one forward and one backward pass. A module without an exact rule
  (batch normalisation or dropout in train mode) makes the whole product fall back to central
  differences of gradients, and says so in ``method``.
- :func:`lanczos_extremes` finds the largest and smallest eigenvalues of any symmetric operator
  given as a matrix-vector callable: thick-restart Lanczos (Krylov–Schur form) with full
  reorthogonalisation, both ends of the spectrum from one Krylov space. No SciPy needed.
- :func:`hutchinson_trace`, :func:`spectral_density` (stochastic Lanczos quadrature) and
  :func:`classify` complete the analysis that ``mlplab hessian`` runs.

All of it works in float64: :func:`float64_model` rebuilds a model at that precision.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mlplab.nn import (
    ELU, GELU, BatchNorm1d, Dropout, LeakyReLU, Linear, Module, ReLU, Residual, Sequential, Sigmoid, Tanh,
)

#: default of :func:`classify`: the smallest eigenvalue counts as negative below −1e-3·max|λ|
VERDICT_TOLERANCE = 1e-3
#: default of :func:`lanczos_extremes`: a Ritz value is converged when its residual is below
#: this times the largest |Ritz value|
LANCZOS_TOLERANCE = 1e-4

MatVec = Callable[[np.ndarray], np.ndarray]


# =============================================================================================
# parameters as one flat vector
# =============================================================================================
class ParameterSpace:
    """All parameters of ``model`` as one vector, in ``named_parameters`` order.

    ``views(vector)`` splits a flat vector into per-parameter arrays (views, not copies), keyed
    by ``(id(module), key)``; ``get``/``set`` read and write the model's parameters.
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

    def views(self, vector: np.ndarray) -> dict[tuple[int, str], np.ndarray]:
        return {
            (id(module), key): vector[offset : offset + math.prod(shape)].reshape(shape)
            for _, module, key, offset, shape in self.entries
        }

    def get(self) -> np.ndarray:
        return np.concatenate([module.params[key].reshape(-1) for _, module, key, _, _ in self.entries])

    def set(self, vector: np.ndarray) -> None:
        for _, module, key, offset, shape in self.entries:
            module.params[key][...] = vector[offset : offset + math.prod(shape)].reshape(shape)

    def gradient(self) -> np.ndarray:
        return np.concatenate([module.grads[key].reshape(-1) for _, module, key, _, _ in self.entries])


def float64_model(model):
    """A float64 copy of a NumPy :class:`~mlplab.models.MLP` (same config, same weights, same mode)."""
    from mlplab.models import MLP

    config = model.config()
    copy = MLP(config.pop("n_inputs"), config.pop("n_hidden"), config.pop("n_classes"), dtype=np.float64, **config)
    copy.load_state_dict({key: np.asarray(value, dtype=np.float64) if np.issubdtype(np.asarray(value).dtype, np.floating)
                          else value for key, value in model.state_dict().items()})
    return copy.train(model.training)


# =============================================================================================
# first and second derivatives of the activations
# =============================================================================================
def activation_derivatives(module: Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """h'(x) and h''(x) of an element-wise activation (h'' None where it is zero almost everywhere).

    ELU's h'' jumps at 0 (α on the left, 0 on the right) and ReLU/LeakyReLU have a kink there:
    the products use the one-sided value the forward pass uses, exact wherever no
    pre-activation sits on the kink itself.
    """
    if isinstance(module, ELU):
        positive = x > 0
        scaled_exp = module.alpha * np.exp(np.minimum(x, 0))
        return np.where(positive, 1.0, scaled_exp), np.where(positive, 0.0, scaled_exp)
    if isinstance(module, ReLU):
        return (x > 0).astype(x.dtype), None
    if isinstance(module, LeakyReLU):
        return np.where(x > 0, 1.0, module.negative_slope).astype(x.dtype), None
    if isinstance(module, Tanh):
        t = np.tanh(x)
        d1 = 1 - t * t
        return d1, -2 * t * d1
    if isinstance(module, Sigmoid):
        e = np.exp(-np.abs(x))
        s = np.where(x >= 0, 1, e) / (1 + e)
        d1 = s * (1 - s)
        return d1, d1 * (1 - 2 * s)
    if isinstance(module, GELU):
        if module.approximate == "tanh":
            c, k = GELU._C, GELU._K
            t = np.tanh(c * (x + k * x**3))
            du = c * (1 + 3 * k * x * x)  # u'(x) for u = c(x + kx³)
            sech2 = 1 - t * t
            d1 = 0.5 * (1 + t) + 0.5 * x * sech2 * du
            # h'' = sech²u · [u' + ½x(u'' − 2 tanh(u) u'²)], u'' = 6ckx
            d2 = sech2 * (du + 0.5 * x * (6 * c * k * x - 2 * t * du * du))
            return d1, d2
        from mlplab.nn.activations import erf

        pdf = np.exp(-0.5 * np.minimum(x * x, 1e4)) / np.sqrt(2 * np.pi)
        cdf = 0.5 * (1 + erf(x / np.sqrt(2.0)))
        return cdf + x * pdf, pdf * (2 - x * x)
    raise TypeError(f"no second derivative for {type(module).__name__}")


_ACTIVATIONS = (ELU, ReLU, LeakyReLU, Tanh, Sigmoid, GELU)


def _children(module: Module) -> list[Module]:
    return list(module.children())


def _container_kind(module: Module) -> str | None:
    if isinstance(module, Residual):
        return "residual"
    if isinstance(module, Sequential):
        return "sequential"
    if type(module).__name__ == "MLP" and hasattr(module, "layers"):
        return "model"
    return None


def missing_exact_product(model: Module) -> str | None:
    """None if every module of ``model`` has an exact R-operator rule, else what lacks one."""
    for name, module in model.named_modules():
        if _container_kind(module) or isinstance(module, (Linear, *_ACTIVATIONS)):
            continue
        if isinstance(module, BatchNorm1d):
            if module.training:
                return f"{name or 'model'} (BatchNorm1d in train mode)"
            continue
        if isinstance(module, Dropout):
            if module.training and module.p > 0:
                return f"{name or 'model'} (Dropout in train mode)"
            continue
        return f"{name or 'model'} ({type(module).__name__})"
    return None


# =============================================================================================
# the R-operator through the modules
# =============================================================================================
def _forward(module: Module, x: np.ndarray, tape: dict) -> np.ndarray:
    """Plain forward pass that records, for each leaf module, what the R passes need."""
    kind = _container_kind(module)
    if kind == "model":
        return _forward(module.layers, x, tape)
    if kind == "sequential":
        for child in _children(module):
            x = _forward(child, x, tape)
        return x
    if kind == "residual":
        return x + _forward(module.block, x, tape)
    out = module.forward(x)
    if isinstance(module, Linear):
        tape[id(module)] = {"x": x}
    elif isinstance(module, _ACTIVATIONS):
        d1, d2 = activation_derivatives(module, x)
        tape[id(module)] = {"d1": d1, "d2": d2}
    elif isinstance(module, BatchNorm1d):
        tape[id(module)] = {"xhat": module.cache["xhat"], "inv_std": module.cache["inv_std"]}
    else:  # Dropout in eval mode: the identity
        tape[id(module)] = {}
    return out


def _backward(module: Module, dout: np.ndarray, tape: dict, need_dx: bool = True) -> np.ndarray | None:
    """Plain backward pass (the modules' own) that records each leaf's incoming gradient."""
    kind = _container_kind(module)
    if kind == "model":
        return _backward(module.layers, dout, tape, need_dx)
    if kind == "sequential":
        children = _children(module)
        for index in range(len(children) - 1, -1, -1):
            dout = _backward(children[index], dout, tape, need_dx or index > 0)
        return dout
    if kind == "residual":
        return dout + _backward(module.block, dout, tape)
    tape[id(module)]["dout"] = dout
    if isinstance(module, Linear):
        return module.backward(dout, need_input_grad=need_dx)
    return module.backward(dout)


def _r_forward(module: Module, rx: np.ndarray | None, tape: dict, v: dict, rtape: dict) -> np.ndarray | None:
    """R{y} from R{x} (None: zero, as for the data). Records R{x} of each leaf in ``rtape``."""
    kind = _container_kind(module)
    if kind == "model":
        return _r_forward(module.layers, rx, tape, v, rtape)
    if kind == "sequential":
        for child in _children(module):
            rx = _r_forward(child, rx, tape, v, rtape)
        return rx
    if kind == "residual":
        rblock = _r_forward(module.block, rx, tape, v, rtape)
        return rblock if rx is None else rblock + rx
    rtape[id(module)] = rx
    record = tape[id(module)]
    if isinstance(module, Linear):
        # R{y} = R{x} Wᵀ + x Vᵀ + v_b
        ry = record["x"] @ v[id(module), "weight"].T
        ry += v[id(module), "bias"]
        if rx is not None:
            ry += rx @ module.params["weight"].T
        return ry
    if isinstance(module, _ACTIVATIONS):
        return None if rx is None else record["d1"] * rx
    if isinstance(module, BatchNorm1d):
        # eval mode is affine: y = x̂ γ + β with x̂ = (x − μ)/σ for fixed running statistics
        ry = record["xhat"] * v[id(module), "weight"] + v[id(module), "bias"]
        if rx is not None:
            ry += rx * (module.params["weight"] * record["inv_std"])
        return ry
    return rx


def _r_backward(module: Module, rdout: np.ndarray, tape: dict, v: dict, rtape: dict, hv: dict,
                need_dx: bool = True) -> np.ndarray | None:
    """R{dx} from R{dout}; adds R{dθ} of each parameter into ``hv``."""
    kind = _container_kind(module)
    if kind == "model":
        return _r_backward(module.layers, rdout, tape, v, rtape, hv, need_dx)
    if kind == "sequential":
        children = _children(module)
        for index in range(len(children) - 1, -1, -1):
            rdout = _r_backward(children[index], rdout, tape, v, rtape, hv, need_dx or index > 0)
        return rdout
    if kind == "residual":
        return rdout + _r_backward(module.block, rdout, tape, v, rtape, hv)
    record, rx = tape[id(module)], rtape[id(module)]
    dout = record["dout"]
    if isinstance(module, Linear):
        # R{dW} = R{dout}ᵀ x + doutᵀ R{x};  R{db} = 1ᵀ R{dout};  R{dx} = R{dout} W + dout V
        hv[id(module), "weight"] += rdout.T @ record["x"]
        if rx is not None:
            hv[id(module), "weight"] += dout.T @ rx
        hv[id(module), "bias"] += rdout.sum(axis=0)
        if not need_dx:
            return None
        return rdout @ module.params["weight"] + dout @ v[id(module), "weight"]
    if isinstance(module, _ACTIVATIONS):
        # dx = dout ⊙ h'(x)  ⇒  R{dx} = R{dout} ⊙ h'(x) + dout ⊙ h''(x) ⊙ R{x}
        rdx = rdout * record["d1"]
        if rx is not None and record["d2"] is not None:
            rdx += dout * record["d2"] * rx
        return rdx
    if isinstance(module, BatchNorm1d):
        xhat, inv_std = record["xhat"], record["inv_std"]
        gamma = module.params["weight"]
        if rx is None:
            hv[id(module), "weight"] += np.sum(rdout * xhat, axis=0)
        else:
            hv[id(module), "weight"] += np.sum(rdout * xhat + dout * rx * inv_std, axis=0)
        hv[id(module), "bias"] += rdout.sum(axis=0)
        return rdout * (gamma * inv_std) + dout * (v[id(module), "weight"] * inv_std)
    return rdout


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
            raise ValueError(f"ModelHessian: method must be 'auto', 'r-operator' or 'finite-difference', got {method!r}")
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
        total = len(self.y)
        loss_sum = 0.0
        gradient = np.zeros(self.dim)
        for start, stop in self._chunks:
            tape: dict = {}
            logits = _forward(self.model, self.x[start:stop], tape)
            chunk_loss, probs, dlogits = _softmax_loss(logits, self.y[start:stop], total)
            _backward(self.model, dlogits, tape, need_dx=False)
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
        total = len(self.y)
        v = self.space.views(vector)
        out = np.zeros(self.dim)
        hv = self.space.views(out)
        for tape in self._tapes:
            rtape: dict = {}
            rlogits = _r_forward(self.model, None, tape, v, rtape)
            probs = tape["probs"]
            # Hessian of the cross-entropy in the logits, per row: diag(p) − p pᵀ (targets drop out)
            rdlogits = probs * (rlogits - np.sum(probs * rlogits, axis=1, keepdims=True))
            rdlogits /= total
            _r_backward(self.model, rdlogits, tape, v, rtape, hv, need_dx=False)
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
    saved = []
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


# =============================================================================================
# Lanczos: extreme eigenvalues of a symmetric operator
# =============================================================================================
@dataclass
class LanczosResult:
    """Extreme eigenvalues: ``top`` (descending) and ``bottom`` (ascending), each Ritz value's
    residual norm ‖H y − θ y‖ (an eigenvalue of H lies within it), whether all requested
    values converged, and the number of matrix-vector products spent."""

    top: np.ndarray
    bottom: np.ndarray
    top_residuals: np.ndarray
    bottom_residuals: np.ndarray
    converged: bool
    products: int
    restarts: int
    basis_size: int
    tolerance: float
    exhausted: bool = False  # the Krylov space became the whole space: the values are exact
    ritz_values: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _orthogonalise(basis: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Coefficients h of w on the rows of ``basis`` (removed from w in place), in two passes:
    one Gram–Schmidt pass loses orthogonality once w has cancelled; the second restores it."""
    h = basis @ w
    w -= basis.T @ h
    h2 = basis @ w
    w -= basis.T @ h2
    return h + h2


def lanczos_extremes(matvec: MatVec, dim: int, *, top: int = 10, bottom: int = 10, tol: float = LANCZOS_TOLERANCE,
                     max_products: int = 1000, basis_size: int | None = None, seed=0,
                     progress: Callable[[int, np.ndarray], None] | None = None) -> LanczosResult:
    """The ``top`` largest and ``bottom`` smallest eigenvalues of the symmetric operator ``matvec``.

    Thick-restart Lanczos with full reorthogonalisation: a Krylov basis of ``basis_size`` vectors
    (default 2·(top + bottom) + 20) is built with every new vector orthogonalised against all the
    others; its Ritz values approximate the spectrum, best at both ends. When they have not
    converged, the basis is compressed to the Ritz vectors nearest both ends (about half of it)
    and grown again. A Ritz value has converged when its residual is at most ``tol`` times the
    largest |Ritz value|. Stops after ``max_products`` products even if not converged
    (``converged`` False). The Ritz values always lie inside the spectrum: the smallest is never
    below the true smallest eigenvalue, converged or not. Memory: (basis_size + 1) vectors.
    """
    if dim < 1:
        raise ValueError(f"lanczos_extremes: dim must be positive, got {dim}")
    if top < 0 or bottom < 0 or top + bottom == 0:
        raise ValueError(f"lanczos_extremes: need top >= 0, bottom >= 0 and at least one, got {top} and {bottom}")
    top, bottom = min(top, dim), min(bottom, dim)
    m = basis_size if basis_size is not None else 2 * (top + bottom) + 20
    m = min(max(int(m), top + bottom + 2, 3), dim)
    rng = np.random.default_rng(seed)
    basis = np.empty((m + 1, dim))
    projected = np.zeros((m, m))
    start = rng.standard_normal(dim)
    basis[0] = start / np.linalg.norm(start)
    size = 0  # vectors whose column of the projected matrix is known
    products = restarts = 0
    exhausted = False
    scale = 0.0
    while True:
        beta = 0.0
        for j in range(size, m):
            w = np.array(matvec(basis[j]), dtype=np.float64).reshape(-1)
            products += 1
            h = _orthogonalise(basis[: j + 1], w)
            projected[: j + 1, j] = h
            projected[j, : j + 1] = h
            size = j + 1
            scale = max(scale, float(np.max(np.abs(h))))
            beta = float(np.linalg.norm(w))
            if size == dim:
                beta, exhausted = 0.0, True
                break
            if beta <= 1e-12 * max(scale, 1e-300):
                # an invariant subspace: continue the basis with a fresh direction (coupling 0)
                w = rng.standard_normal(dim)
                _orthogonalise(basis[: j + 1], w)
                basis[j + 1] = w / np.linalg.norm(w)
                beta = 0.0
            else:
                basis[j + 1] = w / beta
            if products >= max_products:
                break
        theta, vectors = np.linalg.eigh(projected[:size, :size])
        residuals = np.abs(beta * vectors[size - 1, :])
        ritz_scale = max(float(np.max(np.abs(theta))), 1e-300)
        top_index = np.arange(size - 1, size - 1 - min(top, size), -1)
        bottom_index = np.arange(min(bottom, size))
        wanted = np.concatenate([top_index, bottom_index])
        converged = exhausted or bool(np.all(residuals[wanted] <= tol * ritz_scale))
        if progress is not None:
            progress(products, theta)
        if converged or exhausted or products >= max_products:
            break
        # thick restart: keep about half the basis, the Ritz vectors nearest both ends
        keep_total = max(top + bottom, m // 2)
        extra = keep_total - top - bottom
        shares = (top, bottom) if top and bottom else ((1, 0) if top else (0, 1))
        extra_top = extra * shares[0] // sum(shares)
        keep = np.unique(np.concatenate([
            np.arange(size - 1, size - 1 - (top + extra_top), -1),
            np.arange(bottom + extra - extra_top),
        ]))
        keep = keep[(keep >= 0) & (keep < size)]
        ell = len(keep)
        coupling = beta * vectors[size - 1, keep]
        basis[:ell] = vectors[:, keep].T @ basis[:size]
        basis[ell] = basis[size]
        projected[:] = 0
        projected[np.arange(ell), np.arange(ell)] = theta[keep]
        projected[ell, :ell] = coupling
        projected[:ell, ell] = coupling
        size = ell
        restarts += 1
    return LanczosResult(
        top=theta[top_index].copy(), bottom=theta[bottom_index].copy(),
        top_residuals=residuals[top_index].copy(), bottom_residuals=residuals[bottom_index].copy(),
        converged=converged, products=products, restarts=restarts, basis_size=m, tolerance=tol,
        exhausted=exhausted, ritz_values=theta.copy(),
    )


# =============================================================================================
# trace and spectral density
# =============================================================================================
@dataclass
class TraceEstimate:
    estimate: float
    standard_error: float | None
    samples: int


def hutchinson_trace(matvec: MatVec, dim: int, samples: int = 50, seed=0) -> TraceEstimate:
    """Hutchinson's estimator: tr H = E[zᵀHz] for Rademacher z (entries ±1), the mean over
    ``samples`` probes, with its standard error (None for a single probe)."""
    if samples < 1:
        raise ValueError(f"hutchinson_trace: samples must be positive, got {samples}")
    rng = np.random.default_rng(seed)
    values = np.empty(samples)
    for i in range(samples):
        z = rng.integers(0, 2, size=dim).astype(np.float64) * 2 - 1
        values[i] = float(z @ matvec(z))
    error = float(np.std(values, ddof=1) / math.sqrt(samples)) if samples > 1 else None
    return TraceEstimate(float(values.mean()), error, samples)


@dataclass
class SpectralDensity:
    """Stochastic Lanczos quadrature: for each probe, the nodes (Ritz values) and weights (the
    squared first components of the Ritz vectors, summing to 1) of a Gauss quadrature of the
    spectral measure."""

    nodes: np.ndarray  # (vectors, steps)
    weights: np.ndarray  # (vectors, steps)

    def curve(self, grid: np.ndarray, width: float) -> np.ndarray:
        """The density on ``grid``: Gaussians of standard deviation ``width`` at the nodes,
        averaged over the probes (it integrates to 1)."""
        diff = (grid[:, None, None] - self.nodes[None]) / width
        bumps = np.exp(-0.5 * diff * diff) / (width * math.sqrt(2 * math.pi))
        return np.sum(bumps * self.weights[None], axis=(1, 2)) / self.nodes.shape[0]


def spectral_density(matvec: MatVec, dim: int, *, vectors: int = 4, steps: int = 60, seed=0) -> SpectralDensity:
    """The spectral density by stochastic Lanczos quadrature: ``vectors`` Lanczos runs of
    ``steps`` steps (full reorthogonalisation) from random unit vectors."""
    if vectors < 1 or steps < 1:
        raise ValueError(f"spectral_density: vectors and steps must be positive, got {vectors} and {steps}")
    steps = min(steps, dim)
    rng = np.random.default_rng(seed)
    nodes = np.empty((vectors, steps))
    weights = np.empty((vectors, steps))
    basis = np.empty((steps, dim))
    for probe in range(vectors):
        start = rng.integers(0, 2, size=dim).astype(np.float64) * 2 - 1
        basis[0] = start / np.linalg.norm(start)
        alpha = np.zeros(steps)
        beta = np.zeros(max(steps - 1, 0))
        size = steps
        for j in range(steps):
            w = np.array(matvec(basis[j]), dtype=np.float64)
            h = _orthogonalise(basis[: j + 1], w)
            alpha[j] = h[j]
            if j + 1 == steps:
                break
            norm = float(np.linalg.norm(w))
            if norm <= 1e-12 * max(1.0, abs(alpha[j])):  # an invariant subspace: the quadrature is exact
                size = j + 1
                break
            beta[j] = norm
            basis[j + 1] = w / norm
        tridiagonal = np.diag(alpha[:size]) + np.diag(beta[: size - 1], 1) + np.diag(beta[: size - 1], -1)
        theta, s = np.linalg.eigh(tridiagonal)
        nodes[probe] = 0.0
        weights[probe] = 0.0
        nodes[probe, :size] = theta
        weights[probe, :size] = s[0] ** 2
    return SpectralDensity(nodes, weights)


def plot_density(density: SpectralDensity, path=None, *, title: str | None = None):
    """The spectral density on a log scale (a Figure, saved as PNG when ``path`` is given)."""
    from mlplab.display import InlineFigure
    from mlplab.plots import save_figure

    low, high = float(density.nodes.min()), float(density.nodes.max())
    span = max(high - low, 1e-12)
    width = span / 200
    grid = np.linspace(low - 0.05 * span, high + 0.05 * span, 1000)
    curve = density.curve(grid, width)
    fig = InlineFigure(figsize=(8.0, 4.0))  # no pyplot (nothing global to register or close); shows in a notebook
    ax = fig.add_subplot(1, 1, 1)
    # below a millionth of the peak the Gaussian tails of single nodes would dominate the picture
    floor = 1e-6 * max(float(curve.max()), 1e-300)
    ax.semilogy(grid, np.maximum(curve, floor), color="tab:blue", lw=1.2)
    ax.set_ylim(floor, 3 * max(float(curve.max()), 1e-300))
    ax.axvline(0.0, color="0.5", lw=0.8, ls="--")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)")
    ax.set_title(title or "Hessian spectral density (stochastic Lanczos quadrature)")
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.14, top=0.9)
    if path is not None:
        save_figure(fig, path)
    return fig


# =============================================================================================
# the verdict
# =============================================================================================
def classify(eigenvalues, rel_tol: float = VERDICT_TOLERANCE) -> dict:
    """The kind of critical point the computed eigenvalues point to, with the numbers behind it.

    With s = max|λ| over the computed eigenvalues and the threshold t = rel_tol·s:
    "saddle" if the smallest is below −t and the largest above t (mixed signs); "minimum" if
    none is below −t (positive within tolerance: eigenvalues in [−t, 0) are taken as rounding
    noise or flat directions); "maximum" if all are below −t; "flat" if all are exactly zero.
    The verdict concerns the computed eigenvalues only.
    """
    values = np.asarray(list(eigenvalues), dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("classify: no eigenvalues")
    smallest, largest = float(values.min()), float(values.max())
    scale = float(np.max(np.abs(values)))
    threshold = rel_tol * scale
    if scale == 0:
        verdict, reason = "flat", "every computed eigenvalue is 0"
    elif smallest < -threshold and largest > threshold:
        verdict = "saddle"
        reason = f"smallest eigenvalue {smallest:.4g} < -{threshold:.3g} (= -{rel_tol:g} x max|eigenvalue| {scale:.4g})"
    elif smallest >= -threshold:
        verdict = "minimum"
        reason = (f"smallest eigenvalue {smallest:.4g} >= -{threshold:.3g} (= -{rel_tol:g} x max|eigenvalue| {scale:.4g}): "
                  "no computed direction of clearly negative curvature")
    else:
        verdict = "maximum"
        reason = f"largest eigenvalue {largest:.4g} < -{threshold:.3g}: every computed eigenvalue is clearly negative"
    return {"verdict": verdict, "smallest": smallest, "largest": largest, "max_abs": scale,
            "relative_tolerance": rel_tol, "threshold": -threshold, "negative_count": int(np.sum(values < -threshold)),
            "reason": reason}
