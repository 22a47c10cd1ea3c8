"""`mlplab compare` and mlplab.compare: both backends from one start, a table and a figure."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from mlplab.cli import main  # noqa: E402
from mlplab.config import TrainConfig  # noqa: E402
from mlplab.errors import CheckpointError  # noqa: E402
from mlplab.compare import compare  # noqa: E402


def blobs(n_train=200, n_val=50, n_test=50, features=10, classes=3, seed=0):
    from mlplab.data import Dataset, DatasetSplits

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, features)) * 2

    def split(n):
        y = rng.integers(0, classes, n).astype(np.int64)
        return Dataset((centres[y] + rng.standard_normal((n, features))).astype(np.float32), y)

    return DatasetSplits(split(n_train), split(n_val), split(n_test), [f"c{i}" for i in range(classes)], "blobs")


CONFIG = TrainConfig.from_options(dict(hidden_dims=[16], batch_size=25, epochs=3, quiet=True, report=False, device="cpu"))


def test_compare_writes_both_runs_the_table_and_the_figure(tmp_path):
    out = tmp_path / "cmp"
    comparison = compare(CONFIG, out, data=blobs())
    for name in ("numpy/summary.json", "torch/summary.json", "numpy/best.npz", "torch/steps.csv",
                 "comparison.md", "comparison.png", "comparison.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "numpy" / "summary.json").read_text())["backend"] == "numpy"
    assert json.loads((out / "torch" / "summary.json").read_text())["backend"] == "torch"
    assert comparison["initial_max_abs_diff"] == 0.0
    assert [row["backend"] for row in comparison["rows"]] == ["numpy", "torch"]
    for row in comparison["rows"]:
        assert set(row) >= {"test_accuracy", "best_val_accuracy", "best_epoch", "seconds_per_epoch"}
    assert comparison["first_loss"]["numpy"] == pytest.approx(comparison["first_loss"]["torch"], rel=1e-6)
    assert [len(v) for v in comparison["val_accuracies"].values()] == [3, 3]
    text = (out / "comparison.md").read_text()
    assert text == comparison["table"]
    assert "| backend | test accuracy | best validation accuracy | best epoch | seconds per epoch |" in text
    assert "| numpy |" in text and "| torch |" in text and "max |Δ| = 0 (identical start)" in text
    assert text.count("\n| 1 |") == 1 and "\n| 3 |" in text  # the per-epoch validation accuracies
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["initial_max_abs_diff"] == 0.0 and saved["rows"][1]["backend"] == "torch"


def test_compare_in_float64_gives_the_same_accuracies(tmp_path):
    comparison = compare(CONFIG.updated({"dtype": "float64", "momentum": 0.9}), tmp_path / "cmp", data=blobs(seed=1))
    numpy_row, torch_row = comparison["rows"]
    assert numpy_row["test_accuracy"] == torch_row["test_accuracy"]
    assert comparison["val_accuracies"]["numpy"] == comparison["val_accuracies"]["torch"]


def test_compare_refuses_a_finished_comparison_before_training(tmp_path):
    data = blobs()
    compare(CONFIG.updated({"epochs": 1}), tmp_path / "cmp", data=data)
    before = (tmp_path / "cmp" / "numpy" / "summary.json").read_text()
    with pytest.raises(CheckpointError, match="already holds a finished run"):
        compare(CONFIG.updated({"epochs": 1}), tmp_path / "cmp", data=data)
    assert (tmp_path / "cmp" / "numpy" / "summary.json").read_text() == before
    compare(CONFIG.updated({"epochs": 1, "overwrite": True}), tmp_path / "cmp", data=data)


def test_mlplab_compare_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["compare", "--dataset", "digits", "--epochs", "1", "--hidden-dims", "16", "--batch-size", "64",
                 "--device", "cpu", "--out", str(out), "-q", "--no-report"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "| backend | test accuracy |" in printed and str(out) in printed
    assert (out / "comparison.md").is_file() and (out / "comparison.png").is_file()
    assert json.loads((out / "torch" / "config.json").read_text())["options"]["backend"] == "torch"


def test_mlplab_compare_refuses_a_backend_option(tmp_path, capsys):
    code = main(["compare", "--dataset", "digits", "--backend", "torch", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "compare trains both backends" in err[0]
    assert not (tmp_path / "x").exists()
