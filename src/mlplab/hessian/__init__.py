"""The loss Hessian of a NumPy MLP, never formed: exact Hessian-vector products, its extreme
eigenvalues, its trace, its spectral density and a verdict on the kind of critical point
(docs/hessian.md). One idea per file:

- :mod:`~mlplab.hessian.hvp`: :class:`ModelHessian`, Hv by the R-operator, which each module of
  :mod:`mlplab.nn` supplies beside its backward (or by finite differences where one has none);
- :mod:`~mlplab.hessian.lanczos`: :func:`lanczos_extremes`, both ends of the spectrum;
- :mod:`~mlplab.hessian.spectrum`: :func:`hutchinson_trace` and :func:`spectral_density`;
- :mod:`~mlplab.hessian.verdict`: :func:`classify`, minimum or saddle.

Its figure, :func:`mlplab.plots.plot_density`, lives with the other figures in :mod:`mlplab.plots`.
"""

from mlplab.hessian.hvp import (
    ModelHessian,
    ParameterSpace,
    float64_model,
    missing_exact_product,
)
from mlplab.hessian.lanczos import (
    LANCZOS_TOLERANCE,
    LanczosResult,
    MatVec,
    lanczos_extremes,
)
from mlplab.hessian.spectrum import (
    SpectralDensity,
    TraceEstimate,
    hutchinson_trace,
    spectral_density,
)
from mlplab.hessian.verdict import VERDICT_TOLERANCE, classify

__all__ = [
    "LANCZOS_TOLERANCE",
    "VERDICT_TOLERANCE",
    "LanczosResult",
    "MatVec",
    "ModelHessian",
    "ParameterSpace",
    "SpectralDensity",
    "TraceEstimate",
    "classify",
    "float64_model",
    "hutchinson_trace",
    "lanczos_extremes",
    "missing_exact_product",
    "spectral_density",
]
