"""Probes of the learner's ELUModule and SoftMaxModule."""

from __future__ import annotations

import inspect

import numpy as np

from mlplab.check import diagnose, reference
from mlplab.check.arrays import (
    FD_TOL,
    central_differences,
    close,
    rel_error,
    sample_indices,
)
from mlplab.check.cache import check_cache
from mlplab.check.context import LearnerError, Probe, tagged

FD_ENTRIES = 12


def _rows(probe: Probe, name: str, formula: str, extra=()) -> dict:
    labels = (
        ("forward", f"forward: {formula}"),
        ("backward", "backward runs and returns dX"),
        ("dX", "dX against mlplab"),
        ("fd", "dX vs central differences of your forward"),
        *extra,
        ("cache", "cache: a second forward/backward pair"),
        ("clear", "clear_cache()"),
    )
    return {key: probe.row(name, label) for key, label in labels}


def _forward_backward(probe: Probe, rows, name: str, module, x, dout, tag: str):
    """(Y, dX) from the learner's module, or None after recording why not."""
    try:
        y = probe.array(f"{name}.forward", probe.call(f"{name}.forward ({tag})", module.forward, x.copy()), x.shape)
    except LearnerError as exc:
        rows["forward"].fail(tagged(tag, exc), kind="error")
        return None
    try:
        dx = probe.array(
            f"{name}.backward", probe.call(f"{name}.backward ({tag})", module.backward, dout.copy()), x.shape
        )
    except LearnerError as exc:
        rows["backward"].fail(tagged(tag, exc), kind="error")
        return None
    return y, dx


def _central_differences(probe: Probe, row, name: str, module, x, dout, dx, tag: str, rng) -> None:
    x_work = x.copy()

    def loss():
        return float(
            np.sum(np.asarray(module.forward(x_work.copy()), dtype=np.float64) * dout)
        )  # (a forward may write to its input)

    index = sample_indices(x.shape, FD_ENTRIES, rng)
    try:
        numeric = probe.call(f"{name}.forward (central differences, {tag})", central_differences, loss, x_work, index)
    except LearnerError as exc:
        row.fail(tagged(tag, exc), kind="error")
        return
    error = rel_error(np.array([dx[i] for i in index]), numeric)
    if error > FD_TOL:
        row.fail(
            f"{tag}: your dX disagrees with central differences of your forward "
            f"(relative error {error:.2g}, tolerance {FD_TOL:g})"
        )


def _cache_and_clear(probe: Probe, rows, name: str, make, shape) -> None:
    rng = probe.rng()
    x1, x2 = rng.standard_normal((2, *shape)) * 2
    dy1, dy2 = rng.standard_normal((2, *shape))

    def step(module, x, dy):
        y = probe.array(f"{name}.forward", probe.call(f"{name}.forward (cache check)", module.forward, x))
        dx = probe.array(f"{name}.backward", probe.call(f"{name}.backward (cache check)", module.backward, dy))
        return [y.copy(), dx.copy()]

    check_cache(rows["cache"], make, step, ["Y", "dX"], x1, dy1, x2, dy2)
    try:
        module = make()
        probe.call(f"{name}.forward (before clear_cache)", module.forward, x1.copy())
        probe.call(f"{name}.clear_cache", module.clear_cache)
    except LearnerError as exc:
        rows["clear"].error(exc)


# -- ELU ----------------------------------------------------------------------------------------
ELU_SHAPES = [(1, 7), (32, 9)]


def elu_alphas(cls) -> list[float | None]:
    """None (construct without arguments) for ELUModule(), 1.0 and 0.5 when it takes alpha."""
    try:
        parameters = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):
        return [None]
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return [1.0, 0.5] if positional else [None]


def check_elu(probe: Probe, cls) -> None:
    name = "ELUModule"
    rows = _rows(probe, name, "x for x > 0, α(eˣ − 1) otherwise")
    alphas = elu_alphas(cls)
    for alpha in alphas:
        call = f"{name}()" if alpha is None else f"{name}({alpha})"

        def make(alpha=alpha, call=call):
            return probe.call(call, cls) if alpha is None else probe.call(call, cls, alpha)

        value = 1.0 if alpha is None else alpha
        for shape in ELU_SHAPES:
            tag = f"{call}, shape {shape}"
            rng = probe.rng()
            x = rng.standard_normal(shape) * 2
            x[np.abs(x) < 1e-3] = 0.5  # central differences need distance from the kink at 0
            dout = rng.standard_normal(shape)
            y_ref, dx_ref = reference.elu(value, x, dout)
            try:
                module = make()
            except LearnerError as exc:
                rows["forward"].fail(tagged(tag, exc), kind="error")
                continue
            result = _forward_backward(probe, rows, name, module, x, dout, tag)
            if result is None:
                continue
            y, dx = result
            if not close(y, y_ref):
                rows["forward"].fail(f"{tag}: {diagnose.mismatch('Y', y, y_ref)}")
            if not close(dx, dx_ref):
                mistake, evidence = diagnose.elu_backward(dx, dx_ref, x, dout, value)
                rows["dX"].fail(f"{tag}: {evidence}", mistake)
            _central_differences(probe, rows["fd"], name, module, x, dout, dx, tag, rng)
        _cache_and_clear(probe, rows, name, make, ELU_SHAPES[1])
    for row in rows.values():
        row.done()
    shown = "ELUModule() (α = 1)" if alphas == [None] else "ELUModule(α) with α = 1 and 0.5"
    probe.note(name, f"checked as {shown}")


# -- softmax ------------------------------------------------------------------------------------
SOFTMAX_SHAPES = [(1, 5), (16, 10)]


def large_logits(rng: np.random.Generator) -> np.ndarray:
    """Rows far above and below zero and a row spanning ±800: exp() overflows or underflows
    without the shift by each row's own maximum."""
    x = rng.standard_normal((4, 6))
    x[0] += 1000
    x[1] -= 1000
    x[2] = np.linspace(-800, 800, 6)
    x[3] += 710
    return x


def check_softmax(probe: Probe, cls) -> None:
    name = "SoftMaxModule"
    rows = _rows(probe, name, "exp(x) / rowsum(exp(x))", extra=(("large", "forward on large logits (±1000)"),))

    def make():
        return probe.call(f"{name}()", cls)

    for shape in SOFTMAX_SHAPES:
        tag = f"shape {shape}"
        rng = probe.rng()
        x = rng.standard_normal(shape) * 2
        dout = rng.standard_normal(shape)
        y_ref, dx_ref = reference.softmax(x, dout)
        try:
            module = make()
        except LearnerError as exc:
            rows["forward"].fail(tagged(tag, exc), kind="error")
            continue
        result = _forward_backward(probe, rows, name, module, x, dout, tag)
        if result is None:
            continue
        y, dx = result
        if not close(y, y_ref):
            rows["forward"].fail(f"{tag}: {diagnose.mismatch('Y', y, y_ref)}")
        if not close(dx, dx_ref):
            mistake, evidence = diagnose.softmax_backward(dx, dx_ref, y_ref, dout)
            rows["dX"].fail(f"{tag}: {evidence}", mistake)
        _central_differences(probe, rows["fd"], name, module, x, dout, dx, tag, rng)
    rng = probe.rng()
    x = large_logits(rng)
    y_ref, _ = reference.softmax(x, np.zeros_like(x))
    try:
        module = make()
        y = probe.array(
            f"{name}.forward", probe.call(f"{name}.forward (large logits)", module.forward, x.copy()), x.shape
        )
    except LearnerError as exc:
        rows["large"].error(exc)
    else:
        if not close(y, y_ref):
            mistake, evidence = diagnose.softmax_large_logits(y, x)
            rows["large"].fail(evidence or diagnose.mismatch("Y", y, y_ref), mistake)
    _cache_and_clear(probe, rows, name, make, SOFTMAX_SHAPES[1])
    for row in rows.values():
        row.done()
