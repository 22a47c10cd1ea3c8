"""Each module's R-operator rules (r_forward, r_backward) against central differences of its own
forward and backward: R{f} = d/dr f(θ + r v, x + r R{x}, dout + r R{dout}) at r = 0."""

import numpy as np
import pytest

import mlplab.hessian  # noqa: F401  (imports every module class that may carry a rule)
from mlplab.hessian import ParameterSpace
from mlplab.models import MLP
from mlplab.nn import (
    ELU,
    GELU,
    BatchNorm1d,
    Dropout,
    LeakyReLU,
    Linear,
    Module,
    ReLU,
    Residual,
    Sequential,
    Sigmoid,
    Softmax,
    SoftmaxCrossEntropy,
    Tanh,
)
from mlplab.nn.base import RDirection

WIDTH = 4


def _batch_norm() -> BatchNorm1d:
    rng = np.random.default_rng(1)
    module = BatchNorm1d(WIDTH)
    module.params["weight"][...] = rng.uniform(0.5, 2.0, WIDTH)
    module.params["bias"][...] = rng.normal(size=WIDTH)
    module.buffers["running_mean"][...] = rng.normal(size=WIDTH)
    module.buffers["running_var"][...] = rng.uniform(0.5, 2.0, WIDTH)
    return module.eval()


FACTORIES = {
    "Linear": lambda: Linear(WIDTH, 3, rng=0),
    "ELU": lambda: ELU(alpha=0.7),
    "ReLU": ReLU,
    "LeakyReLU": lambda: LeakyReLU(0.1),
    "Tanh": Tanh,
    "Sigmoid": Sigmoid,
    "GELU-tanh": GELU,
    "GELU-exact": lambda: GELU(approximate="none"),
    "BatchNorm1d-eval": _batch_norm,
    "Dropout-eval": lambda: Dropout(0.3, rng=0).eval(),
    "Sequential": lambda: Sequential(Linear(WIDTH, 5, rng=1), Tanh(), Linear(5, 3, rng=2)),
    "Residual": lambda: Residual(Sequential(Linear(WIDTH, WIDTH, rng=3), ELU())),
    "MLP": lambda: MLP(WIDTH, [WIDTH, WIDTH], 3, activation="gelu", use_batch_norm=True, residual=True, seed=4).eval(),
}


def _passes(module: Module, x, dout):
    """forward and backward: output, dx and every parameter gradient (copies)."""
    out = module.forward(x).copy()
    dx = module.backward(dout).copy()
    grads = np.concatenate([grad.reshape(-1).copy() for _, _, grad in module.named_parameters()] or [np.zeros(0)])
    return out, dx, grads


@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize("data_like", [False, True], ids=["rx", "rx=0"])
def test_r_rule_matches_finite_differences_of_backward(name, data_like):
    rng = np.random.default_rng(0)
    module = FACTORIES[name]()
    assert module.r_missing() is None
    x = rng.normal(size=(6, WIDTH))
    x += 0.2 * np.sign(x)  # away from the kinks of ReLU, LeakyReLU and ELU's h''
    out = module.forward(x)
    dout = rng.normal(size=out.shape)
    rx = None if data_like else rng.normal(size=x.shape)
    rdout = rng.normal(size=out.shape)
    space = ParameterSpace(module)
    v = rng.normal(size=space.size)

    tape: dict = {}
    np.testing.assert_array_equal(module.record_forward(x, tape), out)
    module.record_backward(dout, tape)
    hv = np.zeros(space.size)
    direction = RDirection(space.views(v), space.views(hv))
    ry = module.r_forward(rx, tape, direction)
    rdx = module.r_backward(rdout, tape, direction)

    theta = space.get()
    step = 1e-6
    shifted = []
    for sign in (1, -1):
        space.set(theta + sign * step * v)
        moved_x = x if rx is None else x + sign * step * rx
        shifted.append(_passes(module, moved_x, dout + sign * step * rdout))
    space.set(theta)
    expected = [(plus - minus) / (2 * step) for plus, minus in zip(*shifted)]
    for what, got, want in (("R{y}", ry, expected[0]), ("R{dx}", rdx, expected[1]), ("R{dθ}", hv, expected[2])):
        got = np.zeros_like(want) if got is None else got
        scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7 * scale, err_msg=f"{name}: {what}")


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_cross_entropy_r_gradient_matches_finite_differences(smoothing):
    rng = np.random.default_rng(1)
    loss = SoftmaxCrossEntropy(label_smoothing=smoothing)
    logits, labels, rz = rng.normal(size=(5, 4)), rng.integers(0, 4, 5), rng.normal(size=(5, 4))
    step = 1e-6
    want = (loss.backward(logits + step * rz, labels) - loss.backward(logits - step * rz, labels)) / (2 * step)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = shifted / shifted.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(SoftmaxCrossEntropy.r_gradient(probs, rz), want, rtol=1e-6, atol=1e-9)


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_module_with_an_r_rule_is_checked_here():
    tested = {type(factory()) for factory in FACTORIES.values()}
    claiming = {cls for cls in _subclasses(Module) if cls.__module__.startswith("mlplab.")
                and cls.r_forward is not Module.r_forward and not cls.__name__.startswith("_")}
    assert claiming - tested == set()


def test_modules_without_a_rule_say_so():
    assert BatchNorm1d(WIDTH).train().r_missing() == "BatchNorm1d in train mode"
    assert Dropout(0.5).train().r_missing() == "Dropout in train mode"
    assert Dropout(0.0).train().r_missing() is None
    assert Softmax().r_missing() == "Softmax"
    with pytest.raises(NotImplementedError, match="Softmax has no R-operator rule"):
        Softmax().r_state(np.zeros((2, 3)))


def test_a_container_without_its_own_walk_is_refused_by_name():
    class Pair(Module):
        def __init__(self):
            super().__init__()
            self.add_module("first", Tanh())

    with pytest.raises(TypeError, match="container Pair"):
        Pair().record_backward(np.zeros((2, 2)), {})
    with pytest.raises(TypeError, match="container Pair"):
        Pair().record_forward(np.zeros((2, 2)), {})
