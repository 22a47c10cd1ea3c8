"""Test-split figures: the confusion matrix and per-class precision, recall and F-beta (the
numbers come from :mod:`mlplab.metrics`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlplab.plots.base import finish, new_figure, text_inches

#: figure sizes in inches, (width, height)
CONFUSION_SIZE = (12.0, 5.5)
PER_CLASS_SIZE = (10.0, 4.0)
#: confusion-matrix cells are annotated with their values up to this many classes
ANNOTATE_MAX_CLASSES = 20


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
    fig = new_figure(CONFUSION_SIZE)
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
                ax.text(
                    j,
                    i,
                    format(value, fmt),
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color="white" if value > threshold else "black",
                )
    axes[0].set_title("Confusion matrix (counts)")
    axes[1].set_title("Confusion matrix (fraction of each true class)")
    if title:
        fig.suptitle(title)
    tick_width = text_inches(names, 8)
    left = 0.45 + tick_width
    bottom = 0.55 + (0.71 * tick_width if rotated else 0.0)
    return finish(fig, path, left=left, right=0.15, bottom=bottom, top=0.35, gap=left + 0.1, suptitle=bool(title))


def plot_per_class(
    precision,
    recall,
    f_beta,
    class_names: Sequence[str] | None = None,
    path=None,
    *,
    beta: float = 1.0,
    title: str | None = None,
):
    """Per-class precision, recall and F-beta as grouped bars (three bar containers, labelled
    ``'precision'``, ``'recall'`` and ``'F<beta>'``, in that order)."""
    precision, recall, f_beta = (np.asarray(v, dtype=np.float64) for v in (precision, recall, f_beta))
    n = precision.size
    names = [str(name) for name in class_names] if class_names is not None else [str(i) for i in range(n)]
    positions = np.arange(n)
    width = 0.27
    fig = new_figure(PER_CLASS_SIZE)
    ax = fig.add_subplot()
    for offset, values, label in (
        (-width, precision, "precision"),
        (0.0, recall, "recall"),
        (width, f_beta, f"F{beta:g}"),
    ):
        ax.bar(positions + offset, values, width, label=label)
    rotate = max((len(name) for name in names), default=0) > 3
    ax.set_xticks(positions, names, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax.set_ylim(0, 1.2)
    ax.set_ylabel("score")
    ax.set_title(title or "Per-class precision, recall and F-score (test split)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncols=3)
    bottom = 0.35 + (0.5 * text_inches(names, 10) if rotate else 0.0)
    return finish(fig, path, left=0.7, bottom=bottom)
