"""Gradient flow (issue 12): per-layer gradients in training (--track-gradients) and `mlplab gradflow`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import mlplab
from mlplab.cli import main
from mlplab.data import get_dataset
from mlplab.errors import ConfigError
from mlplab.gradflow import GRADIENT_COLUMNS, backward_with_input_grads, gradient_flow, linear_layers
from mlplab.models import MLP
from mlplab.nn import SoftmaxCrossEntropy
from mlplab.plots import plot_gradient_flow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# digits has 1,077 training rows: 8 steps of 128 per epoch.
TRACKED = dict(dataset="digits", hidden_dims=[24, 24, 24], residual=True, activation="tanh", optimizer="sgd",
               momentum=0.9, lr=0.05, batch_size=128, epochs=1, dtype="float64", quiet=True, report=False)


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits")


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# -- the measurement the issue asks for ----------------------------------------------------------
def test_sigmoid_gradient_vanishes_in_the_plain_network_and_not_in_the_residual_one(digits):
    result = gradient_flow(depth=16, width=64, activation="sigmoid", data=digits)
    plain, residual = result["plain"]["input_grad_norms"], result["residual"]["input_grad_norms"]
    assert result["layers"] == list(range(17, 0, -1))  # output first, back to the first layer
    assert len(plain) == len(residual) == 17
    assert result["plain"]["names"][:2] == ["layers.32", "layers.30"]
    assert result["plain"]["names"][-1] == "layers.0"
    # digits has 64 inputs: at width 64 the first hidden block keeps the width and is residual too.
    assert result["residual"]["names"] == ["layers.16", *(f"layers.{k}.block.0" for k in range(15, -1, -1))]
    # the first layer's input gradient against the output layer's
    assert plain[-1] / plain[0] == result["plain"]["first_over_last"] <= 1e-2
    assert 0.1 <= residual[-1] / residual[0] <= 10
    # Same seed, same weights: the two networks differ only by their identity paths, so at the
    # output layer (before any skip is crossed) both see nearly the same gradient.
    assert residual[0] == pytest.approx(plain[0], rel=0.5)


def test_only_one_network_when_asked(digits):
    result = gradient_flow(depth=3, width=16, residual=True, data=digits, batch_size=32)
    assert "residual" in result and "plain" not in result


def test_input_gradients_are_the_total_gradient_of_each_layers_input_tensor():
    # Each Linear's input gradient, against central differences of the loss in the tensor the
    # Linear reads, perturbed where it is produced (so a residual block's skip sees it too).
    rng = np.random.default_rng(3)
    model = MLP(5, [4, 4, 4], 3, activation="tanh", residual=True, use_batch_norm=True, seed=1)
    x, y = rng.standard_normal((6, 5)), rng.integers(0, 3, 6)
    loss_module = SoftmaxCrossEntropy()
    dlogits = loss_module.backward(model.forward(x), y)
    grads = backward_with_input_grads(model, dlogits)
    weight_grads = {name: layer.grads["weight"].copy() for name, layer in linear_layers(model)}
    model.forward(x)
    model.backward(dlogits)
    for name, layer in linear_layers(model):  # the parameter gradients are model.backward's
        np.testing.assert_allclose(weight_grads[name], layer.grads["weight"], rtol=1e-12, atol=0)
    # layers: 0 Linear, 1 BatchNorm1d, 2 Tanh, 3 and 4 Residual(Linear, BatchNorm1d, Tanh), 5 Linear
    producers = {"layers.0": None, "layers.3.block.0": model.layers[2], "layers.4.block.0": model.layers[3],
                 "layers.5": model.layers[4]}
    assert set(grads) == set(producers)
    h = 1e-6
    for name, producer in producers.items():
        direction = rng.standard_normal(grads[name].shape)

        def loss_at(step):
            if producer is None:
                return loss_module.forward(model.forward(x + step * direction), y)
            original = type(producer).forward.__get__(producer)
            producer.forward = lambda inputs: original(inputs) + step * direction
            try:
                return loss_module.forward(model.forward(x), y)
            finally:
                del producer.forward

        numeric = (loss_at(h) - loss_at(-h)) / (2 * h)
        assert np.sum(grads[name] * direction) == pytest.approx(numeric, rel=1e-6), name


# -- tracking during training ---------------------------------------------------------------------
def test_tracked_training_writes_each_layers_rows_and_the_real_update_ratio(digits, tmp_path):
    class WeightRecorder:
        def on_train_start(self, trainer):
            self.weights = [self.linear_weights(trainer)]

        def on_step(self, trainer, loss):
            self.weights.append(self.linear_weights(trainer))

        @staticmethod
        def linear_weights(trainer):
            state = trainer.backend.state_dict()
            return {key[: -len(".weight")]: value for key, value in state.items() if key.endswith(".weight")}

    recorder = WeightRecorder()
    out = tmp_path / "run"
    mlplab.train(data=digits, track_gradients=3, out=str(out), listeners=[recorder], **TRACKED)
    rows = read_rows(out / "gradients.csv")
    assert tuple(rows[0]) == GRADIENT_COLUMNS
    layers = ["layers.0", "layers.2.block.0", "layers.3.block.0", "layers.4"]
    steps = [1, 4, 7]  # steps 1, every + 1, 2·every + 1 of the 8
    assert [(int(r["step"]), r["layer"]) for r in rows] == [(s, layer) for s in steps for layer in layers]
    assert {r["epoch"] for r in rows} == {"1"}
    for row in rows:
        step, layer = int(row["step"]), row["layer"]
        before, after = recorder.weights[step - 1][layer], recorder.weights[step][layer]
        assert float(row["update_ratio"]) == pytest.approx(np.linalg.norm(after - before) / np.linalg.norm(before), rel=1e-9)
        assert float(row["weight_grad_norm"]) > 0 and float(row["input_grad_norm"]) > 0
    # Tracking observes: the same run without it takes exactly the same steps.
    plain = mlplab.train(data=digits, out=str(tmp_path / "untracked"), **TRACKED)
    assert not (tmp_path / "untracked" / "gradients.csv").exists()
    assert read_rows(out / "steps.csv") == read_rows(tmp_path / "untracked" / "steps.csv")
    final = WeightRecorder.linear_weights(plain)
    for layer in layers:
        np.testing.assert_array_equal(final[layer], recorder.weights[-1][layer])


def test_both_backends_record_the_same_numbers_in_float64(digits, tmp_path):
    pytest.importorskip("torch")
    options = dict(TRACKED, epochs=1, track_gradients=2)
    mlplab.train(data=digits, backend="numpy", out=str(tmp_path / "numpy"), **dict(options, report=True))
    mlplab.train(data=digits, backend="torch", out=str(tmp_path / "torch"), **options)
    numpy_rows, torch_rows = read_rows(tmp_path / "numpy" / "gradients.csv"), read_rows(tmp_path / "torch" / "gradients.csv")
    assert len(numpy_rows) == 4 * 4  # steps 1, 3, 5, 7
    assert [(r["step"], r["layer"]) for r in numpy_rows] == [(r["step"], r["layer"]) for r in torch_rows]
    for column in ("weight_grad_norm", "input_grad_norm", "update_ratio"):
        a = np.array([float(r[column]) for r in numpy_rows])
        b = np.array([float(r[column]) for r in torch_rows])
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=0, err_msg=column)
    # The report of a tracked run shows the figure.
    assert "](gradients.png)" in (tmp_path / "numpy" / "report.md").read_text()
    assert (tmp_path / "numpy" / "gradients.png").read_bytes().startswith(PNG_SIGNATURE)


def test_a_resumed_run_drops_rows_after_its_checkpoint_and_continues(digits, tmp_path):
    out = tmp_path / "run"
    mlplab.train(data=digits, track_gradients=4, out=str(out), **TRACKED)
    with open(out / "gradients.csv", "a") as handle:  # written by a run killed after its last save
        handle.write("99,2,layers.0,1.0,1.0,0.1\n")
    mlplab.train(data=digits, resume=str(out), epochs=2, quiet=True)
    rows = read_rows(out / "gradients.csv")
    assert sorted({(int(r["step"]), int(r["epoch"])) for r in rows}) == [(1, 1), (5, 1), (9, 2), (13, 2)]
    assert len(rows) == 4 * 4


# -- mlplab gradflow ------------------------------------------------------------------------------
def test_cli_prints_the_table_and_writes_the_figure(tmp_path, capsys):
    assert main(["gradflow", "--dataset", "digits", "--depth", "8", "--width", "32", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    table = out.splitlines()[1:]
    assert table[0].split() == ["layer", "plain", "residual"]
    assert [line.split()[0] for line in table[1:10]] == [str(k) for k in range(9, 0, -1)]
    assert table[1].endswith("(output)") and table[9].endswith("(first)")
    assert table[10].startswith("first/last")
    assert (tmp_path / "gradflow.png").read_bytes().startswith(PNG_SIGNATURE)


def test_cli_json_and_a_png_path(tmp_path, capsys):
    path = tmp_path / "figures" / "flow.png"
    argv = ["gradflow", "--depth", "4", "--width", "16", "--activation", "tanh", "--residual", "--json", "--out", str(path)]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["activation"] == "tanh" and result["layers"] == [5, 4, 3, 2, 1]
    assert len(result["plain"]["input_grad_norms"]) == len(result["residual"]["input_grad_norms"]) == 5
    assert result["figure"] == str(path) and path.is_file()


@pytest.mark.parametrize("argv", [["--depth", "0"], ["--width", "-1"], ["--activation", "swish"],
                                  ["--batch-size", "5000"], ["--depth", "two"]])
def test_cli_refuses_bad_options_with_exit_2(argv, tmp_path, capsys):
    assert main(["gradflow", *argv, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip()
    assert not (tmp_path / "gradflow.png").exists()


def test_library_errors_are_config_errors(digits):
    with pytest.raises(ConfigError, match="--depth"):
        gradient_flow(depth=True, data=digits)
    with pytest.raises(ConfigError, match="residual"):
        gradient_flow(depth=2, residual="yes", data=digits)


def test_figure_draws_both_networks_on_one_log_axis(tmp_path):
    result = {"dataset": "digits", "depth": 2, "width": 8, "activation": "sigmoid", "batch_size": 16, "seed": 0,
              "layers": [3, 2, 1],
              "plain": {"input_grad_norms": [1e-1, 1e-3, 1e-5], "first_over_last": 1e-4},
              "residual": {"input_grad_norms": [1e-1, 2e-1, 3e-1], "first_over_last": 3.0}}
    fig = plot_gradient_flow(result, tmp_path / "flow.png")
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    lines = {line.get_label(): line for line in ax.lines}
    np.testing.assert_array_equal(lines["plain"].get_ydata(), [1e-1, 1e-3, 1e-5])
    np.testing.assert_array_equal(lines["residual"].get_xdata(), [3, 2, 1])
    assert ax.get_xlim()[0] > ax.get_xlim()[1]  # output on the left
    assert (tmp_path / "flow.png").read_bytes().startswith(PNG_SIGNATURE)


def test_a_backend_that_cannot_track_is_reported_once(tmp_path):
    from types import SimpleNamespace

    from mlplab.training.listeners import GradientTracker

    class Untracked:  # a backend whose steps measure nothing even when asked (StepResult.layer_stats None)
        pass

    trainer = SimpleNamespace(backend=Untracked(), global_step=0, epoch=0)
    tracker = GradientTracker(1, tmp_path / "gradients.csv")
    tracker.on_train_start(trainer)
    assert tracker.wants_layer_stats(trainer)
    with pytest.warns(UserWarning, match="records no gradient statistics") as caught:
        for step in (1, 2, 3):
            trainer.global_step = step
            tracker.on_layer_stats(trainer, None)
            tracker.on_step(trainer, 0.0)
    assert len(caught) == 1
    tracker.close(trainer)
    assert read_rows(tmp_path / "gradients.csv") == []
