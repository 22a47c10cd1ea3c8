"""The figure of the Hessian's spectral density (docs/hessian.md).

It takes the density as plain data, anything with ``nodes`` (the quadrature nodes, an array)
and ``curve(grid, width)`` (the smoothed density on a grid), such as
:class:`mlplab.hessian.SpectralDensity`; this module does not import :mod:`mlplab.hessian`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Density(Protocol):
    """What the figure reads of a spectral density."""

    nodes: np.ndarray

    def curve(self, grid: np.ndarray, width: float) -> np.ndarray: ...


def plot_density(density: Density, path=None, *, title: str | None = None):
    """The spectral density on a log scale (a Figure, saved as PNG when ``path`` is given)."""
    from mlplab.plots.base import InlineFigure, save_figure

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
