"""Probes of the learner's MLP: which modules its forward calls, in which order, and its numbers.

The structure is observed, not read from the source: while the MLP is built, the module classes
of modules.py record each instance and its constructor arguments; while it runs forward, each
instance records that it was called and with which shapes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlplab.check.arrays import close
from mlplab.check.cache import check_cache
from mlplab.check.check_linear import grad_arrays, param_arrays
from mlplab.check.context import LearnerError, Probe
from mlplab.check.diagnose import mismatch
from mlplab.nn import ELU, Linear, Module, Sequential, Softmax

NAME = "MLP"
N_INPUTS, N_HIDDEN, N_CLASSES, BATCH = 20, [16, 12], 5, 8
KINDS = {"LinearModule": "Linear", "ELUModule": "ELU", "SoftMaxModule": "Softmax", "CrossEntropyModule": "CrossEntropy"}


@dataclass
class Built:
    """A learner MLP and the module calls its forward made."""

    mlp: Any  # the learner's object, used by duck typing
    calls: list = field(default_factory=list)  # (kind, instance, constructor arguments)

    def linears(self):
        return [inst for kind, inst, _ in self.calls if kind == "Linear"]


def _arguments(init, instance, args, kwargs) -> list:
    try:
        bound = inspect.signature(init).bind(instance, *args, **kwargs)
        bound.apply_defaults()
        return list(bound.arguments.values())[1:]
    except (TypeError, ValueError):
        return list(args)


def build(probe: Probe, mlp_cls, classes: dict, n_inputs: int, n_hidden: list[int], n_classes: int, x) -> Built:
    """Construct the learner's MLP and run one forward on ``x``, recording the module calls."""
    made: dict[int, tuple[str, Any, list]] = {}
    saved = {}
    for class_name, cls in classes.items():
        init = cls.__init__
        saved[cls] = cls.__dict__.get("__init__")

        def recording_init(self, *args, _init=init, _kind=KINDS[class_name], **kwargs):
            _init(self, *args, **kwargs)
            made.setdefault(id(self), (_kind, self, _arguments(_init, self, args, kwargs)))

        cls.__init__ = recording_init
    try:
        mlp = probe.call(f"{NAME}({n_inputs}, {n_hidden}, {n_classes})", mlp_cls, n_inputs, list(n_hidden), n_classes)
    finally:
        for cls, init in saved.items():
            if init is None:
                del cls.__init__
            else:
                cls.__init__ = init
    built = Built(mlp)
    wrapped = []  # (instance, its own 'forward' attribute if it had one)
    for kind, instance, args in made.values():
        original = instance.forward
        own = getattr(instance, "__dict__", {}).get("forward")

        def recording_forward(*a, _original=original, _entry=(kind, instance, args), **k):
            built.calls.append(_entry)
            return _original(*a, **k)

        try:
            instance.forward = recording_forward
            wrapped.append((instance, own))
        except (AttributeError, TypeError):
            pass
    try:
        probe.call(f"{NAME}.forward", mlp.forward, x.copy())
    finally:
        for instance, own in wrapped:
            if own is None:
                del instance.forward
            else:
                instance.forward = own
    return built


def describe(kind: str, instance, args) -> str:
    if kind == "Linear":
        weight = getattr(instance, "params", {}).get("weight")
        shape: tuple[int, ...] = np.shape(weight) if weight is not None else ()
        flag = bool(args[2]) if len(args) > 2 else False
        width = f"{shape[1]} → {shape[0]}" if len(shape) == 2 else "?"
        return f"Linear({width}{', input_layer=True' if flag else ''})"
    return kind


def expected_calls(n_inputs: int, n_hidden: list[int], n_classes: int) -> list[str]:
    calls, width = [], n_inputs
    for index, hidden in enumerate(n_hidden):
        calls += [f"Linear({width} → {hidden}{', input_layer=True' if index == 0 else ''})", "ELU"]
        width = hidden
    return [*calls, f"Linear({width} → {n_classes}{'' if n_hidden else ', input_layer=True'})", "Softmax"]


def structure_difference(built: Built, n_inputs: int, n_hidden: list[int], n_classes: int) -> str | None:
    yours = [describe(*call) for call in built.calls]
    expected = expected_calls(n_inputs, n_hidden, n_classes)
    if yours == expected:
        return None
    first = next((i for i, (a, b) in enumerate(zip(yours, expected)) if a != b), min(len(yours), len(expected)))
    where = (
        f"call {first + 1}: yours is {yours[first] if first < len(yours) else 'missing'}, expected "
        f"{expected[first] if first < len(expected) else 'nothing more'}"
    )
    return (
        f"MLP({n_inputs}, {n_hidden}, {n_classes}).forward calls {' → '.join(yours) or 'no module of modules.py'}; "
        f"expected {' → '.join(expected)} ({where})"
    )


def reference_chain(built: Built) -> Sequential:
    """mlplab modules in the learner's order, holding the learner's current weights."""
    layers: list[Module] = []
    for kind, instance, args in built.calls:
        if kind == "Linear":
            weight = np.asarray(instance.params["weight"], dtype=np.float64)
            layer = Linear(weight.shape[1], weight.shape[0])
            layer.params["weight"][...] = weight
            layer.params["bias"][...] = np.asarray(instance.params["bias"]).reshape(-1)
            layers.append(layer)
        elif kind == "ELU":
            layers.append(ELU(float(args[0]) if args and args[0] is not None else 1.0))
        else:
            layers.append(Softmax())
    return Sequential(*layers)


def set_weights(probe: Probe, built: Built, rng: np.random.Generator) -> None:
    for layer in built.linears():
        weight, bias = layer.params["weight"], layer.params["bias"]
        weight[...] = rng.standard_normal(weight.shape) / np.sqrt(weight.shape[1])
        bias[...] = rng.standard_normal(bias.shape) * 0.1


def check(probe: Probe, mlp_cls, classes: dict) -> None:
    rows = {
        key: probe.row(NAME, label)
        for key, label in (
            ("structure", "layers, widths, order, input_layer"),
            ("forward", "forward against mlplab's modules"),
            ("backward", "backward: every layer's dW and db"),
            ("cache", "cache: a second forward/backward pair"),
            ("clear", "clear_cache()"),
        )
    }
    earlier = sorted(probe.failed_modules)
    consequence = f"follows from the failures of {', '.join(earlier)} above" if earlier else None
    rng = probe.rng()
    x = rng.standard_normal((BATCH, N_INPUTS))
    dout = rng.standard_normal((BATCH, N_CLASSES))
    try:
        built = build(probe, mlp_cls, classes, N_INPUTS, N_HIDDEN, N_CLASSES, x)
        problem = structure_difference(built, N_INPUTS, N_HIDDEN, N_CLASSES)
    except LearnerError as exc:
        rows["structure"].error(exc)
        _finish(rows, ("forward", "backward", "cache", "clear"), "the MLP could not be built and run")
        return
    if problem:
        rows["structure"].fail(problem, "mlp-structure")
        _finish(rows, ("forward", "backward", "cache", "clear"), "the structure differs")
        return
    try:
        for layer in built.linears():
            shape = np.shape(layer.params["weight"])
            param_arrays(probe, layer, *shape)
        set_weights(probe, built, rng)
        chain = reference_chain(built)
        y = probe.array(
            f"{NAME}.forward", probe.call(f"{NAME}.forward", built.mlp.forward, x.copy()), (BATCH, N_CLASSES)
        )
    except LearnerError as exc:
        rows["forward"].error(exc)
        _finish(rows, ("backward", "cache", "clear"), "forward failed")
        return
    y_ref = chain.forward(x.copy())
    if not close(y, y_ref):
        rows["forward"].fail(
            mismatch("your MLP's output", y, y_ref)
            + " (mlplab's modules, same weights)"
            + (f" ({consequence})" if consequence else ""),
            kind="consequence" if consequence else "numbers",
        )
    try:
        probe.call(f"{NAME}.backward", built.mlp.backward, dout.copy())
        grads = [grad_arrays(probe, layer) for layer in built.linears()]
    except LearnerError as exc:
        rows["backward"].error(exc)
        _finish(rows, ("cache", "clear"), "backward failed")
        return
    chain.backward(dout.copy())
    ref_layers = [m for m in chain.children() if isinstance(m, Linear)]
    for index, ((dw, db), ref) in enumerate(zip(grads, ref_layers)):
        for what, actual, expected in (("dW", dw, ref.grads["weight"]), ("db", db.reshape(-1), ref.grads["bias"])):
            if not close(actual, expected):
                rows["backward"].fail(
                    mismatch(f"layer {index + 1}'s {what}", actual, expected)
                    + (f" ({consequence})" if consequence else ""),
                    kind="consequence" if consequence else "numbers",
                )
    weights = [(np.array(layer.params["weight"]), np.array(layer.params["bias"])) for layer in built.linears()]

    def make():
        fresh = build(probe, mlp_cls, classes, N_INPUTS, N_HIDDEN, N_CLASSES, x)
        for layer, (w, b) in zip(fresh.linears(), weights):
            layer.params["weight"][...] = w
            layer.params["bias"][...] = b
        return fresh

    def step(fresh, x_in, dy):
        out = probe.array(f"{NAME}.forward", probe.call(f"{NAME}.forward (cache check)", fresh.mlp.forward, x_in))
        probe.call(f"{NAME}.backward (cache check)", fresh.mlp.backward, dy)
        return [out.copy(), *[g for layer in fresh.linears() for g in grad_arrays(probe, layer)]]

    names = ["Y"] + [f"layer {i + 1}'s {g}" for i in range(len(weights)) for g in ("dW", "db")]
    x1, x2 = rng.standard_normal((2, BATCH, N_INPUTS))
    dy1, dy2 = rng.standard_normal((2, BATCH, N_CLASSES))
    check_cache(rows["cache"], make, step, names, x1, dy1, x2, dy2, consequence=consequence)
    try:
        probe.call(f"{NAME}.clear_cache", built.mlp.clear_cache)
    except LearnerError as exc:
        rows["clear"].error(exc)
    _finish(rows)


def _finish(rows: dict, skip: tuple[str, ...] = (), reason: str = "") -> None:
    """Write the rows that ran; the ones in ``skip`` did not and are summed up in one note."""
    for key, row in rows.items():
        if key not in skip:
            row.done()
    if skip:
        names = "; ".join(rows[key].name for key in skip)
        next(iter(rows.values())).probe.note(NAME, f"not checked ({reason}): {names}")
