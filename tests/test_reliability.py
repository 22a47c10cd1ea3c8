"""Reliability (issue 8): clear errors, divergence, interruption, exact resume, atomic files."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import mlplab
from mlplab.cli import main
from mlplab.data import get_dataset
from mlplab.errors import DivergedError, TrainingInterrupted
from mlplab.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

FAST = dict(dataset="digits", hidden_dims=[32], quiet=True, report=False)


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits")


def step_losses(run: Path) -> list[tuple[str, str, str]]:
    with open(run / "steps.csv", newline="") as handle:
        return [tuple(row) for row in csv.reader(handle)]


def history_without_time(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical weights, optimiser state, best model, step losses and history."""
    last_a, last_b = load_checkpoint(a / "last.npz"), load_checkpoint(b / "last.npz")
    for group in ("model", "optimizer", "best"):
        ga, gb = getattr(last_a, group), getattr(last_b, group)
        assert ga.keys() == gb.keys()
        for key in ga:
            np.testing.assert_array_equal(ga[key], gb[key], err_msg=f"{group}/{key}")
    assert step_losses(a) == step_losses(b)
    assert history_without_time(a) == history_without_time(b)
    sa, sb = json.loads((a / "summary.json").read_text()), json.loads((b / "summary.json").read_text())
    for key in ("best_epoch", "best_val_accuracy", "test_accuracy", "val_accuracies", "epochs_run"):
        assert sa[key] == sb[key], key


class InterruptAt:
    """A listener that sends this process a signal after a given global step."""

    def __init__(self, step: int, signum=signal.SIGINT):
        self.step, self.signum = step, signum

    def on_step(self, trainer, loss):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


# -- exact resume -----------------------------------------------------------------------------
def test_two_epochs_then_resume_to_four_equals_four(tmp_path, digits):
    options = dict(FAST, optimizer="sgd", momentum=0.9, dropout=0.1)
    mlplab.train(data=digits, out=str(tmp_path / "full"), epochs=4, **options)
    mlplab.train(data=digits, out=str(tmp_path / "split"), epochs=2, **options)
    mlplab.train(data=digits, resume=str(tmp_path / "split"), epochs=4, quiet=True)
    assert_same_run(tmp_path / "full", tmp_path / "split")


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_mid_epoch_then_resume_is_exact(tmp_path, digits, signum, code):
    options = dict(FAST, epochs=3, optimizer="adamw", lr=0.01, schedule="cosine", warmup_epochs=1, dropout=0.2,
                   augment=True, batch_size=64)
    mlplab.train(data=digits, out=str(tmp_path / "full"), **options)
    with pytest.raises(TrainingInterrupted) as info:
        mlplab.train(data=digits, out=str(tmp_path / "cut"), listeners=[InterruptAt(23, signum)], **options)
    assert info.value.exit_code == code
    assert f"mlplab train --resume {tmp_path / 'cut'}" in str(info.value)
    last = load_checkpoint(tmp_path / "cut" / "last.npz")
    assert last.meta["global_step"] == 23 and last.meta["step_in_epoch"] == 23 - 16
    assert not (tmp_path / "cut" / "summary.json").exists()
    (tmp_path / "cut" / ".last.npz.abc123.tmp").write_bytes(b"half a file")  # as a kill -9 can leave
    mlplab.train(data=digits, resume=str(tmp_path / "cut"), quiet=True)
    assert_same_run(tmp_path / "full", tmp_path / "cut")
    assert not list((tmp_path / "cut").glob(".*.tmp"))


def test_signal_handlers_are_restored_after_training(digits):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    mlplab.train(data=digits, epochs=1, **FAST)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_resume_refuses_a_different_model(tmp_path, digits, capsys):
    run = tmp_path / "run"
    mlplab.train(data=digits, out=str(run), epochs=1, **FAST)
    for args, name in ((["--hidden-dims", "64"], "--hidden-dims"), (["--activation", "relu"], "--activation"),
                       (["--lr", "0.5"], "--lr")):
        code = main(["train", "--resume", str(run), "--epochs", "2", *args])
        err = capsys.readouterr().err
        assert code == 2 and name in err and "start a new run" in err


def test_resume_of_a_finished_run_needs_more_epochs(tmp_path, digits, capsys):
    run = tmp_path / "run"
    mlplab.train(data=digits, out=str(run), epochs=1, **FAST)
    assert main(["train", "--resume", str(run)]) == 1
    assert "already finished 1 epochs" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--epochs", "2", "-q", "--data-dir", "unused"]) == 0
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 2


# -- divergence -------------------------------------------------------------------------------
def test_divergence_stops_with_exit_3_and_keeps_the_best_model(tmp_path, capsys):
    run = tmp_path / "run"
    # epoch 1 at lr 0.1, then the step schedule multiplies it by 1e6
    code = main(["train", "--dataset", "digits", "--hidden-dims", "32", "--epochs", "5", "--schedule", "step",
                 "--step-epochs", "1", "--gamma", "1e6", "--out", str(run), "-q", "--no-report"])
    err = capsys.readouterr().err
    assert code == 3
    assert "diverged" in err and "lower learning rate" in err and "--lr 0.01" in err
    assert len(err.strip().splitlines()) == 1
    epoch = int(re.search(r"at epoch (\d+), step \d+", err).group(1))
    assert epoch >= 2
    assert (run / "config.json").exists() and (run / "best.npz").exists()
    assert len(history_without_time(run)) == epoch - 1
    assert load_checkpoint(run / "best.npz").meta["epoch"] == 1  # lr 0.1 is the only sane epoch


def test_divergence_in_the_first_epoch_through_the_api(digits):
    with pytest.raises(DivergedError, match="epoch 1, step"):
        mlplab.train(data=digits, epochs=2, lr=1e30, **FAST)


# -- bad input through the command line ------------------------------------------------------
USAGE_CASES = [
    (["train", "--lr", "0"], "--lr"),
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--lr", "ten"], "invalid float value"),
    (["train", "--batch-size", "-1"], "--batch-size"),
    (["train", "--batch-size", "1.5"], "invalid int value"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--hidden-dims", "12a"], "--hidden-dims"),
    (["train", "--dropout", "1"], "--dropout"),
    (["train", "--momentum", "-0.5"], "--momentum"),
    (["train", "--activation", "softsign"], "unknown activation"),
    (["train", "--optimizer", "lbfgs"], "unknown optimizer"),
    (["train", "--schedule", "cyclic"], "unknown schedule"),
    (["train", "--dataset", "cifar100"], "unknown data set"),
    (["train", "--backend", "tensorflow"], "unknown backend"),
    (["train", "--device", "tpu"], "unknown device"),
    (["train", "--dtype", "float16"], "unknown dtype"),
    (["train", "--nesterov"], "--nesterov needs"),
    (["train", "--optimizer", "adam", "--momentum", "0.9"], "--momentum applies to"),
    (["train", "--warmup-epochs", "20", "--epochs", "5"], "--warmup-epochs"),
    (["train", "--preset", "nonexistent"], "unknown preset"),
    (["train", "--config", "/nonexistent/config.toml"], "no such file"),
    (["train", "--unknown-flag"], "unrecognized arguments"),
    (["fly"], "invalid choice"),
    (["evaluate"], "required"),
]


@pytest.mark.parametrize("argv, message", USAGE_CASES)
def test_usage_mistakes_exit_2_with_one_line(tmp_path, capsys, argv, message):
    if argv[0] == "train":
        argv = [*argv, "--out", str(tmp_path / "r"), "-q"]
        if "--dataset" not in argv:
            argv += ["--dataset", "digits"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_runtime_problems_exit_1_with_one_line(tmp_path, capsys, digits):
    finished = tmp_path / "finished"
    mlplab.train(data=digits, out=str(finished), epochs=1, **FAST)
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    data = (finished / "last.npz").read_bytes()
    (truncated / "last.npz").write_bytes(data[: len(data) // 2])
    old = tmp_path / "old"
    old.mkdir()
    checkpoint = load_checkpoint(finished / "last.npz")
    save_checkpoint(old / "last.npz", model=checkpoint.model, meta=dict(checkpoint.meta, format_version=0))
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    cases = [
        (["train", "--resume", str(tmp_path / "missing")], "no run folder"),
        (["train", "--resume", str(empty)], "holds no last.npz"),
        (["train", "--resume", str(truncated)], "truncated or corrupted"),
        (["train", "--resume", str(old)], "checkpoint format 0"),
        (["train", "--dataset", "digits", "--out", str(a_file)], "is an existing file"),
        (["train", "--dataset", "digits", "--out", str(finished)], "already holds a finished run"),
        (["train", "--data-dir", str(empty), "--out", str(tmp_path / "x")], str(empty)),
        (["evaluate", str(tmp_path / "missing")], "missing"),
        (["evaluate", str(empty)], "best.npz"),
    ]
    for argv, message in cases:
        code = main([*argv, "-q"] if argv[0] == "train" else argv)
        err = capsys.readouterr().err
        assert code == 1, (argv, err)
        assert message in err, (argv, err)
        assert len(err.strip().splitlines()) <= 2 and "Traceback" not in err, err  # (a data warning may precede)


def test_overwrite_replaces_a_finished_run(tmp_path, digits):
    run = tmp_path / "run"
    mlplab.train(data=digits, out=str(run), epochs=1, **FAST)
    assert main(["train", "--dataset", "digits", "--hidden-dims", "8", "--epochs", "2", "--out", str(run), "--overwrite", "-q", "--no-report"]) == 0
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 2


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(CheckpointError):
        main(["train", "--resume", str(tmp_path / "missing"), "--debug"])


# -- processes: SIGTERM from outside, and kill -9 at random moments --------------------------
def _start(run: Path, epochs: int = 100000) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "mlplab", "train", "--dataset", "digits", "--hidden-dims", "32", "--batch-size", "256",
         "--epochs", str(epochs), "--out", str(run), "--no-report", "-q"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_sigterm_from_outside_saves_and_exits_143(tmp_path):
    run = tmp_path / "run"
    process = _start(run)
    _wait_for(run / "last.npz", process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143
    assert f"mlplab train --resume {run}" in err
    meta = load_checkpoint(run / "last.npz").meta
    assert meta["epoch"] >= 1


def test_kill_9_never_leaves_a_broken_file(tmp_path):
    """Kill a training process at random moments; whatever is left must load."""
    rng = np.random.default_rng(0)
    trials, loaded = 0, 0
    for trial in range(12):
        run = tmp_path / f"run{trial}"
        process = _start(run)
        _wait_for(run / "config.json", process)
        time.sleep(float(rng.uniform(0.05, 0.6)))
        process.kill()
        process.wait()
        trials += 1
        for name in ("best.npz", "last.npz"):
            if (run / name).exists():
                load_checkpoint(run / name)
                loaded += 1
        json.loads((run / "config.json").read_text())
        leftovers = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
        # a temporary file may survive a kill -9, but never under a real name
        assert all(name.startswith(".") for name in leftovers)
    assert trials == 12 and loaded > 0
