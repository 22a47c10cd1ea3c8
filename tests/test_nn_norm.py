"""BatchNorm1d (torch semantics, full backward) and inverted Dropout."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlplab.gradcheck import check_module
from mlplab.nn import BatchNorm1d, Dropout

TOL = 1e-7

# (batch, features) for train mode (a batch needs at least two rows) ...
TRAIN_SHAPES = [(3, 1), (2, 4), (5, 3)] + [
    tuple(int(v) for v in np.random.default_rng(seed).integers(3, 9, size=2)) for seed in range(3)
]
# ... and for eval mode, where a batch of one is fine.
EVAL_SHAPES = [(1, 1), (1, 4), (4, 1), (6, 5)]


def randomised_batch_norm(features, rng, training=True) -> BatchNorm1d:
    bn = BatchNorm1d(features)
    bn.params["weight"][...] = rng.uniform(0.5, 2.0, features)
    bn.params["bias"][...] = rng.standard_normal(features)
    bn.buffers["running_mean"][...] = rng.standard_normal(features)
    bn.buffers["running_var"][...] = rng.uniform(0.5, 2.0, features)
    return bn.train(training)


# -- BatchNorm1d ---------------------------------------------------------------------------
def test_train_forward_and_running_statistics_hand_computed():
    bn = BatchNorm1d(2)
    bn.params["weight"][...] = [2.0, 0.5]
    bn.params["bias"][...] = [1.0, -1.0]
    x = np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 8.0]])
    out = bn.forward(x)
    # Column 0: mean 3, biased variance 8/3, unbiased 4. Column 1: mean 4, biased 8, unbiased 12.
    eps = 1e-5
    col0 = [2.0 * d / math.sqrt(8 / 3 + eps) + 1.0 for d in (-2.0, 0.0, 2.0)]
    col1 = [0.5 * d / math.sqrt(8 + eps) - 1.0 for d in (-2.0, -2.0, 4.0)]
    np.testing.assert_allclose(out, np.column_stack([col0, col1]), rtol=1e-14)
    np.testing.assert_allclose(bn.buffers["running_mean"], [0.1 * 3, 0.1 * 4], rtol=1e-14)
    np.testing.assert_allclose(bn.buffers["running_var"], [0.9 + 0.1 * 4, 0.9 + 0.1 * 12], rtol=1e-14)
    assert int(bn.buffers["num_batches_tracked"]) == 1


def test_eval_forward_uses_the_running_statistics():
    bn = BatchNorm1d(2, eps=1e-3)
    bn.params["weight"][...] = [3.0, 1.0]
    bn.params["bias"][...] = [0.0, 2.0]
    bn.buffers["running_mean"][...] = [1.0, -1.0]
    bn.buffers["running_var"][...] = [4.0, 0.25]
    bn.eval()
    x = np.array([[2.0, 0.0]])
    expected = [[3.0 * 1.0 / math.sqrt(4.001), 1.0 / math.sqrt(0.251) + 2.0]]
    np.testing.assert_allclose(bn.forward(x), expected, rtol=1e-14)
    # Eval mode leaves the statistics alone.
    assert int(bn.buffers["num_batches_tracked"]) == 0
    np.testing.assert_array_equal(bn.buffers["running_mean"], [1.0, -1.0])


def test_train_output_is_standardised_per_feature():
    x = np.random.default_rng(0).normal(5.0, 3.0, size=(64, 4))
    out = BatchNorm1d(4).forward(x)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(out.var(axis=0), 1.0, rtol=1e-5)


@pytest.mark.parametrize("shape", TRAIN_SHAPES, ids=str)
def test_train_mode_gradients_match_finite_differences(shape):
    rng = np.random.default_rng(sum(shape))
    bn = randomised_batch_norm(shape[1], rng)
    results = check_module(bn, rng.standard_normal(shape) * 2 + 1, seed=shape[0])
    assert [r.quantity for r in results] == ["input", "weight", "bias"]
    # With two rows x̂ = ±1 up to eps, so dL/dx is eps-sized and the finite differences keep
    # fewer digits: the spec's 1e-6 there, tighter elsewhere.
    tol = 1e-6 if shape[0] == 2 else TOL
    bad = [r for r in results if not (r.passed and r.max_relative_error <= tol)]
    assert not bad, bad


@pytest.mark.parametrize("shape", EVAL_SHAPES, ids=str)
def test_eval_mode_gradients_match_finite_differences(shape):
    rng = np.random.default_rng(sum(shape) + 100)
    bn = randomised_batch_norm(shape[1], rng, training=False)
    results = check_module(bn, rng.standard_normal(shape), seed=shape[0])
    bad = [r for r in results if not (r.passed and r.max_relative_error <= TOL)]
    assert not bad, bad


def test_train_input_gradient_sums_to_zero_per_feature():
    # The output ignores adding a constant to a feature column, so dx is orthogonal to it.
    rng = np.random.default_rng(3)
    bn = randomised_batch_norm(5, rng)
    bn.forward(rng.standard_normal((8, 5)))
    dx = bn.backward(rng.standard_normal((8, 5)))
    np.testing.assert_allclose(dx.sum(axis=0), 0.0, atol=1e-13)


def test_matches_torch_over_several_steps_and_in_eval():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    ours = randomised_batch_norm(3, rng)
    theirs = torch.nn.BatchNorm1d(3, dtype=torch.float64)
    with torch.no_grad():
        for key in ("weight", "bias"):
            getattr(theirs, key).copy_(torch.tensor(ours.params[key]))
        for key in ("running_mean", "running_var"):
            getattr(theirs, key).copy_(torch.tensor(ours.buffers[key]))
    for step in range(3):
        x, dout = rng.standard_normal((6, 3)) * 2, rng.standard_normal((6, 3))
        tx = torch.tensor(x, requires_grad=True)
        theirs.zero_grad()
        ty = theirs(tx)
        ty.backward(torch.tensor(dout))
        np.testing.assert_allclose(ours.forward(x), ty.detach().numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(ours.backward(dout), tx.grad.numpy(), rtol=1e-10, atol=1e-13)
        for key in ("weight", "bias"):
            np.testing.assert_allclose(ours.grads[key], getattr(theirs, key).grad.numpy(), rtol=1e-10, atol=1e-13)
        for key in ("running_mean", "running_var"):
            np.testing.assert_allclose(ours.buffers[key], getattr(theirs, key).numpy(), rtol=1e-13)
        assert int(ours.buffers["num_batches_tracked"]) == int(theirs.num_batches_tracked) == step + 1
    ours.eval()
    theirs.eval()
    x = rng.standard_normal((2, 3))
    np.testing.assert_allclose(ours.forward(x), theirs(torch.tensor(x)).detach().numpy(), rtol=1e-12)


def test_a_batch_of_one_in_train_mode_is_refused():
    with pytest.raises(ValueError) as info:
        BatchNorm1d(4).forward(np.zeros((1, 4)))
    assert "BatchNorm1d" in str(info.value) and "(1, 4)" in str(info.value)


def test_wrong_width_names_the_module_and_shape():
    with pytest.raises(ValueError) as info:
        BatchNorm1d(4).forward(np.zeros((3, 5)))
    assert "BatchNorm1d" in str(info.value) and "(3, 5)" in str(info.value)


def test_params_buffers_and_state_dict_keys():
    bn = BatchNorm1d(np.int64(3))
    assert bn.params.keys() == bn.grads.keys() == {"weight", "bias"}
    np.testing.assert_array_equal(bn.params["weight"], np.ones(3))
    np.testing.assert_array_equal(bn.params["bias"], np.zeros(3))
    assert set(bn.state_dict()) == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    assert bn.buffers["num_batches_tracked"].dtype == np.int64


def test_backward_overwrites_grads_in_place():
    rng = np.random.default_rng(5)
    bn = randomised_batch_norm(3, rng)
    arrays = dict(bn.grads)
    bn.forward(rng.standard_normal((4, 3)))
    dout = rng.standard_normal((4, 3))
    bn.backward(dout)
    first = {k: v.copy() for k, v in bn.grads.items()}
    bn.backward(dout)
    for key in arrays:
        assert bn.grads[key] is arrays[key]
        np.testing.assert_array_equal(bn.grads[key], first[key])


def test_float32_batch_norm():
    bn = BatchNorm1d(3, dtype=np.float32)
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    out = bn.forward(x)
    assert out.dtype == np.float32 and bn.params["weight"].dtype == np.float32
    assert bn.buffers["running_var"].dtype == np.float32
    assert bn.backward(np.ones_like(out)).dtype == np.float32


@pytest.mark.parametrize("kwargs", [{"eps": 0}, {"eps": -1e-5}, {"momentum": 1.5}, {"momentum": -0.1}])
def test_invalid_batch_norm_options_are_refused(kwargs):
    with pytest.raises(ValueError, match="BatchNorm1d"):
        BatchNorm1d(3, **kwargs)


# -- Dropout -------------------------------------------------------------------------------
def test_dropout_zeroes_a_fraction_p_and_rescales_the_rest():
    p = 0.25
    out = Dropout(p, rng=0).forward(np.ones((200, 500)))
    dropped = np.mean(out == 0)
    assert abs(dropped - p) < 0.01
    np.testing.assert_array_equal(np.unique(out), [0.0, 1 / (1 - p)])


def test_dropout_backward_uses_the_forward_mask():
    rng = np.random.default_rng(1)
    module = Dropout(0.5, rng=2)
    x = rng.standard_normal((6, 7))
    out = module.forward(x)
    dout = rng.standard_normal((6, 7))
    dx = module.backward(dout)
    kept = out != 0
    np.testing.assert_array_equal(dx[~kept], 0.0)
    np.testing.assert_allclose(dx[kept], dout[kept] * 2.0, rtol=1e-15)


@pytest.mark.parametrize("shape", [(1, 1), (4, 3), (2, 9)], ids=str)
def test_dropout_train_mode_gradient_matches_finite_differences(shape):
    rng = np.random.default_rng(sum(shape))
    results = check_module(Dropout(0.3, rng=7), rng.standard_normal(shape))
    assert results[0].passed and results[0].max_relative_error <= TOL, results


def test_dropout_is_the_identity_in_eval_mode():
    module = Dropout(0.9, rng=0).eval()
    x = np.random.default_rng(0).standard_normal((5, 4))
    np.testing.assert_array_equal(module.forward(x), x)
    dout = np.ones((5, 4))
    np.testing.assert_array_equal(module.backward(dout), dout)


def test_dropout_seed_fixes_the_masks_and_successive_masks_differ():
    x = np.ones((10, 10))
    a, b = Dropout(0.5, rng=3), Dropout(0.5, rng=3)
    first_a, first_b = a.forward(x), b.forward(x)
    np.testing.assert_array_equal(first_a, first_b)
    assert not np.array_equal(a.forward(x), first_a)


def test_dropout_uses_its_own_generator():
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    Dropout(0.5, rng=1).forward(np.ones((3, 3)))
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_dropout_extremes():
    x = np.random.default_rng(0).standard_normal((3, 4))
    np.testing.assert_array_equal(Dropout(0.0).forward(x), x)
    np.testing.assert_array_equal(Dropout(1.0).forward(x), np.zeros_like(x))


def test_dropout_keeps_float32():
    x = np.ones((3, 4), dtype=np.float32)
    module = Dropout(0.5, rng=0)
    assert module.forward(x).dtype == np.float32
    assert module.backward(x).dtype == np.float32


@pytest.mark.parametrize("bad", [-0.1, 1.1, "0.5", True])
def test_invalid_dropout_probability_is_refused(bad):
    with pytest.raises(ValueError, match="Dropout"):
        Dropout(bad)


def test_dropout_backward_of_the_wrong_shape_is_refused():
    module = Dropout(0.5, rng=0)
    module.forward(np.ones((2, 3)))
    with pytest.raises(ValueError) as info:
        module.backward(np.ones((3, 2)))
    assert "Dropout" in str(info.value) and "(3, 2)" in str(info.value) and "(2, 3)" in str(info.value)
