"""Probes of the learner's LinearModule: forward, the three gradients, the cache, initialisation."""

from __future__ import annotations

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

NAME = "LinearModule"
#: (batch, in, out): a batch of 64, batch 1, non-square both ways, a square layer
SHAPES = [(64, 12, 7), (1, 3, 5), (9, 6, 6)]
INIT_SHAPE = (400, 100)
FD_ENTRIES = 12


def param_arrays(probe: Probe, layer, out_f: int, in_f: int) -> tuple[np.ndarray, np.ndarray]:
    """The learner's weight and bias arrays, after checking their shapes and dtype."""
    params = getattr(layer, "params", None)
    if not isinstance(params, dict) or "weight" not in params or "bias" not in params:
        raise LearnerError(f"{NAME} has no params dict with 'weight' and 'bias'")
    weight = probe.array("params['weight']", params["weight"])
    bias = probe.array("params['bias']", params["bias"])
    if weight.shape != (out_f, in_f):
        raise LearnerError(f"params['weight'] has shape {weight.shape}; it must be out × in = {(out_f, in_f)}")
    if bias.shape not in ((out_f,), (1, out_f)):
        raise LearnerError(f"params['bias'] has shape {bias.shape}; it must be ({out_f},) or (1, {out_f})")
    return weight, bias


def grad_arrays(probe: Probe, layer) -> tuple[np.ndarray, np.ndarray]:
    grads = getattr(layer, "grads", None)
    if not isinstance(grads, dict) or "weight" not in grads or "bias" not in grads:
        raise LearnerError(f"after backward, {NAME} has no grads dict with 'weight' and 'bias'")
    return probe.array("grads['weight']", grads["weight"]).copy(), probe.array("grads['bias']", grads["bias"]).copy()


def build(probe: Probe, cls, weight: np.ndarray, bias: np.ndarray):
    """A learner LinearModule holding ``weight`` and ``bias`` (written into its own arrays)."""
    out_f, in_f = weight.shape
    layer = probe.call(f"{NAME}({in_f}, {out_f})", cls, in_f, out_f)
    w, b = param_arrays(probe, layer, out_f, in_f)
    w[...] = weight
    b[...] = bias.reshape(b.shape)
    return layer


def check(probe: Probe, cls) -> None:
    rows = {
        key: probe.row(NAME, label)
        for key, label in (
            ("params", "params and grads: shapes and dtype"),
            ("forward", "forward: Y = X Wᵀ + b"),
            ("backward", "backward runs and returns dX"),
            ("dW", "dW = dYᵀ X"),
            ("db", "db = 1ᵀ dY (sum over the batch)"),
            ("dX", "dX = dY W"),
            ("fd", "gradients vs central differences of your forward"),
            ("cache", "cache: a second forward/backward pair"),
            ("clear", "clear_cache()"),
            ("init", "initialisation statistics"),
        )
    }
    for batch, in_f, out_f in SHAPES:
        _one_shape(probe, cls, rows, batch, in_f, out_f)
    _cache(probe, cls, rows["cache"], rows["clear"])
    _init(probe, cls, rows["init"])
    for row in rows.values():
        row.done()


def _one_shape(probe: Probe, cls, rows, batch: int, in_f: int, out_f: int) -> None:
    tag = f"S={batch}, in={in_f}, out={out_f}"
    rng = probe.rng()
    weight = rng.standard_normal((out_f, in_f)) * 0.5
    bias = rng.standard_normal(out_f)
    x = rng.standard_normal((batch, in_f))
    dout = rng.standard_normal((batch, out_f))
    y_ref, dx_ref, dw_ref, db_ref = reference.linear(weight, bias, x, dout)
    try:
        layer = build(probe, cls, weight, bias)
    except LearnerError as exc:
        rows["params"].fail(tagged(tag, exc), kind="error")
        return
    try:
        y = probe.array(
            f"{NAME}.forward", probe.call(f"{NAME}.forward ({tag})", layer.forward, x.copy()), (batch, out_f)
        )
    except LearnerError as exc:
        rows["forward"].fail(tagged(tag, exc), kind="error")
        return
    if not close(y, y_ref):
        rows["forward"].fail(f"{tag}: {diagnose.mismatch('Y', y, y_ref)}")
    try:
        dx = probe.array(f"{NAME}.backward", probe.call(f"{NAME}.backward ({tag})", layer.backward, dout.copy()))
        dw, db = grad_arrays(probe, layer)
    except LearnerError as exc:
        rows["backward"].fail(tagged(tag, exc), kind="error")
        return
    w_shape, b_shape = (layer.params["weight"].shape, layer.params["bias"].shape)
    if dw.shape != w_shape or db.shape != b_shape:
        rows["params"].fail(
            f"{tag}: grads['weight'] has shape {dw.shape} and grads['bias'] {db.shape}; "
            f"each gradient has its parameter's shape, {w_shape} and {b_shape}"
        )
    checks = (
        ("dW", dw, dw_ref, lambda: diagnose.linear_weight_grad(dw, dw_ref, batch)),
        (
            "db",
            db.reshape(-1) if db.shape == (1, out_f) else db,
            db_ref,
            lambda: diagnose.linear_bias_grad(db, db_ref, dout),
        ),
        ("dX", dx, dx_ref, lambda: diagnose.linear_input_grad(dx, dx_ref, dout, weight)),
    )
    for key, actual, expected, find in checks:
        if not close(actual, expected):
            mistake, evidence = find()
            rows[key].fail(f"{tag}: {evidence}", mistake)
    if dw.shape == w_shape and db.shape == b_shape and dx.shape == x.shape:
        _central_differences(probe, layer, rows["fd"], tag, x, dout, dw, db, dx, rng)


def _central_differences(probe, layer, row, tag, x, dout, dw, db, dx, rng) -> None:
    x_work = x.copy()

    def loss():
        return float(
            np.sum(np.asarray(layer.forward(x_work.copy()), dtype=np.float64) * dout)
        )  # (a forward may write to its input)

    try:
        for name, array, analytic in (
            ("dW", layer.params["weight"], dw),
            ("db", layer.params["bias"], db),
            ("dX", x_work, dx),
        ):
            index = sample_indices(array.shape, FD_ENTRIES, rng)
            numeric = probe.call(
                f"{NAME}.forward (central differences, {tag})", central_differences, loss, array, index
            )
            mine = np.array([analytic[i] for i in index])
            error = rel_error(mine, numeric)
            if error > FD_TOL:
                row.fail(
                    f"{tag}: your {name} disagrees with central differences of your forward "
                    f"(relative error {error:.2g}, tolerance {FD_TOL:g})"
                )
    except LearnerError as exc:
        row.fail(tagged(tag, exc), kind="error")


def _cache(probe: Probe, cls, row, clear_row) -> None:
    batch, in_f, out_f = SHAPES[0]
    rng = probe.rng()
    weight, bias = rng.standard_normal((out_f, in_f)) * 0.5, rng.standard_normal(out_f)
    x1, x2 = rng.standard_normal((2, batch, in_f))
    dy1, dy2 = rng.standard_normal((2, batch, out_f))

    def step(layer, x, dy):
        y = probe.array(f"{NAME}.forward", probe.call(f"{NAME}.forward (cache check)", layer.forward, x))
        dx = probe.array(f"{NAME}.backward", probe.call(f"{NAME}.backward (cache check)", layer.backward, dy))
        return [y.copy(), dx.copy(), *grad_arrays(probe, layer)]

    check_cache(row, lambda: build(probe, cls, weight, bias), step, ["Y", "dX", "dW", "db"], x1, dy1, x2, dy2)
    try:
        layer = build(probe, cls, weight, bias)
        probe.call(f"{NAME}.forward (before clear_cache)", layer.forward, x1.copy())
        probe.call(f"{NAME}.clear_cache", layer.clear_cache)
    except LearnerError as exc:
        clear_row.error(exc)


def _init(probe: Probe, cls, row) -> None:
    in_f, out_f = INIT_SHAPE
    for input_layer in (False, True):
        call = f"{NAME}({in_f}, {out_f}, input_layer={input_layer})"
        try:
            layer = probe.call(call, cls, in_f, out_f, input_layer=input_layer)
            weight, bias = param_arrays(probe, layer, out_f, in_f)
        except LearnerError as exc:
            row.error(exc)
            return
        std = float(weight.std())
        expected = np.sqrt((1.0 if input_layer else 2.0) / in_f)
        if abs(std / expected - 1) > 0.05:
            named = {
                f"√(1/in) = √(1/{in_f})": np.sqrt(1 / in_f),
                f"√(2/in) = √(2/{in_f})": np.sqrt(2 / in_f),
                f"√(2/out) = √(2/{out_f})": np.sqrt(2 / out_f),
                f"√(1/out) = √(1/{out_f})": np.sqrt(1 / out_f),
                "1": 1.0,
                f"√(2/(in + out)) = √(2/{in_f + out_f})": np.sqrt(2 / (in_f + out_f)),
            }
            like = next((f" ≈ {k}" for k, v in named.items() if abs(std / v - 1) <= 0.05), "")
            row.fail(
                f"{call}: your weight std is {std:.4g}{like}; expected {'√(1/in)' if input_layer else '√(2/in)'} "
                f"= {expected:.4g} (ratio {std / expected:.3g})",
                "linear-init",
            )
            continue
        if abs(float(weight.mean())) > 5 * expected / np.sqrt(weight.size):
            row.fail(f"{call}: your weights have mean {weight.mean():.3g}, not 0 (std {std:.3g})", "linear-init")
        if np.any(bias != 0):
            row.fail(
                f"{call}: your bias is not zero at initialisation (largest |b| = {np.abs(bias).max():.3g})",
                "linear-init",
            )
