"""Training figures: the loss at every step and the loss and accuracy per epoch, from the
columns of a run folder's ``steps.csv`` and ``history.csv``.

Every series is drawn with one call over whole arrays (no per-point Python loops), and the
subplots get fixed margins (:func:`mlplab.plots.base.finish`), so the four figures of a 10-epoch
CIFAR-10 report (3,510 steps) take about a second.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mlplab.plots.base import column, finish, new_figure

#: figure sizes in inches, (width, height)
LOSS_STEPS_SIZE = (8.0, 4.0)
CURVES_SIZE = (10.0, 4.0)
#: the step-loss figure's y-axis is fitted to the steps after this share of the run (the first
#: steps from random weights can cost several times what the rest does)...
LOSS_STEPS_SETTLED = 0.1
#: ...up to this quantile of their losses, so that a lone late outlier does not set it either
LOSS_STEPS_QUANTILE = 0.995


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
    losses = column(losses)
    finite = losses[np.isfinite(losses)]
    if finite.size < 2:
        return None
    later = losses[int(losses.size * LOSS_STEPS_SETTLED) :]
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
    steps, losses = column(steps), column(losses)
    fig = new_figure(LOSS_STEPS_SIZE)
    ax = fig.add_subplot()
    ax.plot(steps, losses, color="C0", alpha=0.3, linewidth=0.6, label="loss")
    smoothed = smooth(losses, window)
    ax.plot(steps, smoothed, color="C0", linewidth=1.6, label="smoothed")
    if epochs is not None:
        ends = epoch_ends(steps, epochs)
        if ends.size:
            ax.vlines(
                ends,
                0,
                1,
                transform=ax.get_xaxis_transform(),
                colors="0.6",
                linestyles="dashed",
                linewidth=0.8,
                label="epoch end",
            )
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
            ax.plot(
                steps[above],
                np.full(count, limits[1]),
                linestyle="none",
                marker="^",
                markersize=4,
                color="C3",
                clip_on=False,
                gid="above the axis",
                label=f"{count} step{'s' if count > 1 else ''} above the axis (up to {highest:.3g})",
            )
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    return finish(fig, path)


def _history_columns(history) -> dict[str, np.ndarray]:
    """``history.csv`` rows (dicts) or a dict of columns, as float arrays (None -> NaN)."""
    if isinstance(history, Mapping):
        return {key: column(values) for key, values in history.items()}
    rows = list(history)
    keys = rows[0].keys() if rows else ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")
    return {key: column([row.get(key) for row in rows]) for key in keys}


def plot_curves(history, path=None, *, best_epoch: int | None = None, title: str | None = None):
    """Train and validation loss (left) and accuracy (right) per epoch.

    history: the rows of ``history.csv`` (dicts with ``epoch``, ``train_loss``,
    ``train_accuracy``, ``val_loss``, ``val_accuracy``; None where a run had no validation
    split) or a dict of those columns. Lines are labelled ``'train'`` and ``'validation'``;
    accuracies are fractions shown as percentages. ``best_epoch`` adds a dotted marker."""
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    columns = _history_columns(history)
    epoch = columns.get("epoch", np.empty(0))
    fig = new_figure(CURVES_SIZE)
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
    return finish(fig, path, gap=0.8, suptitle=bool(title))
