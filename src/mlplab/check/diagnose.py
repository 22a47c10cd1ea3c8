"""Match a wrong result to a named mistake by its numbers alone.

Each function takes the learner's array and mlplab's, plus what the mistake's variants are made
of (dY, W, the batch size…), and returns ``(mistake id or None, evidence)``. The evidence says
how the numbers relate (a transpose, a constant factor, one wrong region), never how to write
the code. None means the numbers match no mistake in the catalogue: the caller reports the
failure as unrecognised, with the evidence.
"""

from __future__ import annotations

import numpy as np

from mlplab.check.arrays import close, constant_factor, describe_factor, rel_error

Finding = tuple[str | None, str]


def mismatch(what: str, actual: np.ndarray, expected: np.ndarray) -> str:
    """Plain evidence of a difference, for a failure no pattern explains."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        return f"{what} has shape {actual.shape}, expected {expected.shape}"
    if not np.all(np.isfinite(actual)):
        bad = int(np.size(actual) - np.count_nonzero(np.isfinite(actual)))
        return f"{what} has {bad} non-finite entries (inf or NaN) of {actual.size}"
    diff = np.abs(actual - expected)
    where = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape))
    return (
        f"{what} differs from mlplab's: relative error {rel_error(actual, expected):.2g}; largest difference "
        f"{diff[where]:.4g} at {list(where)} (yours {actual[where]:.6g}, expected {expected[where]:.6g})"
    )


def _factor(what: str, actual, expected, batch: int) -> str | None:
    c = constant_factor(actual, expected)
    return None if c is None else f"your {what} is the expected {what} {describe_factor(c, batch)}"


def linear_weight_grad(actual: np.ndarray, expected: np.ndarray, batch: int) -> Finding:
    out_f, in_f = expected.shape
    if actual.shape == (in_f, out_f) and close(actual, expected.T):
        if out_f == in_f:
            return (
                "linear-weight-grad-transposed",
                "your dW equals the expected dWᵀ (on a square layer, where the shapes cannot tell)",
            )
        return (
            "linear-weight-grad-transposed",
            f"your dW has shape {actual.shape} and equals the expected dWᵀ; the weight, and so dW, is out × in = {expected.shape}",
        )
    if actual.shape == expected.shape and out_f != in_f and close(actual, expected.T.reshape(expected.shape)):
        return (
            "linear-weight-grad-transposed",
            f"your dW holds the values of the expected dWᵀ ({in_f} × {out_f}) reshaped to {expected.shape}",
        )
    if actual.shape == expected.shape:
        text = _factor("dW", actual, expected, batch)
        if text:
            return "linear-weight-grad-scale", text
    if actual.shape == expected.T.shape:
        text = _factor("dWᵀ", actual, expected.T, batch)
        if text:
            return "linear-weight-grad-transposed", text.replace("your dWᵀ", "your dW") + " (transposed and scaled)"
    return None, mismatch("dW", actual, expected)


def linear_bias_grad(actual: np.ndarray, expected: np.ndarray, dout: np.ndarray) -> Finding:
    batch, out_f = dout.shape
    flat = actual.reshape(-1) if actual.size == expected.size else None
    if flat is not None and actual.shape in ((out_f,), (1, out_f)):
        text = _factor("db", flat, expected, batch)
        if text:
            if abs(constant_factor(flat, expected) - 1 / batch) < 1e-6 / batch:
                text += ": a mean where a sum belongs"
            return "linear-bias-grad", text
    if actual.size == batch and batch != out_f and close(actual.reshape(-1), dout.sum(axis=1)):
        return "linear-bias-grad", (
            f"your db has shape {actual.shape} and equals dY summed over its out axis "
            f"(axis 1); the sum runs over the batch (axis 0), giving shape ({out_f},)"
        )
    if actual.shape == dout.shape and batch > 1 and close(actual, dout):
        return "linear-bias-grad", f"your db is dY itself, shape {actual.shape}, not summed over the batch"
    if actual.size == 1 and batch * out_f > 1 and close(actual.reshape(-1), [dout.sum()]):
        return (
            "linear-bias-grad",
            "your db is one number, the sum of all of dY; the sum runs over the batch only (axis 0)",
        )
    return None, mismatch("db", actual, expected)


def linear_input_grad(actual: np.ndarray, expected: np.ndarray, dout: np.ndarray, weight: np.ndarray) -> Finding:
    batch = dout.shape[0]
    if weight.shape[0] == weight.shape[1] and actual.shape == expected.shape and close(actual, dout @ weight.T):
        return "linear-input-grad", "your dX equals dY Wᵀ (the shapes allow it only because this layer is square)"
    if actual.shape == expected.shape:
        text = _factor("dX", actual, expected, batch)
        if text:
            return "linear-input-grad", text
    if actual.shape == expected.T.shape and close(actual, expected.T):
        return (
            "linear-input-grad",
            f"your dX has shape {actual.shape} and equals the expected dXᵀ; dX has the input's shape {expected.shape}",
        )
    return None, mismatch("dX", actual, expected)


def elu_backward(actual: np.ndarray, expected: np.ndarray, x: np.ndarray, dout: np.ndarray, alpha: float) -> Finding:
    if actual.shape != expected.shape or not np.all(np.isfinite(actual)):
        return None, mismatch("dX", actual, expected)
    negative = x <= 0
    wrong_neg = not close(actual[negative], expected[negative])
    wrong_pos = not close(actual[~negative], expected[~negative])
    if wrong_neg == wrong_pos:  # both sides wrong (or neither, which the caller never asks about)
        return None, mismatch("dX", actual, expected)
    side, region = ("x ≤ 0", negative) if wrong_neg else ("x > 0", ~negative)
    dy, xs, got = dout[region], x[region], actual[region]
    h = np.where(xs > 0, xs, alpha * np.expm1(np.minimum(xs, 0)))
    candidates = {
        "dY ⊙ h(x), without the + α": dy * h,
        "dY ⊙ eˣ, without the factor α": dy * np.exp(np.minimum(xs, 0)),
        "dY ⊙ α": dy * alpha,
        "dY unchanged (a slope of 1)": dy,
        "0": np.zeros_like(dy),
        "dY ⊙ x": dy * xs,
    }
    if not wrong_neg:  # the positive side's candidates: h'(x) there is 1
        candidates = {k: v for k, v in candidates.items() if not k.startswith("dY ⊙ h") and "eˣ" not in k}
    right = "x > 0" if wrong_neg else "x ≤ 0"
    for text, value in candidates.items():
        if close(got, value):
            return "elu-backward", f"your dX is right for {right} and wrong for {side}, where it equals {text}"
    return "elu-backward", (
        f"your dX is right for {right} and wrong for {side} "
        f"(relative error {rel_error(got, expected[region]):.2g} there)"
    )


def softmax_backward(actual: np.ndarray, expected: np.ndarray, y: np.ndarray, dout: np.ndarray) -> Finding:
    if actual.shape == expected.shape and close(actual, dout * y * (1 - y)):
        return (
            "softmax-backward-diagonal",
            "your dX equals dY ⊙ Y ⊙ (1 − Y): the Jacobian's diagonal only, without its off-diagonal terms −yᵢyⱼ",
        )
    return None, mismatch("dX", actual, expected)


def softmax_large_logits(actual: np.ndarray, x: np.ndarray) -> Finding:
    finite = np.isfinite(actual)
    if not np.all(finite):
        rows = sorted({int(r) for r in np.nonzero(~finite)[0]})
        spans = ", ".join(f"row {r} (logits from {x[r].min():.0f} to {x[r].max():.0f})" for r in rows[:3])
        return "softmax-overflow", f"your softmax gives inf or NaN on large logits: {spans}"
    return None, ""


def cross_entropy_loss(actual: float, expected: float, batch: int) -> Finding:
    c = constant_factor(np.array([actual]), np.array([expected]))
    if c is not None and batch > 1 and abs(c - batch) <= 1e-6 * batch:
        return "cross-entropy-not-mean", (
            f"your loss is {actual:.6g}, the expected {expected:.6g} × {batch} "
            f"(= S, the batch size): the sum over the batch where the mean belongs"
        )
    return None, f"your loss is {actual:.6g}, expected {expected:.6g}"


def cross_entropy_grad(actual: np.ndarray, expected: np.ndarray, batch: int) -> Finding:
    c = constant_factor(actual, expected)
    if c is not None:
        text = f"your dL/dx is the expected dL/dx {describe_factor(c, batch)}"
        if batch > 1 and abs(c - batch) <= 1e-6 * batch:
            text += ": the 1/S of the mean loss is missing"
        elif batch > 1 and abs(c - 1 / batch) <= 1e-6 / batch:
            text += ": the 1/S of the mean loss is applied twice"
        return "cross-entropy-grad-scale", text
    return None, mismatch("dL/dx", actual, expected)
