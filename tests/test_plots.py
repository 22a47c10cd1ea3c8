"""Figures: tested through the data they draw (read back from the figure's artists, compared with
the run folder) and the files they write (PNG signature, pixel size = figsize x DPI)."""

from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import pytest

from mlplab import plots
from mlplab.errors import CheckpointError
from mlplab.metrics import classification_metrics, normalize_confusion
from mlplab.training.run import read_csv

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def expected_size(figsize) -> tuple[int, int]:
    return round(figsize[0] * plots.DPI), round(figsize[1] * plots.DPI)


def line(ax, label):
    matches = [artist for artist in ax.lines if artist.get_label() == label]
    assert len(matches) == 1, f"no single line labelled {label!r} in {[a.get_label() for a in ax.lines]}"
    return matches[0]


def train_digits(out, **options):
    import mlplab

    settings = dict(dataset="digits", hidden_dims=[32], epochs=3, lr=0.1, validation_size=300, quiet=True, report=False)
    settings.update(options)
    return mlplab.train(out=str(out), **settings)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real digits runs (the second with a different batch size, so its epochs have a
    different number of steps)."""
    root = tmp_path_factory.mktemp("plot-runs")
    train_digits(root / "a")
    train_digits(root / "b", batch_size=64, lr=0.05)
    return root / "a", root / "b"


@pytest.fixture(scope="module")
def run(runs):
    return runs[0]


# -- helpers --------------------------------------------------------------------------------------
def test_smooth_is_a_trailing_moving_average():
    rng = np.random.default_rng(0)
    values = rng.normal(size=97)
    window = 5
    naive = [values[max(0, i - window + 1):i + 1].mean() for i in range(values.size)]
    np.testing.assert_allclose(plots.smooth(values, window), naive)
    np.testing.assert_array_equal(plots.smooth(values, 1), values)
    np.testing.assert_allclose(plots.smooth(np.full(40, 2.5)), 2.5)
    assert plots.smooth([]).size == 0


def test_epoch_ends_and_fractional_epochs():
    epochs = np.array([1, 1, 1, 2, 2, 2, 3, 3, 3])
    steps = np.arange(1, 10)
    np.testing.assert_array_equal(plots.epoch_ends(steps, epochs), [3, 6])
    np.testing.assert_allclose(plots.fractional_epochs(epochs), np.arange(1, 10) / 3)
    # Epoch ends fall on whole numbers whatever the steps per epoch.
    np.testing.assert_allclose(plots.fractional_epochs([1, 1, 2, 2, 2, 2]), [0.5, 1, 1.25, 1.5, 1.75, 2])


# -- one figure each ------------------------------------------------------------------------------
def test_loss_steps_draws_every_step_the_smoothed_loss_and_epoch_boundaries(run, tmp_path):
    steps = read_csv(run / "steps.csv")
    step, loss, epoch = ([row[key] for row in steps] for key in ("step", "loss", "epoch"))
    path = tmp_path / "loss.png"
    fig = plots.plot_loss_steps(step, loss, epoch, path, window=4)
    ax = fig.axes[0]
    np.testing.assert_array_equal(line(ax, "loss").get_xdata(), step)
    np.testing.assert_array_equal(line(ax, "loss").get_ydata(), loss)
    np.testing.assert_allclose(line(ax, "smoothed").get_ydata(), plots.smooth(loss, 4))
    (boundaries,) = [c for c in ax.collections if c.get_label() == "epoch end"]
    drawn = [segment[0, 0] for segment in boundaries.get_segments()]
    last_step_of_epoch = [max(s for s, e in zip(step, epoch) if e == k) for k in (1, 2)]
    assert drawn == last_step_of_epoch
    assert png_size(path) == expected_size(plots.LOSS_STEPS_SIZE)
    # On a real run too, the steps after the first tenth fill at least half of the axis, and
    # whatever lies above it is marked.
    assert axis_share_of_later_steps(ax, np.array(loss)) >= 0.5
    marked = [artist for artist in ax.lines if artist.get_gid() == "above the axis"]
    above = np.array(step)[np.array(loss) > ax.get_ylim()[1]]
    assert (marked[0].get_xdata().tolist() if marked else []) == above.tolist()


def synthetic_steps(spike: bool, n: int = 2000, seed: int = 0):
    """A run's step losses: a first-steps spike up to 9 (with ``spike``), then a noisy decay
    from 2.3 to 1.3 (the shape of the reference run's steps.csv)."""
    rng = np.random.default_rng(seed)
    steps = np.arange(1, n + 1)
    losses = 1.3 + np.exp(-steps / (n / 3)) + rng.normal(0, 0.05, n)
    if spike:
        losses[:40] = rng.uniform(3.0, 9.0, 40)
    return steps, losses


def axis_share_of_later_steps(ax, losses) -> float:
    """How much of the y-axis the losses after the first tenth of the run span."""
    later = losses[losses.size // 10:]
    bottom, top = ax.get_ylim()
    return (later.max() - later.min()) / (top - bottom)


def test_loss_steps_axis_shows_the_settled_run_and_marks_the_clipped_spike(tmp_path):
    steps, losses = synthetic_steps(spike=True)
    fig = plots.plot_loss_steps(steps, losses, path=tmp_path / "loss.png")
    ax = fig.axes[0]
    assert axis_share_of_later_steps(ax, losses) > 0.8  # an axis fitted to the spike leaves them under 0.2
    bottom, top = ax.get_ylim()
    assert bottom <= losses.min() and top >= losses[200:].max()  # every later step is inside
    (marks,) = [artist for artist in ax.lines if artist.get_gid() == "above the axis"]
    above = losses > top
    assert above[:40].all() and not above[200:].any()
    np.testing.assert_array_equal(marks.get_xdata(), steps[above])
    assert marks.get_label() == f"{above.sum()} steps above the axis (up to {losses.max():.3g})"
    assert marks.get_label() in [text.get_text() for text in ax.get_legend().get_texts()]
    # The raw losses are drawn whole; only the axis is narrowed.
    np.testing.assert_array_equal(line(ax, "loss").get_ydata(), losses)


def test_loss_steps_axis_without_a_spike_holds_every_step(tmp_path):
    steps, losses = synthetic_steps(spike=False)
    ax = plots.plot_loss_steps(steps, losses).axes[0]
    bottom, top = ax.get_ylim()
    assert bottom <= losses.min() and top >= losses.max()
    assert not [artist for artist in ax.lines if artist.get_gid() == "above the axis"]
    assert axis_share_of_later_steps(ax, losses) > 0.5
    # Too few finite losses to fit anything: matplotlib's own limits, no error.
    plots.plot_loss_steps([1, 2], [np.nan, 2.0])


def test_curves_draw_the_history(run, tmp_path):
    history = read_csv(run / "history.csv")
    path = tmp_path / "curves.png"
    fig = plots.plot_curves(history, path, best_epoch=2)
    loss_ax, acc_ax = fig.axes
    epochs = [row["epoch"] for row in history]
    for ax, name in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        for label, prefix in (("train", "train"), ("validation", "val")):
            drawn = line(ax, label)
            np.testing.assert_array_equal(drawn.get_xdata(), epochs)
            np.testing.assert_array_equal(drawn.get_ydata(), [row[f"{prefix}_{name}"] for row in history])
        np.testing.assert_array_equal(line(ax, "best epoch (2)").get_xdata(), [2, 2])
    assert png_size(path) == expected_size(plots.CURVES_SIZE)


def test_curves_without_validation_split_draw_train_only():
    history = [{"epoch": e, "train_loss": 1 / e, "train_accuracy": 0.5, "val_loss": None, "val_accuracy": None}
               for e in (1, 2, 3)]
    fig = plots.plot_curves(history)
    for ax in fig.axes:
        assert [artist.get_label() for artist in ax.lines] == ["train"]


def test_confusion_heatmaps_show_counts_and_row_fractions_with_class_names(tmp_path):
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 30, (4, 4))
    cm[2] = 0  # a class with no test sample: its row of fractions is zeros, not NaN
    names = ["airplane", "automobile", "bird", "cat"]
    path = tmp_path / "confusion.png"
    fig = plots.plot_confusion(cm, names, path)
    counts_ax, fractions_ax = fig.axes[:2]
    np.testing.assert_array_equal(counts_ax.images[0].get_array(), cm)
    np.testing.assert_allclose(fractions_ax.images[0].get_array(), normalize_confusion(cm, "true"))
    for ax in (counts_ax, fractions_ax):
        assert [t.get_text() for t in ax.get_xticklabels()] == names
        assert [t.get_text() for t in ax.get_yticklabels()] == names
    # every cell is annotated with its value
    assert sorted(t.get_text() for t in counts_ax.texts) == sorted(str(v) for v in cm.ravel())
    assert png_size(path) == expected_size(plots.CONFUSION_SIZE)


def test_per_class_bars_are_precision_recall_and_f_beta(tmp_path):
    cm = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 4]])
    m = classification_metrics(cm, beta=2.0)
    path = tmp_path / "per_class.png"
    fig = plots.plot_per_class(m["precision"], m["recall"], m["f_beta"], ["a", "b", "c"], path, beta=2.0)
    ax = fig.axes[0]
    bars = {container.get_label(): [bar.get_height() for bar in container] for container in ax.containers}
    assert list(bars) == ["precision", "recall", "F2"]
    np.testing.assert_allclose(bars["precision"], m["precision"])
    np.testing.assert_allclose(bars["recall"], m["recall"])
    np.testing.assert_allclose(bars["F2"], m["f_beta"])
    assert png_size(path) == expected_size(plots.PER_CLASS_SIZE)


def test_gradients_one_line_per_layer(tmp_path):
    steps = np.repeat(np.arange(0, 50, 10), 2)
    layers = ["layers.0", "layers.2"] * 5
    norms = np.linspace(1, 2, 10)
    ratios = np.linspace(1e-3, 2e-3, 10)
    path = tmp_path / "gradients.png"
    fig = plots.plot_gradients(steps, layers, norms, ratios, path)
    norm_ax, ratio_ax = fig.axes
    np.testing.assert_array_equal(line(norm_ax, "layers.2").get_xdata(), steps[1::2])
    np.testing.assert_array_equal(line(norm_ax, "layers.2").get_ydata(), norms[1::2])
    np.testing.assert_array_equal(line(ratio_ax, "layers.0").get_ydata(), ratios[::2])
    assert png_size(path) == expected_size(plots.GRADIENTS_SIZE)


# -- several runs ---------------------------------------------------------------------------------
def test_plot_runs_overlays_step_losses_and_validation_accuracies(runs, tmp_path):
    path = tmp_path / "runs.png"
    fig = plots.plot_runs({"lr 0.1": runs[0], "batch 64": runs[1]}, path)
    loss_ax, acc_ax = fig.axes
    for label, run_dir in (("lr 0.1", runs[0]), ("batch 64", runs[1])):
        steps, history = read_csv(run_dir / "steps.csv"), read_csv(run_dir / "history.csv")
        raw = line(loss_ax, f"{label} (per step)")
        np.testing.assert_array_equal(raw.get_ydata(), [row["loss"] for row in steps])
        np.testing.assert_allclose(raw.get_xdata()[-1], len(history))  # the x axis counts epochs
        np.testing.assert_allclose(line(loss_ax, label).get_ydata(), plots.smooth([row["loss"] for row in steps]))
        accuracy = line(acc_ax, label)
        np.testing.assert_array_equal(accuracy.get_xdata(), [row["epoch"] for row in history])
        np.testing.assert_array_equal(accuracy.get_ydata(), [row["val_accuracy"] for row in history])
        assert accuracy.get_color() == raw.get_color()  # one colour per run
    assert loss_ax.get_shared_x_axes().joined(loss_ax, acc_ax)
    assert png_size(path) == expected_size(plots.RUNS_SIZE)
    # a sequence of folders is labelled by folder name
    fig = plots.plot_runs(list(runs))
    assert [artist.get_label() for artist in fig.axes[1].lines] == ["a", "b"]


def test_plot_runs_refuses_a_missing_run_folder(run, tmp_path):
    with pytest.raises(CheckpointError, match="no run folder"):
        plots.plot_runs({"ok": run, "missing": tmp_path / "nope"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no steps.csv or history.csv"):
        plots.plot_runs({"empty": tmp_path / "empty"})


def test_importing_mlplab_plots_does_not_import_matplotlib():
    code = "import sys, mlplab, mlplab.plots, mlplab.report, mlplab.metrics; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_measuring_modules_do_not_load_the_plots_and_the_plots_do_not_load_torch():
    # mlplab.plots draws what the measuring modules compute: it may import them, never the reverse,
    # and the NumPy-vs-PyTorch figure reads run folders, so drawing it needs no torch.
    code = (
        "import sys, pkgutil, importlib, mlplab.gradflow, mlplab.metrics\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('mlplab.plots'))\n"
        "import mlplab.plots\n"
        "for info in pkgutil.iter_modules(mlplab.plots.__path__): importlib.import_module('mlplab.plots.' + info.name)\n"
        "print(loaded, 'torch' in sys.modules, 'matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] False False"


def test_the_notebook_figure_class_is_one_class_under_both_names():
    from mlplab import display
    from mlplab.plots import base

    fig = plots.plot_curves([{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5}])
    assert type(fig) is base.InlineFigure is display.InlineFigure
    assert fig._repr_png_().startswith(b"\x89PNG\r\n\x1a\n")


def test_sweep_figure_draws_plain_panels(tmp_path):
    """plot_sweep from plain panel dicts: a listed option puts each trial at its value's tick (the
    best trial starred there; True is not 1), a range option at its value, on a log axis for lr; failed trials
    are left out and counted."""
    panels = [
        {"name": "activation", "flag": "activation", "kind": "choice", "values": ("relu", 1, True),
         "labels": ("relu", "1", "true"), "low": None, "high": None},
        {"name": "lr", "flag": "lr", "kind": "float", "values": (), "labels": (), "low": 1e-3, "high": 1e-1},
    ]
    rows = [{"trial": 0, "activation": 1, "lr": 0.01, "val_accuracy": 0.8},
            {"trial": 1, "activation": True, "lr": 0.002, "val_accuracy": 0.6},
            {"trial": 2, "activation": "relu", "lr": 0.05, "val_accuracy": None}]
    fig = plots.plot_sweep(rows, panels, tmp_path / "sweep.png", best=rows[0])
    first, second = fig.axes[:2]
    trials, best = first.collections
    np.testing.assert_array_equal(trials.get_offsets(), [[1, 0.8], [2, 0.6]])
    np.testing.assert_array_equal(best.get_offsets(), [[1, 0.8]])
    assert [t.get_text() for t in first.get_xticklabels()] == ["relu", "1", "true"]
    assert first.get_title() == "1 failed trial not shown"
    np.testing.assert_allclose(second.collections[0].get_offsets(), [[0.01, 0.8], [0.002, 0.6]])
    assert second.get_xscale() == "log"
    assert png_size(tmp_path / "sweep.png") == expected_size(fig.get_size_inches())
