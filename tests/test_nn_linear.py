"""Linear: forward values, the three backward formulas, initialisation, dtypes and errors."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from mlplab.gradcheck import check_module
from mlplab.nn import Linear, LinearModule

TOL = 1e-7

# (batch, in_features, out_features): the edge cases first, then seeded random sizes.
EDGE_SHAPES = [(1, 1, 1), (1, 4, 3), (5, 1, 2), (3, 6, 1)]
RANDOM_SHAPES = [tuple(int(v) for v in np.random.default_rng(seed).integers(1, 9, size=3)) for seed in range(4)]


def assert_all_pass(results, tol=TOL):
    bad = [(r.module, r.quantity, r.max_relative_error) for r in results if not (r.passed and r.max_relative_error <= tol)]
    assert not bad, f"gradient check failed: {bad}"


def hand_layer() -> Linear:
    layer = Linear(2, 3)
    layer.params["weight"][...] = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    layer.params["bias"][...] = [0.5, -1.0, 2.0]
    return layer


def test_forward_matches_hand_computed_example():
    layer = hand_layer()
    x = np.array([[1.0, -1.0], [2.0, 0.5]])
    # Row 1: [1−2+0.5, 3−4−1, 5−6+2]; row 2: [2+1+0.5, 6+2−1, 10+3+2].
    expected = np.array([[-0.5, -2.0, 1.0], [3.5, 7.0, 15.0]])
    np.testing.assert_allclose(layer.forward(x), expected, rtol=0, atol=1e-12)


def test_backward_matches_hand_computed_example():
    layer = hand_layer()
    x = np.array([[1.0, -1.0], [2.0, 0.5]])
    layer.forward(x)
    dout = np.array([[1.0, 0.0, -1.0], [0.5, 2.0, 1.0]])
    dx = layer.backward(dout)
    # dW[o] = Σ_s dY[s, o] X[s]; db = column sums of dY; dX[s] = Σ_o dY[s, o] W[o].
    np.testing.assert_allclose(layer.grads["weight"], [[2.0, -0.75], [4.0, 1.0], [1.0, 1.5]], atol=1e-12)
    np.testing.assert_allclose(layer.grads["bias"], [1.5, 2.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(dx, [[-4.0, -4.0], [11.5, 15.0]], atol=1e-12)


def test_backward_matches_index_form_sums():
    rng = np.random.default_rng(7)
    layer = Linear(4, 3, rng=rng)
    layer.params["bias"][...] = rng.standard_normal(3)
    x, dout = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    layer.forward(x)
    dx = layer.backward(dout)
    W = layer.params["weight"]
    dW = np.zeros((3, 4))
    db = np.zeros(3)
    dX = np.zeros((5, 4))
    for s in range(5):
        for o in range(3):
            db[o] += dout[s, o]
            for i in range(4):
                dW[o, i] += dout[s, o] * x[s, i]
                dX[s, i] += dout[s, o] * W[o, i]
    np.testing.assert_allclose(layer.grads["weight"], dW, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.grads["bias"], db, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dX, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", EDGE_SHAPES + RANDOM_SHAPES, ids=str)
def test_gradients_match_finite_differences(shape):
    batch, n_in, n_out = shape
    rng = np.random.default_rng(sum(shape))
    layer = Linear(n_in, n_out, rng=rng)
    layer.params["bias"][...] = rng.standard_normal(n_out)
    results = check_module(layer, rng.standard_normal((batch, n_in)), seed=batch)
    assert [r.quantity for r in results] == ["input", "weight", "bias"]
    assert_all_pass(results)


@pytest.mark.parametrize("input_layer, target", [(False, np.sqrt(2 / 3072)), (True, np.sqrt(1 / 3072))])
def test_kaiming_std_on_a_3072_by_512_layer(input_layer, target):
    layer = Linear(3072, 512, input_layer=input_layer, rng=0)
    weight = layer.params["weight"]
    assert weight.shape == (512, 3072)
    assert abs(weight.std() / target - 1) < 0.05
    assert abs(weight.mean()) < 0.05 * target
    assert np.all(layer.params["bias"] == 0)


def test_same_seed_same_weights_and_different_seed_different_weights():
    a, b, c = Linear(6, 4, rng=3), Linear(6, 4, rng=3), Linear(6, 4, rng=4)
    np.testing.assert_array_equal(a.params["weight"], b.params["weight"])
    assert not np.array_equal(a.params["weight"], c.params["weight"])


def test_params_and_grads_share_keys_and_shapes():
    layer = Linear(5, 2)
    assert layer.params.keys() == layer.grads.keys() == {"weight", "bias"}
    for key in layer.params:
        assert layer.params[key].shape == layer.grads[key].shape
    assert layer.params["bias"].shape == (2,)


def test_backward_overwrites_grads_instead_of_accumulating():
    rng = np.random.default_rng(0)
    layer = Linear(3, 2, rng=rng)
    x, dout = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    layer.forward(x)
    layer.backward(dout)
    first = {k: v.copy() for k, v in layer.grads.items()}
    layer.backward(dout)
    for key in first:
        np.testing.assert_array_equal(layer.grads[key], first[key])


def test_backward_writes_grads_in_place():
    rng = np.random.default_rng(1)
    layer = Linear(3, 2, rng=rng)
    before = {k: v for k, v in layer.grads.items()}
    layer.forward(rng.standard_normal((4, 3)))
    layer.backward(rng.standard_normal((4, 2)))
    for key, array in before.items():
        assert layer.grads[key] is array
        assert np.any(array != 0)


def test_forward_reads_the_live_params():
    layer = Linear(3, 2, rng=0)
    x = np.ones((1, 3))
    layer.params["weight"][...] = 0.0
    layer.params["bias"][...] = [1.0, -2.0]
    np.testing.assert_array_equal(layer.forward(x), [[1.0, -2.0]])
    layer.params["weight"] = np.full((2, 3), 2.0)
    np.testing.assert_array_equal(layer.forward(x), [[7.0, 4.0]])


def test_skipping_the_input_gradient_still_fills_the_parameter_gradients():
    rng = np.random.default_rng(2)
    layer = Linear(3, 2, rng=rng)
    x, dout = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    layer.forward(x)
    layer.backward(dout)
    expected = {k: v.copy() for k, v in layer.grads.items()}
    layer.grads["weight"][...] = 0
    assert layer.backward(dout, need_input_grad=False) is None
    np.testing.assert_array_equal(layer.grads["weight"], expected["weight"])


def test_float32_layer_has_float32_params_grads_and_outputs():
    layer = Linear(4, 3, dtype=np.float32, rng=0)
    assert layer.params["weight"].dtype == layer.params["bias"].dtype == np.float32
    assert layer.grads["weight"].dtype == np.float32
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    out = layer.forward(x)
    assert out.dtype == np.float32
    assert layer.backward(np.ones_like(out)).dtype == np.float32
    assert layer.grads["weight"].dtype == np.float32


def test_default_dtype_is_float64():
    layer = Linear(2, 2)
    assert layer.params["weight"].dtype == np.float64


@pytest.mark.parametrize("int_type", [np.int32, np.int64, np.uint16])
def test_numpy_integer_sizes(int_type):
    layer = Linear(int_type(5), int_type(3))
    assert (layer.in_features, layer.out_features) == (5, 3)
    assert type(layer.in_features) is int
    assert layer.forward(np.zeros((2, 5))).shape == (2, 3)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "4", None])
def test_invalid_sizes_are_refused(bad):
    with pytest.raises(ValueError, match="Linear"):
        Linear(bad, 3)
    with pytest.raises(ValueError, match="Linear"):
        Linear(3, bad)


def test_course_alias_has_the_same_signature():
    assert LinearModule is Linear
    layer = LinearModule(4, 2, True, dtype=np.float32, rng=0)
    assert layer.input_layer and layer.params["weight"].shape == (2, 4)


@pytest.mark.parametrize(
    "x, shape_text",
    [
        (np.zeros((2, 3)), "(2, 3)"),  # wrong width
        (np.zeros(4), "(4,)"),  # 1-D
        (np.zeros((2, 2, 4)), "(2, 2, 4)"),  # 3-D
        (np.zeros((0, 4)), "(0, 4)"),  # empty batch
    ],
)
def test_bad_input_names_the_module_and_the_shape(x, shape_text):
    layer = Linear(4, 2)
    with pytest.raises(ValueError) as info:
        layer.forward(x)
    message = str(info.value)
    assert "Linear" in message and shape_text in message


def test_mismatched_width_error_names_both_widths():
    with pytest.raises(ValueError, match=r"3 features, expected 4"):
        Linear(4, 2).forward(np.zeros((2, 3)))


def test_dout_of_the_wrong_shape_is_refused():
    layer = Linear(4, 2)
    layer.forward(np.zeros((3, 4)))
    with pytest.raises(ValueError) as info:
        layer.backward(np.zeros((3, 5)))
    message = str(info.value)
    assert "Linear" in message and "(3, 5)" in message and "(3, 2)" in message


def test_backward_before_forward_is_a_clear_error():
    with pytest.raises(RuntimeError, match="Linear.backward called before forward"):
        Linear(2, 2).backward(np.zeros((1, 2)))


def test_clear_cache_makes_copies_small():
    layer = Linear(100, 10, rng=0)
    layer.forward(np.zeros((2000, 100)))
    assert len(pickle.dumps(layer)) > 1_000_000  # the cached input is 1.6 MB
    layer.clear_cache()
    assert len(pickle.dumps(layer)) < 20_000
    clone = copy.deepcopy(layer)
    assert clone.cache == {}
    np.testing.assert_array_equal(clone.params["weight"], layer.params["weight"])
    assert clone.params["weight"] is not layer.params["weight"]
