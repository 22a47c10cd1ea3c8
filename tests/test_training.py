"""The training loop, the run folder and `mlplab train` (issue 4)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

import mlplab
from mlplab.cli import main
from mlplab.config import TrainConfig, load_config_file, resolve_config
from mlplab.data import Dataset, DatasetSplits, get_dataset, num_batches
from mlplab.errors import ConfigError
from mlplab.training.checkpoint import load_checkpoint, load_model
from mlplab.training.loop import Trainer, evaluate_split

REPO = Path(__file__).resolve().parent.parent
CIFAR_DIR = Path(os.environ.get("MLPLAB_TEST_CIFAR_DIR", REPO.parent / "shared" / "data"))
HAS_CIFAR = (CIFAR_DIR / "cifar-10-python.tar.gz").exists() or (CIFAR_DIR / "cifar-10-batches-py").is_dir()

FAST = dict(dataset="digits", hidden_dims=[32], epochs=3, quiet=True, report=False)


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits")


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# -- learning ---------------------------------------------------------------------------------
def test_digits_reaches_90_percent_test_accuracy_in_seconds(digits):
    result = mlplab.train(dataset="digits", hidden_dims=[64], epochs=15, quiet=True, data=digits)
    assert result.test_accuracy >= 0.90
    assert result.best_val_accuracy >= 0.90
    assert len(result.history) == 15
    # The reported test accuracy is the best model's, recomputed here from its predictions.
    predictions = result.model.predict(digits.test.x)
    assert np.mean(predictions == digits.test.y) == pytest.approx(result.test_accuracy)


def test_same_seed_gives_identical_histories_and_weights(digits):
    options = dict(FAST, dropout=0.2, augment=False)
    a = mlplab.train(data=digits, **options)
    b = mlplab.train(data=digits, **options)
    for row_a, row_b in zip(a.history, b.history):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
            assert row_a[key] == row_b[key]
    for (name, pa, _), (_, pb, _) in zip(a.model.named_parameters(), b.model.named_parameters()):
        np.testing.assert_array_equal(pa, pb, err_msg=name)
    c = mlplab.train(data=digits, **dict(options, seed=7))
    assert c.history[0]["train_loss"] != a.history[0]["train_loss"]


def test_best_model_is_the_best_validation_epoch_earliest_on_ties(digits):
    config = TrainConfig(**dict(FAST, epochs=1)).validated()
    trainer = Trainer(config, digits)
    for epoch, accuracy in enumerate([0.5, 0.7, 0.7, 0.6], start=1):
        trainer.track_best({"epoch": epoch, "val_accuracy": accuracy})
    assert trainer.best_epoch == 2
    assert trainer.best_val_accuracy == 0.7
    assert trainer.epochs_without_improvement == 2


def test_training_counts_are_summed_over_samples_not_batch_means(digits):
    # 1077 training samples, batch 500, drop_last: 2 batches of 500 per epoch.
    result = mlplab.train(data=digits, **dict(FAST, batch_size=500, epochs=1))
    val = evaluate_split(result.backend, digits.validation.x, digits.validation.y, batch_size=7)
    full = evaluate_split(result.backend, digits.validation.x, digits.validation.y, batch_size=10_000)
    assert val.accuracy == pytest.approx(full.accuracy)
    assert val.loss == pytest.approx(full.loss)
    assert val.count == len(digits.validation)


def test_early_stopping_stops_after_patience(digits):
    result = mlplab.train(data=digits, **dict(FAST, epochs=40, lr=2.0, early_stopping=2))
    s = result.summary
    assert s["status"] == "early_stopped"
    assert s["epochs_run"] < 40
    assert s["epochs_run"] - s["best_epoch"] == 2


# -- the run folder ---------------------------------------------------------------------------
def test_run_folder_contents(tmp_path, digits):
    out = tmp_path / "run"
    result = mlplab.train(data=digits, out=str(out), **FAST)
    assert {"config.json", "steps.csv", "history.csv", "best.npz", "last.npz", "summary.json"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["options"]["hidden_dims"] == [32] and config["options"]["lr"] == 0.1
    assert config["mlplab_version"] == mlplab.__version__ and config["numpy"] == np.__version__
    assert "blas" in config and "git_commit" in config
    steps = read_rows(out / "steps.csv")
    per_epoch = num_batches(len(digits.train), 128, drop_last=True)
    assert len(steps) == 3 * per_epoch
    assert [int(r["step"]) for r in steps] == list(range(1, 3 * per_epoch + 1))
    history = read_rows(out / "history.csv")
    assert list(history[0]) == ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
    assert [float(r["val_accuracy"]) for r in history] == pytest.approx(result.val_accuracies)
    # the epoch's train loss is the mean of its step losses (equal batches)
    first = [float(r["loss"]) for r in steps if r["epoch"] == "1"]
    assert float(history[0]["train_loss"]) == pytest.approx(np.mean(first))
    summary = json.loads((out / "summary.json").read_text())
    for key in ("best_epoch", "best_val_accuracy", "test_accuracy", "val_accuracies", "epochs_run", "wall_seconds",
                "train_samples_per_second"):
        assert key in summary
    assert summary["test_accuracy"] == result.test_accuracy
    model, meta = load_model(out)
    assert meta["epoch"] == summary["best_epoch"]
    assert np.mean(model.predict(digits.test.x) == digits.test.y) == pytest.approx(summary["test_accuracy"])
    last = load_checkpoint(out / "last.npz")
    assert last.meta["epoch"] == 3 and last.optimizer == {}  # plain SGD keeps no state
    assert set(last.best) == set(last.model)


def test_no_temporary_files_are_left(tmp_path, digits):
    out = tmp_path / "run"
    mlplab.train(data=digits, out=str(out), **FAST)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


# -- options, config files, presets ----------------------------------------------------------
def test_config_file_and_command_line_precedence(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('lr = 0.05\nhidden_dims = [64, 32]\nactivation = "relu"\n')
    config = resolve_config(config_file=toml, options={"lr": 0.2})
    assert config.lr == 0.2 and config.hidden_dims == [64, 32] and config.activation == "relu"
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"batch_size": 64, "optimizer": "adam"}))
    assert load_config_file(js) == {"batch_size": 64, "optimizer": "adam"}
    with pytest.raises(ConfigError, match="unknown option 'lrr'"):
        resolve_config(options={"lrr": 1})
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_config(config_file=bad)


def test_reference_preset_is_the_default_setup():
    assert resolve_config(preset="reference").to_dict() == dict(resolve_config().to_dict(), validation_size=5000)


def test_cli_trains_with_course_spellings(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--dataset", "digits", "--hidden_dims", "16", "8", "--batch_size", "64", "--epochs", "2",
                 "--use_batch_norm", "--out", str(out), "-q", "--no-report"])
    assert code == 0
    options = json.loads((out / "config.json").read_text())["options"]
    assert options["hidden_dims"] == [16, 8] and options["batch_size"] == 64 and options["use_batch_norm"] is True
    assert "layers.1.running_mean" in load_checkpoint(out / "best.npz").model


def test_cli_prints_one_line_per_epoch(tmp_path, capsys):
    code = main(["train", "--dataset", "digits", "--hidden-dims", "16", "--epochs", "2", "--out", str(tmp_path / "r"), "--no-report"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    epoch_lines = [line for line in lines if line.startswith("epoch")]
    assert len(epoch_lines) == 2 and "val loss" in epoch_lines[0] and "lr 0.1" in epoch_lines[0]
    assert any("test accuracy" in line for line in lines)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", "0"], "--lr must be a positive"),
        (["--lr", "-0.1"], "--lr must be a positive"),
        (["--lr", "nan"], "--lr must be a positive"),
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
        (["--epochs", "0"], "--epochs must be a positive integer"),
        (["--hidden-dims", "0"], "--hidden-dims must be a positive integer"),
        (["--hidden-dims", "-5"], "--hidden-dims must be a positive integer"),
        (["--activation", "swish"], "unknown activation 'swish'"),
        (["--optimizer", "rmsprop"], "unknown optimizer 'rmsprop'"),
        (["--dataset", "imagenet"], "imagenet"),
        (["--backend", "jax"], "unknown backend 'jax'"),
        (["--batch-size", "5000"], "larger than the training split"),
        (["--lr", "abc"], "invalid float value"),
        (["--schedule", "linear"], "unknown schedule"),
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, args, message):
    code = main(["train", "--dataset", "digits", "--out", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_out_naming_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    code = main(["train", "--dataset", "digits", "--out", str(target), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "is an existing file" in err and "Traceback" not in err


def test_default_run_folder_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--dataset", "digits", "--hidden-dims", "8", "--epochs", "1", "-q", "--no-report"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.endswith("-digits-numpy-h8-sgd-lr0.1")


def test_small_custom_dataset_through_the_python_api():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((3, 5)) * 3

    def split(n):
        y = rng.integers(0, 3, n)
        return Dataset((centers[y] + rng.standard_normal((n, 5))).astype(np.float32), y.astype(np.int64))

    data = DatasetSplits(train=split(300), validation=split(60), test=split(60), class_names=["a", "b", "c"], name="blobs", image_shape=None)
    result = mlplab.train(data=data, hidden_dims=[16], epochs=5, batch_size=32, quiet=True)
    assert result.test_accuracy > 0.9


# -- real CIFAR-10 ----------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_CIFAR, reason=f"no CIFAR-10 archive in {CIFAR_DIR}")
def test_one_epoch_on_5000_real_cifar_images_learns():
    import dataclasses

    data = get_dataset("cifar10", str(CIFAR_DIR))
    assert (len(data.train), len(data.validation), len(data.test)) == (45_000, 5_000, 10_000)
    small = dataclasses.replace(data, train=Dataset(data.train.x[:5000], data.train.y[:5000]))
    # the reference model; batch 64 gives one epoch 78 steps instead of 39
    result = mlplab.train(data=small, epochs=1, batch_size=64, quiet=True)
    assert result.summary["epochs_run"] == 1
    assert result.best_val_accuracy >= 0.30
