"""Plain SGD folded into the weight-gradient product (Linear.fused_sgd_lr, NumpyBackend):
the same update as backward + SGD.step, with nothing left behind."""

from __future__ import annotations

import numpy as np
import pytest

from mlplab import _blas
from mlplab.config import TrainConfig
from mlplab.nn import Linear
from mlplab.optim import SGD
from mlplab.training.backends import FUSE_MIN_WEIGHT, NumpyBackend


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("need_input_grad", [True, False])
@pytest.mark.parametrize("contiguous", [True, False])
def test_fused_linear_backward_is_backward_then_sgd(dtype, need_input_grad, contiguous):
    rng = np.random.default_rng(0)
    fused, plain = Linear(24, 16, dtype=dtype, rng=1), Linear(24, 16, dtype=dtype, rng=1)
    x = rng.standard_normal((9, 24)).astype(dtype)
    dout = rng.standard_normal((9, 16)).astype(dtype)
    if not contiguous:  # a Fortran-ordered input: BLAS is refused and the two-step update is used
        x = np.asfortranarray(x)
    weight_before = fused.params["weight"].copy()
    fused.fused_sgd_lr = 0.1
    for layer in (fused, plain):
        layer.forward(x)
    dx_fused = fused.backward(dout, need_input_grad)
    dx_plain = plain.backward(dout, need_input_grad)
    SGD(plain.parameters(), lr=0.1).step()
    tolerance = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(fused.params["weight"], plain.params["weight"], rtol=0, atol=tolerance)
    assert not np.array_equal(fused.params["weight"], weight_before)
    # the bias is left to the optimiser: its gradient is filled as always
    np.testing.assert_array_equal(fused.grads["bias"], plain.grads["bias"])
    np.testing.assert_array_equal(fused.params["bias"], np.zeros(16, dtype))
    if need_input_grad:  # dx is taken with the weights from before the update
        np.testing.assert_allclose(dx_fused, dout @ weight_before, rtol=1e-6 if dtype == np.float32 else 1e-12)
        np.testing.assert_allclose(dx_fused, dx_plain, rtol=1e-6 if dtype == np.float32 else 1e-12)
    else:
        assert dx_fused is None and dx_plain is None


def test_sgd_step_skips_the_given_parameters():
    p, q = np.ones(3), np.ones(2)
    optimizer = SGD([(p, np.full(3, 2.0)), (q, np.full(2, 2.0))], lr=0.5)
    optimizer.step(frozenset({0}))
    np.testing.assert_array_equal(p, np.ones(3))
    np.testing.assert_array_equal(q, np.zeros(2))
    assert optimizer.step_count == 1


@pytest.mark.parametrize("options", [{}, {"hidden_dims": [64, 64], "residual": True}, {"batch_size": 512},
                                     {"dtype": "float64"}, {"use_batch_norm": True, "dropout": 0.1}])
def test_fused_training_follows_the_unfused_trajectory(options):
    config = TrainConfig(**{"hidden_dims": [128], **options}).validated()
    rng = np.random.default_rng(3)
    batch = config.batch_size
    x = rng.standard_normal((4 * batch, 256)).astype(np.float64 if config.dtype == "float64" else np.float32)
    y = rng.integers(0, 10, 4 * batch)
    fused = NumpyBackend(config, 256, 10, np.random.SeedSequence(5))
    plain = NumpyBackend(config, 256, 10, np.random.SeedSequence(5))
    plain.fuse_sgd = False
    assert fused._fused_indices, "the first layer (256 x 64 or more) is large enough to be fused"
    for step in range(4):
        xb, yb = x[step * batch:(step + 1) * batch], y[step * batch:(step + 1) * batch]
        loss_f, correct_f = fused.train_step(xb, yb, 0.1)
        loss_p, correct_p = plain.train_step(xb, yb, 0.1)
        assert loss_f == pytest.approx(loss_p, rel=1e-5) and abs(correct_f - correct_p) <= 1
    for key, value in plain.state_dict().items():
        np.testing.assert_allclose(fused.state_dict()[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
    # the fused learning rate is never left set: a later backward only fills gradients
    assert all(layer.fused_sgd_lr is None for layer in fused._fused_layers)


def test_default_setup_fuses_only_the_large_weights_bit_for_bit():
    config = TrainConfig().validated()  # 3072 -> 128 -> 10, plain SGD, batch 128
    fused = NumpyBackend(config, 3072, 10, np.random.SeedSequence(42))
    plain = NumpyBackend(config, 3072, 10, np.random.SeedSequence(42))
    plain.fuse_sgd = False
    sizes = [layer.params["weight"].size for layer in fused._fused_layers]
    assert sizes == [128 * 3072] and 10 * 128 < FUSE_MIN_WEIGHT
    rng = np.random.default_rng(4)
    for _ in range(3):
        xb = rng.standard_normal((128, 3072), dtype=np.float32)
        yb = rng.integers(0, 10, 128)
        assert fused.train_step(xb, yb, 0.1) == plain.train_step(xb, yb, 0.1)
    for key, value in plain.state_dict().items():
        if _blas.AVAILABLE:  # the same BLAS product, so the same rounding (a batch of 128 is one block)
            np.testing.assert_array_equal(fused.state_dict()[key], value, err_msg=key)
        else:
            np.testing.assert_allclose(fused.state_dict()[key], value, rtol=1e-5, err_msg=key)


@pytest.mark.parametrize("options", [{"momentum": 0.9}, {"weight_decay": 1e-4}, {"optimizer": "adam", "lr": 1e-3}])
def test_no_fusion_unless_plain_sgd(options, monkeypatch):
    config = TrainConfig(**options).validated()
    backend = NumpyBackend(config, 3072, 10, np.random.SeedSequence(0))
    calls = []
    monkeypatch.setattr("mlplab.nn.linear.gemm_tn_update", lambda *args: calls.append(args) or False)
    rng = np.random.default_rng(0)
    before = backend.state_dict()["layers.0.weight"].copy()
    backend.train_step(rng.standard_normal((8, 3072), dtype=np.float32), rng.integers(0, 10, 8), 0.1)
    assert calls == []
    assert not np.array_equal(backend.state_dict()["layers.0.weight"], before)
    first = backend.model.layers[0]
    assert np.any(first.grads["weight"] != 0)  # the optimiser used the filled gradient
