"""mlplab.display: the progress bar chosen for where training runs, the HTML and text summaries a
notebook shows for TrainResult and the comparison, and figures that render themselves as PNG.

The HTML is read back with the standard library's parser, so escaping is checked by what a
browser would show (the parsed text equals the raw value), not by looking for entities."""

from __future__ import annotations

import pickle
import struct
import subprocess
import sys
import types
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

import mlplab
from mlplab import display
from mlplab.data.core import Dataset, DatasetSplits

HOSTILE = "<script>alert('x')</script> & \"co\""


def blobs(name: str = "blobs", n: int = 120, seed: int = 0) -> DatasetSplits:
    """Three well-separated Gaussian blobs in 4 dimensions: trains to a high accuracy in a few epochs."""
    rng = np.random.default_rng(seed)
    centres = 4.0 * np.eye(3, 4, dtype=np.float32)

    def split(count):
        y = np.arange(count, dtype=np.int64) % 3
        x = (centres[y] + rng.normal(0, 0.5, (count, 4))).astype(np.float32)
        return Dataset(np.ascontiguousarray(x), y)

    return DatasetSplits(train=split(n), validation=split(n // 2), test=split(n // 2), class_names=["a", "b", "c"], name=name)


class Tables(HTMLParser):
    """Collects every table row as a list of cell texts (entities decoded), plus list items,
    and checks that every opened tag is closed in order."""

    VOID = frozenset({"br", "hr", "img", "meta", "input"})

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.rows: list[list[str]] = []
        self.items: list[str] = []
        self.tags: list[str] = []
        self.stack: list[str] = []
        self._cell: list[str] | None = None
        self._item: list[str] | None = None
        self.feed(text)
        self.close()
        assert not self.stack, f"unclosed tags {self.stack}"

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "li":
            self._item = []

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()
        if tag in ("td", "th"):
            self.rows[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "li":
            self.items.append("".join(self._item))
            self._item = None

    def handle_data(self, data):
        for part in (self._cell, self._item):
            if part is not None:
                part.append(data)

    def pairs(self) -> dict[str, str]:
        return {row[0]: row[1] for row in self.rows if len(row) == 2}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("display") / "run"
    return mlplab.train(data=blobs(), hidden_dims=[8], epochs=3, batch_size=16, lr=0.1, seed=1, quiet=True,
                        report=False, out=str(out))


# =============================================================================================
# TrainResult
# =============================================================================================
def test_train_result_html_states_the_outcome_of_the_run(result):
    parsed = Tables(result._repr_html_())
    rows = parsed.pairs()
    assert list(rows)[:2] == ["test accuracy", "test loss"]  # the outcome comes first
    assert rows["test accuracy"] == f"{100 * result.test_accuracy:.2f}%"
    assert rows["test loss"] == f"{result.test_loss:.4f}"
    assert rows["best epoch"] == f"{result.best_epoch} of 3"
    assert rows["best validation accuracy"] == f"{100 * result.best_val_accuracy:.2f}%"
    assert rows["model"] == "4-8-3 MLP (elu)"
    assert rows["data"] == "blobs, 3 classes"
    assert rows["training"] == "sgd lr 0.1, batch 16, constant schedule, seed 1"
    assert rows["backend"] == "numpy, float32"
    assert rows["run folder"] == str(result.run_dir)
    assert "stopped" not in rows  # a completed run says nothing about stopping
    assert "script" not in parsed.tags


def test_train_result_html_escapes_names_and_paths(result, monkeypatch):
    monkeypatch.setattr(result, "run_dir", Path("runs") / HOSTILE)
    monkeypatch.setitem(result.summary, "dataset", HOSTILE)
    monkeypatch.setitem(result.summary, "status", "early_stopped")
    text = result._repr_html_()
    parsed = Tables(text)
    assert "script" not in parsed.tags, text
    rows = parsed.pairs()
    assert rows["run folder"] == str(Path("runs") / HOSTILE)  # shown exactly as written
    assert rows["data"] == f"{HOSTILE}, 3 classes"
    assert rows["stopped"] == "early stopped"


def test_train_result_html_without_a_run_folder_or_validation():
    data = blobs()
    data.validation = Dataset(np.empty((0, 4), np.float32), np.empty(0, np.int64))
    run = mlplab.train(data=data, hidden_dims=[5, 4], activation="tanh", use_batch_norm=True, epochs=1, batch_size=16,
                       quiet=True)
    rows = Tables(run._repr_html_()).pairs()
    assert rows["best validation accuracy"] == "–"
    assert rows["run folder"] == "none (out=None)"
    assert rows["model"] == "4-5-4-3 MLP (tanh, batch norm)"


def test_train_result_plain_text_is_one_short_line(result):
    pretty = pytest.importorskip("IPython.lib.pretty")
    text = pretty.pretty(result)
    assert "\n" not in text and len(text) < 300
    assert f"test accuracy {100 * result.test_accuracy:.2f}%" in text
    assert repr(result).startswith("TrainResult(model=")  # repr() itself is still the dataclass's


# =============================================================================================
# the comparison
# =============================================================================================
def comparison_dict(out=Path("cmp")) -> dict:
    return {
        "out": out,
        "rows": [
            {"backend": "numpy", "device": "cpu", "test_accuracy": 0.9, "best_val_accuracy": 0.95, "best_epoch": 4,
             "seconds_per_epoch": 0.0123},
            {"backend": "torch", "device": HOSTILE, "test_accuracy": 0.925, "best_val_accuracy": 0.95, "best_epoch": 5,
             "seconds_per_epoch": 0.05},
        ],
        "initial_max_abs_diff": 0.0,
        "first_loss": {"numpy": 2.302585, "torch": 2.3025851},
    }


def test_comparison_html_has_a_row_per_backend_and_the_difference():
    parsed = Tables(display.comparison_html(comparison_dict(Path("out") / HOSTILE)))
    header, numpy_row, torch_row, diff_row = parsed.rows
    assert header[:3] == ["backend", "device", "test accuracy"]
    assert numpy_row == ["numpy", "cpu", "90.00%", "95.00%", "4", "0.012"]
    assert torch_row[:3] == ["torch", HOSTILE, "92.50%"]  # escaped, so shown as written
    assert diff_row[:3] == ["torch − numpy", "", "+2.50 pt"]
    assert "script" not in parsed.tags
    assert parsed.items[0] == "initial weights: max |Δ| = 0 (identical start)"
    assert parsed.items[1] == "first step's loss: numpy 2.302585, torch 2.3025851"
    assert parsed.items[2] == f"written to {Path('out') / HOSTILE}"


def test_comparison_html_says_when_the_starts_differ():
    comparison = comparison_dict()
    comparison["initial_max_abs_diff"] = 1e-3
    assert Tables(display.comparison_html(comparison)).items[0] == "initial weights: max |Δ| = 0.001 (the starts differ)"


@pytest.mark.torch
def test_compare_returns_a_dict_that_shows_as_html():
    pytest.importorskip("torch")
    from mlplab.compare import Comparison

    comparison = Comparison(comparison_dict())
    assert isinstance(comparison, dict) and comparison["rows"][0]["backend"] == "numpy"
    assert comparison._repr_html_() == display.comparison_html(comparison_dict())
    pretty = pytest.importorskip("IPython.lib.pretty")
    assert pretty.pretty(comparison) == "Comparison: test accuracy numpy 90.00%, torch 92.50%; written to cmp"


# =============================================================================================
# figures
# =============================================================================================
def test_plots_return_figures_that_render_as_png(result):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from mlplab import plots

    fig = plots.plot_curves(result.history, best_epoch=result.best_epoch)
    assert isinstance(fig, Figure)
    png = fig._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (round(plots.CURVES_SIZE[0] * fig.dpi), round(plots.CURVES_SIZE[1] * fig.dpi))
    copy = pickle.loads(pickle.dumps(fig))  # matplotlib figures pickle; the subclass must too
    assert type(copy) is type(fig)
    assert [line.get_label() for line in copy.axes[0].lines] == [line.get_label() for line in fig.axes[0].lines]


def test_gradient_flow_and_spectral_density_figures_render_as_png():
    pytest.importorskip("matplotlib")
    from mlplab.hessian import SpectralDensity
    from mlplab.plots import plot_density, plot_gradient_flow

    flow = {"dataset": "digits", "depth": 2, "width": 8, "activation": "sigmoid", "batch_size": 16, "seed": 0,
            "layers": [2, 1], "plain": {"input_grad_norms": [1e-1, 1e-3], "first_over_last": 1e-2},
            "residual": {"input_grad_norms": [1e-1, 2e-1], "first_over_last": 2.0}}
    density = SpectralDensity(nodes=np.array([[-1.0, 0.5, 2.0]]), weights=np.array([[0.2, 0.5, 0.3]]))
    for fig in (plot_gradient_flow(flow), plot_density(density)):
        png = fig._repr_png_()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", png[16:24]) == tuple(round(v * fig.dpi) for v in fig.get_size_inches())


# =============================================================================================
# progress bars
# =============================================================================================
def test_progress_bar_outside_a_notebook_is_tqdm_on_a_terminal_and_none_in_a_log():
    from tqdm import tqdm

    assert display.progress_bar_class(kernel=False, tty=True) is tqdm
    assert display.progress_bar_class(kernel=False, tty=False) is None


def test_progress_bar_in_a_notebook_is_a_widget():
    pytest.importorskip("ipywidgets")
    from tqdm.notebook import tqdm as notebook_tqdm

    assert display.progress_bar_class(kernel=True, tty=True) is notebook_tqdm


def test_progress_bar_in_a_notebook_without_ipywidgets_is_none_and_silent():
    # A fresh interpreter in which ipywidgets cannot be imported (tqdm.auto would warn there
    # and fall back to a text bar whose carriage returns pile up in the notebook).
    code = (
        "import sys, warnings; sys.modules['ipywidgets'] = None; warnings.simplefilter('error')\n"
        "from mlplab.display import progress_bar_class\n"
        "print(progress_bar_class(kernel=True))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"
    assert done.stderr == ""


def fake_ipython(shell) -> types.ModuleType:
    module = types.ModuleType("IPython")
    module.get_ipython = lambda: shell
    return module


def test_in_jupyter_kernel_only_for_a_shell_with_a_kernel(monkeypatch):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert display.in_jupyter_kernel() is False
    monkeypatch.setitem(sys.modules, "IPython", fake_ipython(None))  # IPython imported, no shell running
    assert display.in_jupyter_kernel() is False
    monkeypatch.setitem(sys.modules, "IPython", fake_ipython(types.SimpleNamespace()))  # terminal IPython
    assert display.in_jupyter_kernel() is False
    monkeypatch.setitem(sys.modules, "IPython", fake_ipython(types.SimpleNamespace(kernel=object())))
    assert display.in_jupyter_kernel() is True


class RecordingBar:
    made: ClassVar[list[RecordingBar]] = []

    def __init__(self, total, initial, **options):
        self.total, self.count, self.closed, self.options = total, initial, False, options
        RecordingBar.made.append(self)

    def update(self, n):
        self.count += n

    def set_postfix(self, **values):
        pass

    def close(self):
        self.closed = True


def test_training_shows_the_chosen_bar_once_per_epoch(monkeypatch, capsys):
    RecordingBar.made = []
    monkeypatch.setattr(display, "progress_bar_class", lambda: RecordingBar)
    seen = types.SimpleNamespace(steps=[])

    class CountSteps:
        def on_step(self, trainer, loss):
            seen.steps.append(trainer.epoch)

    mlplab.train(data=blobs(), hidden_dims=[8], epochs=2, batch_size=16, quiet=False, listeners=[CountSteps()])
    steps = seen.steps.count(0)
    assert steps > 1 and seen.steps.count(1) == steps
    assert [(bar.total, bar.count, bar.closed) for bar in RecordingBar.made] == [(steps, steps, True)] * 2
    assert [bar.options["desc"] for bar in RecordingBar.made] == ["epoch 1", "epoch 2"]
    assert capsys.readouterr().out.count("train loss") == 2  # the per-epoch lines stay


def test_training_in_a_notebook_without_widgets_prints_lines_and_no_bar(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "IPython", fake_ipython(types.SimpleNamespace(kernel=object())))
    monkeypatch.setattr(display, "_notebook_bar", lambda: None)
    mlplab.train(data=blobs(), hidden_dims=[8], epochs=2, batch_size=16, quiet=False)
    captured = capsys.readouterr()
    assert captured.err == ""
    assert [line.split()[1] for line in captured.out.splitlines() if line.startswith("epoch")] == ["1/2", "2/2"]


def test_download_in_a_notebook_without_widgets_draws_no_text_bar(tmp_path, http_server, monkeypatch, capsys):
    from mlplab.data.download import download_file

    folder = tmp_path / "www"
    folder.mkdir()
    (folder / "blob.bin").write_bytes(bytes(range(256)) * 4096)
    url = http_server(folder)
    download_file(f"{url}/blob.bin", tmp_path / "plain.bin", None, progress=True)
    assert "100%" in capsys.readouterr().err  # elsewhere the text bar stays
    monkeypatch.setitem(sys.modules, "IPython", fake_ipython(types.SimpleNamespace(kernel=object())))
    monkeypatch.setattr(display, "_notebook_bar", lambda: None)
    dest = download_file(f"{url}/blob.bin", tmp_path / "notebook.bin", None, progress=True)
    assert dest.read_bytes() == (folder / "blob.bin").read_bytes()
    assert capsys.readouterr().err == ""
