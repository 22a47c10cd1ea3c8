"""The NumPy and the torch backend agree: same start, same batches, float64 -> the same training.

Each case runs 30 steps through the backend interface the training loop uses, with the loop's
learning-rate schedule, and requires per-step losses equal to 1e-10 (relative) and parameters
to 1e-9 afterwards.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from mlplab.config import TrainConfig  # noqa: E402
from mlplab.nn.activations import ACTIVATIONS  # noqa: E402
from mlplab.optim import make_schedule  # noqa: E402
from mlplab.torch.backend import TorchBackend  # noqa: E402
from mlplab.training.backends import NumpyBackend  # noqa: E402

N_INPUTS, N_CLASSES, BATCH, STEPS, STEPS_PER_EPOCH = 20, 5, 16, 30, 10
LOSS_RTOL, PARAM_ATOL = 1e-10, 1e-9

CASES = {
    "default": {},
    **{f"activation-{name}": {"activation": name} for name in ACTIVATIONS},
    "residual": {"residual": True},
    "batch-norm": {"use_batch_norm": True},
    "dropout-0": {"dropout": 0.0},
    "momentum": {"momentum": 0.9},
    "nesterov": {"momentum": 0.9, "nesterov": True},
    "weight-decay": {"momentum": 0.9, "weight_decay": 5e-3},
    "adam": {"optimizer": "adam", "lr": 1e-2, "weight_decay": 1e-3},
    "adamw": {"optimizer": "adamw", "lr": 1e-2, "weight_decay": 0.1},
    "cosine-warmup": {"schedule": "cosine", "warmup_epochs": 1, "min_lr": 1e-3, "momentum": 0.9},
    "label-smoothing": {"label_smoothing": 0.1},
    "step-schedule": {"schedule": "step", "step_epochs": 1, "gamma": 0.5},
}


def make_config(**options) -> TrainConfig:
    return TrainConfig.from_options(
        {"dtype": "float64", "hidden_dims": [24, 24], "device": "cpu", "epochs": STEPS // STEPS_PER_EPOCH, **options}
    ).validated()


def make_batches(seed: int = 0):
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((STEPS, BATCH, N_INPUTS)).astype(np.float32)
    ys = rng.integers(0, N_CLASSES, (STEPS, BATCH))
    return xs, ys


def schedule_of(config: TrainConfig):
    return make_schedule(
        config.schedule, config.lr, steps_per_epoch=STEPS_PER_EPOCH, epochs=config.epochs,
        warmup_epochs=config.warmup_epochs, step_epochs=config.step_epochs, gamma=config.gamma, min_lr=config.min_lr,
    )


def max_abs_diff(first: dict, second: dict) -> float:
    assert list(first) == list(second)
    return max((float(np.max(np.abs(np.asarray(first[k], np.float64) - np.asarray(second[k], np.float64)), initial=0)) for k in first), default=0.0)


def run_both(config: TrainConfig, seed: int = 1):
    numpy_backend = NumpyBackend(config, N_INPUTS, N_CLASSES, np.random.SeedSequence(seed))
    torch_backend = TorchBackend(config, N_INPUTS, N_CLASSES, np.random.SeedSequence(seed))
    assert max_abs_diff(numpy_backend.state_dict(), torch_backend.state_dict()) == 0  # the very same start
    xs, ys = make_batches()
    schedule = schedule_of(config)
    losses = []
    for step in range(STEPS):
        lr = schedule(step)
        numpy_step = numpy_backend.train_step(xs[step], ys[step], lr)
        numpy_loss, numpy_correct = numpy_step.loss, numpy_step.correct
        torch_step = torch_backend.train_step(xs[step], ys[step], lr)
        torch_loss, torch_correct = torch_step.loss, torch_step.correct
        assert isinstance(torch_loss, float) and isinstance(torch_correct, int)
        assert numpy_correct == torch_correct
        losses.append((numpy_loss, torch_loss))
    return numpy_backend, torch_backend, np.array(losses)


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
def test_thirty_steps_agree_in_float64(options):
    numpy_backend, torch_backend, losses = run_both(make_config(**options))
    relative = np.abs(losses[:, 0] - losses[:, 1]) / np.abs(losses[:, 0])
    assert relative.max() <= LOSS_RTOL
    assert max_abs_diff(numpy_backend.state_dict(), torch_backend.state_dict()) <= PARAM_ATOL
    numpy_opt, torch_opt = numpy_backend.optimizer_state(), torch_backend.optimizer_state()
    assert {k: v for k, v in numpy_opt.items() if k != "state"} == {k: v for k, v in torch_opt.items() if k != "state"}
    assert max_abs_diff(dict(sorted(numpy_opt["state"].items())), dict(sorted(torch_opt["state"].items()))) <= PARAM_ATOL
    x = make_batches(seed=9)[0][0]
    np.testing.assert_allclose(torch_backend.predict_logits(x), numpy_backend.predict_logits(x), rtol=0, atol=1e-9)


def test_batch_norm_running_statistics_and_eval_mode_agree():
    numpy_backend, torch_backend, _ = run_both(make_config(use_batch_norm=True, residual=True, momentum=0.9))
    numpy_state, torch_state = numpy_backend.state_dict(), torch_backend.state_dict()
    for key in numpy_state:
        if key.endswith("num_batches_tracked"):
            assert int(numpy_state[key]) == int(torch_state[key]) == STEPS
        elif key.endswith(("running_mean", "running_var")):
            np.testing.assert_allclose(torch_state[key], numpy_state[key], rtol=1e-12, atol=1e-12)
    x = make_batches(seed=4)[0].reshape(-1, N_INPUTS)
    # eval mode normalises with the running statistics: one row's logits do not depend on the others
    np.testing.assert_allclose(torch_backend.predict_logits(x[:1]), torch_backend.predict_logits(x)[:1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(torch_backend.predict_logits(x, batch_size=7), numpy_backend.predict_logits(x), rtol=0, atol=1e-9)
    assert torch_backend.model.training  # predict_logits restores the mode


def test_float32_backends_start_alike_and_stay_close():
    numpy_backend, torch_backend, losses = run_both(make_config(dtype="float32"))
    assert torch_backend.model.layers[0].weight.dtype == torch.float32
    assert np.abs(losses[:, 0] - losses[:, 1]).max() < 1e-4
    assert torch_backend.predict_logits(make_batches()[0][0]).dtype == np.float32


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_optimizer_state_moves_between_backends(optimizer):
    """A checkpoint written by either backend continues on the other with the same updates."""
    extra = {"momentum": 0.9} if optimizer == "sgd" else {"lr": 1e-2, "weight_decay": 0.01}
    config = make_config(optimizer=optimizer, **extra)
    xs, ys = make_batches()
    numpy_backend = NumpyBackend(config, N_INPUTS, N_CLASSES, np.random.SeedSequence(3))
    for step in range(10):
        numpy_backend.train_step(xs[step], ys[step], 0.05)
    torch_backend = TorchBackend(config, N_INPUTS, N_CLASSES, np.random.SeedSequence(99))
    torch_backend.load_state_dict(numpy_backend.state_dict())
    torch_backend.load_optimizer_state(numpy_backend.optimizer_state())
    back = NumpyBackend(config, N_INPUTS, N_CLASSES, np.random.SeedSequence(98))
    back.load_state_dict(torch_backend.state_dict())
    back.load_optimizer_state(torch_backend.optimizer_state())
    for step in range(10, 20):
        expected = numpy_backend.train_step(xs[step], ys[step], 0.05).loss
        assert abs(torch_backend.train_step(xs[step], ys[step], 0.05).loss - expected) <= LOSS_RTOL * expected
        assert abs(back.train_step(xs[step], ys[step], 0.05).loss - expected) <= LOSS_RTOL * expected
    assert torch_backend.optimizer_state()["step"] == 20
    assert max_abs_diff(numpy_backend.state_dict(), torch_backend.state_dict()) <= PARAM_ATOL


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("options", [{"optimizer": "adam", "lr": 1e-2, "dropout": 0.3, "use_batch_norm": True},
                                     {"momentum": 0.9, "nesterov": True, "dropout": 0.3}], ids=["adam-dropout-bn", "nesterov-dropout"])
def test_torch_backend_resumes_bitwise(options, dtype):
    """15 steps, a JSON round trip of the saved state into a fresh backend, 15 more == 30 straight."""
    config = make_config(dtype=dtype, **options)
    xs, ys = make_batches()
    straight = TorchBackend(config, N_INPUTS, N_CLASSES, np.random.SeedSequence(1))
    expected = [straight.train_step(xs[t], ys[t], 0.05) for t in range(STEPS)]
    first = TorchBackend(config, N_INPUTS, N_CLASSES, np.random.SeedSequence(1))
    got = [first.train_step(xs[t], ys[t], 0.05) for t in range(15)]
    optimizer = first.optimizer_state()
    meta = json.loads(json.dumps({"optimizer": {k: v for k, v in optimizer.items() if k != "state"}, "rng": first.rng_state()}))
    resumed = TorchBackend(config, N_INPUTS, N_CLASSES, np.random.SeedSequence(12345))
    resumed.load_state_dict(first.state_dict())
    resumed.load_optimizer_state({**meta["optimizer"], "state": optimizer["state"]})
    resumed.load_rng_state(meta["rng"])
    got += [resumed.train_step(xs[t], ys[t], 0.05) for t in range(15, STEPS)]
    assert got == expected
    final, expected_state = resumed.state_dict(), straight.state_dict()
    assert all(np.array_equal(final[k], expected_state[k]) for k in final)


def test_dropout_masks_are_fixed_by_the_seed():
    config = make_config(dropout=0.5)
    xs, ys = make_batches()
    runs = [TorchBackend(config, N_INPUTS, N_CLASSES, np.random.SeedSequence(1)) for _ in range(2)]
    losses = [[backend.train_step(xs[t], ys[t], 0.1).loss for t in range(5)] for backend in runs]
    assert losses[0] == losses[1]
    no_dropout = TorchBackend(make_config(), N_INPUTS, N_CLASSES, np.random.SeedSequence(1))
    assert no_dropout.train_step(xs[0], ys[0], 0.1).loss != losses[0][0]  # same weights, masks applied
