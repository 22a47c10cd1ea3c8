"""One writer per run folder (issue 19): a real second process against a running training.

The first training is kept alive without sleeping or timing: once its first checkpoint exists
it is stopped with SIGSTOP (a stopped process keeps its lock), the second processes run against
it, and SIGCONT lets it finish. Its files must then be those of one trajectory: history.csv and
steps.csv equal to those of an undisturbed run of the same configuration (bit for bit, NumPy).
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mlplab.errors import RunFolderBusy
from mlplab.training.lock import LOCK_NAME, lock_run_dir

#: enough epochs (a few milliseconds each) that the first process is still training when it is
#: stopped right after its first checkpoint
EPOCHS = 120
TRAIN = ["--dataset", "digits", "--hidden-dims", "32", "--epochs", str(EPOCHS), "-q"]


def mlplab(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlplab", *map(str, args)], check=False, capture_output=True, text=True, timeout=timeout)


def start(*args, log: Path) -> subprocess.Popen:
    with open(log, "w") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "mlplab", *map(str, args)], stdout=handle, stderr=subprocess.STDOUT)


def wait_for(path_glob: Path, process: subprocess.Popen, timeout: float = 240) -> Path:
    """The first file matching ``path_glob`` once it exists (the process must still run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(path_glob.parent.parent.glob(f"{path_glob.parent.name}/{path_glob.name}"))
        if found:
            return found[0]
        assert process.poll() is None, f"the first process ended early with {process.returncode}"
        time.sleep(0.01)
    raise AssertionError(f"{path_glob} never appeared")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def trajectory(folder: Path) -> tuple[list[dict], list[dict]]:
    """history.csv without its wall-clock column, and steps.csv."""
    def rows(name):
        with open(folder / name, newline="") as handle:
            return list(csv.DictReader(handle))
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in rows("history.csv")]
    return history, rows("steps.csv")


def same_weights(a: Path, b: Path) -> bool:
    with np.load(a) as x, np.load(b) as y:
        return sorted(x.files) == sorted(y.files) and all(np.array_equal(x[k], y[k]) for k in x.files if k.startswith("model"))


def refused(done: subprocess.CompletedProcess, holder: subprocess.Popen) -> bool:
    """Exit 1 with one line that names the holder's pid and command, and no traceback."""
    lines = done.stderr.strip().splitlines()
    return (done.returncode == 1 and len(lines) == 1 and "is being written by process" in lines[0]
            and f"process {holder.pid} (" in lines[0] and "train --dataset digits" in lines[0]
            and "Traceback" not in done.stderr)


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory) -> Path:
    """The same configuration trained alone, in its own process."""
    out = tmp_path_factory.mktemp("undisturbed") / "run"
    done = mlplab("train", *TRAIN, "--no-report", "--out", out)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.slow
def test_a_second_writer_is_refused_while_a_training_writes(tmp_path, undisturbed):
    run = tmp_path / "R"
    first = start("train", *TRAIN, "--no-report", "--out", run, log=tmp_path / "first.log")
    try:
        # best.npz is written after last.npz (the resumable state first): evaluate below needs both
        wait_for(run / "last.npz", first)
        wait_for(run / "best.npz", first)
        first.send_signal(signal.SIGSTOP)  # keeps its lock while it is stopped
        before = snapshot(run)
        assert str(first.pid) in before[LOCK_NAME].decode()

        writers = {
            "train --out R": ["train", *TRAIN, "--out", run],
            "train --resume R": ["train", "--resume", run, "--epochs", EPOCHS + 10, "-q"],
            "train --overwrite": ["train", *TRAIN, "--out", run, "--overwrite"],
            "report R": ["report", run],
            "hessian R": ["hessian", run, "--samples", "50", "--top", "1", "--bottom", "1", "--trace-samples", "0", "-q"],
        }
        for name, argv in writers.items():
            done = mlplab(*argv)
            assert refused(done, first), (name, done.returncode, done.stderr)
            assert snapshot(run) == before, f"{name} changed the run folder"  # --overwrite deleted nothing

        # Reading commands keep working while the folder is locked.
        done = mlplab("evaluate", run, "--json")
        assert done.returncode == 0, done.stderr
        elsewhere = tmp_path / "elsewhere"
        done = mlplab("report", run, "--out", elsewhere)
        assert done.returncode == 0, done.stderr
        assert (elsewhere / "report.md").is_file() and (elsewhere / "report.html").is_file()
        assert snapshot(run) == before
    finally:
        first.send_signal(signal.SIGCONT)
        code = first.wait(timeout=600)
    assert code == 0, (tmp_path / "first.log").read_text()
    assert trajectory(run) == trajectory(undisturbed)
    assert same_weights(run / "best.npz", undisturbed / "best.npz")
    assert same_weights(run / "last.npz", undisturbed / "last.npz")


@pytest.mark.slow
def test_a_killed_writer_leaves_no_stale_lock(tmp_path, undisturbed):
    run = tmp_path / "R"
    first = start("train", *TRAIN, "--no-report", "--out", run, log=tmp_path / "first.log")
    try:
        wait_for(run / "last.npz", first)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == -signal.SIGKILL
    assert str(first.pid) in (run / LOCK_NAME).read_text()  # its record is still there; its lock is not
    with lock_run_dir(run) as lock:
        assert lock.locked
    done = mlplab("train", "--resume", run, "-q", "--no-report")
    assert done.returncode == 0, done.stderr
    assert trajectory(run) == trajectory(undisturbed)
    assert same_weights(run / "last.npz", undisturbed / "last.npz")


@pytest.fixture
def held_elsewhere(tmp_path):
    """``tmp_path/R`` locked by another (idle) process for the duration of the test."""
    run = tmp_path / "R"
    code = ("import sys; from mlplab.training.lock import lock_run_dir; "
            f"lock = lock_run_dir({str(run)!r}, create=True); print('locked', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield run, holder
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_only_rank_zero_of_a_data_parallel_run_takes_the_lock(held_elsewhere, monkeypatch):
    import mlplab as api

    run, holder = held_elsewhere
    options = {"dataset": "digits", "hidden_dims": [8], "epochs": 1, "quiet": True, "report": False, "out": str(run)}
    monkeypatch.setenv("RANK", "1")  # another rank writes nothing, so it must not ask for the lock
    api.train(**options)
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RunFolderBusy, match=f"process {holder.pid} "):
        api.train(**options)
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]


def test_a_data_parallel_launch_into_a_locked_folder_stops_before_torchrun(held_elsewhere):
    pytest.importorskip("torch")
    run, holder = held_elsewhere
    done = mlplab("train", "--backend", "torch", "--nproc", "2", "--dataset", "digits", "--epochs", "1", "--out", run, "-q")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and f"process {holder.pid} (" in lines[0], done.stderr
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]


def test_the_lock_is_reentrant_in_its_thread_only(tmp_path):
    run = tmp_path / "R"
    with lock_run_dir(run, create=True) as outer:
        with lock_run_dir(run) as inner:  # train writing its report: the same holder
            assert inner is outer
        errors = []
        thread = threading.Thread(target=lambda: errors.append(pytest.raises(RunFolderBusy, lock_run_dir, run)))
        thread.start()
        thread.join()
        assert "another thread of this process" in str(errors[0].value)
        assert outer.locked
    # Released, and the record emptied: a process refused later never names a finished holder.
    assert not outer.locked and (run / LOCK_NAME).read_text() == ""
    with lock_run_dir(run) as again:
        assert again.locked and str(os.getpid()) in (run / LOCK_NAME).read_text()


@pytest.mark.slow
def test_a_sweep_never_reruns_a_paused_workers_trial_in_its_folder(tmp_path, undisturbed, monkeypatch):
    pytest.importorskip("optuna")
    monkeypatch.delenv("MLPLAB_SWEEP_STORAGE", raising=False)
    out = tmp_path / "S"
    done = mlplab("sweep", "--grid", "lr=0.1", *TRAIN, "--out", out, "--jobs", "0", "--heartbeat", "1")
    assert done.returncode == 0, done.stderr
    first = start("sweep", "--worker", "--out", out, log=tmp_path / "first.log")
    try:
        folder = wait_for(out / "trials" / "trial-000-*" / "last.npz", first).parent
        # Alive but silent: its heartbeats stop, so the next worker fails the trial and queues it again.
        first.send_signal(signal.SIGSTOP)
        before = snapshot(folder)
        second = mlplab("sweep", "--worker", "--out", out)
        assert second.returncode == 0, second.stderr
        assert f"still being written by process {first.pid}" in second.stdout
        assert snapshot(folder) == before  # the second worker never wrote the paused trial's folder
        (rerun,) = (out / "trials").glob("trial-001-*")
    finally:
        first.send_signal(signal.SIGCONT)
        code = first.wait(timeout=600)
    log = (tmp_path / "first.log").read_text()
    assert code == 0, log
    assert "given up after its heartbeat lapsed" in log and "Traceback" not in log
    # Each folder holds one whole trajectory: that of the configuration trained undisturbed.
    for trial_folder in (folder, rerun):
        assert trajectory(trial_folder) == trajectory(undisturbed)
        assert same_weights(trial_folder / "last.npz", undisturbed / "last.npz")
    import optuna

    study = optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'study.db'}")
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states == {0: "FAIL", 1: "COMPLETE"}
