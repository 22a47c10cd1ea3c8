"""The backend interface, its registry, what a step returns, and the listener base class."""

from __future__ import annotations

import numpy as np
import pytest

import mlplab
from mlplab.backend_api import Backend, StepResult
from mlplab.config import TrainConfig
from mlplab.data import get_dataset
from mlplab.errors import ConfigError
from mlplab.models import MLP, layer_plan
from mlplab.nn import BatchNorm1d, Dropout, Linear, Residual
from mlplab.training.backends import BACKENDS, NumpyBackend, backend_class, make_backend
from mlplab.training.hooks import Listener


def small_config(**options) -> TrainConfig:
    return TrainConfig(dataset="digits", hidden_dims=[16, 16], batch_size=32, **options).validated()


def test_the_registry_names_backends_by_string_and_finds_them():
    assert all(isinstance(spec, str) and ":" in spec for spec in BACKENDS.values())
    assert backend_class("numpy") is NumpyBackend
    backend = make_backend(small_config(), 64, 10, np.random.SeedSequence(0))
    assert isinstance(backend, NumpyBackend) and isinstance(backend, Backend)
    with pytest.raises(ConfigError, match="unknown backend 'jax'"):
        backend_class("jax")


def test_the_torch_backend_has_the_interface():
    pytest.importorskip("torch")
    from mlplab.torch.backend import TorchBackend

    assert backend_class("torch") is TorchBackend
    assert isinstance(TorchBackend(small_config(backend="torch"), 64, 10, np.random.SeedSequence(0)), Backend)


def test_a_step_returns_what_it_measured_and_tracking_changes_no_update():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 64)).astype(np.float32), rng.integers(0, 10, 32)
    plain, tracked = (NumpyBackend(small_config(), 64, 10, np.random.SeedSequence(1)) for _ in range(2))
    step = plain.train_step(x, y, 0.1)
    measured = tracked.train_step(x, y, 0.1, track=True)
    assert isinstance(step, StepResult) and step.layer_stats is None
    assert (measured.loss, measured.correct) == (step.loss, step.correct)
    assert [layer.layer for layer in measured.layer_stats] == ["layers.0", "layers.2", "layers.4"]
    assert all(np.array_equal(a, b) for a, b in zip(plain.state_dict().values(), tracked.state_dict().values()))
    assert not hasattr(tracked, "track_next_step") and not hasattr(tracked, "last_gradient_stats")


class StopAfter(Listener):
    def __init__(self, epochs: int, decision):
        self.epochs, self.decision, self.ends = epochs, decision, 0

    def on_epoch_end(self, trainer, row):
        self.ends += 1
        return self.decision if row["epoch"] >= self.epochs else None


@pytest.mark.parametrize("decision, status", [("enough", "enough"), (True, "stopped")])
def test_a_listener_stops_training_by_what_it_returns(decision, status):
    stopper = StopAfter(2, decision)
    steps = []

    class CountSteps:  # a listener without the base class: its one hook is still called
        def on_step(self, trainer, loss):
            steps.append(loss)

    data = get_dataset("digits")
    result = mlplab.train(data=data, hidden_dims=[16], epochs=5, batch_size=128, quiet=True, listeners=[stopper, CountSteps()])
    assert result.summary["status"] == status and result.summary["epochs_run"] == 2 and stopper.ends == 2
    assert len(steps) == 2 * (len(data.train) // 128)


def test_every_hook_of_the_base_class_is_a_no_op():
    listener = Listener()
    assert listener.wants_layer_stats(None) is False and listener.on_epoch_end(None, {}) is None
    for hook in ("on_train_start", "on_epoch_start", "on_interrupt", "on_diverged", "close"):
        assert getattr(listener, hook)(None) is None


def test_compare_lives_above_torch():
    pytest.importorskip("torch")
    from mlplab.compare import compare

    assert callable(compare) and compare.__module__ == "mlplab.compare"
    import mlplab.torch

    # it used to hand back the submodule mlplab.torch.compare instead of the function
    with pytest.raises(AttributeError, match="from mlplab.compare import compare"):
        _ = mlplab.torch.compare
    with pytest.raises(ImportError):
        from mlplab.torch import compare


def test_the_numpy_mlp_is_built_from_its_layer_plan():
    plan = layer_plan(8, [6, 6], 3, activation="tanh", use_batch_norm=True, dropout=0.1, residual=True)
    assert [spec.kind for spec in plan] == ["linear", "batch_norm", "activation", "dropout", "residual", "linear"]
    assert [spec.kind for spec in plan[4].block] == ["linear", "batch_norm", "activation", "dropout"]
    assert [(spec.in_width, spec.width, spec.input_layer) for spec in (plan[0], plan[4].block[0], plan[5])] == \
        [(8, 6, True), (6, 6, False), (6, 3, False)]
    model = MLP(8, [6, 6], 3, activation="tanh", use_batch_norm=True, dropout=0.1, residual=True, seed=0)
    assert model.plan() == plan
    kinds = {Linear: "linear", BatchNorm1d: "batch_norm", Dropout: "dropout", Residual: "residual"}
    built = [kinds.get(type(layer), "activation") for layer in model.layers]
    assert built == [spec.kind for spec in plan]
