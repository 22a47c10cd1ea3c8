"""Figures from run-folder data (matplotlib), saved as PNG at :data:`DPI`.

Each function takes plain data (the columns of ``steps.csv`` / ``history.csv``, a confusion
matrix, per-class scores), draws one figure, saves it when given a ``path`` and returns the
:class:`~matplotlib.figure.Figure`, whose artists hold exactly the data drawn (tests read them
back). Figures are built with :class:`matplotlib.figure.Figure` and rendered by Agg directly,
without pyplot: nothing is registered globally, so there is nothing to close, no GUI backend
is ever started and a user's interactive backend is left alone. matplotlib is imported inside
the functions so that ``import mlplab`` stays light.

Every series is drawn with one call over whole arrays (no per-point Python loops), and the
subplots get fixed margins rather than constrained layout (which measures every text on every
draw), so the four figures of a 10-epoch CIFAR-10 report (3,510 steps) take about a second.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

#: resolution of every PNG; a figure of ``figsize`` (w, h) inches is (w * DPI, h * DPI) pixels
DPI = 150
#: figure sizes in inches, (width, height)
LOSS_STEPS_SIZE = (8.0, 4.0)
CURVES_SIZE = (10.0, 4.0)
CONFUSION_SIZE = (12.0, 5.5)
PER_CLASS_SIZE = (10.0, 4.0)
GRADIENTS_SIZE = (10.0, 4.0)
GRADIENTS_INPUT_SIZE = (15.0, 4.0)  # with the input-gradient panel
RUNS_SIZE = (12.0, 4.5)
#: confusion-matrix cells are annotated with their values up to this many classes
ANNOTATE_MAX_CLASSES = 20
#: the step-loss figure's y-axis is fitted to the steps after this share of the run (the first
#: steps from random weights can cost several times what the rest does)...
LOSS_STEPS_SETTLED = 0.1
#: ...up to this quantile of their losses, so that a lone late outlier does not set it either
LOSS_STEPS_QUANTILE = 0.995


def _figure(size):
    from mlplab.display import InlineFigure  # a Figure that also shows inline in a notebook

    return InlineFigure(figsize=size)


def _colormap(name: str):
    from matplotlib import colormaps

    return colormaps[name]


def _text_inches(texts, fontsize: float) -> float:
    """A generous estimate of the widest of ``texts`` in inches (0.6 em per character)."""
    return max((len(str(t)) for t in texts), default=0) * 0.6 * fontsize / 72


def save_figure(fig, path) -> Path:
    """Write ``fig`` as a PNG at :data:`DPI` (atomically: a reader never sees half a file)."""
    from mlplab.storage import write_bytes_atomic

    path = Path(path)
    png = io.BytesIO()  # encoded first, so that a full disk's message can say how much it needed
    # zlib level 3 instead of Pillow's 6: a quarter less time per figure, files 25% larger
    fig.savefig(png, format="png", dpi=DPI, pil_kwargs={"compress_level": 3})
    write_bytes_atomic(path, png.getvalue())
    return path


def _finish(fig, path, *, left: float = 0.8, right: float = 0.2, bottom: float = 0.6, top: float = 0.4,
            gap: float = 0.0, suptitle: bool = False):
    """Place the subplots with margins in inches (``gap`` between columns), then save.

    Fixed margins instead of constrained layout: that one measures every text of the figure on
    each draw, and saving draws twice, which made it a third of the report's time.
    """
    width, height = fig.get_size_inches()
    if suptitle:
        top += 0.3
    specs = [ax.get_subplotspec() for ax in fig.axes]
    columns = max((spec.get_topmost_subplotspec().get_gridspec().ncols for spec in specs if spec), default=1)
    axis_width = (width - left - right - (columns - 1) * gap) / columns
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=gap / axis_width if columns > 1 else None)
    if path is not None:
        save_figure(fig, path)
    return fig


def _column(values) -> np.ndarray:
    """A float64 array, with None (an empty CSV cell) as NaN."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64) if not isinstance(values, np.ndarray) \
        else values.astype(np.float64)


def smooth(values, window: int | None = None) -> np.ndarray:
    """Trailing moving average (same length): point ``i`` is the mean of the last ``window``
    values up to ``i`` (of all of them near the start). ``window`` defaults to 1/50 of the
    series (at least 1). Computed from a cumulative sum, so it is O(n) without a Python loop."""
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    if n == 0:
        return values.copy()
    if window is None:
        window = max(1, n // 50)
    window = int(max(1, min(window, n)))
    if window == 1:
        return values.copy()
    cumulative = np.concatenate(([0.0], np.cumsum(values)))
    upper = np.arange(1, n + 1)
    lower = np.maximum(0, upper - window)
    return (cumulative[upper] - cumulative[lower]) / (upper - lower)


def epoch_ends(steps, epochs) -> np.ndarray:
    """The last step of each epoch but the final one (where a new epoch starts next)."""
    steps = np.asarray(steps, dtype=np.float64)
    epochs = np.asarray(epochs)
    if steps.size < 2:
        return np.empty(0)
    return steps[:-1][epochs[1:] != epochs[:-1]]


def fractional_epochs(epochs) -> np.ndarray:
    """Each step's position in epochs: step ``k`` (1-based) of an epoch ``e`` with ``n`` steps
    sits at ``e - 1 + k / n``, so epoch ends fall on whole numbers and runs with different batch
    sizes share one axis."""
    epochs = np.asarray(epochs, dtype=np.float64)
    if epochs.size == 0:
        return epochs.copy()
    starts = np.flatnonzero(np.concatenate(([True], epochs[1:] != epochs[:-1])))
    counts = np.diff(np.concatenate((starts, [epochs.size])))
    group = np.repeat(np.arange(starts.size), counts)
    position = np.arange(epochs.size) - starts[group] + 1
    return epochs - 1 + position / counts[group]


def loss_axis_limits(losses) -> tuple[float, float] | None:
    """The y-limits ``(bottom, top)`` of the step-loss figure, fitted to the settled run.

    On the reference run the first steps reach a loss of 9 while the rest lies between 1.2 and
    2.2: an axis fitted to every point leaves the run a flat line at the bottom. The top is
    therefore the largest loss after the first :data:`LOSS_STEPS_SETTLED` of the steps, at most
    half their spread above their :data:`LOSS_STEPS_QUANTILE` quantile; higher points are
    clipped (:func:`plot_loss_steps` marks them). Nothing is clipped when an axis holding every
    point would still give those steps half its height (a short run's first steps are often
    just the start of its descent). None (matplotlib's own limits) for fewer than two finite
    losses."""
    losses = _column(losses)
    finite = losses[np.isfinite(losses)]
    if finite.size < 2:
        return None
    later = losses[int(losses.size * LOSS_STEPS_SETTLED):]
    later = later[np.isfinite(later)]
    if later.size < 2:
        later = finite
    low = float(finite.min())
    high = float(np.quantile(later, LOSS_STEPS_QUANTILE))
    spread = high - low
    ceiling = min(float(later.max()), high + 0.5 * spread)
    if finite.max() - low <= 2 * (ceiling - low):
        ceiling = float(finite.max())
    pad = 0.05 * ((ceiling - low) or max(abs(low), 1.0))
    bottom = low - pad
    if low >= 0:  # a cross-entropy is never negative: no axis below zero
        bottom = max(bottom, 0.0)
    return bottom, ceiling + pad


def plot_loss_steps(steps, losses, epochs=None, path=None, *, window: int | None = None, title: str | None = None):
    """The training loss at every step (thin), its moving average (:func:`smooth`) and dashed
    lines at the epoch boundaries (when ``epochs``, the epoch of each step, is given).

    steps, losses, epochs: the columns of ``steps.csv`` (S,). Lines are labelled ``'loss'`` and
    ``'smoothed'``; the boundaries are the ``'epoch end'`` collection at :func:`epoch_ends`.
    The y-axis shows the settled run (:func:`loss_axis_limits`); the steps whose loss lies above
    it are marked along its top edge by a line of gid ``'above the axis'``, whose label (in the
    legend) gives their number and highest loss."""
    steps, losses = _column(steps), _column(losses)
    fig = _figure(LOSS_STEPS_SIZE)
    ax = fig.add_subplot()
    ax.plot(steps, losses, color="C0", alpha=0.3, linewidth=0.6, label="loss")
    smoothed = smooth(losses, window)
    ax.plot(steps, smoothed, color="C0", linewidth=1.6, label="smoothed")
    if epochs is not None:
        ends = epoch_ends(steps, epochs)
        if ends.size:
            ax.vlines(ends, 0, 1, transform=ax.get_xaxis_transform(), colors="0.6", linestyles="dashed",
                      linewidth=0.8, label="epoch end")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (cross-entropy)")
    ax.set_title(title or "Training loss per step")
    if steps.size:
        ax.set_xlim(steps.min(), max(steps.max(), steps.min() + 1))
    limits = loss_axis_limits(losses)
    if limits is not None:
        ax.set_ylim(*limits)
        above = np.isfinite(losses) & (losses > limits[1])
        if above.any():
            count, highest = int(above.sum()), float(losses[above].max())
            ax.plot(steps[above], np.full(count, limits[1]), linestyle="none", marker="^", markersize=4, color="C3",
                    clip_on=False, gid="above the axis",
                    label=f"{count} step{'s' if count > 1 else ''} above the axis (up to {highest:.3g})")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    return _finish(fig, path)


def _history_columns(history) -> dict[str, np.ndarray]:
    """``history.csv`` rows (dicts) or a dict of columns, as float arrays (None -> NaN)."""
    if isinstance(history, Mapping):
        return {key: _column(values) for key, values in history.items()}
    rows = list(history)
    keys = rows[0].keys() if rows else ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")
    return {key: _column([row.get(key) for row in rows]) for key in keys}


def plot_curves(history, path=None, *, best_epoch: int | None = None, title: str | None = None):
    """Train and validation loss (left) and accuracy (right) per epoch.

    history: the rows of ``history.csv`` (dicts with ``epoch``, ``train_loss``,
    ``train_accuracy``, ``val_loss``, ``val_accuracy``; None where a run had no validation
    split) or a dict of those columns. Lines are labelled ``'train'`` and ``'validation'``;
    accuracies are fractions shown as percentages. ``best_epoch`` adds a dotted marker."""
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    columns = _history_columns(history)
    epoch = columns.get("epoch", np.empty(0))
    fig = _figure(CURVES_SIZE)
    loss_ax, acc_ax = fig.subplots(1, 2)
    for ax, name, label in ((loss_ax, "loss", "loss (cross-entropy)"), (acc_ax, "accuracy", "accuracy")):
        for prefix, split, style in (("train", "train", "o-"), ("val", "validation", "s-")):
            values = columns.get(f"{prefix}_{name}")
            if values is not None and np.any(np.isfinite(values)):
                ax.plot(epoch, values, style, markersize=3, linewidth=1.4, label=split)
        if best_epoch:
            ax.axvline(best_epoch, color="0.5", linestyle=":", linewidth=1, label=f"best epoch ({best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend()
    acc_ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    loss_ax.set_title("Loss per epoch")
    acc_ax.set_title("Accuracy per epoch")
    if title:
        fig.suptitle(title)
    return _finish(fig, path, gap=0.8, suptitle=bool(title))


def plot_confusion(cm, class_names: Sequence[str] | None = None, path=None, *, title: str | None = None):
    """The confusion matrix as two heatmaps: counts (left) and normalised by true class (right,
    each row sums to 1, the diagonal is the recall). Rows are the true class, columns the
    predicted one; cells are annotated up to :data:`ANNOTATE_MAX_CLASSES` classes."""
    from mlplab.metrics import normalize_confusion

    cm = np.asarray(cm)
    n = cm.shape[0]
    names = [str(name) for name in class_names] if class_names is not None else [str(i) for i in range(n)]
    count_format = "d" if np.issubdtype(cm.dtype, np.integer) else "g"
    fractions = normalize_confusion(cm, by="true")
    rotated = max((len(name) for name in names), default=0) > 3
    fig = _figure(CONFUSION_SIZE)
    axes = fig.subplots(1, 2)
    panels = (
        (axes[0], cm, "counts", count_format, None),
        (axes[1], fractions, "fraction of the true class", ".2f", 1.0),
    )
    for ax, values, label, fmt, vmax in panels:
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax, interpolation="nearest", aspect="equal")
        annotate = n <= ANNOTATE_MAX_CLASSES
        if not annotate:  # annotated cells state their values; a colour bar would only cost time
            fig.colorbar(image, ax=ax, shrink=0.8, label=label)
        if rotated:
            ax.set_xticks(np.arange(n), names, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
        else:
            ax.set_xticks(np.arange(n), names, fontsize=8)
        ax.set_yticks(np.arange(n), names, fontsize=8)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        if annotate:
            # One text per cell (at most 400); white on dark cells so it stays readable.
            threshold = 0.5 * (vmax if vmax is not None else max(values.max(), 1))
            fontsize = 8 if n <= 10 else 6
            for (i, j), value in np.ndenumerate(values):
                ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=fontsize,
                        color="white" if value > threshold else "black")
    axes[0].set_title("Confusion matrix (counts)")
    axes[1].set_title("Confusion matrix (fraction of each true class)")
    if title:
        fig.suptitle(title)
    tick_width = _text_inches(names, 8)
    left = 0.45 + tick_width
    bottom = 0.55 + (0.71 * tick_width if rotated else 0.0)
    return _finish(fig, path, left=left, right=0.15, bottom=bottom, top=0.35, gap=left + 0.1, suptitle=bool(title))


def plot_per_class(precision, recall, f_beta, class_names: Sequence[str] | None = None, path=None, *,
                   beta: float = 1.0, title: str | None = None):
    """Per-class precision, recall and F-beta as grouped bars (three bar containers, labelled
    ``'precision'``, ``'recall'`` and ``'F<beta>'``, in that order)."""
    precision, recall, f_beta = (np.asarray(v, dtype=np.float64) for v in (precision, recall, f_beta))
    n = precision.size
    names = [str(name) for name in class_names] if class_names is not None else [str(i) for i in range(n)]
    positions = np.arange(n)
    width = 0.27
    fig = _figure(PER_CLASS_SIZE)
    ax = fig.add_subplot()
    for offset, values, label in ((-width, precision, "precision"), (0.0, recall, "recall"), (width, f_beta, f"F{beta:g}")):
        ax.bar(positions + offset, values, width, label=label)
    rotate = max((len(name) for name in names), default=0) > 3
    ax.set_xticks(positions, names, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax.set_ylim(0, 1.2)
    ax.set_ylabel("score")
    ax.set_title(title or "Per-class precision, recall and F-score (test split)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncols=3)
    bottom = 0.35 + (0.5 * _text_inches(names, 10) if rotate else 0.0)
    return _finish(fig, path, left=0.7, bottom=bottom)


def plot_gradients(steps, layers, weight_grad_norms, update_ratios, path=None, *, input_grad_norms=None,
                   title: str | None = None):
    """Per-layer gradient norms (left), input-gradient norms (middle, only when
    ``input_grad_norms`` is given) and update/weight ratios (right) against the step, on log
    scales; one line per layer (labelled with the layer's name). The arrays are the columns of
    ``gradients.csv`` (one row per step and layer). Beyond ten layers the lines take colours
    along a colour map, first layer to last, so depth reads as a gradient of colour."""
    steps = _column(steps)
    layers = np.asarray([str(layer) for layer in layers])
    norms, ratios = _column(weight_grad_norms), _column(update_ratios)
    inputs = None if input_grad_norms is None else _column(input_grad_norms)
    fig = _figure(GRADIENTS_SIZE if inputs is None else GRADIENTS_INPUT_SIZE)
    axes = fig.subplots(1, 2 if inputs is None else 3, sharex=True)
    norm_ax, ratio_ax = axes[0], axes[-1]
    panels = [(norm_ax, norms, "weight gradient norm")]
    if inputs is not None:
        panels.append((axes[1], inputs, "input gradient norm"))
    panels.append((ratio_ax, ratios, "update / weight norm"))
    _, first = np.unique(layers, return_index=True)
    order = layers[np.sort(first)]  # in the order the layers first appear
    colors = [f"C{i}" for i in range(len(order))] if len(order) <= 10 else \
        [_colormap("viridis")(i / (len(order) - 1)) for i in range(len(order))]
    for layer, color in zip(order, colors):
        mask = layers == layer
        for ax, values, _ in panels:
            ax.plot(steps[mask], values[mask], linewidth=1, color=color, label=layer)
    for ax, _, label in panels:
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    norm_ax.set_title("Gradient norm per layer")
    if inputs is not None:
        axes[1].set_title("Gradient at each layer's input")
    ratio_ax.set_title("Update ratio per layer")
    if norm_ax.lines:
        norm_ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _finish(fig, path, left=0.9, gap=0.9, suptitle=bool(title))


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
        "epochs": fractional_epochs(_column([row["epoch"] for row in steps])),
        "losses": _column([row["loss"] for row in steps]),
        "epoch": _column([row["epoch"] for row in history]),
        "val_accuracy": _column([row.get("val_accuracy") for row in history]),
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
    fig = _figure(RUNS_SIZE)
    loss_ax, acc_ax = fig.subplots(1, 2, sharex=True)
    for index, (label, data) in enumerate(curves.items()):
        color = f"C{index % 10}"
        loss_ax.plot(data["epochs"], data["losses"], color=color, alpha=0.2, linewidth=0.5, label=f"{label} (per step)")
        loss_ax.plot(data["epochs"], smooth(data["losses"], window), color=color, linewidth=1.5, label=label)
        if np.any(np.isfinite(data["val_accuracy"])):
            acc_ax.plot(data["epoch"], data["val_accuracy"], "o-", color=color, markersize=3, linewidth=1.4, label=label)
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
    return _finish(fig, path, gap=0.8, suptitle=bool(title))
