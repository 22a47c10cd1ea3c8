"""The trace (Hutchinson) and the spectral density (stochastic Lanczos quadrature) of a symmetric
operator (docs/hessian.md, "Trace and spectral density")."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mlplab.hessian.lanczos import MatVec, _orthogonalise


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
