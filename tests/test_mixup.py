"""Mixup (``--mixup ALPHA``): the batch transform, soft targets on both backends, exact resume."""

from __future__ import annotations

import numpy as np
import pytest

import mlplab
from mlplab.cli import main
from mlplab.config import TrainConfig
from mlplab.data import get_dataset
from mlplab.data.augment import Mixup
from mlplab.errors import ConfigError, TrainingInterrupted
from mlplab.gradcheck import check_loss
from mlplab.nn import SoftmaxCrossEntropy
from mlplab.training.backends import NumpyBackend
from mlplab.training.checkpoint import load_checkpoint
from mlplab.training.loop import Trainer

FAST = {"dataset": "digits", "hidden_dims": [32], "quiet": True, "report": False}


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits")


def weights(result) -> dict[str, np.ndarray]:
    return result.backend.state_dict()


# -- the transform ---------------------------------------------------------------------------
def test_mixup_mixes_inputs_and_one_hot_targets_with_one_lambda_and_one_permutation():
    x = np.array([[1, 0, 0], [0, 2, 0], [0, 0, 4], [8, 8, 8]], np.float32)
    y = np.array([0, 1, 2, 1])
    x_before = x.copy()
    mixup = Mixup(3, alpha=0.4, rng=np.random.default_rng(2))
    mixed, targets = mixup(x, y)
    twin = np.random.default_rng(2)  # the same draws, in the documented order: λ, then π
    lam, order = round(twin.beta(0.4, 0.4) * 2**24) / 2**24, twin.permutation(4)
    assert 0.05 < lam < 0.95 and not np.array_equal(order, np.arange(4))  # a case where a swap would show
    expected_x = lam * x_before.astype(np.float64) + (1 - lam) * x_before[order]
    expected_t = lam * np.eye(3)[y] + (1 - lam) * np.eye(3)[y[order]]
    assert mixed.dtype == np.float32 and targets.dtype == np.float32 and targets.shape == (4, 3)
    np.testing.assert_allclose(mixed, expected_x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(targets, expected_t, rtol=1e-6, atol=1e-7)
    # by hand for this draw (λ ≈ 0.418, π = [0, 3, 1, 2]): row 2 (class 2) is mixed with row 1 (class 1)
    np.testing.assert_array_equal(order, [0, 3, 1, 2])
    np.testing.assert_allclose(mixed[2], [0, 2 * (1 - lam), 4 * lam], rtol=1e-6)
    np.testing.assert_allclose(targets[2], [0, 1 - lam, lam], rtol=1e-6)
    np.testing.assert_array_equal(targets[0], [1, 0, 0])  # mixed with itself
    np.testing.assert_array_equal(targets.sum(axis=1, dtype=np.float64), 1.0)  # exactly: λ is on a 2⁻²⁴ grid
    np.testing.assert_array_equal(x, x_before)  # the batch itself is left alone
    # the next batch gets its own λ; restoring the generator's state replays it
    state = mixup.rng.bit_generator.state
    again, _ = mixup(x, y)
    mixup.rng.bit_generator.state = state
    np.testing.assert_array_equal(mixup(x, y)[0], again)
    assert not np.allclose(again, mixed)


def test_mixup_refuses_a_non_positive_alpha_and_mismatched_shapes():
    with pytest.raises(ConfigError, match="alpha"):
        Mixup(3, alpha=0)
    with pytest.raises(ConfigError, match="Mixup"):
        Mixup(3, alpha=0.2)(np.zeros((4, 2), np.float32), np.zeros(3, np.int64))


# -- the loss with soft targets -----------------------------------------------------------------
def test_soft_target_gradient_passes_the_gradient_check_and_a_hard_one_would_not():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((6, 4))
    y = rng.integers(0, 4, 6)
    x = rng.standard_normal((6, 3)).astype(np.float32)
    _, targets = Mixup(4, alpha=1.0, rng=np.random.default_rng(0))(x, y)
    for smoothing in (0.0, 0.1):
        assert check_loss(SoftmaxCrossEntropy(label_smoothing=smoothing), logits, targets).passed

    class ArgmaxTargets(SoftmaxCrossEntropy):  # a backward that treats the soft row as its largest class
        def backward(self, logits, labels):
            return super().backward(logits, np.argmax(labels, axis=1))

    assert not check_loss(ArgmaxTargets(), logits, targets).passed


@pytest.mark.parametrize("fast", [True, False])
def test_one_hot_targets_train_exactly_as_class_labels(fast):
    config = TrainConfig(hidden_dims=[16], label_smoothing=0.1).validated()
    hard, soft = (NumpyBackend(config, 8, 5, np.random.SeedSequence(3), fast=fast) for _ in range(2))
    rng = np.random.default_rng(4)
    for _ in range(3):
        x, y = rng.standard_normal((32, 8)).astype(np.float32), rng.integers(0, 5, 32)
        a, b = hard.train_step(x, y, 0.1), soft.train_step(x, np.eye(5, dtype=np.float32)[y], 0.1)
        assert a.correct == b.correct  # a soft row counts as its argmax class
        assert b.loss == pytest.approx(a.loss, rel=1e-6)
    for key, value in hard.state_dict().items():
        np.testing.assert_allclose(soft.state_dict()[key], value, rtol=1e-5, atol=1e-7, err_msg=key)


# -- training ---------------------------------------------------------------------------------
def test_alpha_zero_is_the_run_without_the_option(digits):
    plain = mlplab.train(data=digits, epochs=2, **FAST)
    zero = mlplab.train(data=digits, epochs=2, mixup=0.0, **FAST)
    mixed = mlplab.train(data=digits, epochs=2, mixup=0.2, **FAST)
    for key, value in weights(plain).items():
        np.testing.assert_array_equal(weights(zero)[key], value, err_msg=key)
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in zero.history] == [
        {k: v for k, v in row.items() if k != "seconds"} for row in plain.history
    ]
    assert any(not np.array_equal(weights(mixed)[k], v) for k, v in weights(plain).items())


def test_off_builds_no_generator_and_on_leaves_the_other_streams_alone(digits):
    config = TrainConfig(**FAST, augment=True).validated()
    off, on = Trainer(config, digits), Trainer(config.updated({"mixup": 0.3}).validated(), digits)
    assert off.mixup is None and on.mixup is not None
    assert off.training_state()["meta"]["rng"]["mixup"] is None
    assert on.shuffle_rng.bit_generator.state == off.shuffle_rng.bit_generator.state
    assert on.augment.rng.bit_generator.state == off.augment.rng.bit_generator.state
    for key, value in off.backend.state_dict().items():
        np.testing.assert_array_equal(on.backend.state_dict()[key], value)
    assert on.mixup.rng.bit_generator.state != on.augment.rng.bit_generator.state


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_textbook_and_fast_paths_train_alike_with_mixup(digits, monkeypatch, smoothing):
    runs = []
    for flag in ("0", "1"):
        monkeypatch.setenv("MLPLAB_FAST", flag)
        runs.append(mlplab.train(data=digits, epochs=2, mixup=0.4, label_smoothing=smoothing, dtype="float64", **FAST))
    textbook, fast = runs
    assert not textbook.backend.fast and fast.backend.fast
    for key, value in weights(textbook).items():
        np.testing.assert_allclose(weights(fast)[key], value, rtol=1e-10, atol=1e-12, err_msg=key)
    for a, b in zip(textbook.history, fast.history):
        assert a["train_accuracy"] == b["train_accuracy"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-12)


@pytest.mark.torch
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_numpy_and_torch_agree_on_mixed_batches(smoothing):
    pytest.importorskip("torch")
    from mlplab.torch.backend import TorchBackend
    from test_torch_parity import (
        LOSS_RTOL,
        N_CLASSES,
        N_INPUTS,
        PARAM_ATOL,
        STEPS,
        make_batches,
        make_config,
        max_abs_diff,
        schedule_of,
    )

    config = make_config(momentum=0.9, label_smoothing=smoothing, mixup=0.4)
    numpy_backend = NumpyBackend(config, N_INPUTS, N_CLASSES, np.random.SeedSequence(1))
    torch_backend = TorchBackend(config, N_INPUTS, N_CLASSES, np.random.SeedSequence(1))
    mixup = Mixup(N_CLASSES, config.mixup, rng=np.random.default_rng(5))
    schedule = schedule_of(config)
    for step, (xb, yb) in enumerate(zip(*make_batches())):
        x_mixed, targets = mixup(xb, yb)
        a = numpy_backend.train_step(x_mixed, targets, schedule(step))
        b = torch_backend.train_step(x_mixed, targets, schedule(step))
        assert abs(a.loss - b.loss) <= LOSS_RTOL * abs(a.loss)
        assert a.correct == b.correct
    assert step == STEPS - 1
    assert max_abs_diff(numpy_backend.state_dict(), torch_backend.state_dict()) <= PARAM_ATOL


@pytest.mark.torch
def test_loop_trains_both_backends_alike_with_mixup_and_gradient_tracking(digits, tmp_path):
    pytest.importorskip("torch")
    options = {**FAST, "epochs": 1, "mixup": 0.3, "dtype": "float64", "device": "cpu", "track_gradients": 4}
    runs = [mlplab.train(data=digits, backend=name, out=str(tmp_path / name), **options) for name in ("numpy", "torch")]
    assert all((tmp_path / name / "gradients.csv").exists() for name in ("numpy", "torch"))  # tracked steps ran
    assert runs[0].history[0]["train_accuracy"] == runs[1].history[0]["train_accuracy"]
    assert runs[0].history[0]["train_loss"] == pytest.approx(runs[1].history[0]["train_loss"], rel=1e-10)
    for key, value in weights(runs[0]).items():
        np.testing.assert_allclose(weights(runs[1])[key], value, rtol=0, atol=1e-9, err_msg=key)


def test_mixup_on_another_array_library_follows_the_numpy_run(digits):
    pytest.importorskip("array_api_strict")
    pytest.importorskip("array_api_compat")
    options = {**FAST, "epochs": 2, "mixup": 0.3, "label_smoothing": 0.1}
    host = mlplab.train(data=digits, **options)
    strict = mlplab.train(data=digits, array_library="array-api-strict", **options)
    assert [row["train_accuracy"] for row in strict.history] == [row["train_accuracy"] for row in host.history]
    for key, value in weights(host).items():
        np.testing.assert_allclose(weights(strict)[key], value, rtol=1e-4, atol=1e-6, err_msg=key)


def test_interrupted_mixup_run_resumes_bit_for_bit(tmp_path, digits):
    from test_reliability import InterruptAt, assert_same_run

    options = {
        **FAST,
        "epochs": 3,
        "momentum": 0.9,
        "dropout": 0.1,
        "augment": True,
        "batch_size": 64,
        "mixup": 0.3,
        "label_smoothing": 0.1,
    }
    mlplab.train(data=digits, out=str(tmp_path / "full"), **options)
    with pytest.raises(TrainingInterrupted):
        mlplab.train(data=digits, out=str(tmp_path / "cut"), listeners=[InterruptAt(23)], **options)
    last = load_checkpoint(tmp_path / "cut" / "last.npz")
    assert last.meta["step_in_epoch"] == 23 - 16 and last.meta["rng"]["mixup"] is not None
    mlplab.train(data=digits, resume=str(tmp_path / "cut"), quiet=True)
    assert_same_run(tmp_path / "full", tmp_path / "cut")


# -- the command line -------------------------------------------------------------------------
def test_a_negative_alpha_exits_2_with_one_line(tmp_path, capsys):
    code = main(["train", "--dataset", "digits", "--mixup", "-1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert "--mixup" in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_resume_refuses_another_alpha(tmp_path, digits):
    mlplab.train(data=digits, out=str(tmp_path / "r"), epochs=1, mixup=0.2, **FAST)
    with pytest.raises(ConfigError, match="--mixup"):
        mlplab.train(data=digits, resume=str(tmp_path / "r"), epochs=2, mixup=0.5)
