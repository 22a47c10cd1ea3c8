"""The NumPy fast path (mlplab.fast) against the textbook step (mlplab.nn + mlplab.optim):
the same losses and weights after several steps, bit for bit where the arithmetic is the same."""

from __future__ import annotations

import numpy as np
import pytest

from mlplab import fast
from mlplab.config import TrainConfig
from mlplab.fast import _blas
from mlplab.fast.loss import FastSoftmaxCrossEntropy
from mlplab.fast.step import FUSE_MIN_WEIGHT, FusedStep
from mlplab.nn import Linear, SoftmaxCrossEntropy
from mlplab.optim import SGD
from mlplab.training.backends import NumpyBackend


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("need_input_grad", [True, False])
@pytest.mark.parametrize("contiguous", [True, False])
def test_fused_linear_is_textbook_backward_then_sgd(dtype, need_input_grad, contiguous):
    rng = np.random.default_rng(0)
    fused, plain = Linear(24, 16, dtype=dtype, rng=1), Linear(24, 16, dtype=dtype, rng=1)
    x = rng.standard_normal((9, 24)).astype(dtype)
    dout = rng.standard_normal((9, 16)).astype(dtype)
    if not contiguous:  # a Fortran-ordered input: BLAS is refused and the two-step update is used
        x = np.asfortranarray(x)
    weight_before = fused.params["weight"].copy()
    for layer in (fused, plain):
        layer.forward(x)
    dx_fused = FusedStep._fused_linear(fused, dout, need_input_grad, 0.1)
    dx_plain = plain.backward(dout, need_input_grad)
    SGD(plain.parameters(), lr=0.1).step()
    tolerance = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(fused.params["weight"], plain.params["weight"], rtol=0, atol=tolerance)
    assert not np.array_equal(fused.params["weight"], weight_before)
    # the bias is left to the optimiser: its gradient is filled as the textbook backward fills it
    np.testing.assert_array_equal(fused.grads["bias"], plain.grads["bias"])
    np.testing.assert_array_equal(fused.params["bias"], np.zeros(16, dtype))
    if need_input_grad:  # dx is taken with the weights from before the update
        np.testing.assert_array_equal(dx_fused, dout @ weight_before)
        np.testing.assert_array_equal(dx_fused, dx_plain)
    else:
        assert dx_fused is None and dx_plain is None


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("one_hot", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_loss_is_the_textbook_loss(smoothing, one_hot, dtype):
    rng = np.random.default_rng(1)
    logits = (3 * rng.standard_normal((33, 10))).astype(dtype)
    labels = rng.integers(0, 10, 33)
    if one_hot:
        labels = np.eye(10)[labels]
    module = SoftmaxCrossEntropy(label_smoothing=smoothing)
    fast_loss = FastSoftmaxCrossEntropy(module)
    for _ in range(2):  # the second call reuses the kept row offsets
        loss, grad = fast_loss.forward_backward(logits, labels)
        expected_loss, expected_grad = module.forward_backward(logits, labels)
        assert grad.dtype == expected_grad.dtype == dtype
        assert loss == pytest.approx(expected_loss, rel=1e-6 if dtype == np.float32 else 1e-13)
        np.testing.assert_allclose(grad, expected_grad, rtol=0, atol=1e-8 if dtype == np.float32 else 1e-17)
    # a batch of another size rebuilds the offsets
    loss, _ = fast_loss.forward_backward(logits[:5], labels[:5])
    assert loss == pytest.approx(module.forward(logits[:5], labels[:5]), rel=1e-6)


def _pair(options, n_inputs=256, seed=5):
    config = TrainConfig(**{"hidden_dims": [128], **options}).validated()
    fast_backend = NumpyBackend(config, n_inputs, 10, np.random.SeedSequence(seed), fast=True)
    plain_backend = NumpyBackend(config, n_inputs, 10, np.random.SeedSequence(seed), fast=False)
    return config, fast_backend, plain_backend


TRAJECTORIES = [
    {}, {"hidden_dims": [64, 64], "residual": True}, {"batch_size": 512}, {"dtype": "float64"},
    {"use_batch_norm": True, "dropout": 0.1}, {"label_smoothing": 0.1},
    {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True}, {"weight_decay": 1e-3},
    {"optimizer": "adam", "lr": 1e-3}, {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01},
]


@pytest.mark.parametrize("options", TRAJECTORIES)
def test_fast_training_follows_the_textbook_trajectory(options):
    config, fast_backend, plain_backend = _pair(options)
    assert fast_backend.fast and not plain_backend.fast
    rng = np.random.default_rng(3)
    batch = config.batch_size
    float64 = config.dtype == "float64"
    x = rng.standard_normal((4 * batch, 256)).astype(np.float64 if float64 else np.float32)
    y = rng.integers(0, 10, 4 * batch)
    for step in range(4):
        xb, yb = x[step * batch:(step + 1) * batch], y[step * batch:(step + 1) * batch]
        fast_step = fast_backend.train_step(xb, yb, 0.1 if config.optimizer == "sgd" else 1e-3)
        loss_f, correct_f = fast_step.loss, fast_step.correct
        plain_step = plain_backend.train_step(xb, yb, 0.1 if config.optimizer == "sgd" else 1e-3)
        loss_p, correct_p = plain_step.loss, plain_step.correct
        assert loss_f == pytest.approx(loss_p, rel=1e-12 if float64 else 1e-5) and abs(correct_f - correct_p) <= 1
    assert fast_backend.optimizer.step_count == plain_backend.optimizer.step_count == 4
    for key, value in plain_backend.state_dict().items():
        np.testing.assert_allclose(fast_backend.state_dict()[key], value, rtol=1e-10 if float64 else 1e-4,
                                   atol=1e-12 if float64 else 1e-6, err_msg=key)
    for name, state in plain_backend.optimizer_state()["state"].items():
        np.testing.assert_allclose(fast_backend.optimizer_state()["state"][name], state, rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("batch", [32, 128])
def test_fusing_the_sgd_update_changes_no_bit(monkeypatch, batch):
    """The default 3072 → 128 → 10 set-up: only the large weight is fused, and the fused gemm
    rounds as matmul + axpy do (a batch of up to 128 is summed in one block)."""
    config = TrainConfig().validated()
    fused = NumpyBackend(config, 3072, 10, np.random.SeedSequence(42), fast=True)
    monkeypatch.setattr("mlplab.fast.step.FUSE_MIN_WEIGHT", 10**12)
    unfused = NumpyBackend(config, 3072, 10, np.random.SeedSequence(42), fast=True)
    sizes = [layer.params["weight"].size for layer in fused.fused_step.fused_layers]
    assert sizes == [128 * 3072] and 10 * 128 < FUSE_MIN_WEIGHT and unfused.fused_step.fused_layers == []
    rng = np.random.default_rng(4)
    for _ in range(3):
        xb = rng.standard_normal((batch, 3072), dtype=np.float32)
        yb = rng.integers(0, 10, batch)
        assert fused.train_step(xb, yb, 0.1) == unfused.train_step(xb, yb, 0.1)
    assert fused.optimizer.step_count == unfused.optimizer.step_count == 3
    for key, value in unfused.state_dict().items():
        if _blas.AVAILABLE:
            np.testing.assert_array_equal(fused.state_dict()[key], value, err_msg=key)
        else:
            np.testing.assert_allclose(fused.state_dict()[key], value, rtol=1e-5, err_msg=key)


def _count_gemm(monkeypatch) -> list:
    calls = []
    real = _blas.gemm_tn_update
    monkeypatch.setattr("mlplab.fast.step.gemm_tn_update", lambda *args: calls.append(args) or real(*args))
    return calls


@pytest.mark.parametrize("options", [{"momentum": 0.9}, {"weight_decay": 1e-4}, {"optimizer": "adam", "lr": 1e-3}])
def test_no_fusion_unless_plain_sgd(options, monkeypatch):
    calls = _count_gemm(monkeypatch)
    _, backend, _ = _pair(options, n_inputs=3072, seed=0)
    rng = np.random.default_rng(0)
    before = backend.state_dict()["layers.0.weight"].copy()
    backend.train_step(rng.standard_normal((8, 3072), dtype=np.float32), rng.integers(0, 10, 8), 0.1)
    assert calls == []
    assert not np.array_equal(backend.state_dict()["layers.0.weight"], before)
    assert np.any(backend.model.layers[0].grads["weight"] != 0)  # the optimiser used the filled gradient


@pytest.mark.parametrize("value, expected", [(None, True), ("1", True), ("0", False), ("off", False), ("False", False)])
def test_the_fast_path_is_switched_by_argument_or_environment(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("MLPLAB_FAST", raising=False)
    else:
        monkeypatch.setenv("MLPLAB_FAST", value)
    assert fast.enabled() is expected
    assert fast.enabled(True) is True and fast.enabled(False) is False
    calls = _count_gemm(monkeypatch)
    config = TrainConfig(hidden_dims=[16]).validated()
    backend = NumpyBackend(config, 1024, 10, np.random.SeedSequence(0))
    assert backend.fast is expected and (backend.fused_step is not None) is expected
    rng = np.random.default_rng(0)
    backend.train_step(rng.standard_normal((8, 1024), dtype=np.float32), rng.integers(0, 10, 8), 0.1)
    assert len(calls) == (1 if expected else 0)  # the 1024 x 16 weight is fused, and only when on


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("optimizer, weight_decay", [("adam", 0.0), ("adam", 0.01), ("adamw", 0.05)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blocked_threaded_adam_is_the_textbook_adam_bit_for_bit(threads, optimizer, weight_decay, dtype, monkeypatch):
    """The blocked update cuts every parameter into blocks (here of 1000 elements, so a 60 x 70
    weight spans five blocks with a short last one) and deals them out to threads; each element
    still sees the textbook's operations in the textbook's order."""
    from mlplab.fast import update
    from mlplab.optim import OPTIMIZERS

    monkeypatch.setattr(update, "BLOCK", 1000)
    rng = np.random.default_rng(3)
    shapes = [(60, 70), (70,), (70, 10), (10,)]
    params = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(2)]
    params[1] = [p.copy() for p in params[0]]
    grads = [np.zeros(s, dtype) for s in shapes]
    options = {"lr": 1e-2, "weight_decay": weight_decay}
    textbook = OPTIMIZERS[optimizer](list(zip(params[0], grads)), **options)
    blocked = OPTIMIZERS[optimizer](list(zip(params[1], grads)), **options)
    updater = update.Updater(threads=threads)
    for _ in range(5):
        for g in grads:
            g[...] = rng.standard_normal(g.shape)
        textbook.step()
        updater.update(blocked)
    assert blocked.step_count == textbook.step_count == 5
    for a, b in zip(params[0], params[1]):
        np.testing.assert_array_equal(a, b)
    for name in ("exp_avg", "exp_avg_sq"):
        for a, b in zip(textbook.state[name], blocked.state[name]):
            np.testing.assert_array_equal(a, b)
    shares = updater._adam_plan[1]
    assert len(shares) == threads  # every thread got a share
    assert sorted(item for share in shares for item in share) == sorted(
        (i, a, min(int(np.prod(s)), a + 1000)) for i, s in enumerate(shapes) for a in range(0, int(np.prod(s)), 1000)
    )


def test_update_threads_read_the_environment(monkeypatch):
    from mlplab.fast import update

    monkeypatch.setenv("MLPLAB_UPDATE_THREADS", "3")
    assert update.update_threads() == 3 and update.Updater().threads == 3
    monkeypatch.setenv("MLPLAB_UPDATE_THREADS", "0")
    assert update.update_threads() == 1
    monkeypatch.delenv("MLPLAB_UPDATE_THREADS")
    assert 1 <= update.update_threads() <= 4
