"""Element-wise activations and the row-wise softmax (docs/backprop.md, "Element-wise activations", "Softmax").

An element-wise activation y = h(x) has the backward pass dx = dout ⊙ h'(x). Each class keeps
the cheapest cache that gives h'(x) and evaluates exponentials only where they cannot overflow,
so no input (even |x| = 1000) raises a floating-point warning.

To add an activation, write its class here (``forward`` caching h'(x) as ``dydx``, ``derivatives``
giving h' and h'' for the Hessian, ``torch_twin`` naming the ``torch.nn`` module that computes the
same h) and register it in :data:`ACTIVATIONS`: config validation, ``--activation``, the NumPy and
the torch MLP, ``mlplab gradcheck`` and the parity, Hessian and gradient tests all read that entry.
Then name it in the README's option list (tests/test_registries.py compares them).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from mlplab import validation
from mlplab.nn.base import Module, check_2d, check_array, check_dout, into, require_cache
from mlplab.xp import asarray, is_numpy, namespace, to_numpy
from mlplab.xp import device as device_of

_check_input = check_array


def _finite_number(value, name: str, owner: str) -> float:
    return validation.number(value, f"{owner}: {name}", error=ValueError)


@functools.cache
def _scipy_erf():
    try:
        from scipy.special import erf as scipy_erf
    except ImportError:
        return None
    return scipy_erf


#: the standard library's erf as a NumPy ufunc (object dtype out; cast by the caller)
_math_erf = np.frompyfunc(math.erf, 1, 1)


def erf(x: np.ndarray, *, use_scipy: bool = True) -> np.ndarray:
    """The error function, elementwise, in float64, to within an ulp or two of the true value.

    SciPy's vectorised erf when SciPy is installed (and ``use_scipy``); otherwise the standard
    library's ``math.erf`` element by element -- the same function, several times slower, which only
    the exact GELU uses (gradient and Hessian checks on small arrays), so mlplab needs no SciPy.
    """
    x = np.asarray(x, dtype=np.float64)
    scipy_erf = _scipy_erf() if use_scipy else None
    if scipy_erf is not None:
        return scipy_erf(x)
    return _math_erf(x).astype(np.float64)


def _erf(x):
    """:func:`erf` of any library's array. The standard has no erf: other libraries' arrays are
    taken to the host for it and brought back in their own dtype (only the exact GELU needs it)."""
    xp = namespace(x)
    if is_numpy(xp):
        return erf(x)
    return asarray(erf(to_numpy(x)), xp, device=device_of(x), dtype=x.dtype)


class _Elementwise(Module):
    """Shared backward for activations whose derivative is cached by forward as ``dydx``."""

    def backward(self, dout: np.ndarray) -> np.ndarray:
        dydx = require_cache(self, "dydx")
        check_dout(self, dout, dydx.shape)
        return dout * dydx

    def torch_twin(self) -> tuple[str, dict]:
        """The ``torch.nn`` class computing the same h, by name, and its keyword arguments: what
        the torch backend builds in this module's place (:func:`mlplab.torch.model.make_activation`)."""
        return type(self).__name__, {}

    # -- the R-operator: docs/hessian.md, "Hessian–vector products: the R-operator" ----------
    def derivatives(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """h'(x) and h''(x) (h'' None where it is zero almost everywhere)."""
        raise NotImplementedError(f"{type(self).__name__} has no second derivative")

    def r_missing(self) -> str | None:
        return None

    def r_state(self, x: np.ndarray) -> dict:
        d1, d2 = self.derivatives(x)
        return {"d1": d1, "d2": d2}

    def r_forward(self, rx, tape, r):
        """R{y} = h'(x) ⊙ R{x}."""
        r.rx[id(self)] = rx
        return None if rx is None else tape[id(self)]["d1"] * rx

    def r_backward(self, rdout, tape, r, need_input_grad=True):
        """dx = dout ⊙ h'(x)  ⇒  R{dx} = R{dout} ⊙ h'(x) + dout ⊙ h''(x) ⊙ R{x}."""
        entry, rx = tape[id(self)], r.rx[id(self)]
        rdx = rdout * entry["d1"]
        if rx is not None and entry["d2"] is not None:
            rdx += entry["dout"] * entry["d2"] * rx
        return rdx


class ELU(_Elementwise):
    """ELU: h(x) = x for x > 0, alpha (eᕽ − 1) otherwise; h'(x) = 1 or alpha eᕽ = h(x) + alpha.

    In float32, eᕽ − 1 is computed as exp(x) − 1 (absolute error below 1e-7): NumPy's float32
    ``expm1`` is not vectorised and costs nine times as much as ``exp``. Float64 uses ``expm1``.
    """

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = _finite_number(alpha, "alpha", "ELU")

    def forward(self, x: np.ndarray) -> np.ndarray:
        _check_input(self, x)
        xp = namespace(x)
        alpha = self.alpha
        # With e = exp(min(x, 0)): h(x) = max(x, 0) + alpha (e − 1) and h'(x) = alpha e on the
        # negative side, 1 on the positive one (where e = 1). No select (xp.where) is needed,
        # and the exponential never sees a positive argument, so it cannot overflow.
        if x.dtype == xp.float32:
            # Clipped at −80 too: below about −87 exp() gives float32 subnormals, slow on x86,
            # while alpha (e − 1) = −alpha to float32 precision from −17 on anyway.
            e = xp.clip(x, -80.0, 0.0)
            into(e, xp.exp, e)
            e_minus_1 = e - 1
        else:
            e_minus_1 = xp.expm1(xp.minimum(x, 0.0))  # exact near 0, for the float64 gradient checks
            e = e_minus_1 + 1
        if alpha != 1:
            e_minus_1 *= alpha
        out = xp.maximum(x, 0.0)
        out += e_minus_1
        if alpha != 1:
            e *= alpha
            positive = x > 0
            # NumPy adds (1 − alpha) in float64 before rounding (as it always has); the
            # standard forbids mixing a bool array with a float, and float32 with float64.
            e += (1 - alpha) * (positive if is_numpy(xp) else xp.astype(positive, x.dtype))
        self.cache["dydx"] = e
        return out

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"

    def torch_twin(self):
        return "ELU", {"alpha": self.alpha}

    def derivatives(self, x):
        """h' = 1 and h'' = 0 for x > 0; h' = h'' = αeˣ otherwise (h'' jumps at 0: the
        one-sided value the forward pass uses is taken)."""
        xp = namespace(x)
        positive = x > 0
        scaled_exp = self.alpha * xp.exp(xp.minimum(x, 0.0))
        return xp.where(positive, 1.0, scaled_exp), xp.where(positive, 0.0, scaled_exp)


class ReLU(_Elementwise):
    """ReLU: h(x) = max(x, 0); h'(x) = 1 for x > 0, else 0."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        _check_input(self, x)
        xp = namespace(x)
        self.cache["dydx"] = xp.astype(x > 0, x.dtype)
        return xp.maximum(x, 0.0)

    def derivatives(self, x):
        """h' = 1 for x > 0, else 0; h'' = 0 away from the kink."""
        xp = namespace(x)
        return xp.astype(x > 0, x.dtype), None


class LeakyReLU(_Elementwise):
    """LeakyReLU: h(x) = x for x > 0, negative_slope·x otherwise."""

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = _finite_number(negative_slope, "negative_slope", "LeakyReLU")

    def forward(self, x: np.ndarray) -> np.ndarray:
        _check_input(self, x)
        dydx = self._slope(x)
        self.cache["dydx"] = dydx
        return x * dydx

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"

    def torch_twin(self):
        return "LeakyReLU", {"negative_slope": self.negative_slope}

    def _slope(self, x):
        """h'(x): 1 for x > 0, else negative_slope, in x's dtype."""
        xp = namespace(x)
        if is_numpy(xp):  # two scalars: NumPy picks float64 and rounds once to x's dtype
            return np.where(x > 0, 1.0, self.negative_slope).astype(x.dtype, copy=False)
        ones = xp.ones_like(x)  # the standard's where needs an array among its two choices
        return xp.where(x > 0, ones, self.negative_slope * ones)

    def derivatives(self, x):
        """h' = 1 for x > 0, else negative_slope; h'' = 0 away from the kink."""
        return self._slope(x), None


class Tanh(_Elementwise):
    """Tanh: h'(x) = 1 − tanh²(x)."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        _check_input(self, x)
        out = namespace(x).tanh(x)
        self.cache["dydx"] = 1 - out * out
        return out

    def derivatives(self, x):
        """h' = 1 − tanh²x, h'' = −2 tanh(x) h'."""
        t = namespace(x).tanh(x)
        d1 = 1 - t * t
        return d1, -2 * t * d1


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # e = exp(-|x|) <= 1 never overflows; σ(x) = 1/(1+e) for x >= 0 and e/(1+e) for x < 0.
    xp = namespace(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0, e) / (1 + e)


class Sigmoid(_Elementwise):
    """Logistic sigmoid σ(x) = 1/(1 + e⁻ᕽ); h'(x) = σ(x)(1 − σ(x))."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        _check_input(self, x)
        out = namespace(x).astype(_sigmoid(x), x.dtype, copy=False)
        self.cache["dydx"] = out * (1 - out)
        return out

    def derivatives(self, x):
        """h' = σ(1 − σ), h'' = h'(1 − 2σ)."""
        s = _sigmoid(x)
        d1 = s * (1 - s)
        return d1, d1 * (1 - 2 * s)


class GELU(_Elementwise):
    """GELU, by default in its tanh form (PyTorch's ``GELU(approximate='tanh')``).

    tanh form: h(x) = ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³).
    ``approximate='none'``: the exact h(x) = xΦ(x) with the normal CDF Φ (erf: SciPy's if installed,
    else ``math.erf``; see :func:`erf`).
    """

    _C = np.sqrt(2.0 / np.pi)
    _K = 0.044715

    def __init__(self, approximate: str = "tanh"):
        super().__init__()
        if approximate not in ("tanh", "none"):
            raise ValueError(f"GELU: approximate must be 'tanh' or 'none', got {approximate!r}")
        self.approximate = approximate

    def _constants(self, xp):
        """c = √(2/π), √2 and √(2π): NumPy float64 scalars on NumPy (a float32 input is then
        computed in float64, as it always was), Python floats for the other libraries."""
        constants = (self._C, np.sqrt(2.0), np.sqrt(2 * np.pi))
        return constants if is_numpy(xp) else tuple(map(float, constants))

    def forward(self, x: np.ndarray) -> np.ndarray:
        _check_input(self, x)
        xp = namespace(x)
        c, sqrt2, sqrt2pi = self._constants(xp)
        if self.approximate == "tanh":
            t = xp.tanh(c * (x + self._K * x**3))
            out = 0.5 * x * (1 + t)
            dydx = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * self._K * x * x)
        else:
            cdf = 0.5 * (1 + _erf(x / sqrt2))
            pdf = xp.exp(-0.5 * xp.minimum(x * x, 1e4)) / sqrt2pi
            out = x * cdf
            dydx = cdf + x * pdf
        self.cache["dydx"] = xp.astype(dydx, x.dtype, copy=False)
        return xp.astype(out, x.dtype, copy=False)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"

    def torch_twin(self):
        return "GELU", {"approximate": self.approximate}

    def derivatives(self, x):
        """tanh form, u = c(x + kx³): h'' = sech²u · [u' + ½x(u'' − 2 tanh(u) u'²)], u'' = 6ckx;
        exact form: h' = Φ + xφ, h'' = φ(x)(2 − x²)."""
        xp = namespace(x)
        c, sqrt2, sqrt2pi = self._constants(xp)
        if self.approximate == "tanh":
            k = self._K
            t = xp.tanh(c * (x + k * x**3))
            du = c * (1 + 3 * k * x * x)
            sech2 = 1 - t * t
            d1 = 0.5 * (1 + t) + 0.5 * x * sech2 * du
            return d1, sech2 * (du + 0.5 * x * (6 * c * k * x - 2 * t * du * du))
        pdf = xp.exp(-0.5 * xp.minimum(x * x, 1e4)) / sqrt2pi
        cdf = 0.5 * (1 + _erf(x / sqrt2))
        return cdf + x * pdf, pdf * (2 - x * x)


class Softmax(Module):
    """Row-wise softmax. x: (batch, classes) -> probabilities of the same shape.

    Backward (Jacobian-vector product of y = softmax(x)): dx = y ⊙ (dout − rowsum(dout ⊙ y)).
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        check_2d(self, x)
        out = softmax(x)
        self.cache["y"] = out
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        y = require_cache(self, "y")
        check_dout(self, dout, y.shape)
        return y * (dout - namespace(y).sum(dout * y, axis=1, keepdims=True))


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (batch, classes) scores, shifted by the row maximum (no overflow)."""
    xp = namespace(x)
    shifted = x - xp.max(x, axis=1, keepdims=True)
    into(shifted, xp.exp, shifted)
    shifted /= xp.sum(shifted, axis=1, keepdims=True)
    return shifted


#: name -> activation class: THE list of activations. Config validation, the CLI's choices, both
#: backends' models (the torch one through each class's ``torch_twin``), the gradient and Hessian
#: checks and the README read it; a class constructed without arguments is what the name means.
ACTIVATIONS: dict[str, type[_Elementwise]] = {
    "elu": ELU,
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "tanh": Tanh,
    "sigmoid": Sigmoid,
    "gelu": GELU,
}


def activation_name(name: str) -> str:
    """``name`` as a key of :data:`ACTIVATIONS` (any case, dashes for underscores), or ValueError."""
    key = str(name).lower().replace("-", "_")
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return key


def make_activation(name: str) -> Module:
    """An activation module by name (a key of :data:`ACTIVATIONS`)."""
    return ACTIVATIONS[activation_name(name)]()
