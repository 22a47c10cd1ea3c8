"""Writes docs/quickstart.ipynb (without outputs) from the cells below.

Run ``python docs/make_quickstart.py`` after editing a cell; tests/test_notebook.py checks that
the committed notebook is what this script writes, then executes it on a real kernel.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOK = Path(__file__).resolve().parent / "quickstart.ipynb"

#: one configuration for the NumPy run and the comparison, so the two can be read side by side
OPTIONS = 'dataset="digits", hidden_dims=[64], lr=0.1, batch_size=64, epochs=15, seed=0'

CELLS = [
    ("markdown", None, """\
# mlplab quick start

Train a NumPy multilayer perceptron on the digits data set (1,797 images of 8×8 pixels, 10
classes) in a few seconds, look at its learning curves and confusion matrix, then train its
PyTorch twin from the same initial weights on the same batches.

Install mlplab with the notebook extra (`pip install -e ".[notebook]"`, and `".[notebook,torch]"`
for the comparison), then run the cells from the top."""),
    ("code", "data", """\
import mlplab
from mlplab import plots
from mlplab.data import get_dataset

data = get_dataset("digits")
print(f"{data.name}: {len(data.train)} training, {len(data.validation)} validation and {len(data.test)} test images "
      f"of {data.num_features} pixels; classes {', '.join(data.class_names)}")"""),
    ("markdown", None, """\
## Train

`mlplab.train` takes the options of `mlplab train` (with underscores). It shows a progress bar per
epoch (a widget when ipywidgets is installed) and one line per epoch, keeps the model with the best
validation accuracy and evaluates it on the test split. Its result shows as a summary table."""),
    ("code", "train", f"""\
result = mlplab.train(data=data, {OPTIONS})
result"""),
    ("markdown", None, """\
## Curves and confusion matrix

The plotting functions of `mlplab.plots` return matplotlib figures (saved as PNG when given a path,
as the run folder's report does); a notebook shows them inline."""),
    ("code", "curves", """\
plots.plot_curves(result.history, best_epoch=result.best_epoch, title="digits: loss and accuracy per epoch")"""),
    ("code", "confusion", """\
plots.plot_confusion(result.summary["test_confusion_matrix"], result.class_names)"""),
    ("markdown", None, """\
## The PyTorch twin

`compare` trains the NumPy and the PyTorch MLP of one configuration from the same initial weights on
the same batches, into two run folders. Without PyTorch this cell says what to install and the next
one draws nothing."""),
    ("code", "compare", f"""\
import tempfile

try:
    from mlplab.compare import compare
except ImportError as missing:  # mlplab.torch's message names the extra to install
    print(missing)
    comparison = None
else:
    comparison = compare(data=data, out=tempfile.mkdtemp(prefix="mlplab-compare-"), quiet=True, report=False,
                         {OPTIONS})
comparison"""),
    ("code", "compare-figure", """\
from IPython.display import display

if comparison is not None:
    runs = comparison["runs"]
    display(plots.plot_runs({"NumPy": runs["numpy"], "PyTorch": runs["torch"]}, title="NumPy vs PyTorch on digits"))"""),
    ("markdown", None, """\
## Next

- `mlplab train --dataset digits --out runs/digits` writes a run folder with `report.html`.
- `mlplab train --help` lists every option; `docs/backprop.md` derives every backward pass."""),
]


def quickstart_notebook():
    """The quick-start notebook as an nbformat v4 node, without outputs."""
    cells = []
    for kind, tag, source in CELLS:
        if kind == "markdown":
            cells.append(new_markdown_cell(source))
        else:
            cells.append(new_code_cell(source, metadata={"tags": [tag]}))
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
        "language_info": {"name": "python"},
    })
    # Fixed cell ids: regenerating an unchanged notebook gives the same file.
    for index, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{index:02d}"
    nbformat.validate(nb)
    return nb


def main() -> int:
    text = nbformat.writes(quickstart_notebook()) + "\n"
    NOTEBOOK.write_text(text, encoding="utf-8")
    print(f"wrote {NOTEBOOK}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
