"""The fully connected layer Y = X Wᵀ + b (derivation: docs/backprop.md, "Linear")."""

from __future__ import annotations

import numpy as np

from mlplab import validation
from mlplab.nn.base import Module, check_2d, check_dout, into, require_cache
from mlplab.xp import namespace


def as_positive_int(value, name: str, owner: str) -> int:
    """``value`` as a Python int if it is a positive integer (NumPy integers included)."""
    return validation.integer(value, f"{owner}: {name}", error=ValueError)


def as_generator(rng) -> np.random.Generator:
    """A Generator from None, a seed or a Generator."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


class Linear(Module):
    """Fully connected layer.

    x: (batch, in_features) -> (batch, out_features). ``params['weight']``: (out, in),
    ``params['bias']``: (out,). Kaiming-normal weights with std sqrt(2/in), or sqrt(1/in) for
    the input layer (whose inputs are not the output of a rectifier); zero bias.
    """

    def __init__(self, in_features, out_features, input_layer: bool = False, *, dtype=np.float64, rng=None):
        super().__init__()
        self.in_features = as_positive_int(in_features, "in_features", "Linear")
        self.out_features = as_positive_int(out_features, "out_features", "Linear")
        self.input_layer = bool(input_layer)
        self.dtype = np.dtype(dtype)
        generator = as_generator(rng)
        std = np.sqrt((1.0 if self.input_layer else 2.0) / self.in_features)
        weight = generator.standard_normal((self.out_features, self.in_features)) * std
        self.params = {
            "weight": weight.astype(self.dtype),
            "bias": np.zeros(self.out_features, dtype=self.dtype),
        }
        self.grads = {key: np.zeros_like(value) for key, value in self.params.items()}

    def forward(self, x: np.ndarray) -> np.ndarray:
        check_2d(self, x, self.in_features)
        weight, bias = self.params["weight"], self.params["bias"]
        out = x @ weight.T  # BLAS reads the transpose in place; no copy of W is made
        out += bias
        self.cache["x"] = x
        return out

    def backward(self, dout: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:  # type: ignore[override]  # None with need_input_grad=False
        """dW = doutᵀ x, db = 1ᵀ dout, dx = dout W. With ``need_input_grad=False`` dx is skipped
        (nothing needs the gradient of the data). The gradients are written into ``grads``,
        whose arrays the optimiser holds."""
        x = require_cache(self, "x")
        check_dout(self, dout, (x.shape[0], self.out_features))
        xp = namespace(dout, x)
        into(self.grads["weight"], xp.matmul, dout.T, x)  # dW = dYᵀX: the batch sum of outer products
        into(self.grads["bias"], xp.sum, dout, axis=0)  # db = 1ᵀdY
        return dout @ self.params["weight"] if need_input_grad else None  # dX = dY W

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, input_layer={self.input_layer}"

    # -- the R-operator: docs/hessian.md, "Hessian–vector products: the R-operator" ----------
    def r_missing(self) -> str | None:
        return None

    def r_state(self, x: np.ndarray) -> dict:
        return {"x": x}

    def record_backward(self, dout: np.ndarray, tape: dict, need_input_grad: bool = True) -> np.ndarray | None:
        dx = self.backward(dout, need_input_grad=need_input_grad)
        tape.setdefault(id(self), {}).update(dout=dout, dx=dx)
        return dx

    def r_forward(self, rx, tape, r):
        """R{y} = R{x} Wᵀ + x Vᵀ + v_b."""
        r.rx[id(self)] = rx
        v = r.v[id(self)]
        ry = tape[id(self)]["x"] @ v["weight"].T
        ry += v["bias"]
        if rx is not None:
            ry += rx @ self.params["weight"].T
        return ry

    def r_backward(self, rdout, tape, r, need_input_grad=True):
        """R{dW} = R{dout}ᵀ x + doutᵀ R{x};  R{db} = 1ᵀ R{dout};  R{dx} = R{dout} W + dout V."""
        entry, rx, hv = tape[id(self)], r.rx[id(self)], r.hv[id(self)]
        hv["weight"] += rdout.T @ entry["x"]
        if rx is not None:
            hv["weight"] += entry["dout"].T @ rx
        hv["bias"] += rdout.sum(axis=0)
        if not need_input_grad:
            return None
        return rdout @ self.params["weight"] + entry["dout"] @ r.v[id(self)]["weight"]
