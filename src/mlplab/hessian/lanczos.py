"""Extreme eigenvalues of a symmetric operator given as a matrix-vector callable: thick-restart
Lanczos (Krylov–Schur form) with full reorthogonalisation, both ends of the spectrum from one
Krylov space, no SciPy needed (docs/hessian.md, "Extreme eigenvalues: thick-restart Lanczos")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

#: default of :func:`lanczos_extremes`: a Ritz value is converged when its residual is below
#: this times the largest |Ritz value|
LANCZOS_TOLERANCE = 1e-4

MatVec = Callable[[np.ndarray], np.ndarray]


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


def lanczos_extremes(
    matvec: MatVec,
    dim: int,
    *,
    top: int = 10,
    bottom: int = 10,
    tol: float = LANCZOS_TOLERANCE,
    max_products: int = 1000,
    basis_size: int | None = None,
    seed=0,
    progress: Callable[[int, np.ndarray], None] | None = None,
) -> LanczosResult:
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
        keep = np.unique(
            np.concatenate(
                [
                    np.arange(size - 1, size - 1 - (top + extra_top), -1),
                    np.arange(bottom + extra - extra_top),
                ]
            )
        )
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
        top=theta[top_index].copy(),
        bottom=theta[bottom_index].copy(),
        top_residuals=residuals[top_index].copy(),
        bottom_residuals=residuals[bottom_index].copy(),
        converged=converged,
        products=products,
        restarts=restarts,
        basis_size=m,
        tolerance=tol,
        exhausted=exhausted,
        ritz_values=theta.copy(),
    )
