"""The run folder: what a training run leaves behind.

- ``config.json``: resolved options and the environment (mlplab, numpy, BLAS, git commit);
- ``steps.csv``: ``epoch,step,loss`` for every batch;
- ``history.csv``: one row per epoch (``HISTORY_COLUMNS``);
- ``best.npz``: the best model by validation accuracy; ``last.npz``: everything needed to resume;
- ``summary.json``: the outcome (best epoch, accuracies, timings);
- ``report.md`` / ``report.html`` and figures (see :mod:`mlplab.report`).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

from mlplab._version import __version__
from mlplab.errors import CheckpointError
from mlplab.storage import atomic_write, default_run_dir, stamped_dir, storage_error, write_json_atomic  # noqa: F401

HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")
STEP_COLUMNS = ("epoch", "step", "loss")
#: figure files the report (mlplab.report) writes into the run folder
FIGURES = {
    "loss_steps": "loss_steps.png",
    "curves": "curves.png",
    "confusion": "confusion.png",
    "per_class": "per_class.png",
    "gradients": "gradients.png",
}


def prepare_run_dir(path, *, overwrite: bool = False, create: bool = True) -> Path:
    """Create the run folder, refusing a file, a finished run or an unfinished one (unless
    ``overwrite``). With ``create=False`` only the checks run (before any work is done)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"--out {str(path)!r} is an existing file, not a folder")
    if path.is_dir() and not overwrite:
        if (path / "summary.json").exists():
            raise CheckpointError(f"--out {str(path)!r} already holds a finished run; pass --overwrite to replace it")
        if (path / "last.npz").exists():
            raise CheckpointError(
                f"--out {str(path)!r} holds an unfinished run; continue it with `mlplab train --resume {path}` "
                "or pass --overwrite to start again"
            )
    if not create:
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create run folder {str(path)!r}: {exc.strerror or exc}") from None
    if overwrite:
        # mlflow.json and tensorboard/ too: a later --resume would take them for this run's
        old_events = [p.relative_to(path) for p in (path / "tensorboard").glob("events.out.tfevents.*")]
        for name in (
            "summary.json",
            "last.npz",
            "best.npz",
            "steps.csv",
            "history.csv",
            "gradients.csv",
            "mlflow.json",
            *old_events,
        ):
            try:
                (path / name).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise storage_error(exc, path / name, action="removing") from exc
    if not os.access(path, os.W_OK):
        raise CheckpointError(f"run folder {str(path)!r} is not writable")
    return path


def after_storage_error(run_dir, full: bool = True) -> str:
    """What a run folder still offers after a write failed in it (``full``: for want of space):
    the epoch ``--resume`` starts from, or that the run finished and only its report is missing."""
    from mlplab.training.checkpoint import read_checkpoint_meta

    run_dir = Path(run_dir)
    fix = "free some space and" if full else "once the disk takes writes again,"
    if not run_dir.is_dir():
        return "nothing is left to resume from"
    if (run_dir / "summary.json").exists():
        return f"the run finished and its checkpoints are saved; write its report with `mlplab report {run_dir}`"
    meta = read_checkpoint_meta(run_dir / "last.npz")
    if meta is None:
        return f"no checkpoint was saved yet; {fix} start the run again"
    epoch, step = int(meta.get("epoch", 0)), int(meta.get("step_in_epoch", 0))
    where = f"epoch {epoch + 1}, step {step}" if step else f"the end of epoch {epoch}"
    return f"last.npz keeps the run as it was at {where}; {fix} continue with `mlplab train --resume {run_dir}`"


def git_commit() -> str | None:
    """The commit of the checkout mlplab runs from, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def blas_info() -> dict:
    """Which BLAS NumPy uses and with how many threads (threadpoolctl when installed)."""
    try:
        from threadpoolctl import threadpool_info

        for entry in threadpool_info():
            if entry.get("user_api") == "blas":
                return {
                    "library": entry.get("internal_api"),
                    "version": entry.get("version"),
                    "threads": entry.get("num_threads"),
                    "architecture": entry.get("architecture"),
                }
    except Exception:  # noqa: BLE001  # pragma: no cover - optional: a threadpoolctl failure only loses this detail
        pass
    try:
        config = np.show_config(mode="dicts")
        blas = config.get("Build Dependencies", {}).get("blas", {})
        return {"library": blas.get("name"), "version": blas.get("version"), "threads": None}
    except Exception:  # noqa: BLE001  # pragma: no cover - a NumPy without show_config dicts: no BLAS detail
        return {}


def environment() -> dict:
    return {
        "mlplab_version": __version__,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "blas": blas_info(),
        "platform": platform.platform(),
        "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def write_config(path: Path, config: dict, data_info: dict | None = None, extra: dict | None = None) -> None:
    write_json_atomic(
        path / "config.json", {"options": config, "data": data_info or {}, **environment(), **(extra or {})}
    )


def read_config(path) -> dict:
    try:
        return json.loads((Path(path) / "config.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"run folder {str(path)!r} has no config.json") from None
    except ValueError:
        raise CheckpointError(f"{str(Path(path) / 'config.json')!r} is not valid JSON") from None


class CsvLog:
    """An append-only CSV file with a header, flushed on request.

    A failed write becomes a :class:`~mlplab.errors.StorageError`. Rows cut short by it are
    harmless: a resumed run keeps only the rows up to its checkpoint (:func:`truncate_csv`)."""

    def __init__(self, path: Path, columns, *, append: bool = True):
        self.path = path
        self.columns = tuple(columns)
        try:
            # A run that does not resume starts its logs afresh: rows left by an attempt that
            # stopped before its first checkpoint (a full disk) belong to no run.
            new = not append or not path.exists() or path.stat().st_size == 0
            self.handle = open(path, "a" if append else "w", newline="", encoding="utf-8")
            self.writer = csv.writer(self.handle)
            self.pending, self.last_row = 0, self.columns  # rows since the last flush, for a full disk's message
            if new:
                self.write(self.columns)
        except OSError as exc:
            raise storage_error(exc, path) from exc

    def write(self, row) -> None:
        self.pending += 1
        self.last_row = row
        try:
            self.writer.writerow(row)
        except OSError as exc:  # the buffer filled up and the disk refused it
            raise storage_error(exc, self.path, size=self._pending_bytes()) from exc

    def _pending_bytes(self) -> int:
        # counted only when a write failed: the rows since the last flush, each about as long as the last
        return self.pending * (sum(len(str(value)) + 1 for value in self.last_row) + 1)

    def flush(self) -> None:
        """Hand the rows to the file system. Called before a checkpoint is written, so that the
        rows a checkpoint counts are in the file when the checkpoint is (a full disk refuses them
        here). Not fsynced: that took ~4 ms a file per epoch on ext4, more than half the time of
        a small run."""
        try:
            self.handle.flush()
        except OSError as exc:
            raise storage_error(exc, self.path, size=self._pending_bytes()) from exc
        self.pending = 0

    def close(self) -> None:
        if not self.handle.closed:
            try:
                self.handle.close()
            except OSError:
                # Only rows a failed write left in the buffer, written after the last checkpoint
                # (every checkpoint flushes first): a resume drops them anyway, and the error
                # that stopped the run is the one to report.
                pass


def truncate_csv(path: Path, keep) -> None:
    """Rewrite ``path`` keeping the header and the rows for which ``keep(row_dict)`` is true
    (rows written after the checkpoint a run resumes from)."""
    if not path.exists():
        return
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    kept = []
    for row in body:
        if len(row) != len(header):
            continue  # a row cut short by a crash
        try:
            if keep(dict(zip(header, row))):
                kept.append(row)
        except ValueError:
            continue
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(kept)
    data = text.getvalue().encode("utf-8")
    atomic_write(path, lambda handle: handle.write(data), size=len(data))


def read_csv(path) -> list[dict]:
    """Rows of a run's CSV file as dicts of floats (empty cells become None)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = []
        for row in reader:
            rows.append({k: (float(v) if v not in ("", None) else None) for k, v in row.items()})
    return rows
