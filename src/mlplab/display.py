"""How mlplab shows itself where it runs: the progress bar's kind, figures that a notebook
shows inline, and the small HTML summaries behind ``TrainResult._repr_html_`` and the
comparison's.

A leaf module: it imports nothing heavier than the standard library until asked to draw or to
make a bar, so the training loop can ask it which bar to show.
"""

from __future__ import annotations

import html
import sys

# and InlineFigure (kept here for old code and pickles; it lives in mlplab.plots.base)
__all__ = [
    "comparison_html",
    "comparison_text",
    "in_jupyter_kernel",
    "progress_bar_class",
    "train_result_html",
    "train_result_text",
]


# =============================================================================================
# progress bars
# =============================================================================================
def in_jupyter_kernel() -> bool:
    """True inside a Jupyter kernel (JupyterLab, Notebook, VS Code, Colab), False in a terminal
    IPython or a plain interpreter. Only a kernel's shell carries a ``kernel``."""
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)  # never import IPython just to ask
    shell = get_ipython() if get_ipython is not None else None
    return getattr(shell, "kernel", None) is not None


def _notebook_bar():
    """tqdm's widget bar, or None when ipywidgets is missing (there tqdm.notebook's bar raises
    and tqdm.auto warns on stderr, then falls back to the text bar)."""
    try:
        from tqdm.notebook import IProgress, tqdm
    except ImportError:
        return None
    return tqdm if IProgress is not None else None


def progress_bar_class(*, kernel: bool | None = None, tty: bool | None = None):
    """The tqdm class for a progress bar (each epoch's, a download's), or None for no bar.

    In a Jupyter kernel: the widget bar when ipywidgets is installed, else none (the per-epoch
    lines are the plain-text progress: a terminal bar's carriage returns would pile up in the
    saved notebook). Elsewhere: tqdm's text bar when stderr is a terminal, else none (a log
    file gets no bar). ``kernel`` and ``tty`` override the detection (``tty=True``: the text bar
    wherever no notebook is, as the download bar has always drawn)."""
    if kernel is None:
        kernel = in_jupyter_kernel()
    if kernel:
        return _notebook_bar()
    if tty is None:
        tty = sys.stderr.isatty()
    if tty:
        from tqdm import tqdm

        return tqdm
    return None


# =============================================================================================
# figures
# =============================================================================================
def __getattr__(name):
    # InlineFigure now lives with the other figure code (mlplab.plots.base); this name stays for
    # code and pickles that found it here. matplotlib is imported only when it is asked for.
    if name == "InlineFigure":
        from mlplab.plots.base import InlineFigure

        return InlineFigure
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# =============================================================================================
# HTML summaries
# =============================================================================================
def _cell(value) -> str:
    return html.escape(str(value), quote=True)


def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _seconds(value) -> str:
    if value is None:
        return "–"
    return f"{value:.2f} s" if value >= 0.1 else f"{1000 * value:.1f} ms"  # a digits epoch takes milliseconds


def _table(rows, header=None) -> str:
    parts = ['<table class="mlplab-summary">']
    if header:
        parts.append("<thead><tr>" + "".join(f"<th>{_cell(h)}</th>" for h in header) + "</tr></thead>")
    parts.append("<tbody>")
    for row in rows:
        if header:
            parts.append("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>")
        else:
            label, value = row
            parts.append(f'<tr><th style="text-align:left">{_cell(label)}</th><td>{_cell(value)}</td></tr>')
    parts.append("</tbody></table>")
    return "".join(parts)


def _architecture(result) -> str:
    """``64-128-10 MLP (elu, batch norm)`` from the backend's model config, else the options."""
    c = result.config
    model_config = getattr(result.backend, "model_config", None)
    m = model_config() if callable(model_config) else {}
    widths = [
        m.get("n_inputs", "?"),
        *m.get("n_hidden", c.hidden_dims),
        m.get("n_classes", len(result.class_names) or "?"),
    ]
    extras = [m.get("activation", c.activation)]
    if m.get("use_batch_norm", c.use_batch_norm):
        extras.append("batch norm")
    if m.get("dropout", c.dropout):
        extras.append(f"dropout {m.get('dropout', c.dropout):g}")
    if m.get("residual", c.residual):
        extras.append("residual")
    return "-".join(str(w) for w in widths) + f" MLP ({', '.join(extras)})"


def train_result_rows(result) -> list[tuple[str, str]]:
    """The (label, value) rows of :func:`train_result_html`, as plain text."""
    s, c = result.summary, result.config
    num_classes = len(result.class_names) or "?"
    rows = [
        ("test accuracy", _percent(result.test_accuracy)),
        ("test loss", f"{result.test_loss:.4f}"),
        ("best epoch", f"{result.best_epoch} of {s.get('epochs_run', len(result.history))}"),
        ("best validation accuracy", _percent(result.best_val_accuracy)),
        ("model", _architecture(result)),
        ("data", f"{s.get('dataset', c.dataset)}, {num_classes} classes"),
        ("training", f"{c.optimizer} lr {c.lr:g}, batch {c.batch_size}, {c.schedule} schedule, seed {c.seed}"),
        ("backend", f"{s.get('backend', c.backend)}, {c.dtype}"),
        ("time", f"{_seconds(s.get('wall_seconds'))} in all, {_seconds(s.get('seconds_per_epoch'))} per epoch"),
    ]
    if s.get("status") not in (None, "completed"):
        rows.append(("stopped", str(s["status"]).replace("_", " ")))
    rows.append(("run folder", str(result.run_dir) if result.run_dir is not None else "none (out=None)"))
    return rows


def train_result_html(result) -> str:
    """A small HTML table of a :class:`~mlplab.training.loop.TrainResult`: the outcome first
    (test accuracy, best epoch), then the model, data, training options, time and run folder."""
    return f"<div><strong>mlplab training run</strong>{_table(train_result_rows(result))}</div>"


def train_result_text(result) -> str:
    """One line for IPython's plain-text display (the dataclass repr runs to pages)."""
    return (
        f"TrainResult: test accuracy {_percent(result.test_accuracy)}, best epoch {result.best_epoch}, "
        f"{_architecture(result)}, run folder {result.run_dir}"
    )


def comparison_html(comparison) -> str:
    """A small HTML summary of :func:`mlplab.compare.compare`'s result: one row per
    backend, the difference, whether both started from the same weights, and the output folder."""
    rows = {row["backend"]: row for row in comparison["rows"]}
    table = []
    for backend, row in rows.items():
        table.append(
            (
                backend,
                row.get("device", ""),
                _percent(row["test_accuracy"]),
                _percent(row["best_val_accuracy"]),
                row["best_epoch"],
                f"{row['seconds_per_epoch']:.3f}",
            )
        )
    if "numpy" in rows and "torch" in rows:
        first, second = rows["numpy"]["test_accuracy"], rows["torch"]["test_accuracy"]
        table.append(("torch − numpy", "", f"{100 * (second - first):+.2f} pt", "", "", ""))
    header = ("backend", "device", "test accuracy", "best validation accuracy", "best epoch", "seconds per epoch")
    notes = []
    diff = comparison.get("initial_max_abs_diff")
    if diff is not None:
        notes.append(
            f"initial weights: max |Δ| = {diff:g}" + (" (identical start)" if diff == 0 else " (the starts differ)")
        )
    first_loss = comparison.get("first_loss") or {}
    if first_loss.get("numpy") is not None and first_loss.get("torch") is not None:
        notes.append(f"first step's loss: numpy {first_loss['numpy']:.8g}, torch {first_loss['torch']:.8g}")
    if comparison.get("out") is not None:
        notes.append(f"written to {comparison['out']}")
    items = "".join(f"<li>{_cell(note)}</li>" for note in notes)
    return f"<div><strong>NumPy vs PyTorch</strong>{_table(table, header)}<ul>{items}</ul></div>"


def comparison_text(comparison) -> str:
    """One line for IPython's plain-text display."""
    accuracies = ", ".join(f"{row['backend']} {_percent(row['test_accuracy'])}" for row in comparison["rows"])
    return f"Comparison: test accuracy {accuracies}; written to {comparison.get('out')}"
