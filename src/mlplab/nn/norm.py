"""Batch normalisation and dropout (docs/backprop.md, "Batch normalisation")."""

from __future__ import annotations

import numbers

import numpy as np

from mlplab.nn.base import Module, check_2d, check_array, check_dout, into, require_cache
from mlplab.nn.linear import as_generator, as_positive_int
from mlplab.xp import asarray, is_numpy, namespace
from mlplab.xp import device as device_of


class BatchNorm1d(Module):
    """Batch normalisation over the batch axis, with the semantics of ``torch.nn.BatchNorm1d``.

    x: (batch, num_features). Train mode normalises with the batch mean and the biased batch
    variance and updates the running statistics with ``momentum`` (the running variance takes
    the unbiased batch variance); eval mode normalises with the running statistics.
    Params ``weight`` (γ, ones) and ``bias`` (β, zeros); buffers ``running_mean``,
    ``running_var`` and ``num_batches_tracked``.
    """

    eps: float
    momentum: float

    def __init__(self, num_features, eps: float = 1e-5, momentum: float = 0.1, *, dtype=np.float64):
        super().__init__()
        self.num_features = as_positive_int(num_features, "num_features", "BatchNorm1d")
        if not isinstance(eps, numbers.Real) or not eps > 0:
            raise ValueError(f"BatchNorm1d: eps must be positive, got {eps!r}")
        if not isinstance(momentum, numbers.Real) or not 0 <= momentum <= 1:
            raise ValueError(f"BatchNorm1d: momentum must be in [0, 1], got {momentum!r}")
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.dtype = np.dtype(dtype)
        n = self.num_features
        self.params = {"weight": np.ones(n, dtype=self.dtype), "bias": np.zeros(n, dtype=self.dtype)}
        self.grads = {key: np.zeros_like(value) for key, value in self.params.items()}
        self.buffers = {
            "running_mean": np.zeros(n, dtype=self.dtype),
            "running_var": np.ones(n, dtype=self.dtype),
            "num_batches_tracked": np.zeros((), dtype=np.int64),
        }

    def forward(self, x: np.ndarray) -> np.ndarray:
        check_2d(self, x, self.num_features)
        xp = namespace(x)
        gamma, beta = self.params["weight"], self.params["bias"]
        if self.training:
            batch = x.shape[0]
            if batch < 2:
                raise ValueError(
                    f"BatchNorm1d: a batch of {batch} in train mode has no variance (input shape {x.shape}); "
                    "use a batch of at least 2 or eval mode"
                )
            mean = xp.mean(x, axis=0)
            centred = x - mean
            var = xp.mean(centred * centred, axis=0)
            inv_std = 1.0 / xp.sqrt(var + self.eps)
            m = self.momentum
            self.buffers["running_mean"] *= 1 - m
            self.buffers["running_mean"] += m * mean
            self.buffers["running_var"] *= 1 - m
            self.buffers["running_var"] += m * var * (batch / (batch - 1))
            self.buffers["num_batches_tracked"] += 1
        else:
            centred = x - self.buffers["running_mean"]
            inv_std = 1.0 / xp.sqrt(self.buffers["running_var"] + self.eps)
        xhat = centred * inv_std
        self.cache.update(xhat=xhat, inv_std=inv_std, training=self.training)
        return xhat * gamma + beta

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Train mode: dx = (γ/σ)/S · (S·dout − Σdout − x̂ Σ(dout ⊙ x̂)); eval mode: dx = dout γ/σ."""
        xhat = require_cache(self, "xhat")
        inv_std, training = self.cache["inv_std"], self.cache["training"]
        check_dout(self, dout, xhat.shape)
        xp = namespace(dout)
        gamma = self.params["weight"]
        into(self.grads["weight"], xp.sum, dout * xhat, axis=0)  # dγ = Σ dout ⊙ x̂
        into(self.grads["bias"], xp.sum, dout, axis=0)  # dβ = Σ dout
        scale = gamma * inv_std
        if not training:
            return dout * scale
        batch = dout.shape[0]
        # The batch statistics depend on every row, which adds the two mean-subtracting terms.
        return (scale / batch) * (batch * dout - self.grads["bias"] - xhat * self.grads["weight"])

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"

    # -- the R-operator: docs/hessian.md, "Hessian–vector products: the R-operator" ----------
    # Only eval mode has a rule: there y = x̂γ + β is affine in x for fixed running statistics.
    def r_missing(self) -> str | None:
        return "BatchNorm1d in train mode" if self.training else None

    def r_state(self, x: np.ndarray) -> dict:
        inv_std = 1.0 / namespace(x).sqrt(self.buffers["running_var"] + self.eps)
        return {"xhat": (x - self.buffers["running_mean"]) * inv_std, "inv_std": inv_std}

    def r_forward(self, rx, tape, r):
        """R{y} = R{x} γ/σ + x̂ v_γ + v_β."""
        r.rx[id(self)] = rx
        entry, v = tape[id(self)], r.v[id(self)]
        ry = entry["xhat"] * v["weight"] + v["bias"]
        if rx is not None:
            ry += rx * (self.params["weight"] * entry["inv_std"])
        return ry

    def r_backward(self, rdout, tape, r, need_input_grad=True):
        """R{dγ} = Σ(R{dout} ⊙ x̂ + dout ⊙ R{x}/σ); R{dβ} = 1ᵀR{dout}; R{dx} = R{dout} γ/σ + dout v_γ/σ."""
        entry, rx, hv = tape[id(self)], r.rx[id(self)], r.hv[id(self)]
        xhat, inv_std, dout = entry["xhat"], entry["inv_std"], entry["dout"]
        xp = namespace(rdout)
        if rx is None:
            hv["weight"] += xp.sum(rdout * xhat, axis=0)
        else:
            hv["weight"] += xp.sum(rdout * xhat + dout * rx * inv_std, axis=0)
        hv["bias"] += rdout.sum(axis=0)
        return rdout * (self.params["weight"] * inv_std) + dout * (r.v[id(self)]["weight"] * inv_std)


class Dropout(Module):
    """Inverted dropout: in train mode each element is zeroed with probability p and the
    survivors are scaled by 1/(1 − p), so eval mode is the identity. Has its own Generator.

    The mask is drawn by that NumPy Generator on the host whatever the library (the standard has
    no random numbers), and moved to the input's device as booleans: every library drops the
    same units."""

    p: float
    rng: np.random.Generator

    def __init__(self, p: float = 0.5, *, rng=None):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p!r}")
        self.p = float(p)
        self.rng = as_generator(rng)

    def forward(self, x: np.ndarray) -> np.ndarray:
        check_array(self, x)
        xp = namespace(x)
        if not self.training or self.p == 0:
            self.cache["mask"] = None
            self.cache["shape"] = x.shape
            return x
        if self.p == 1:
            mask = xp.zeros_like(x)
        else:
            keep = self.rng.random(tuple(x.shape), dtype=np.float64 if x.dtype == xp.float64 else np.float32) >= self.p
            if not is_numpy(xp):
                keep = asarray(keep, xp, device=device_of(x))
            mask = xp.astype(keep, x.dtype) / xp.asarray(1 - self.p, dtype=x.dtype, device=device_of(x))
        self.cache["mask"] = mask
        self.cache["shape"] = x.shape
        return x * mask

    def backward(self, dout: np.ndarray) -> np.ndarray:
        shape = require_cache(self, "shape")
        check_dout(self, dout, shape)
        mask = self.cache["mask"]
        return dout if mask is None else dout * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"

    # -- the R-operator: docs/hessian.md, "Hessian–vector products: the R-operator" ----------
    # Eval mode (or p = 0) is the identity; a train-mode mask has no rule here.
    def r_missing(self) -> str | None:
        return "Dropout in train mode" if self.training and self.p > 0 else None

    def r_state(self, x: np.ndarray) -> dict:
        return {}

    def r_forward(self, rx, tape, r):
        return rx

    def r_backward(self, rdout, tape, r, need_input_grad=True):
        return rdout
