"""sweep.png: validation accuracy against each swept option, the best trial marked."""

from __future__ import annotations

import math

from mlplab.sweep.space import Dimension, _format_value

#: numeric options drawn on a logarithmic axis in sweep.png (when every value is positive)
LOG_AXIS_OPTIONS = ("lr", "min_lr", "weight_decay")


def _numeric(dimension: Dimension) -> bool:
    if not dimension.categorical:
        return True
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in dimension.values)


def plot_sweep(rows: list[dict], dimensions: list[Dimension], path=None, *, best: dict | None = None, title: str | None = None):
    """Validation accuracy against each swept option, one panel per option; the best trial is
    a red star. Numeric options get a numeric axis (logarithmic for log ranges and for lr,
    min-lr and weight-decay when all values are positive); the others one tick per value.
    Failed trials have no validation accuracy and are left out (the panel title counts them)."""
    import numpy as np
    from matplotlib.figure import Figure

    from mlplab.plots import save_figure

    complete = [r for r in rows if r["val_accuracy"] is not None]
    failed = len(rows) - len(complete)
    columns = min(3, len(dimensions))
    lines = math.ceil(len(dimensions) / columns)
    width, height = 4.0 * columns + 0.6, 3.4 * lines + (0.4 if title else 0.0)
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(lines, columns, squeeze=False).ravel()
    y = np.array([r["val_accuracy"] for r in complete], dtype=np.float64)
    for ax, dimension in zip(axes, dimensions):
        values = [r[dimension.flag] for r in complete]
        if _numeric(dimension):
            x = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
            candidates = [float(v) for v in dimension.values] if dimension.categorical else [dimension.low, dimension.high]
            if dimension.kind == "log" or (dimension.name in LOG_AXIS_OPTIONS and min(candidates) > 0):
                ax.set_xscale("log")
            if dimension.categorical:  # a tick at each value of the grid or choice
                ax.set_xticks(candidates, [_format_value(v) for v in dimension.values], minor=False)
                ax.set_xticks([], minor=True)
        else:
            labels = [_format_value(v) for v in dimension.values]
            x = np.array([labels.index(_format_value(v)) for v in values], dtype=np.float64)
            ax.set_xticks(np.arange(len(labels)), labels, rotation=30 if max(map(len, labels)) > 6 else 0)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.scatter(x, y, s=28, alpha=0.75, color="tab:blue", label="trial")
        if best is not None:
            value = best[dimension.flag]
            bx = float(value) if _numeric(dimension) else [_format_value(v) for v in dimension.values].index(_format_value(value))
            ax.scatter([bx], [best["val_accuracy"]], s=160, marker="*", color="tab:red", zorder=3,
                       label=f"best (trial {best['trial']})")
        ax.set_xlabel(dimension.flag)
        if failed:
            ax.set_title(f"{failed} failed trial{'s' * (failed != 1)} not shown", fontsize=9)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(dimensions):]:
        ax.set_visible(False)
    for row_start in range(0, len(dimensions), columns):
        axes[row_start].set_ylabel("validation accuracy")
    if best is not None:
        axes[0].legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    top = 0.45 + (0.35 if title else 0.0)
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.2 / width, bottom=0.7 / height, top=1 - top / height,
                        wspace=0.35, hspace=0.6)
    if path is not None:
        save_figure(fig, path)
    return fig
