"""A full or failing disk (issue 19): one line, exit 1, nothing torn, and the run resumes exactly.

Faults are injected at every kind of file a run writes (checkpoints, CSV logs, JSON, figures,
the report) by making the disk refuse the N-th sync of that file (ENOSPC or EIO, as a full or
failing disk answers), at the creation of a file (read-only file system), and for real: a run
folder removed or made read-only mid-run, and, as root, a small tmpfs that fills up.
After each: exit 1 with one line on stderr and no traceback, no temporary file in the folder,
every checkpoint left there loads, and ``--resume`` (or ``mlplab report``, when only the report
is missing) ends with the same weights, bit for bit, as a run the fault never touched.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from mlplab.cli import main
from mlplab.errors import StorageError
from mlplab.storage import atomic_write, format_size, storage_error
from mlplab.training import listeners as listeners_module
from mlplab.training import run as run_module
from mlplab.training.checkpoint import load_checkpoint

EPOCHS = 3
#: a small run that writes every kind of file: gradients.csv too, and the report unless --no-report
OPTIONS = ["--dataset", "digits", "--hidden-dims", "16", "--batch-size", "256", "--epochs", str(EPOCHS),
           "--optimizer", "sgd", "--momentum", "0.9", "--track-gradients", "3", "--quiet"]

#: what the tests checked, for the issue's note (pytest -s prints it at the end of the module)
COUNTS = {"fault points": 0, "files checked": 0}


@pytest.fixture(scope="module", autouse=True)
def _print_counts():
    yield
    print(f"\ntest_disk_full: {COUNTS['fault points']} fault points tried, {COUNTS['files checked']} files checked")


def train(out: Path, *extra: str) -> int:
    return main(["train", *OPTIONS, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The run no fault touched."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert train(out, "--no-report") == 0
    return out


# -- the injected faults ------------------------------------------------------------------------
def _target(name: str) -> str:
    """The file a temporary file stands for: ``.last.npz.k3j_x9q1.tmp`` → ``last.npz``."""
    match = re.fullmatch(r"\.(.+)\.[^.]+\.tmp", name)
    return match.group(1) if match else name


class FaultyDisk:
    """Makes the disk refuse the ``nth`` write of ``target`` with ``code``.

    - A file written whole and atomically (checkpoint, JSON, figure, report): its ``nth`` sync
      (``os.fsync``) fails, as a full disk with delayed allocation or a failing one answers.
      Forked children (the report's figure workers) inherit this, and each figure is written
      once, so ``nth=1`` is exact there.
    - A CSV log appended to: the ``nth`` time its buffer goes to the file, the file takes all but
      the last few bytes and then fails, as a file system that fills up mid-row does.
    - ``stage="create"``: the creation of its temporary file fails (``os.open``), as a read-only
      file system answers.
    """

    def __init__(self, monkeypatch, target: str, code: int, nth: int = 1, stage: str = "write"):
        self.target, self.code, self.nth, self.seen, self.fired = target, code, nth, 0, False
        if stage == "create":
            real_open = os.open

            def open_(path, flags, *args, **kwargs):
                if flags & os.O_CREAT:
                    self._maybe_fail(os.fspath(path))
                return real_open(path, flags, *args, **kwargs)

            monkeypatch.setattr(os, "open", open_)
        elif target.endswith(".csv"):
            def open_log(path, mode="r", *args, **kwargs):
                handle = open(path, mode, *args, **kwargs)
                if os.path.basename(path) != target or mode[0] not in "aw":
                    return handle
                encoding = handle.encoding
                raw = FaultyRaw(handle.detach().detach(), self)
                return io.TextIOWrapper(io.BufferedWriter(raw), encoding=encoding, newline="")

            monkeypatch.setattr(run_module, "open", open_log, raising=False)
        else:
            real_fsync = os.fsync

            def fsync(fd):
                self._maybe_fail(os.readlink(f"/proc/self/fd/{fd}"))
                return real_fsync(fd)

            monkeypatch.setattr(os, "fsync", fsync)

    def _maybe_fail(self, path: str) -> None:
        if _target(os.path.basename(path)) == self.target:
            self.seen += 1
            if self.seen == self.nth:
                self.fired = True
                raise OSError(self.code, os.strerror(self.code))


class FaultyRaw(io.RawIOBase):
    """A log file's raw file whose ``fault.nth`` write lands all but its last bytes, and every
    write after it fails."""

    def __init__(self, raw, fault: FaultyDisk):
        self.raw, self.fault, self.failing = raw, fault, False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.raw.fileno()

    def write(self, data) -> int:
        if self.failing:  # and stays full: what the buffer still holds at close is refused too
            self.fault.fired = True
            raise OSError(self.fault.code, os.strerror(self.fault.code))
        if self.fault.seen + 1 == self.fault.nth:
            self.failing = True  # the next call, for the other half, is refused
            return self.raw.write(bytes(data)[: max(1, len(data) - 3)])  # the last row loses its end
        else:
            self.fault.seen += 1
        return self.raw.write(data)

    def close(self) -> None:
        self.raw.close()
        super().close()


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")


# -- what every failure must leave --------------------------------------------------------------
def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("mlplab train: error: "), err
    return lines[0]


def assert_folder_intact(run: Path, saved_epoch: int | None) -> None:
    """No temporary file; every checkpoint loads; last.npz holds ``saved_epoch`` (None: absent)."""
    assert not list(run.glob(".*.tmp")), sorted(p.name for p in run.iterdir())
    for path in run.glob("*.npz"):
        load_checkpoint(path)
        COUNTS["files checked"] += 1
    if saved_epoch is None:
        assert not (run / "last.npz").exists()
    else:
        assert load_checkpoint(run / "last.npz").meta["epoch"] == saved_epoch


def rows(path: Path, drop: str | None = None) -> list[dict]:
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k != drop} for row in csv.DictReader(handle)]


def assert_same_as(reference: Path, run: Path) -> None:
    """Bit for bit the reference run: weights, optimiser state, best model, and the logs."""
    for name, groups in (("last.npz", ("model", "optimizer", "best")), ("best.npz", ("model",))):
        ours, theirs = load_checkpoint(run / name), load_checkpoint(reference / name)
        assert ours.meta["epoch"] == theirs.meta["epoch"]
        for group in groups:
            a, b = getattr(ours, group), getattr(theirs, group)
            assert a.keys() == b.keys() and a, (name, group)
            for key in a:
                assert np.array_equal(a[key], b[key]), f"{name} {group}/{key}"
        COUNTS["files checked"] += 1
    for name, drop in (("history.csv", "seconds"), ("steps.csv", None), ("gradients.csv", None)):
        assert rows(run / name, drop) == rows(reference / name, drop), name
        COUNTS["files checked"] += 1
    assert (run / "summary.json").exists()


# -- faults at each kind of file ----------------------------------------------------------------
# (file, nth write of it, the epoch last.npz then holds (None: none yet), how the run is completed)
# A run writes per epoch: gradients.csv, steps.csv, history.csv, then last.npz and, when the
# validation accuracy improved, best.npz; at the end summary.json, the figures and the report.
FAULT_POINTS = [
    ("config.json", 1, None, "again"),
    ("history.csv", 1, None, "again"),
    ("steps.csv", 2, 1, "resume"),
    ("gradients.csv", 3, 2, "resume"),
    ("last.npz", 1, None, "again"),
    ("last.npz", 2, 1, "resume"),
    ("best.npz", 3, EPOCHS, "resume"),  # the last epoch improves too: only the resume writes it again
    ("summary.json", 1, EPOCHS, "resume"),
    # the report draws its figures twice here (failing, then `mlplab report`): a few seconds each
    pytest.param("curves.png", 1, EPOCHS, "report", marks=pytest.mark.slow, id="curves.png#1"),
    pytest.param("report.html", 1, EPOCHS, "report", marks=pytest.mark.slow, id="report.html#1"),
]


@needs_proc
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("target, nth, saved_epoch, then", FAULT_POINTS,
                         ids=[f"{p[0]}#{p[1]}" if isinstance(p, tuple) else None for p in FAULT_POINTS])
def test_a_failed_write_stops_cleanly_and_the_run_completes_exactly(
        tmp_path, capsys, monkeypatch, reference, target, nth, saved_epoch, then, code):
    run = tmp_path / "run"
    report = [] if then == "report" else ["--no-report"]
    with monkeypatch.context() as patch:
        fault = FaultyDisk(patch, target, code, nth)
        assert train(run, *report) == 1
    COUNTS["fault points"] += 1
    assert fault.fired or target.endswith(".png")  # a figure's fault fires in a worker process
    line = one_line_error(capsys)
    meaning = ("no space left on device" if code == errno.ENOSPC
               else "input/output error (a failing disk or a lost network mount)")
    assert line.startswith(f"mlplab train: error: {meaning} while writing {run / target} (needs about "), line
    fix = "free some space and" if code == errno.ENOSPC else "once the disk takes writes again,"
    assert_folder_intact(run, saved_epoch)
    if target.endswith(".csv"):  # a cut row landed: the resume (or a fresh start) must drop it
        assert not (run / target).read_bytes().endswith(b"\n")

    if then == "again":  # nothing to resume: the same command starts afresh in the same folder
        assert f"no checkpoint was saved yet; {fix} start the run again" in line
        assert train(run, *report) == 0
    elif then == "resume":
        assert f"at the end of epoch {saved_epoch}; {fix} continue with `mlplab train --resume {run}`" in line
        assert main(["train", "--resume", str(run), "--quiet"]) == 0
    else:  # the run itself finished; only the report is missing
        assert f"mlplab report {run}" in line
        assert not (run / "report.html").exists()
        assert main(["report", str(run)]) == 0
        assert (run / "report.html").stat().st_size > 0
    capsys.readouterr()
    assert not list(run.glob(".*.tmp"))
    assert_same_as(reference, run)


@pytest.mark.parametrize("code, meaning", [(errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied")])
def test_a_folder_that_refuses_new_files_keeps_the_previous_checkpoint(
        tmp_path, capsys, monkeypatch, reference, code, meaning):
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        fault = FaultyDisk(patch, "last.npz", code, nth=2, stage="create")
        assert train(run, "--no-report") == 1
    COUNTS["fault points"] += 1
    assert fault.fired
    assert f"{meaning} while writing {run / 'last.npz'}" in one_line_error(capsys)
    assert_folder_intact(run, 1)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert_same_as(reference, run)


class AtEpochStart:
    """A listener that does ``action(run_dir)`` when epoch ``epoch`` starts."""

    def __init__(self, epoch: int, action):
        self.epoch, self.action = epoch, action

    def on_epoch_start(self, trainer):
        if trainer.epoch + 1 == self.epoch and trainer.step_in_epoch == 0:
            self.action(trainer.run_dir)


def _with_listener(monkeypatch, listener) -> None:
    make = listeners_module.default_listeners
    monkeypatch.setattr(listeners_module, "default_listeners", lambda *a, **k: make(*a, **k) + [listener])


def test_a_run_folder_removed_during_the_run_is_one_line(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    _with_listener(monkeypatch, AtEpochStart(2, shutil.rmtree))
    assert train(run, "--no-report") == 1
    COUNTS["fault points"] += 1
    line = one_line_error(capsys)
    assert f"while writing {run / 'last.npz'}" in line and "no longer exists" in line, line
    assert not run.exists()


@contextlib.contextmanager
def _read_only(run: Path):
    """Make ``run`` read-only for real: a read-only bind mount over it as root (root ignores
    permissions), its permissions otherwise. Yields the errno meaning the writer will meet."""
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "--bind", str(run), str(run)], capture_output=True).returncode == 0
        if not mounted or subprocess.run(["mount", "-o", "remount,bind,ro", str(run)], capture_output=True).returncode:
            if mounted:
                subprocess.run(["umount", str(run)], check=False)
            pytest.skip("cannot bind-mount a folder read-only here")
        try:
            yield "read-only file system"
        finally:
            subprocess.run(["umount", str(run)], check=False)
    else:
        run.chmod(0o555)
        try:
            yield "permission denied"
        finally:
            run.chmod(0o755)


def test_a_run_folder_made_read_only_during_the_run_keeps_its_checkpoint(tmp_path, capsys, monkeypatch, reference):
    run = tmp_path / "run"
    state = {}

    def make_read_only(run_dir):
        state["context"] = _read_only(run_dir)
        state["meaning"] = state["context"].__enter__()

    _with_listener(monkeypatch, AtEpochStart(2, make_read_only))
    try:
        code = train(run, "--no-report")
    finally:
        if "context" in state:
            state["context"].__exit__(None, None, None)
    assert code == 1
    COUNTS["fault points"] += 1
    assert f"{state['meaning']} while writing {run / 'last.npz'}" in one_line_error(capsys)
    assert_folder_intact(run, 1)
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert_same_as(reference, run)


def test_too_little_free_space_is_a_warning_with_the_figures_before_the_first_epoch(tmp_path, monkeypatch):
    import mlplab

    free = {"bytes": 30_000}
    monkeypatch.setattr(listeners_module, "free_space", lambda folder: free["bytes"])
    warned_by_epoch_1 = []
    _with_listener(monkeypatch, AtEpochStart(1, lambda run_dir: warned_by_epoch_1.append(len(caught))))
    options = dict(dataset="digits", hidden_dims=[16], epochs=1, momentum=0.9, quiet=True, report=False)
    with pytest.warns(UserWarning) as caught:
        mlplab.train(out=str(tmp_path / "short"), **options)
    # 64-16-10 in float32: 4,840 bytes of weights (+ headers) in best.npz; last.npz adds momentum and the best model
    assert [str(w.message) for w in caught] == [
        f"only 30 kB free in {tmp_path / 'short'}, and this run's checkpoints need about 39 kB more "
        "(last.npz 17 kB twice while it is replaced, best.npz 5.6 kB): it may stop with 'no space left on device'"]
    assert warned_by_epoch_1 == [1]
    free["bytes"] = 40_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mlplab.train(out=str(tmp_path / "enough"), **options)


# -- the helper itself --------------------------------------------------------------------------
def test_atomic_write_keeps_the_previous_file_and_names_what_it_needed(tmp_path, monkeypatch):
    path = tmp_path / "data.bin"
    path.write_bytes(b"previous")

    def write(handle):
        handle.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageError) as info:
        atomic_write(path, write, size=3_400_000)
    message = str(info.value)
    assert message.startswith(f"no space left on device while writing {path} (needs about 3.4 MB, ")
    assert message.endswith(" free)")
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError) and info.value.exit_code == 1
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


def test_storage_error_names_the_cause():
    assert str(storage_error(OSError(errno.EIO, "x"), "R/last.npz")) == (
        "input/output error (a failing disk or a lost network mount) while writing R/last.npz")
    assert format_size(17_406_678) == "17 MB" and format_size(3_400_000) == "3.4 MB" and format_size(512) == "512 bytes"


# -- a real full disk (root: a small tmpfs) -----------------------------------------------------
BIG = ["--dataset", "digits", "--hidden-dims", "2048", "2048", "--epochs", "3", "--no-report", "--quiet"]


@contextlib.contextmanager
def tmpfs(folder: Path, size: str):
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("a real full disk needs root to mount a tmpfs")
    folder.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def mlplab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlplab", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_real_disk_that_fills_mid_run(tmp_path):
    # 2048x2048 on digits: the model is 17 MB, last.npz (model + best model) 35 MB. On 64 MB
    # epoch 1 writes last.npz and best.npz (52 MB); epoch 2's last.npz no longer fits beside them.
    full = mlplab("train", *BIG, "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    with tmpfs(tmp_path / "disk", "64m") as disk:
        run = disk / "run"
        cut = mlplab("train", *BIG, "--out", str(run))
        COUNTS["fault points"] += 1
        assert cut.returncode == 1 and "Traceback" not in cut.stderr, cut.stderr
        warning, error = cut.stderr.strip().splitlines()
        assert re.fullmatch(r"mlplab train: warning: only \d+ MB free in .*, and this run's checkpoints need about 87 MB "
                            r"more \(last\.npz 35 MB twice while it is replaced, best\.npz 17 MB\).*", warning), warning
        assert error.startswith(f"mlplab train: error: no space left on device while writing {run / 'last.npz'} "
                                "(needs about 35 MB, "), error
        assert f"at the end of epoch 1; free some space and continue with `mlplab train --resume {run}`" in error
        assert_folder_intact(run, 1)
        assert subprocess.run(["mount", "-o", "remount,size=160m", str(disk)]).returncode == 0  # space freed
        resumed = mlplab("train", "--resume", str(run), "--quiet")
        assert resumed.returncode == 0 and resumed.stderr == "", resumed.stderr  # no warning: it fits now
        for name in ("last.npz", "best.npz"):
            ours, theirs = load_checkpoint(run / name), load_checkpoint(tmp_path / "full" / name)
            for key in theirs.model:
                assert np.array_equal(ours.model[key], theirs.model[key]), (name, key)
            COUNTS["files checked"] += 1
        assert rows(run / "history.csv", "seconds") == rows(tmp_path / "full" / "history.csv", "seconds")
        assert rows(run / "steps.csv") == rows(tmp_path / "full" / "steps.csv")


@pytest.mark.slow
def test_a_real_disk_too_small_for_the_first_checkpoint(tmp_path):
    with tmpfs(tmp_path / "disk", "20m") as disk:
        run = disk / "run"
        result = mlplab("train", *BIG, "--epochs", "1", "--out", str(run))
        COUNTS["fault points"] += 1
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        warning, error = result.stderr.strip().splitlines()
        assert warning.startswith("mlplab train: warning: only 2") and "need about 87 MB more" in warning, warning
        assert error == (f"mlplab train: error: no space left on device while writing {run / 'last.npz'} "
                         f"(needs about 35 MB, {format_size(shutil.disk_usage(disk).free)} free); "
                         "no checkpoint was saved yet; free some space and start the run again")
        assert_folder_intact(run, None)
        assert not list(run.glob("*.npz"))


def test_a_csv_log_that_fills_the_disk_keeps_its_complete_rows(tmp_path):
    from mlplab.training.run import STEP_COLUMNS, CsvLog, truncate_csv

    with tmpfs(tmp_path / "disk", "1m") as disk:
        filler = disk / "filler"
        with open(filler, "wb") as handle:  # leave the log a few pages
            with contextlib.suppress(OSError):
                handle.write(b"\0" * (1024 * 1024 - 4 * 4096))
        path = disk / "steps.csv"
        log = CsvLog(path, STEP_COLUMNS, append=False)
        flushed = 0  # the step a checkpoint written now would count
        with pytest.raises(StorageError) as info:
            for step in range(1, 100_000):
                log.write((1, step, repr(0.1 * step)))
                if step % 50 == 0:
                    log.flush()
                    flushed = step
        log.close()  # what the buffer still held is dropped quietly; the error above was the one to report
        COUNTS["fault points"] += 1
        assert str(info.value).startswith(f"no space left on device while writing {path} (needs about ")
        filler.unlink()  # space freed: a resume keeps the rows it counts, none cut short
        written = path.stat().st_size
        truncate_csv(path, lambda row: int(row["step"]) <= flushed)
        assert path.stat().st_size < written  # rows after the last flush had landed, the last one cut short
        lines = path.read_text().splitlines()
        assert flushed >= 50
        assert lines == [",".join(STEP_COLUMNS)] + [f"1,{step},{0.1 * step!r}" for step in range(1, flushed + 1)]
        assert not list(disk.glob(".*.tmp"))
        COUNTS["files checked"] += 1
