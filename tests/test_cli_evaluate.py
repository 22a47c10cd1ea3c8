"""`mlplab evaluate RUN_DIR`: the best model of a real run, as text and as JSON, on either split
and either backend; errors as one line and an exit code."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mlplab.cli import main
from mlplab.metrics import classification_metrics


def train_digits(out, **options):
    import mlplab

    settings = dict(dataset="digits", hidden_dims=[32], epochs=3, lr=0.1, validation_size=300, quiet=True, report=False)
    settings.update(options)
    return mlplab.train(out=str(out), **settings)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("evaluate") / "run"
    train_digits(run_dir)
    return run_dir


def summary_of(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def evaluate_json(capsys, *args) -> dict:
    assert main(["evaluate", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def assert_one_line_error(capsys, code, expected_code, prog="mlplab evaluate"):
    captured = capsys.readouterr()
    assert code == expected_code
    assert captured.err.startswith(f"{prog}: error:") and captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err


# -- results --------------------------------------------------------------------------------------
def test_json_reproduces_the_runs_test_results(run, capsys):
    result = evaluate_json(capsys, run)
    summary = summary_of(run)
    assert result["accuracy"] == pytest.approx(summary["test_accuracy"])
    assert result["confusion_matrix"] == summary["test_confusion_matrix"]
    assert result["class_names"] == summary["class_names"]
    assert result["split"] == "test" and result["backend"] == "numpy" and result["epoch"] == summary["best_epoch"]
    cm = np.array(result["confusion_matrix"])
    assert result["count"] == cm.sum()
    assert list(result["f_beta"]) == ["0.1", "1", "10"]
    for key, beta in (("0.1", 0.1), ("1", 1.0), ("10", 10.0)):
        expected = classification_metrics(cm, beta=beta)
        assert result["f_beta"][key] == pytest.approx(expected["f_beta"].tolist())
        assert result["macro"]["f_beta"][key] == pytest.approx(expected["macro"]["f_beta"])
        assert result["weighted"]["f_beta"][key] == pytest.approx(expected["weighted"]["f_beta"])
    balanced = classification_metrics(cm)
    assert result["precision"] == pytest.approx(balanced["precision"].tolist())
    assert result["recall"] == pytest.approx(balanced["recall"].tolist())
    assert result["support"] == balanced["support"].tolist()


def test_text_shows_accuracy_confusion_matrix_with_class_names_and_per_class_table(run, capsys):
    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    summary = summary_of(run)
    names, cm = summary["class_names"], summary["test_confusion_matrix"]
    assert f"accuracy {100 * summary['test_accuracy']:.2f}%" in out
    lines = out.splitlines()
    matrix_at = lines.index("confusion matrix (rows: true class, columns: predicted class)")
    assert lines[matrix_at + 1].split()[-len(names):] == names
    for offset, (name, row) in enumerate(zip(names, cm), start=2):
        assert lines[matrix_at + offset].split() == [name, *map(str, row)]
    header = next(line for line in lines if line.startswith("class "))
    assert header.split() == ["class", "precision", "recall", "F0.1", "F1", "F10", "support"]
    metrics = {beta: classification_metrics(np.array(cm), beta=beta) for beta in (0.1, 1.0, 10.0)}
    for index, name in enumerate(names):
        row = next(line for line in lines[lines.index(header) + 1:] if line.split()[0] == name).split()
        assert row[1:3] == [f"{metrics[1.0]['precision'][index]:.3f}", f"{metrics[1.0]['recall'][index]:.3f}"]
        assert row[3:6] == [f"{metrics[b]['f_beta'][index]:.3f}" for b in (0.1, 1.0, 10.0)]
        assert row[6] == str(sum(cm[index]))
    assert any(line.startswith("macro avg") for line in lines)


def test_validation_split_gives_the_best_validation_accuracy(run, capsys):
    result = evaluate_json(capsys, run, "--split", "validation")
    assert result["split"] == "validation"
    assert result["accuracy"] == pytest.approx(summary_of(run)["best_val_accuracy"])
    assert result["count"] == 300


def test_betas_batch_size_and_data_dir_options(run, capsys, tmp_path):
    default = evaluate_json(capsys, run)
    result = evaluate_json(capsys, run, "--beta", "2", "0.5", "2", "--batch-size", "7", "--data-dir", tmp_path)
    assert list(result["f_beta"]) == ["2", "0.5"]  # in the order given, once each
    assert result["confusion_matrix"] == default["confusion_matrix"]
    cm = np.array(result["confusion_matrix"])
    assert result["f_beta"]["2"] == pytest.approx(classification_metrics(cm, beta=2.0)["f_beta"].tolist())


@pytest.mark.torch
def test_a_torch_run_evaluates_the_same_way(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("mlplab.torch.backend")
    run_dir = tmp_path / "torch-run"
    train_digits(run_dir, epochs=2, backend="torch", device="cpu")
    result = evaluate_json(capsys, run_dir)
    summary = summary_of(run_dir)
    assert result["backend"] == "torch"
    assert result["accuracy"] == pytest.approx(summary["test_accuracy"])
    assert result["confusion_matrix"] == summary["test_confusion_matrix"]


# -- errors ---------------------------------------------------------------------------------------
def test_a_missing_folder_is_one_line_and_exit_1(tmp_path, capsys):
    code = main(["evaluate", str(tmp_path / "nope")])
    assert_one_line_error(capsys, code, 1)


def test_a_folder_without_best_npz_is_one_line_and_exit_1(run, tmp_path, capsys):
    target = tmp_path / "copy"
    shutil.copytree(run, target)
    (target / "best.npz").unlink()
    code = main(["evaluate", str(target)])
    assert_one_line_error(capsys, code, 1)
    (target / "best.npz").write_bytes(b"not a zip file")
    code = main(["evaluate", str(target)])
    assert_one_line_error(capsys, code, 1)


@pytest.mark.parametrize("beta", ["0", "-1", "inf", "nan"])
def test_a_bad_beta_is_exit_2(run, capsys, beta):
    code = main(["evaluate", str(run), "--beta", beta])
    assert_one_line_error(capsys, code, 2)


def test_bad_split_or_batch_size_is_exit_2(run, capsys):
    assert main(["evaluate", str(run), "--split", "train"]) == 2  # argparse's usage error
    assert "invalid choice: 'train'" in capsys.readouterr().err
    code = main(["evaluate", str(run), "--batch-size", "0"])
    assert_one_line_error(capsys, code, 2)
