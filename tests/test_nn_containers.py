"""Sequential and Residual: composition, the chain rule, the identity path, width checks."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from mlplab.gradcheck import check_module
from mlplab.nn import ELU, BatchNorm1d, Linear, Module, Residual, Sequential, Softmax, Tanh

TOL = 1e-7

SHAPES = [(1, 1), (1, 4), (5, 1)] + [
    tuple(int(v) for v in np.random.default_rng(seed).integers(2, 8, size=2)) for seed in range(3)
]


class Duplicate(Module):
    """A parameter-free block that doubles the width: [x, x]."""

    def forward(self, x):
        return np.hstack([x, x])

    def backward(self, dout):
        half = dout.shape[1] // 2
        return dout[:, :half] + dout[:, half:]


def assert_all_pass(results):
    # ``passed`` applies the tolerance given to check_module, or the noise-level rule for a
    # gradient that is zero in exact arithmetic (a Linear bias in front of batch norm).
    bad = [(r.module, r.quantity, r.max_relative_error) for r in results if not r.passed]
    assert not bad, f"gradient check failed: {bad}"


# -- Sequential ----------------------------------------------------------------------------
def test_sequential_forward_and_backward_follow_the_chain_rule():
    rng = np.random.default_rng(0)
    first, act, last = Linear(4, 3, rng=rng), ELU(), Linear(3, 2, rng=rng)
    seq = Sequential(first, act, last)
    x, dout = rng.standard_normal((5, 4)), rng.standard_normal((5, 2))

    # The same three modules by hand, on copies.
    a, b, c = copy.deepcopy(first), copy.deepcopy(act), copy.deepcopy(last)
    expected_out = c.forward(b.forward(a.forward(x)))
    expected_dx = a.backward(b.backward(c.backward(dout)))

    np.testing.assert_array_equal(seq.forward(x), expected_out)
    np.testing.assert_array_equal(seq.backward(dout), expected_dx)
    np.testing.assert_array_equal(first.grads["weight"], a.grads["weight"])
    np.testing.assert_array_equal(last.grads["bias"], c.grads["bias"])


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_sequential_gradients_match_finite_differences(shape):
    batch, width = shape
    rng = np.random.default_rng(sum(shape))
    seq = Sequential(Linear(width, 3, rng=rng), Tanh(), Linear(3, 4, rng=rng), Softmax())
    results = check_module(seq, rng.standard_normal(shape), seed=batch, tol=TOL)
    assert [r.quantity for r in results] == ["input", "0.weight", "0.bias", "2.weight", "2.bias"]
    assert_all_pass(results)


def test_sequential_names_children_like_torch():
    seq = Sequential(Linear(3, 3), ELU(), BatchNorm1d(3))
    assert list(seq.state_dict()) == [
        "0.weight", "0.bias", "2.weight", "2.bias", "2.running_mean", "2.running_var", "2.num_batches_tracked",
    ]
    assert len(seq) == 3 and isinstance(seq[1], ELU) and isinstance(seq[-1], BatchNorm1d)
    assert [type(m) for m in seq] == [Linear, ELU, BatchNorm1d]


def test_train_and_eval_reach_every_descendant():
    seq = Sequential(Linear(2, 2), Residual(Sequential(BatchNorm1d(2), Tanh())))
    seq.eval()
    assert all(not m.training for _, m in seq.named_modules())
    seq.train()
    assert all(m.training for _, m in seq.named_modules())


def test_empty_sequential_is_the_identity():
    x = np.arange(6.0).reshape(2, 3)
    seq = Sequential()
    np.testing.assert_array_equal(seq.forward(x), x)
    np.testing.assert_array_equal(seq.backward(x), x)


def test_skipping_the_input_gradient():
    rng = np.random.default_rng(1)
    seq = Sequential(Linear(3, 4, rng=rng), Tanh(), Linear(4, 2, rng=rng))
    x, dout = rng.standard_normal((2, 3)), rng.standard_normal((2, 2))
    seq.forward(x)
    seq.backward(dout)
    expected = seq[0].grads["weight"].copy()
    seq[0].grads["weight"][...] = 0
    assert seq.backward(dout, need_input_grad=False) is None
    np.testing.assert_array_equal(seq[0].grads["weight"], expected)


def test_only_modules_can_be_children():
    with pytest.raises(TypeError, match="Sequential"):
        Sequential(Linear(2, 2), np.tanh)


def test_clear_cache_reaches_nested_modules_and_makes_copies_small():
    seq = Sequential(Linear(50, 50, rng=0), Residual(Sequential(Linear(50, 50, rng=1), Tanh())), Linear(50, 2, rng=2))
    seq.forward(np.zeros((2000, 50)))
    assert len(pickle.dumps(seq)) > 1_000_000
    seq.clear_cache()
    assert all(m.cache == {} for _, m in seq.named_modules())
    assert len(pickle.dumps(seq)) < 100_000
    assert len(pickle.dumps(copy.deepcopy(seq))) < 100_000


# -- Residual ------------------------------------------------------------------------------
def test_residual_forward_adds_the_input():
    rng = np.random.default_rng(2)
    block = Sequential(Linear(3, 3, rng=rng), Tanh())
    x = rng.standard_normal((4, 3))
    expected = x + copy.deepcopy(block).forward(x)
    np.testing.assert_allclose(Residual(block).forward(x), expected, rtol=1e-15)


def test_residual_backward_is_dout_plus_the_block_gradient():
    rng = np.random.default_rng(3)
    block = Sequential(Linear(3, 3, rng=rng), ELU())
    twin = copy.deepcopy(block)
    x, dout = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    res = Residual(block)
    res.forward(x)
    twin.forward(x)
    np.testing.assert_allclose(res.backward(dout), dout + twin.backward(dout), rtol=1e-15)
    np.testing.assert_array_equal(block[0].grads["weight"], twin[0].grads["weight"])


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("batch_norm", [False, True])
def test_residual_gradients_match_finite_differences(shape, batch_norm):
    batch, width = shape
    rng = np.random.default_rng(sum(shape))
    layers = [Linear(width, width, rng=rng)]
    # Train mode needs a few rows; and one 1-wide Linear in front of batch norm in train mode has
    # an eps-sized weight gradient (the normalisation cancels its only direction), so eval there.
    bn_training = batch > 2 and width > 1
    if batch_norm:
        layers.append(BatchNorm1d(width).train(bn_training))
    layers.append(Tanh())
    results = check_module(Residual(Sequential(*layers)), rng.standard_normal(shape), seed=batch, tol=TOL)
    assert results[1].quantity == "block.0.weight"
    assert_all_pass(results)
    if batch_norm and bn_training:
        # Batch norm subtracts the batch mean, so the bias in front of it has no effect at all.
        assert results[2].quantity == "block.0.bias" and results[2].scale < 1e-8


def test_identity_path_passes_the_gradient_unchanged_when_the_block_is_silent():
    block = Sequential(Linear(4, 4, rng=0), Tanh())
    block[0].params["weight"][...] = 0.0
    res = Residual(block)
    x = np.random.default_rng(4).standard_normal((3, 4))
    np.testing.assert_array_equal(res.forward(x), x)
    dout = np.random.default_rng(5).standard_normal((3, 4))
    np.testing.assert_array_equal(res.backward(dout), dout)


def test_residual_stack_keeps_the_gradient_that_a_plain_stack_loses():
    depth, width = 20, 8

    def stack(residual):
        rng = np.random.default_rng(6)
        blocks = []
        for _ in range(depth):
            linear = Linear(width, width, rng=rng)
            linear.params["weight"] *= 0.1  # small weights: each plain layer shrinks the gradient
            block = Sequential(linear, Tanh())
            blocks.append(Residual(block) if residual else block)
        return Sequential(*blocks)

    x = np.random.default_rng(7).standard_normal((4, width))
    dout = np.random.default_rng(8).standard_normal((4, width))
    ratios = {}
    for residual in (False, True):
        model = stack(residual)
        model.forward(x)
        ratios[residual] = np.linalg.norm(model.backward(dout)) / np.linalg.norm(dout)
    assert ratios[False] < 1e-6
    assert 0.5 < ratios[True] < 2.0


@pytest.mark.parametrize(
    "block, widths",
    [
        (Linear(4, 6), ("4", "6")),
        (Sequential(Linear(4, 6), Tanh(), Linear(6, 5)), ("4", "5")),
    ],
)
def test_width_changing_block_is_refused_at_construction(block, widths):
    with pytest.raises(ValueError) as info:
        Residual(block)
    message = str(info.value)
    assert "Residual" in message
    assert f"width {widths[0]}" in message and f"width {widths[1]}" in message


def test_width_changing_block_without_linear_is_refused_at_first_forward():
    res = Residual(Duplicate())
    with pytest.raises(ValueError) as info:
        res.forward(np.zeros((2, 3)))
    message = str(info.value)
    assert "Residual" in message and "width 3" in message and "width 6" in message


def test_residual_state_dict_names_the_block():
    res = Residual(Sequential(Linear(3, 3), BatchNorm1d(3)))
    assert list(res.state_dict())[:4] == ["block.0.weight", "block.0.bias", "block.1.weight", "block.1.bias"]
    assert res.block is res._children["block"]


def test_residual_backward_of_the_wrong_shape_is_refused():
    res = Residual(Tanh())
    res.forward(np.zeros((2, 3)))
    with pytest.raises(ValueError) as info:
        res.backward(np.zeros((2, 4)))
    assert "Residual" in str(info.value) and "(2, 4)" in str(info.value)
