"""Optimisers (hand-worked steps, agreement with torch.optim, resume) and learning-rate schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlplab.models import MLP
from mlplab.nn import SoftmaxCrossEntropy
from mlplab.optim import SGD, Adam, AdamW, ConstantSchedule, CosineSchedule, StepSchedule, make_schedule

EXACT = 1e-12


def one_param(value=1.0, grad=0.5):
    """A single scalar parameter (as a 1-element array) and its gradient array."""
    return np.array([value]), np.array([grad])


# -- SGD by hand ---------------------------------------------------------------------------
def test_one_sgd_step():
    p, g = np.array([1.0, -2.0]), np.array([0.5, 0.25])
    SGD([(p, g)], lr=0.1).step()
    np.testing.assert_allclose(p, [0.95, -2.025], rtol=0, atol=EXACT)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        # buf = 0.5 → p = 1 − 0.05; buf = 0.9·0.5 − 0.2 = 0.25 → p = 0.95 − 0.025
        ({"momentum": 0.9}, [0.95, 0.925]),
        # d = g + 0.9·buf: 0.5 + 0.45 = 0.95 → p = 0.905; −0.2 + 0.9·0.25 = 0.025 → p = 0.9025
        ({"momentum": 0.9, "nesterov": True}, [0.905, 0.9025]),
        # the first buffer is g undamped; then buf = 0.45 + 0.5·(−0.2) = 0.35 → p = 0.95 − 0.035
        ({"momentum": 0.9, "dampening": 0.5}, [0.95, 0.915]),
        # d = g + 0.1·p: 0.5 + 0.1 = 0.6 → p = 0.94; −0.2 + 0.094 = −0.106 → p = 0.9506
        ({"weight_decay": 0.1}, [0.94, 0.9506]),
    ],
    ids=["momentum", "nesterov", "dampening", "weight_decay"],
)
def test_two_sgd_steps_by_hand(kwargs, expected):
    p, g = one_param()
    optimizer = SGD([(p, g)], lr=0.1, **kwargs)
    observed = []
    for grad in (0.5, -0.2):
        g[...] = grad
        optimizer.step()
        observed.append(p[0])
    np.testing.assert_allclose(observed, expected, rtol=0, atol=EXACT)


# -- Adam by hand --------------------------------------------------------------------------
def textbook_adam(p, grads, lr, beta1, beta2, eps, weight_decay=0.0, decoupled=False):
    """Adam as written in Kingma & Ba (bias-corrected m̂ and v̂), in plain Python floats."""
    m = v = 0.0
    trajectory = []
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p *= 1 - lr * weight_decay
        else:
            g = g + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
        p -= lr * m_hat / (math.sqrt(v_hat) + eps)
        trajectory.append(p)
    return trajectory


def test_one_adam_step_is_lr_times_the_sign():
    # After one step m̂ = g and v̂ = g², so the move is lr·g/(|g| + eps) = 0.1·(1 − 2e-8).
    p, g = one_param(1.0, 0.5)
    Adam([(p, g)], lr=0.1).step()
    assert p[0] == pytest.approx(0.900000002, abs=EXACT)


@pytest.mark.parametrize(
    "cls, kwargs, decoupled",
    [
        (Adam, {}, False),
        (Adam, {"weight_decay": 0.1, "betas": (0.8, 0.99), "eps": 1e-6}, False),
        (AdamW, {"weight_decay": 0.1}, True),
        (AdamW, {}, True),  # AdamW's default weight decay is 0.01
    ],
    ids=["adam", "adam_l2", "adamw", "adamw_default"],
)
def test_three_adam_steps_match_the_textbook_formula(cls, kwargs, decoupled):
    grads = [0.5, -0.2, 0.05]
    p, g = one_param(1.0)
    optimizer = cls([(p, g)], lr=0.1, **kwargs)
    observed = []
    for grad in grads:
        g[...] = grad
        optimizer.step()
        observed.append(p[0])
    beta1, beta2 = kwargs.get("betas", (0.9, 0.999))
    expected = textbook_adam(1.0, grads, 0.1, beta1, beta2, kwargs.get("eps", 1e-8),
                             kwargs.get("weight_decay", 0.01 if cls is AdamW else 0.0), decoupled)
    np.testing.assert_allclose(observed, expected, rtol=0, atol=EXACT)


def test_adamw_decays_before_the_adam_step():
    # p(1 − lr·λ) = 0.999, then the sign step of 0.1·(1 − 2e-8).
    p, g = one_param(1.0, 0.5)
    AdamW([(p, g)], lr=0.1, weight_decay=0.01).step()
    assert p[0] == pytest.approx(0.899000002, abs=EXACT)


# -- agreement with torch.optim -----------------------------------------------------------------
TORCH_CASES = [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.1, "momentum": 0.9}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("SGD", {"lr": 0.1, "momentum": 0.8, "dampening": 0.3, "weight_decay": 0.05}),
    ("Adam", {"lr": 0.01}),
    ("Adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
    ("AdamW", {"lr": 0.01}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.2}),
]


@pytest.mark.parametrize("name, kwargs", TORCH_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(TORCH_CASES)])
def test_steps_match_torch_optim(name, kwargs):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    params = [rng.standard_normal((3, 4)), rng.standard_normal(4)]
    grads = [np.zeros_like(p) for p in params]
    tensors = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    ours = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}[name](list(zip(params, grads)), **kwargs)
    theirs = getattr(torch.optim, name)(tensors, **kwargs)
    for step in range(6):
        if step == 3:  # a schedule changes the learning rate between steps
            ours.lr = kwargs["lr"] / 2
            theirs.param_groups[0]["lr"] = kwargs["lr"] / 2
        for g, t in zip(grads, tensors):
            g[...] = rng.standard_normal(g.shape)
            t.grad = torch.tensor(g.copy())
        ours.step()
        theirs.step()
        for p, t in zip(params, tensors):
            np.testing.assert_allclose(p, t.detach().numpy(), rtol=0, atol=EXACT)


# -- in place, resume, errors ----------------------------------------------------------------
def test_step_updates_the_model_arrays_in_place_with_the_fresh_gradients():
    rng = np.random.default_rng(1)
    model = MLP(4, [3], 2, seed=0)
    optimizer = SGD(model.parameters(), lr=0.5)
    arrays = [p for p, _ in model.parameters()]
    for _ in range(2):
        dlogits = SoftmaxCrossEntropy().backward(model.forward(rng.standard_normal((5, 4))), rng.integers(0, 2, 5))
        model.backward(dlogits)
        expected = [p - 0.5 * g for p, g in model.parameters()]
        optimizer.step()
        for (p, _), array, want in zip(model.parameters(), arrays, expected):
            assert p is array
            np.testing.assert_allclose(p, want, rtol=0, atol=EXACT)


@pytest.mark.parametrize(
    "cls, kwargs",
    [(SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}), (Adam, {"lr": 0.01, "weight_decay": 0.1}),
     (AdamW, {"lr": 0.01, "betas": (0.8, 0.9)})],
    ids=["sgd", "adam", "adamw"],
)
def test_state_dict_round_trip_continues_identically(cls, kwargs):
    rng = np.random.default_rng(2)
    params = [rng.standard_normal((2, 3)), rng.standard_normal(3)]
    grads = [np.zeros_like(p) for p in params]
    gradient_stream = [[rng.standard_normal(p.shape) for p in params] for _ in range(6)]

    def take(optimizer, grad_arrays, steps):
        for step_grads in steps:
            for g, value in zip(grad_arrays, step_grads):
                g[...] = value
            optimizer.step()

    original = cls(list(zip(params, grads)), **kwargs)
    take(original, grads, gradient_stream[:3])
    saved = original.state_dict()
    original.lr = 123.0  # changes after the save must not leak into it
    original.lr = kwargs["lr"]

    resumed_params = [p.copy() for p in params]
    resumed_grads = [np.zeros_like(p) for p in params]
    resumed = cls(list(zip(resumed_params, resumed_grads)), lr=1.0)  # hyperparameters come from the state
    resumed.load_state_dict(saved)
    assert resumed.step_count == 3 and resumed.lr == kwargs["lr"]

    take(original, grads, gradient_stream[3:])
    take(resumed, resumed_grads, gradient_stream[3:])
    for p, q in zip(params, resumed_params):
        np.testing.assert_array_equal(p, q)


def test_state_dict_holds_copies():
    p, g = one_param()
    optimizer = SGD([(p, g)], lr=0.1, momentum=0.9)
    optimizer.step()
    state = optimizer.state_dict()
    state["state"]["momentum_buffer.0"][...] = 99.0
    assert optimizer.state["momentum_buffer"][0][0] == 0.5


def test_load_state_dict_refuses_another_optimiser_or_shape():
    p, g = one_param()
    sgd = SGD([(p, g)], lr=0.1, momentum=0.9)
    sgd.step()
    with pytest.raises(ValueError, match="SGD"):
        Adam([one_param()]).load_state_dict(sgd.state_dict())
    other = SGD([(np.zeros(3), np.zeros(3))], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"\(1,\)"):
        other.load_state_dict(sgd.state_dict())


def test_zero_grad_clears_the_gradient_arrays_in_place():
    p, g = one_param(1.0, 0.5)
    optimizer = SGD([(p, g)], lr=0.1)
    optimizer.zero_grad()
    assert optimizer.pairs[0][1] is g and g[0] == 0.0


@pytest.mark.parametrize(
    "factory, fragment",
    [
        (lambda pairs: SGD([], lr=0.1), "empty"),
        (lambda pairs: SGD(pairs, lr=0.0), "lr"),
        (lambda pairs: SGD(pairs, lr=float("nan")), "lr"),
        (lambda pairs: SGD(pairs, lr=0.1, momentum=-0.5), "momentum"),
        (lambda pairs: SGD(pairs, lr=0.1, nesterov=True), "Nesterov"),
        (lambda pairs: Adam(pairs, betas=(0.9,)), "betas"),
        (lambda pairs: Adam(pairs, betas=(0.9, 1.0)), "beta"),
        (lambda pairs: AdamW(pairs, weight_decay=-1), "weight_decay"),
        (lambda pairs: SGD([(np.zeros(2), np.zeros(3))], lr=0.1), "(2,)"),
    ],
)
def test_invalid_optimiser_arguments_are_refused(factory, fragment):
    with pytest.raises(ValueError) as info:
        factory([one_param()])
    assert fragment in str(info.value)


# -- schedules -----------------------------------------------------------------------------
def test_constant_schedule_with_warmup():
    schedule = ConstantSchedule(0.1, warmup_steps=4)
    assert [schedule(t) for t in range(6)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1], abs=EXACT)
    assert ConstantSchedule(0.3)(0) == ConstantSchedule(0.3)(10_000) == 0.3


def test_step_schedule():
    schedule = StepSchedule(0.1, step_size=10, gamma=0.5)
    values = {t: schedule(t) for t in (0, 9, 10, 19, 20, 35)}
    assert values == pytest.approx({0: 0.1, 9: 0.1, 10: 0.05, 19: 0.05, 20: 0.025, 35: 0.0125}, abs=EXACT)


def test_cosine_schedule_with_warmup():
    schedule = CosineSchedule(0.1, total_steps=110, warmup_steps=10, min_lr=0.001)
    assert schedule(0) == pytest.approx(0.01, abs=EXACT)  # the first warm-up step is not zero
    assert schedule(9) == pytest.approx(0.1, abs=EXACT)
    assert schedule(10) == pytest.approx(0.1, abs=EXACT)  # the cosine starts at its peak
    assert schedule(60) == pytest.approx((0.1 + 0.001) / 2, abs=EXACT)  # halfway down
    assert schedule(35) == pytest.approx(0.001 + 0.5 * 0.099 * (1 + math.cos(math.pi / 4)), abs=EXACT)
    assert schedule(110) == pytest.approx(0.001, abs=EXACT)
    assert schedule(500) == pytest.approx(0.001, abs=EXACT)  # held at the floor afterwards
    values = [schedule(t) for t in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_make_schedule_counts_in_epochs():
    cosine = make_schedule("cosine", 0.2, steps_per_epoch=10, epochs=5, warmup_epochs=1)
    assert isinstance(cosine, CosineSchedule) and (cosine.total_steps, cosine.warmup_steps) == (50, 10)
    step = make_schedule("step", 0.2, steps_per_epoch=10, epochs=9, gamma=0.5)
    assert step(29) == pytest.approx(0.2) and step(30) == pytest.approx(0.1)
    assert make_schedule("constant", 0.2, steps_per_epoch=10, epochs=3)(25) == 0.2
    with pytest.raises(ValueError, match="'linear'"):
        make_schedule("linear", 0.2, steps_per_epoch=10, epochs=3)


def test_invalid_schedules_are_refused():
    with pytest.raises(ValueError, match="warmup_steps"):
        CosineSchedule(0.1, total_steps=10, warmup_steps=20)
    with pytest.raises(ValueError, match="step_size"):
        StepSchedule(0.1, step_size=0)
    with pytest.raises(ValueError, match="base_lr"):
        ConstantSchedule(0.0)


def test_a_schedule_drives_the_optimiser():
    schedule = StepSchedule(1.0, step_size=2, gamma=0.1)
    p, g = one_param(0.0, 1.0)
    optimizer = SGD([(p, g)], lr=schedule(0))
    positions = []
    for t in range(4):
        optimizer.lr = schedule(t)
        optimizer.step()
        positions.append(p[0])
    np.testing.assert_allclose(positions, [-1.0, -2.0, -2.1, -2.2], rtol=0, atol=EXACT)
