"""docs/quickstart.ipynb: committed as docs/make_quickstart.py writes it (no outputs), and run
from top to bottom on a real IPython kernel (nbclient) with a clean result: no error, nothing on
stderr, the summary as HTML, the figures as PNG images, progress as widgets or plain text."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import struct
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO_ROOT / "docs" / "quickstart.ipynb"
#: stderr lines that say nothing is wrong (a fresh machine's first matplotlib import)
BENIGN_STDERR = re.compile(r"^Matplotlib is building the font cache; this may take a moment\.$")


def load_maker():
    spec = importlib.util.spec_from_file_location("make_quickstart", REPO_ROOT / "docs" / "make_quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_notebook_is_what_the_script_writes_without_outputs():
    maker = load_maker()
    committed = NOTEBOOK.read_text(encoding="utf-8")
    # Compared as JSON, so that a change of nbformat's indentation alone is no failure.
    assert json.loads(committed) == json.loads(nbformat.writes(maker.quickstart_notebook())), \
        "docs/quickstart.ipynb differs from what docs/make_quickstart.py writes: run it"
    nb = nbformat.reads(committed, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


def kernel_manager(tmp_path):
    """A kernel of this very interpreter: a kernelspec installed into a temporary prefix, so
    neither a user's kernelspec nor another Python on PATH can be picked."""
    from ipykernel.kernelspec import install
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    install(prefix=str(tmp_path / "kernel"), kernel_name="python3")
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernel" / "share" / "jupyter" / "kernels")])
    spec = specs.get_kernel_spec("python3")
    assert spec.argv[0] == sys.executable
    return KernelManager(kernel_name="python3", kernel_spec_manager=specs)


def outputs(nb, tag: str) -> list:
    cells = [cell for cell in nb.cells if tag in cell.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"no single cell tagged {tag!r}"
    return cells[0].outputs


def streams(outs, name: str) -> str:
    return "".join(out.text for out in outs if out.output_type == "stream" and out.name == name)


def images(outs) -> list[tuple[int, int]]:
    """(width, height) of each PNG output, after checking the signature."""
    sizes = []
    for out in outs:
        data = out.get("data", {})
        if "image/png" in data:
            png = base64.b64decode(data["image/png"])
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
            sizes.append(struct.unpack(">II", png[16:24]))
    return sizes


def html_cells(outs) -> list[list[str]]:
    """The table rows (cell texts) of the text/html outputs."""

    class Rows(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.cell = [], None

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                self.rows.append([])
            elif tag in ("td", "th"):
                self.cell = ""

        def handle_endtag(self, tag):
            if tag in ("td", "th"):
                self.rows[-1].append(self.cell)
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

    parser = Rows()
    for out in outs:
        if "text/html" in out.get("data", {}):
            parser.feed(out.data["text/html"])
    return parser.rows


@pytest.mark.slow
def test_quickstart_notebook_runs_clean_on_a_real_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # no profile or startup file of the user
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the comparison's temporary folder
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, km=kernel_manager(tmp_path), timeout=300,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    every = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert [out for out in every if out.output_type == "error"] == []
    stderr = [line for line in streams(every, "stderr").splitlines() if line.strip() and not BENIGN_STDERR.match(line)]
    assert stderr == [], "\n".join(stderr)

    # Training: one plain-text line per epoch, progress as widgets (with ipywidgets) or nothing,
    # never a text bar; then the summary table, agreeing with the printed test accuracy.
    train = outputs(nb, "train")
    printed = streams(train, "stdout")
    epochs = re.findall(r"^epoch +(\d+)/(\d+) ", printed, re.MULTILINE)
    assert epochs and [int(e) for e, _ in epochs] == list(range(1, int(epochs[0][1]) + 1))
    assert "%|" not in printed
    widgets = [out for out in train if "application/vnd.jupyter.widget-view+json" in out.get("data", {})]
    assert len(widgets) == (len(epochs) if importlib.util.find_spec("ipywidgets") else 0)
    summary = {row[0]: row[1] for row in html_cells(train) if len(row) == 2}
    accuracy = re.search(r"test accuracy (\d+\.\d\d)%", printed).group(1)
    assert summary["test accuracy"] == f"{accuracy}%"
    assert summary["data"] == "digits, 10 classes"

    # Figures inline, each the PNG of its figure (aspect of plots.CURVES_SIZE / CONFUSION_SIZE).
    from mlplab import plots

    for tag, size in (("curves", plots.CURVES_SIZE), ("confusion", plots.CONFUSION_SIZE)):
        (width, height), = images(outputs(nb, tag))
        assert width / height == pytest.approx(size[0] / size[1], rel=0.01)

    compared = outputs(nb, "compare")
    figure = outputs(nb, "compare-figure")
    if importlib.util.find_spec("torch") is not None:
        rows = html_cells(compared)
        assert [row[0] for row in rows[1:3]] == ["numpy", "torch"]
        assert rows[1][2] == summary["test accuracy"]  # the same configuration, the same run
        assert "identical start" in str(compared[0].data["text/html"])
        (width, height), = images(figure)
        assert width / height == pytest.approx(plots.RUNS_SIZE[0] / plots.RUNS_SIZE[1], rel=0.01)
    else:
        assert "pip install 'mlplab[torch]'" in streams(compared, "stdout")
        assert figure == []
