"""``report.md`` and ``report.html``: a run folder explained on one page.

:func:`write_report` reads only the run folder (config.json, steps.csv, history.csv,
summary.json and, when present, gradients.csv) — the test confusion matrix is stored in
summary.json, so no data set is loaded and no model is run. It writes the figures as PNGs beside
them, ``report.md`` linking those files and ``report.html`` with the same content and the
figures embedded as base64 data URIs, so the HTML file can be mailed or archived on its own.

Both documents are rendered from one list of blocks (headings, paragraphs, tables, figures,
bullet lists, folded parts), so they always say the same thing. They open with what a reader
wants first, the outcome and the figures; the configuration, data and environment come last,
folded (``<details>``) in the HTML page.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import json
import math
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from mlplab.errors import CheckpointError
from mlplab.metrics import DEFAULT_BETAS, classification_metrics, most_confused, precision_recall_leaning
from mlplab.plots.jobs import FigureJobs
from mlplab.training.run import FIGURES  # re-exported: report.FIGURES

#: precision - recall beyond which a class is said to lean one way
LEANING_MARGIN = 0.02
#: how many of the largest off-diagonal confusion cells the report lists
CONFUSED_PAIRS = 5

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #eee; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
code { background: #f5f5f5; padding: 0 3px; }
details { margin: .6em 0; }
summary { cursor: pointer; font-weight: 600; }
"""


# -- formatting -------------------------------------------------------------------------------
def _percent(value) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.2f}%"


def _number(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def _seconds(value) -> str:
    if value is None:
        return "—"
    return f"{value:.2f} s" if value < 10 else f"{value:,.1f} s"


def _value(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value) if value else "none"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


# -- the document: one list of blocks, two renderings -----------------------------------------
class Document:
    """Blocks: ``('h', level, text)``, ``('p', text)``, ``('table', header, rows, numeric)``,
    ``('figure', file name, caption)``, ``('list', items)``, and ``('fold', summary)`` ...
    ``('end fold',)`` around the blocks of a folded part (:meth:`folded`)."""

    def __init__(self) -> None:
        self.blocks: list[tuple] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header, rows, numeric=None) -> None:
        """``numeric``: indices of right-aligned columns (default: all but the first)."""
        numeric = set(range(1, len(header))) if numeric is None else set(numeric)
        self.blocks.append(("table", [str(h) for h in header], [[str(c) for c in row] for row in rows], numeric))

    def figure(self, name: str, caption: str) -> None:
        self.blocks.append(("figure", name, caption))

    def bullets(self, items) -> None:
        self.blocks.append(("list", [str(item) for item in items]))

    @contextmanager
    def folded(self, summary: str):
        """The blocks added inside ``with doc.folded(summary):`` are a part a reader opens on
        demand: a closed ``<details>`` in HTML, a level-3 heading in Markdown."""
        self.blocks.append(("fold", summary))
        yield
        self.blocks.append(("end fold",))

    def markdown(self) -> str:
        out: list[str] = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out.append(f"{'#' * block[1]} {block[2]}")
            elif kind == "p":
                out.append(block[1])
            elif kind == "table":
                _, header, rows, numeric = block

                def cells(row):
                    return "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"

                rule = ["---:" if i in numeric else "---" for i in range(len(header))]
                out.append("\n".join([cells(header), "| " + " | ".join(rule) + " |", *(cells(r) for r in rows)]))
            elif kind == "figure":
                _, name, caption = block
                out.append(f"![{caption}]({name})\n\n*{caption}*")
            elif kind == "list":
                out.append("\n".join(f"- {item}" for item in block[1]))
            elif kind == "fold":
                out.append(f"### {block[1]}")
        return "\n\n".join(out) + "\n"

    def html(self, folder: Path, title: str) -> str:
        e = html.escape
        out = [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f"<title>{e(title)}</title>",
            f"<style>{CSS}</style>",
            "</head>",
            "<body>",
        ]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out.append(f"<h{block[1]}>{e(block[2])}</h{block[1]}>")
            elif kind == "p":
                out.append(f"<p>{e(block[1])}</p>")
            elif kind == "fold":
                out.append(f"<details><summary>{e(block[1])}</summary>")
            elif kind == "end fold":
                out.append("</details>")
            elif kind == "table":
                _, header, rows, numeric = block
                out.append("<table>")
                out.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
                for row in rows:
                    out.append(
                        "<tr>"
                        + "".join(
                            f'<td class="num">{e(c)}</td>' if i in numeric else f"<td>{e(c)}</td>"
                            for i, c in enumerate(row)
                        )
                        + "</tr>"
                    )
                out.append("</table>")
            elif kind == "figure":
                _, name, caption = block
                png = (folder / name).read_bytes()
                data = base64.b64encode(png).decode("ascii")
                out.append(
                    f'<figure><img src="data:image/png;base64,{data}"{_display_width(png)} alt="{e(caption, quote=True)}">'
                    f"<figcaption>{e(caption)}</figcaption></figure>"
                )
            elif kind == "list":
                out.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in block[1]) + "</ul>")
        out += ["</body>", "</html>"]
        return "\n".join(out) + "\n"


def _display_width(png: bytes) -> str:
    """A ``width`` attribute showing every figure at one scale (100 CSS pixels per figure inch),
    so a narrow figure's text is not enlarged to the page width; ``max-width`` still fits
    wider figures to the page. Empty for bytes that are not a PNG."""
    from mlplab.plots import DPI

    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        return ""
    return f' width="{round(int.from_bytes(png[16:20], "big") * 100 / DPI)}"'


# -- reading the run folder -------------------------------------------------------------------
def _read_summary(run_dir: Path) -> dict | None:
    path = run_dir / "summary.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        raise CheckpointError(f"{str(path)!r} is not valid JSON") from None


def read_gradients(path) -> dict | None:
    """The columns of ``gradients.csv`` (``step``, ``layer``, ``weight_grad_norm``,
    ``input_grad_norm``, ``update_ratio``) as arrays (layer names as strings), or None when the
    file is absent, empty or unreadable."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        if not rows:
            return None

        def floats(key):
            return np.array([float(row[key]) if row.get(key) not in ("", None) else np.nan for row in rows])

        return {
            "step": floats("step"),
            "layer": [row["layer"] for row in rows],
            "weight_grad_norm": floats("weight_grad_norm"),
            "input_grad_norm": floats("input_grad_norm") if "input_grad_norm" in rows[0] else None,
            "update_ratio": floats("update_ratio"),
        }
    except (KeyError, ValueError, OSError, csv.Error):
        return None


# -- the sections -----------------------------------------------------------------------------
def _architecture(options: dict) -> str:
    widths = options.get("hidden_dims") or []
    hidden = "-".join(str(w) for w in widths) if widths else "no hidden layer"
    return f"hidden {hidden}, {options.get('activation', '?')}"


def _outcome(doc: Document, summary: dict | None) -> None:
    doc.heading("Outcome")
    if summary is None:
        doc.paragraph(
            "There is no summary.json: the run did not finish (it was interrupted or diverged), "
            "so there are no test results yet. The curves below show how far it got."
        )
        return
    epochs_run = summary.get("epochs_run")
    doc.paragraph(
        f"Test accuracy {_percent(summary.get('test_accuracy'))} with the weights of epoch "
        f"{summary.get('best_epoch')} of {epochs_run}, the best by validation accuracy "
        f"({_percent(summary.get('best_val_accuracy'))})."
    )
    rows = [
        ("test accuracy (best epoch)", _percent(summary.get("test_accuracy"))),
        ("best epoch", f"{summary.get('best_epoch')} of {epochs_run}"),
        ("best validation accuracy", _percent(summary.get("best_val_accuracy"))),
        ("test loss", _number(summary.get("test_loss"))),
        ("status", summary.get("status", "—")),
        (
            "training time",
            f"{_seconds(summary.get('train_seconds'))} ({_seconds(summary.get('seconds_per_epoch'))} per epoch)",
        ),
        ("wall time", _seconds(summary.get("wall_seconds"))),
    ]
    speed = summary.get("train_samples_per_second")
    if speed:
        rows.append(("training throughput", f"{speed:,.0f} samples/s"))
    doc.table(("quantity", "value"), rows)


def _configuration(doc: Document, config: dict) -> None:
    doc.heading("Configuration")
    options = config.get("options", {})
    with doc.folded(f"Training options ({len(options)})"):
        doc.table(("option", "value"), [(name, _value(value)) for name, value in options.items()], numeric=())
    data = config.get("data") or {}
    if data:
        with doc.folded("Data"):
            doc.table(("property", "value"), [(k, _value(v)) for k, v in data.items()], numeric=())
    env = {
        key: config.get(key)
        for key in ("mlplab_version", "git_commit", "python", "numpy", "platform", "started")
        if config.get(key) is not None
    }
    blas = config.get("blas") or {}
    if blas.get("library"):
        threads = f", {blas['threads']} threads" if blas.get("threads") else ""
        env["blas"] = f"{blas['library']} {blas.get('version') or ''}{threads}".strip()
    if env:
        with doc.folded("Environment"):
            doc.table(("", "value"), list(env.items()), numeric=())


def _training(
    doc: Document, figures: FigureJobs, run_dir: Path, steps: list[dict], history: list[dict], summary: dict | None
) -> None:
    from mlplab import plots

    doc.heading("Training")
    if history:
        best = summary.get("best_epoch") if summary else None
        figures.add(plots.plot_curves, history, run_dir / FIGURES["curves"], best_epoch=best)
        doc.figure(
            FIGURES["curves"],
            "Train and validation loss (left) and accuracy (right) per epoch; dotted: the best epoch, whose weights are kept.",
        )
    if steps:
        figures.add(
            plots.plot_loss_steps,
            [r["step"] for r in steps],
            [r["loss"] for r in steps],
            [r["epoch"] for r in steps],
            run_dir / FIGURES["loss_steps"],
        )
        doc.figure(
            FIGURES["loss_steps"],
            "Training loss at every step (faint), its moving average and the epoch boundaries "
            "(dashed); the axis shows the settled run, and the first steps above it are marked along its top edge.",
        )
    else:
        doc.paragraph("steps.csv is empty: no training step was logged.")
    if history:
        with doc.folded(f"Per-epoch numbers ({len(history)} epoch{'s' if len(history) != 1 else ''})"):
            doc.table(
                (
                    "epoch",
                    "train loss",
                    "train accuracy",
                    "validation loss",
                    "validation accuracy",
                    "learning rate",
                    "seconds",
                ),
                [
                    (
                        int(r["epoch"]),
                        _number(r.get("train_loss")),
                        _percent(r.get("train_accuracy")),
                        _number(r.get("val_loss")),
                        _percent(r.get("val_accuracy")),
                        _value(r.get("lr")),
                        _number(r.get("seconds"), 2),
                    )
                    for r in history
                ],
            )


def _test_results(doc: Document, figures: FigureJobs, run_dir: Path, summary: dict | None) -> None:
    from mlplab import plots

    if summary is None or not summary.get("test_confusion_matrix"):
        return
    cm = np.asarray(summary["test_confusion_matrix"], dtype=np.int64)
    names = [str(n) for n in summary.get("class_names") or range(cm.shape[0])]
    total = int(cm.sum())

    doc.heading("Test confusion matrix")
    figures.add(plots.plot_confusion, cm, names, run_dir / FIGURES["confusion"])
    doc.figure(
        FIGURES["confusion"],
        f"Test confusion matrix ({total:,} samples): counts (left) and normalised by true class (right). Rows: true class; columns: predicted class.",
    )
    pairs = most_confused(cm, CONFUSED_PAIRS)
    if pairs:
        doc.paragraph("Most confused class pairs (largest off-diagonal cells):")
        doc.table(
            ("true class", "predicted as", "count", "share of the true class"),
            [(names[p["true"]], names[p["predicted"]], p["count"], _percent(p["share"])) for p in pairs],
            numeric=(2, 3),
        )
    else:
        doc.paragraph("No test sample was misclassified.")

    doc.heading("Per-class metrics (test split)")
    by_beta = {beta: classification_metrics(cm, beta=beta) for beta in DEFAULT_BETAS}
    balanced = classification_metrics(cm, beta=1.0)
    figures.add(
        plots.plot_per_class,
        balanced["precision"],
        balanced["recall"],
        balanced["f_beta"],
        names,
        run_dir / FIGURES["per_class"],
    )
    doc.figure(FIGURES["per_class"], "Precision, recall and F1 of each class on the test split.")
    doc.paragraph(
        "F-beta per class: beta < 1 weighs precision more, beta > 1 recall (F0.1 is close to the "
        "precision, F10 to the recall)."
    )
    doc.table(
        ("beta", *names),
        [(f"F{beta:g}", *(f"{v:.3f}" for v in metrics["f_beta"])) for beta, metrics in by_beta.items()],
    )
    doc.table(
        ("", *names),
        [
            ("precision", *(f"{v:.3f}" for v in balanced["precision"])),
            ("recall", *(f"{v:.3f}" for v in balanced["recall"])),
            ("support", *(str(int(v)) for v in balanced["support"])),
        ],
    )
    doc.paragraph(
        f"Macro averages: precision {balanced['macro']['precision']:.3f}, recall {balanced['macro']['recall']:.3f}, "
        f"F1 {balanced['macro']['f_beta']:.3f}; support-weighted F1 {balanced['weighted']['f_beta']:.3f}."
    )

    doc.heading("Precision or recall")
    leaning = precision_recall_leaning(cm, margin=LEANING_MARGIN)
    p, r = balanced["precision"], balanced["recall"]

    def described(classes):
        return ", ".join(f"{names[c]} (precision {p[c]:.3f}, recall {r[c]:.3f})" for c in classes) or "none"

    doc.paragraph(
        f"A class leans to precision when its precision exceeds its recall by more than {LEANING_MARGIN:g} "
        "(equivalently F0.1 > F10): the model names it cautiously, so what it calls that class usually is, "
        "but it misses some. Leaning to recall is the opposite: it finds most of the class and pays with "
        "false alarms."
    )
    doc.bullets(
        [
            f"Lean to precision: {described(leaning['precision'])}",
            f"Lean to recall: {described(leaning['recall'])}",
            f"Balanced: {', '.join(names[c] for c in leaning['balanced']) or 'none'}",
        ]
    )


def _gradients(doc: Document, figures: FigureJobs, run_dir: Path, folder: Path | None = None) -> None:
    from mlplab import plots

    data = read_gradients(run_dir / "gradients.csv")
    if data is None:
        return
    doc.heading("Gradients")
    figures.add(
        plots.plot_gradients,
        data["step"],
        data["layer"],
        data["weight_grad_norm"],
        data["update_ratio"],
        (folder or run_dir) / FIGURES["gradients"],
        input_grad_norms=data["input_grad_norm"],
    )
    doc.figure(
        FIGURES["gradients"],
        "Weight-gradient norm, gradient at the layer's input (when recorded) and update/weight "
        "ratio of each layer during training (log scales).",
    )


def build_report(run_dir, *, parallel: bool = True, out=None) -> Document:
    """The report of ``run_dir`` as a :class:`Document`, writing its figures into the folder
    (or into ``out``; in worker processes with ``parallel``, see :class:`FigureJobs`)."""
    from mlplab.plots import read_logs
    from mlplab.training.run import read_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"no run folder at {str(run_dir)!r}")
    config = read_config(run_dir)
    summary = _read_summary(run_dir)
    steps, history = read_logs(run_dir)
    options = config.get("options", {})

    doc = Document()
    doc.heading(f"Run report: {run_dir.resolve().name}", 1)
    dataset = (summary or {}).get("dataset") or options.get("dataset", "?")
    backend = (summary or {}).get("backend") or options.get("backend", "?")
    doc.paragraph(
        f"An MLP ({_architecture(options)}) trained on {dataset} with the {backend} backend, "
        f"{options.get('optimizer', '?')} at learning rate {_value(options.get('lr'))}, batch size "
        f"{options.get('batch_size', '?')}, seed {options.get('seed', '?')}. Report written "
        f"{_dt.datetime.now().astimezone().isoformat(timespec='seconds')}."
    )
    # What a reader looks for first leads; the configuration is reference, folded at the end.
    _outcome(doc, summary)
    figures = FigureJobs(parallel)
    folder = Path(out) if out is not None else run_dir
    _training(doc, figures, folder, steps, history, summary)
    _test_results(doc, figures, folder, summary)
    _gradients(doc, figures, run_dir, folder)
    _configuration(doc, config)
    figures.draw()
    return doc


def write_report(run_dir, *, parallel: bool = True, out=None) -> tuple[Path, Path]:
    """Write the figures, ``report.md`` and a self-contained ``report.html`` into ``run_dir``.

    Returns ``(md_path, html_path)``. Raises CheckpointError for a missing folder or an
    unreadable config.json/summary.json; a run without summary.json (unfinished) gets a report
    of its curves only, and gradients.csv is plotted only when present. ``parallel=False`` draws
    the figures in this process (see :class:`FigureJobs`). ``out``: another folder to write
    them into, which leaves the run folder untouched (and unlocked: see
    :mod:`mlplab.training.lock`)."""
    import contextlib

    from mlplab.training.checkpoint import write_text_atomic
    from mlplab.training.lock import lock_run_dir

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"no run folder at {str(run_dir)!r}")
    folder = Path(out) if out is not None else run_dir
    inside = folder.resolve() == run_dir.resolve() or run_dir.resolve() in folder.resolve().parents
    with lock_run_dir(run_dir) if inside else contextlib.nullcontext():
        if not inside:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CheckpointError(f"cannot create --out {str(folder)!r}: {exc.strerror or exc}") from None
        doc = build_report(run_dir, parallel=parallel, out=folder)
        md_path, html_path = folder / "report.md", folder / "report.html"
        write_text_atomic(md_path, doc.markdown())
        write_text_atomic(html_path, doc.html(folder, f"mlplab report: {run_dir.resolve().name}"))
    return md_path, html_path
