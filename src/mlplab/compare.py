"""NumPy against PyTorch: the same configuration trained by both backends, side by side.

Both runs use one seed, hence the same initial weights (the torch backend loads the NumPy
model's) and the same batch order (the loop's shuffling generator), on one loaded data set.
The output folder holds the two run folders (``numpy/``, ``torch/``), ``comparison.md``,
``comparison.json`` and ``comparison.png``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from mlplab.config import TrainConfig, resolve_config
from mlplab.training.checkpoint import write_json_atomic, write_text_atomic
from mlplab.training.hooks import Listener
from mlplab.training.run import prepare_run_dir

#: the two backends compared (names in mlplab.training.backends.BACKENDS)
BACKENDS = ("numpy", "torch")


class _InitialState(Listener):
    """Listener keeping the weights a run starts from (to prove both runs start alike)."""

    state: dict | None = None

    def on_train_start(self, trainer) -> None:
        self.state = trainer.backend.state_dict()


class Comparison(dict):
    """What :func:`compare` returns: a plain dict (keys listed there) that a notebook shows as a
    small HTML table."""

    def _repr_html_(self) -> str:
        from mlplab.display import comparison_html

        return comparison_html(self)

    def _repr_pretty_(self, printer, cycle) -> None:
        from mlplab.display import comparison_text

        printer.text(comparison_text(self))


def default_compare_dir(root: str = "runs") -> Path:
    from mlplab.training.run import stamped_dir

    return stamped_dir(root, prefix="compare-")


def max_abs_difference(first: dict, second: dict) -> float:
    """The largest |a − b| over the arrays two state dicts share (they must share every key)."""
    if set(first) != set(second):
        raise ValueError(f"the state dicts differ in their keys: {sorted(set(first) ^ set(second))}")
    return max(
        (
            float(np.max(np.abs(np.asarray(first[k], np.float64) - np.asarray(second[k], np.float64)), initial=0.0))
            for k in first
        ),
        default=0.0,
    )


def compare(config: TrainConfig | None = None, out=None, *, data=None, listeners=(), **options) -> Comparison:
    """Train the NumPy and the PyTorch MLP of ``config`` (or of ``options``, as for
    :func:`mlplab.train`) into ``out/numpy`` and ``out/torch``, then write the comparison.

    ``data``: a ready DatasetSplits (else ``config.dataset`` is loaded once, for both runs).
    Returns a :class:`Comparison` (a dict): ``out``, ``runs`` (backend -> run folder), ``rows`` (per backend: test
    accuracy, best validation accuracy, best epoch, seconds per epoch, device),
    ``val_accuracies`` (backend -> list), ``initial_max_abs_diff``, ``first_loss``
    (backend -> loss of the first step), ``table`` (the markdown text), ``figure`` and
    ``results`` (backend -> :class:`~mlplab.training.loop.TrainResult`).
    """
    from mlplab.training.loop import load_data, train

    if config is None:
        config = resolve_config(options=options)
    elif options:
        config = config.updated(options).validated()
    else:
        config = config.validated()
    out = Path(out if out is not None else config.out or default_compare_dir())
    runs = {backend: out / backend for backend in BACKENDS}
    for run_dir in runs.values():  # refuse before any training, not after the first run
        prepare_run_dir(run_dir, overwrite=config.overwrite, create=False)
    if data is None:
        data = load_data(config, for_training=True)
    out.mkdir(parents=True, exist_ok=True)

    results, initial, first_loss, devices = {}, {}, {}, {}
    for backend in BACKENDS:
        capture = _InitialState()
        # --array-library is the hand-derived side's: the twin computes on torch tensors anyway
        library = config.array_library if backend == "numpy" else "numpy"
        run_config = dataclasses.replace(
            config, backend=backend, out=str(runs[backend]), nproc=1, array_library=library
        )
        result = train(run_config, data=data, listeners=[capture, *listeners])
        results[backend] = result
        state = capture.state
        assert state is not None  # the capture listener records it in every run's on_train_start
        initial[backend] = state
        devices[backend] = getattr(result.backend, "device", "cpu")
        first_loss[backend] = _first_loss(runs[backend])

    rows = [
        {
            "backend": backend,
            "device": devices[backend],
            "test_accuracy": results[backend].test_accuracy,
            "best_val_accuracy": results[backend].best_val_accuracy,
            "best_epoch": results[backend].best_epoch,
            "seconds_per_epoch": results[backend].summary["seconds_per_epoch"],
        }
        for backend in BACKENDS
    ]
    comparison = Comparison(
        {
            "out": out,
            "runs": runs,
            "rows": rows,
            "val_accuracies": {backend: results[backend].val_accuracies for backend in BACKENDS},
            "initial_max_abs_diff": max_abs_difference(initial["numpy"], initial["torch"]),
            "first_loss": first_loss,
            "config": config.to_dict(),
        }
    )
    comparison["table"] = comparison_markdown(comparison, config, data)
    write_text_atomic(out / "comparison.md", comparison["table"])
    write_json_atomic(out / "comparison.json", {k: v for k, v in comparison.items() if k != "table"})
    from mlplab.plots import plot_runs

    figure = out / "comparison.png"
    plot_runs(
        {"NumPy": runs["numpy"], "PyTorch": runs["torch"]}, figure, title=f"NumPy vs PyTorch: {_describe(config, data)}"
    )
    comparison["figure"] = figure
    comparison["results"] = results
    return comparison


def _first_loss(run_dir: Path) -> float | None:
    from mlplab.training.run import read_csv

    rows = read_csv(run_dir / "steps.csv")
    return rows[0]["loss"] if rows else None


def _describe(config: TrainConfig, data) -> str:
    widths = "-".join(str(w) for w in [data.num_features, *config.hidden_dims, data.num_classes])
    return f"{data.name}, {widths} {config.activation} MLP, {config.optimizer} lr {config.lr:g}, {config.dtype}"


def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _points(first, second) -> str:
    return "–" if first is None or second is None else f"{100 * (second - first):+.2f} pt"


def comparison_markdown(comparison: dict, config: TrainConfig, data) -> str:
    """The comparison as markdown: the table per backend, the start check and the per-epoch
    validation accuracy of both."""
    rows = {row["backend"]: row for row in comparison["rows"]}
    numpy_row, torch_row = rows["numpy"], rows["torch"]
    lines = [
        f"# NumPy vs PyTorch: {_describe(config, data)}",
        "",
        f"Same seed ({config.seed}), same initial weights, same batches: batch {config.batch_size}, "
        f"{config.epochs} epochs, schedule {config.schedule}; PyTorch on {torch_row['device']}.",
        "",
        "| backend | test accuracy | best validation accuracy | best epoch | seconds per epoch |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in (numpy_row, torch_row):
        lines.append(
            f"| {row['backend']} | {_percent(row['test_accuracy'])} | {_percent(row['best_val_accuracy'])} | "
            f"{row['best_epoch']} | {row['seconds_per_epoch']:.3f} |"
        )
    ratio = (
        numpy_row["seconds_per_epoch"] / torch_row["seconds_per_epoch"]
        if torch_row["seconds_per_epoch"]
        else float("nan")
    )
    lines.append(
        f"| torch − numpy | {_points(numpy_row['test_accuracy'], torch_row['test_accuracy'])} | "
        f"{_points(numpy_row['best_val_accuracy'], torch_row['best_val_accuracy'])} | | {ratio:.2f}× speed-up |"
    )
    diff = comparison["initial_max_abs_diff"]
    lines += [
        "",
        f"Initial weights: max |Δ| = {diff:g}" + (" (identical start)." if diff == 0 else " (the starts differ!)."),
    ]
    first = comparison["first_loss"]
    if first.get("numpy") is not None and first.get("torch") is not None:
        lines.append(
            f"Loss of the first step: numpy {first['numpy']:.8g}, torch {first['torch']:.8g} "
            f"(|Δ| = {abs(first['numpy'] - first['torch']):.2g})."
        )
    val = comparison["val_accuracies"]
    lines += [
        "",
        "## Validation accuracy per epoch",
        "",
        "| epoch | numpy | torch | torch − numpy |",
        "|---:|---:|---:|---:|",
    ]
    for epoch, (a, b) in enumerate(zip(val["numpy"], val["torch"]), start=1):
        lines.append(f"| {epoch} | {_percent(a)} | {_percent(b)} | {_points(a, b)} |")
    lines += ["", "![training loss and validation accuracy of both backends](comparison.png)", ""]
    return "\n".join(lines)
