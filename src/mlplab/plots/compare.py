"""Several runs on shared axes (``mlplab compare``'s NumPy-vs-PyTorch figure, or any runs),
read from their run folders. Nothing here imports torch: a run folder is all it needs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mlplab.plots.base import column, finish, new_figure
from mlplab.plots.training import fractional_epochs, smooth

#: figure size in inches, (width, height)
RUNS_SIZE = (12.0, 4.5)


def read_logs(run_dir) -> tuple[list[dict], list[dict]]:
    """The rows of ``steps.csv`` and ``history.csv`` (empty lists for absent files); a file
    that is not a readable log raises CheckpointError."""
    from mlplab.errors import CheckpointError
    from mlplab.training.run import read_csv

    logs = []
    for name in ("steps.csv", "history.csv"):
        try:
            logs.append(read_csv(Path(run_dir) / name))
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{str(Path(run_dir) / name)!r} is not a readable log: {exc}") from None
    return logs[0], logs[1]


def read_run_curves(run_dir) -> dict:
    """The columns :func:`plot_runs` draws from a run folder: ``epochs`` (fractional epoch of
    each step), ``losses`` (steps.csv), ``epoch`` and ``val_accuracy`` (history.csv)."""
    from mlplab.errors import CheckpointError

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"no run folder at {str(run_dir)!r}")
    steps, history = read_logs(run_dir)
    if not steps and not history:
        raise CheckpointError(f"run folder {str(run_dir)!r} holds no steps.csv or history.csv")
    return {
        "epochs": fractional_epochs(column([row["epoch"] for row in steps])),
        "losses": column([row["loss"] for row in steps]),
        "epoch": column([row["epoch"] for row in history]),
        "val_accuracy": column([row.get("val_accuracy") for row in history]),
    }


def plot_runs(runs, path=None, *, window: int | None = None, title: str | None = None):
    """Several runs on shared axes: the training loss of every step (faint) with its moving
    average (left), and the validation accuracy per epoch (right), both against epochs.

    runs: ``{label: run_dir}`` (or a sequence of run folders, labelled by folder name). Each
    run keeps one colour; its lines are labelled ``label`` (the smoothed loss and the accuracy)
    and ``f'{label} (per step)'`` (the raw loss). A missing folder raises CheckpointError."""
    from matplotlib.ticker import PercentFormatter

    if not isinstance(runs, Mapping):
        runs = {Path(run).name: run for run in runs}
    curves = {str(label): read_run_curves(run_dir) for label, run_dir in runs.items()}
    fig = new_figure(RUNS_SIZE)
    loss_ax, acc_ax = fig.subplots(1, 2, sharex=True)
    for index, (label, data) in enumerate(curves.items()):
        color = f"C{index % 10}"
        loss_ax.plot(data["epochs"], data["losses"], color=color, alpha=0.2, linewidth=0.5, label=f"{label} (per step)")
        loss_ax.plot(data["epochs"], smooth(data["losses"], window), color=color, linewidth=1.5, label=label)
        if np.any(np.isfinite(data["val_accuracy"])):
            acc_ax.plot(
                data["epoch"], data["val_accuracy"], "o-", color=color, markersize=3, linewidth=1.4, label=label
            )
    loss_ax.set_ylabel("training loss (cross-entropy)")
    loss_ax.set_title("Training loss per step")
    acc_ax.set_ylabel("validation accuracy")
    acc_ax.set_title("Validation accuracy per epoch")
    acc_ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    handles = [line for line in loss_ax.lines if not line.get_label().endswith("(per step)")]
    if handles:
        loss_ax.legend(handles=handles, fontsize=8)
    if acc_ax.lines:
        acc_ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return finish(fig, path, gap=0.8, suptitle=bool(title))
