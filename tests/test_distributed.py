"""Data-parallel training with torch.distributed (issue 9): N processes follow one's trajectory."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from mlplab.torch.distributed import strip_nproc  # noqa: E402
from mlplab.training.checkpoint import load_checkpoint  # noqa: E402

COMMON = ["--backend", "torch", "--dataset", "digits", "--hidden-dims", "32", "--epochs", "2", "--batch-size", "64",
          "--dtype", "float64", "--no-report", "-q"]


def mlplab(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "mlplab", *args], capture_output=True, text=True, timeout=timeout)


def test_two_processes_follow_the_trajectory_of_one(tmp_path):
    one = mlplab("train", *COMMON, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = mlplab("train", *COMMON, "--nproc", "2", "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr
    a, b = load_checkpoint(tmp_path / "one" / "last.npz"), load_checkpoint(tmp_path / "two" / "last.npz")
    for key in a.model:
        np.testing.assert_allclose(b.model[key], a.model[key], rtol=0, atol=1e-6, err_msg=key)
    sa = json.loads((tmp_path / "one" / "summary.json").read_text())
    sb = json.loads((tmp_path / "two" / "summary.json").read_text())
    # evaluation over the ranks' shares gives the very same counts
    assert sb["val_accuracies"] == pytest.approx(sa["val_accuracies"], abs=1e-12)
    assert sb["test_confusion_matrix"] == sa["test_confusion_matrix"]
    # only rank 0 wrote the run folder: one row per step, not two
    steps = (tmp_path / "two" / "steps.csv").read_text().splitlines()
    assert len(steps) - 1 == 2 * (1077 // 64)


def test_batch_size_must_split_evenly(tmp_path):
    done = mlplab("train", *[a if a != "64" else "63" for a in COMMON], "--nproc", "2", "--out", str(tmp_path / "r"))
    assert done.returncode == 2
    assert "divisible by the 2 processes" in done.stderr


def test_nproc_needs_the_torch_backend(tmp_path):
    done = mlplab("train", "--dataset", "digits", "--nproc", "2", "--out", str(tmp_path / "r"))
    assert done.returncode == 2 and "--nproc needs --backend torch" in done.stderr


def test_strip_nproc():
    assert strip_nproc(["train", "--nproc", "2", "--lr", "0.1"]) == ["train", "--lr", "0.1"]
    assert strip_nproc(["train", "--nproc=4", "-q"]) == ["train", "-q"]
