"""Element-wise activations and softmax: values, derivatives, extreme inputs, dtypes, errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from mlplab.gradcheck import check_module
from mlplab.nn import (
    ELU, GELU, ELUModule, LeakyReLU, ReLU, Sigmoid, Softmax, SoftMaxModule, Tanh, make_activation, softmax,
)

TOL = 1e-7

# (batch, features), including batch size 1 and one feature.
SHAPES = [(1, 1), (1, 5), (6, 1)] + [
    tuple(int(v) for v in np.random.default_rng(seed).integers(2, 9, size=2)) for seed in range(3)
]


def sqrt_2_over_pi():
    return math.sqrt(2 / math.pi)


# name -> (factory, h(x), h'(x)) with h and h' written out from their definitions.
SCALAR_FORMS = {
    "elu": (lambda: ELU(alpha=1.5),
            lambda x: x if x > 0 else 1.5 * (math.exp(x) - 1),
            lambda x: 1.0 if x > 0 else 1.5 * math.exp(x)),
    "relu": (ReLU, lambda x: max(x, 0.0), lambda x: 1.0 if x > 0 else 0.0),
    "leaky_relu": (lambda: LeakyReLU(0.2), lambda x: x if x > 0 else 0.2 * x, lambda x: 1.0 if x > 0 else 0.2),
    "tanh": (Tanh, math.tanh, lambda x: 1 - math.tanh(x) ** 2),
    "sigmoid": (Sigmoid,
                lambda x: 1 / (1 + math.exp(-x)),
                lambda x: math.exp(-x) / (1 + math.exp(-x)) ** 2),
    "gelu_tanh": (GELU,
                  lambda x: 0.5 * x * (1 + math.tanh(sqrt_2_over_pi() * (x + 0.044715 * x**3))),
                  None),
    "gelu_none": (lambda: GELU("none"),
                  lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2))),
                  lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2))) + x * math.exp(-x * x / 2) / math.sqrt(2 * math.pi)),
}

POINTS = [-3.0, -0.7, -1e-3, 1e-3, 0.4, 2.5]


@pytest.mark.parametrize("name", list(SCALAR_FORMS))
def test_forward_and_derivative_match_the_definitions(name):
    factory, h, dh = SCALAR_FORMS[name]
    module = factory()
    x = np.array([POINTS])
    out = module.forward(x)
    np.testing.assert_allclose(out[0], [h(v) for v in POINTS], rtol=1e-12, atol=1e-15)
    dx = module.backward(np.full_like(x, 2.0))
    if dh is None:  # GELU (tanh form): compare with a central difference of the scalar formula
        dh = lambda v: (h(v + 1e-6) - h(v - 1e-6)) / 2e-6  # noqa: E731
        rtol = 1e-8
    else:
        rtol = 1e-12
    np.testing.assert_allclose(dx[0], [2.0 * dh(v) for v in POINTS], rtol=rtol, atol=1e-14)


def test_gelu_defaults_to_the_tanh_form():
    x = np.array([[1.0]])
    tanh_form = 0.5 * (1 + math.tanh(sqrt_2_over_pi() * (1 + 0.044715)))
    exact = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    assert GELU().approximate == "tanh"
    assert GELU().forward(x)[0, 0] == pytest.approx(tanh_form, rel=1e-14)
    assert GELU("none").forward(x)[0, 0] == pytest.approx(exact, rel=1e-14)
    assert tanh_form != pytest.approx(exact, rel=1e-6)


def test_exact_gelu_without_scipy(monkeypatch):
    """Without SciPy the exact GELU takes erf from the standard library: same values, checks pass."""
    from mlplab.nn import activations

    x = np.random.default_rng(3).standard_normal((7, 5)) * 3
    x[0, :4] = [0.0, -40.0, 40.0, 1e-300]
    with_scipy = GELU("none").forward(x) if activations._scipy_erf() is not None else None
    monkeypatch.setattr(activations, "_scipy_erf", lambda: None)
    module = GELU("none")
    out = module.forward(x)
    expected = np.array([[v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in row] for row in x])
    np.testing.assert_allclose(out, expected, rtol=1e-15, atol=0)
    assert out.dtype == np.float64 and module.forward(x.astype(np.float32)).dtype == np.float32
    if with_scipy is not None:
        np.testing.assert_allclose(out, with_scipy, rtol=1e-15, atol=1e-15)  # 0.5(1 + erf) cancels for x < 0
    assert all(r.passed for r in check_module(GELU("none"), x[1:]))


def test_gelu_refuses_an_unknown_form():
    with pytest.raises(ValueError, match="GELU"):
        GELU("erf")


def test_gelu_matches_torch_in_both_forms():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((4, 5)) * 3
    dout = np.random.default_rng(1).standard_normal((4, 5))
    for form in ("tanh", "none"):
        module = GELU(form)
        t = torch.tensor(x, requires_grad=True)
        ty = torch.nn.functional.gelu(t, approximate=form)
        ty.backward(torch.tensor(dout))
        np.testing.assert_allclose(module.forward(x), ty.detach().numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(module.backward(dout), t.grad.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", list(SCALAR_FORMS))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gradients_match_finite_differences(name, shape):
    module = SCALAR_FORMS[name][0]()
    x = np.random.default_rng(sum(shape)).standard_normal(shape) * 2
    results = check_module(module, x, seed=shape[0])
    assert [r.quantity for r in results] == ["input"]
    assert results[0].passed and results[0].max_relative_error <= TOL, results


EXTREME = np.array([[-1000.0, -30.0, 0.0, 30.0, 1000.0]])
# The limits at ±1000 (and ±30, where float64 has already saturated or stays exact).
LIMITS = {
    "elu": [-1.5, 1.5 * math.expm1(-30), 0.0, 30.0, 1000.0],
    "relu": [0.0, 0.0, 0.0, 30.0, 1000.0],
    "leaky_relu": [-200.0, -6.0, 0.0, 30.0, 1000.0],
    "tanh": [-1.0, -1.0, 0.0, 1.0, 1.0],
    "sigmoid": [0.0, math.exp(-30) / (1 + math.exp(-30)), 0.5, 1 / (1 + math.exp(-30)), 1.0],
    "gelu_tanh": [0.0, 0.0, 0.0, 30.0, 1000.0],
    "gelu_none": [0.0, 0.0, 0.0, 30.0, 1000.0],
}
SLOPE_LIMITS = {
    "elu": [0.0, 1.0], "relu": [0.0, 1.0], "leaky_relu": [0.2, 1.0], "tanh": [0.0, 0.0],
    "sigmoid": [0.0, 0.0], "gelu_tanh": [0.0, 1.0], "gelu_none": [0.0, 1.0],
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(SCALAR_FORMS))
def test_extreme_inputs_raise_no_warning_and_give_the_limits(name, dtype):
    module = SCALAR_FORMS[name][0]()
    x = EXTREME.astype(dtype)
    # Overflow, division by zero and invalid operations are errors here. Underflow is not: an
    # exponential of −1000 rounding to 0 is the right answer, and NumPy ignores it by default.
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        out = module.forward(x)
        dx = module.backward(np.ones_like(x))
    assert out.dtype == dtype and dx.dtype == dtype
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(dx))
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out[0], LIMITS[name], rtol=rtol, atol=1e-30)
    # The derivative at −1000 and +1000 has saturated to its limits.
    np.testing.assert_allclose(dx[0, [0, -1]], SLOPE_LIMITS[name], rtol=rtol, atol=1e-30)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_of_extreme_scores_raises_no_warning(dtype):
    x = np.array([[-1000.0, 0.0, 1000.0], [1000.0, 1000.0, -1000.0]], dtype=dtype)
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        module = Softmax()
        y = module.forward(x)
        dx = module.backward(np.ones_like(y))
    assert y.dtype == dtype
    np.testing.assert_allclose(y, [[0.0, 0.0, 1.0], [0.5, 0.5, 0.0]], atol=1e-7)
    assert np.all(np.isfinite(dx))


@pytest.mark.parametrize("name", list(SCALAR_FORMS))
def test_float32_in_float32_out(name):
    module = SCALAR_FORMS[name][0]()
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    assert module.forward(x).dtype == np.float32
    assert module.backward(np.ones_like(x)).dtype == np.float32


@pytest.mark.parametrize("name", list(SCALAR_FORMS))
def test_backward_of_wrong_shape_names_the_module_and_shapes(name):
    module = SCALAR_FORMS[name][0]()
    module.forward(np.zeros((2, 3)))
    with pytest.raises(ValueError) as info:
        module.backward(np.zeros((3, 2)))
    message = str(info.value)
    assert type(module).__name__ in message and "(3, 2)" in message and "(2, 3)" in message


@pytest.mark.parametrize("name", list(SCALAR_FORMS))
def test_non_array_input_is_refused(name):
    module = SCALAR_FORMS[name][0]()
    with pytest.raises(ValueError, match=type(module).__name__):
        module.forward([[1.0, 2.0]])


def test_activations_have_no_parameters():
    for name in SCALAR_FORMS:
        module = SCALAR_FORMS[name][0]()
        assert module.params == {} and module.grads == {}


@pytest.mark.parametrize(
    "name, cls", [("elu", ELU), ("relu", ReLU), ("leaky_relu", LeakyReLU), ("leaky-relu", LeakyReLU),
                  ("Tanh", Tanh), ("sigmoid", Sigmoid), ("gelu", GELU)],
)
def test_make_activation_by_name(name, cls):
    assert type(make_activation(name)) is cls


def test_make_activation_refuses_an_unknown_name():
    with pytest.raises(ValueError, match="swish"):
        make_activation("swish")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1", True])
def test_invalid_activation_parameters_are_refused(bad):
    with pytest.raises(ValueError, match="ELU"):
        ELU(alpha=bad)
    with pytest.raises(ValueError, match="LeakyReLU"):
        LeakyReLU(bad)


def test_course_aliases():
    assert ELUModule is ELU and SoftMaxModule is Softmax
    assert ELUModule(alpha=0.5).alpha == 0.5
    assert isinstance(SoftMaxModule(), Softmax)


# -- softmax -----------------------------------------------------------------------------
def test_softmax_hand_computed_example():
    # e^0 : e^ln2 : e^ln3 = 1 : 2 : 3
    y = Softmax().forward(np.array([[0.0, math.log(2), math.log(3)]]))
    np.testing.assert_allclose(y, [[1 / 6, 2 / 6, 3 / 6]], rtol=1e-14)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_softmax_rows_sum_to_one_and_ignore_a_constant_shift(shape):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape) * 5
    y = Softmax().forward(x)
    assert np.all(y > 0)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=0, atol=1e-14)
    shift = rng.uniform(-50, 50, size=(shape[0], 1))
    np.testing.assert_allclose(Softmax().forward(x + shift), y, rtol=1e-12, atol=1e-15)


def test_softmax_function_and_module_agree_and_keep_the_input():
    x = np.random.default_rng(3).standard_normal((4, 3))
    before = x.copy()
    np.testing.assert_array_equal(softmax(x), Softmax().forward(x))
    np.testing.assert_array_equal(x, before)


def test_softmax_backward_equals_the_full_jacobian_product():
    rng = np.random.default_rng(4)
    x, dout = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    module = Softmax()
    y = module.forward(x)
    dx = module.backward(dout)
    for s in range(3):
        jacobian = np.diag(y[s]) - np.outer(y[s], y[s])  # ∂y_i/∂x_j = y_i(δ_ij − y_j)
        np.testing.assert_allclose(dx[s], jacobian.T @ dout[s], rtol=1e-12, atol=1e-15)


def test_softmax_of_one_class_is_one_with_zero_gradient():
    module = Softmax()
    np.testing.assert_array_equal(module.forward(np.array([[3.0], [-7.0]])), [[1.0], [1.0]])
    np.testing.assert_array_equal(module.backward(np.array([[2.0], [5.0]])), [[0.0], [0.0]])


@pytest.mark.parametrize("x, shape_text", [(np.zeros(3), "(3,)"), (np.zeros((2, 2, 2)), "(2, 2, 2)"), (np.zeros((0, 3)), "(0, 3)")])
def test_softmax_bad_input_names_the_module_and_shape(x, shape_text):
    with pytest.raises(ValueError) as info:
        Softmax().forward(x)
    assert "Softmax" in str(info.value) and shape_text in str(info.value)


def test_backward_before_forward_is_a_clear_error():
    with pytest.raises(RuntimeError, match="Tanh.backward called before forward"):
        Tanh().backward(np.zeros((1, 1)))
