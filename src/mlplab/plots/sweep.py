"""sweep.png: validation accuracy against each swept option, the best trial marked.

The figure takes plain data, so this module knows nothing of :mod:`mlplab.sweep`: the rows of
results.csv (dicts keyed by option flag) and one panel description per swept option, a dict
with ``name``, ``flag``, ``kind`` (``grid``, ``choice``, ``float``, ``log`` or ``int``),
``values`` and ``labels`` (a grid or choice: its values and how each is written) and ``low``,
``high`` (a range). :func:`mlplab.sweep.results.sweep_panels` prepares them.
"""

from __future__ import annotations

import math

#: numeric options drawn on a logarithmic axis in sweep.png (when every value is positive)
LOG_AXIS_OPTIONS = ("lr", "min_lr", "weight_decay")

#: the kinds of panel whose values are listed (the others are ranges low..high)
CATEGORICAL_KINDS = ("grid", "choice")


def _categorical(panel: dict) -> bool:
    return panel["kind"] in CATEGORICAL_KINDS


def _numeric(panel: dict) -> bool:
    if not _categorical(panel):
        return True
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in panel["values"])


def _position(value, panel: dict) -> int:
    """The tick of a listed value on a non-numeric axis (the first value written the same way)."""
    labels = list(panel["labels"])
    for candidate, label in zip(panel["values"], labels):
        if type(candidate) is type(value) and candidate == value:
            return labels.index(label)
    for candidate, label in zip(panel["values"], labels):  # a value read back as another type (1 for 1.0)
        if candidate == value:
            return labels.index(label)
    raise ValueError(f"{panel['flag']}: {value!r} is not one of the swept values")


def plot_sweep(rows: list[dict], panels: list[dict], path=None, *, best: dict | None = None, title: str | None = None):
    """Validation accuracy against each swept option, one panel per option; the best trial is
    a red star. Numeric options get a numeric axis (logarithmic for log ranges and for lr,
    min-lr and weight-decay when all values are positive); the others one tick per value.
    Failed trials have no validation accuracy and are left out (the panel title counts them)."""
    import numpy as np
    from matplotlib.figure import Figure

    from mlplab.plots.base import save_figure

    complete = [r for r in rows if r["val_accuracy"] is not None]
    failed = len(rows) - len(complete)
    columns = min(3, len(panels))
    lines = math.ceil(len(panels) / columns)
    width, height = 4.0 * columns + 0.6, 3.4 * lines + (0.4 if title else 0.0)
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(lines, columns, squeeze=False).ravel()
    y = np.array([r["val_accuracy"] for r in complete], dtype=np.float64)
    for ax, panel in zip(axes, panels):
        values = [r[panel["flag"]] for r in complete]
        numeric = _numeric(panel)
        if numeric:
            x = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
            if _categorical(panel):
                candidates = [float(v) for v in panel["values"]]
            else:
                candidates = [float(panel["low"]), float(panel["high"])]
            if panel["kind"] == "log" or (panel["name"] in LOG_AXIS_OPTIONS and min(candidates) > 0):
                ax.set_xscale("log")
            if _categorical(panel):  # a tick at each value of the grid or choice
                ax.set_xticks(candidates, list(panel["labels"]), minor=False)
                ax.set_xticks([], minor=True)
        else:
            labels = list(panel["labels"])
            x = np.array([_position(v, panel) for v in values], dtype=np.float64)
            ax.set_xticks(np.arange(len(labels)), labels, rotation=30 if max(map(len, labels)) > 6 else 0)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.scatter(x, y, s=28, alpha=0.75, color="tab:blue", label="trial")
        if best is not None:
            value = best[panel["flag"]]
            bx = float(value) if numeric else _position(value, panel)
            ax.scatter(
                [bx],
                [best["val_accuracy"]],
                s=160,
                marker="*",
                color="tab:red",
                zorder=3,
                label=f"best (trial {best['trial']})",
            )
        ax.set_xlabel(panel["flag"])
        if failed:
            ax.set_title(f"{failed} failed trial{'s' * (failed != 1)} not shown", fontsize=9)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for row_start in range(0, len(panels), columns):
        axes[row_start].set_ylabel("validation accuracy")
    if best is not None:
        axes[0].legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    top = 0.45 + (0.35 if title else 0.0)
    fig.subplots_adjust(
        left=0.75 / width, right=1 - 0.2 / width, bottom=0.7 / height, top=1 - top / height, wspace=0.35, hspace=0.6
    )
    if path is not None:
        save_figure(fig, path)
    return fig
