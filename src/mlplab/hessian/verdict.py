"""Minimum, saddle, maximum or flat: the verdict from the computed eigenvalues (docs/hessian.md,
"The verdict")."""

from __future__ import annotations

import numpy as np

#: default of :func:`classify`: the smallest eigenvalue counts as negative below −1e-3·max|λ|
VERDICT_TOLERANCE = 1e-3


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
        reason = (
            f"smallest eigenvalue {smallest:.4g} >= -{threshold:.3g} (= -{rel_tol:g} x max|eigenvalue| {scale:.4g}): "
            "no computed direction of clearly negative curvature"
        )
    else:
        verdict = "maximum"
        reason = f"largest eigenvalue {largest:.4g} < -{threshold:.3g}: every computed eigenvalue is clearly negative"
    return {
        "verdict": verdict,
        "smallest": smallest,
        "largest": largest,
        "max_abs": scale,
        "relative_tolerance": rel_tol,
        "threshold": -threshold,
        "negative_count": int(np.sum(values < -threshold)),
        "reason": reason,
    }
