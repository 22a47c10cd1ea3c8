"""report.md / report.html: every section, figures that exist, numbers that match the run,
a self-contained HTML file, and the `mlplab report` command."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil

import numpy as np
import pytest

from mlplab.cli import main
from mlplab.errors import CheckpointError
from mlplab.metrics import classification_metrics, most_confused, precision_recall_leaning
from mlplab.report import FIGURES, write_report

pytest.importorskip("matplotlib")

# Outcome and figures first; the configuration, reference material, last (folded in the HTML page).
SECTIONS = ["Outcome", "Training", "Test confusion matrix", "Per-class metrics (test split)", "Precision or recall",
            "Configuration"]
FIGURE_ORDER = ("curves", "loss_steps", "confusion", "per_class")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def train_digits(out, **options):
    import mlplab

    settings = dict(dataset="digits", hidden_dims=[32], epochs=3, lr=0.1, validation_size=300, quiet=True, report=False)
    settings.update(options)
    return mlplab.train(out=str(out), **settings)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished digits run folder, without its report."""
    run_dir = tmp_path_factory.mktemp("report") / "run"
    train_digits(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def reported(trained):
    """The run folder after write_report, and what it returned."""
    paths = write_report(trained)
    return trained, paths


@pytest.fixture
def run_copy(trained, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(trained, target)
    for name in ("report.md", "report.html", *FIGURES.values()):
        (target / name).unlink(missing_ok=True)
    return target


def headings(markdown: str, level: int = 2) -> list[str]:
    return re.findall(rf"^{'#' * level} (.+)$", markdown, flags=re.MULTILINE)


def table_row(markdown: str, first_cell: str) -> list[str]:
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells[1:]
    raise AssertionError(f"no table row starting with {first_cell!r}")


def summary_of(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


# -- report.md ------------------------------------------------------------------------------------
def test_write_report_returns_both_paths_in_the_run_folder(reported):
    run_dir, (md_path, html_path) = reported
    assert md_path == run_dir / "report.md" and md_path.is_file()
    assert html_path == run_dir / "report.html" and html_path.is_file()


def test_report_has_every_section_and_links_existing_figures(reported):
    run_dir, (md_path, _) = reported
    markdown = md_path.read_text()
    assert headings(markdown, 1) == ["Run report: run"]
    assert headings(markdown) == SECTIONS
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert links == [FIGURES[k] for k in FIGURE_ORDER]
    for link in links:
        data = (run_dir / link).read_bytes()  # relative to the report: the figure sits beside it
        assert data.startswith(PNG_SIGNATURE)


def test_report_states_the_outcome_and_the_configuration(reported):
    run_dir, (md_path, _) = reported
    markdown = md_path.read_text()
    summary = summary_of(run_dir)
    assert table_row(markdown, "best epoch") == [f"{summary['best_epoch']} of {summary['epochs_run']}"]
    assert table_row(markdown, "best validation accuracy") == [f"{100 * summary['best_val_accuracy']:.2f}%"]
    assert table_row(markdown, "test accuracy (best epoch)") == [f"{100 * summary['test_accuracy']:.2f}%"]
    options = json.loads((run_dir / "config.json").read_text())["options"]
    assert table_row(markdown, "dataset") == ["digits"]
    assert table_row(markdown, "hidden_dims") == ["32"]
    assert table_row(markdown, "lr") == [f"{options['lr']:g}"]


def test_f_beta_table_has_one_row_per_beta_and_one_column_per_class(reported):
    run_dir, (md_path, _) = reported
    markdown = md_path.read_text()
    summary = summary_of(run_dir)
    cm = np.array(summary["test_confusion_matrix"])
    assert table_row(markdown, "beta") == summary["class_names"]
    for beta, label in ((0.1, "F0.1"), (1.0, "F1"), (10.0, "F10")):
        expected = [f"{v:.3f}" for v in classification_metrics(cm, beta=beta)["f_beta"]]
        assert table_row(markdown, label) == expected


def test_most_confused_pairs_and_leaning_match_the_confusion_matrix(reported):
    run_dir, (md_path, _) = reported
    markdown = md_path.read_text()
    summary = summary_of(run_dir)
    cm, names = np.array(summary["test_confusion_matrix"]), summary["class_names"]
    top = most_confused(cm, 5)[0]
    row = table_row(markdown, names[top["true"]])
    assert row[:3] == [names[top["predicted"]], str(top["count"]), f"{100 * top['share']:.2f}%"]
    leaning = precision_recall_leaning(cm, margin=0.02)
    bullet = next(line for line in markdown.splitlines() if line.startswith("- Lean to precision:"))
    listed = re.findall(r"(\S+) \(precision", bullet)
    assert listed == [names[c] for c in leaning["precision"]]
    bullet = next(line for line in markdown.splitlines() if line.startswith("- Lean to recall:"))
    assert re.findall(r"(\S+) \(precision", bullet) == [names[c] for c in leaning["recall"]]


# -- report.html ----------------------------------------------------------------------------------
def test_html_is_self_contained_with_the_figures_embedded(reported):
    run_dir, (md_path, html_path) = reported
    page = html_path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert re.findall(r"<h2>(.+?)</h2>", page) == SECTIONS
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "<script" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 4
    for source, name in zip(sources, FIGURE_ORDER):
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]) == (run_dir / FIGURES[name]).read_bytes()


def test_html_folds_the_configuration_data_and_environment_after_the_outcome(reported):
    run_dir, (md_path, html_path) = reported
    page = html_path.read_text()
    options = json.loads((run_dir / "config.json").read_text())["options"]
    folds = re.findall(r"<details><summary>(.+?)</summary>(.*?)</details>", page, flags=re.DOTALL)
    assert [summary for summary, _ in folds] == [
        "Per-epoch numbers (3 epochs)", f"Training options ({len(options)})", "Data", "Environment"]
    option_rows = re.findall(r"<tr><td>([a-z_]+)</td>", folds[1][1])
    assert option_rows == list(options)  # the whole option table sits inside its fold
    assert "<details open" not in page  # closed until the reader opens one
    # The outcome and every figure come before the first table of the configuration.
    assert page.index("<h2>Outcome</h2>") < page.index("<figure>")
    assert page.rindex("<figure>") < page.index("<h2>Configuration</h2>") < page.index("Training options")
    markdown = md_path.read_text()
    assert headings(markdown, 3) == [summary for summary, _ in folds]
    summary = summary_of(run_dir)
    assert f"Test accuracy {100 * summary['test_accuracy']:.2f}% with the weights of epoch {summary['best_epoch']}" \
        in markdown.split("## Training")[0]


def test_figures_are_shown_at_one_scale_in_the_html_page(reported):
    from mlplab.plots import CURVES_SIZE, LOSS_STEPS_SIZE

    _, (_, html_path) = reported
    widths = [int(w) for w in re.findall(r'<img src="data:[^"]*" width="(\d+)"', html_path.read_text())]
    assert widths[:2] == [round(CURVES_SIZE[0] * 100), round(LOSS_STEPS_SIZE[0] * 100)]


# -- optional and partial inputs ------------------------------------------------------------------
def test_gradients_csv_adds_a_figure(run_copy):
    # (Without gradients.csv there is no such section: see the SECTIONS of the report above.)
    rows = ["step,layer,weight_grad_norm,input_grad_norm,update_ratio"]
    rows += [f"{s},layers.{k},{0.5 + s / 100},{0.1},{1e-3}" for s in (0, 10, 20) for k in (0, 2)]
    (run_copy / "gradients.csv").write_text("\n".join(rows) + "\n")
    md_path, html_path = write_report(run_copy)
    markdown = md_path.read_text()
    assert headings(markdown) == [*SECTIONS[:-1], "Gradients", "Configuration"]
    assert "](gradients.png)" in markdown
    assert (run_copy / "gradients.png").read_bytes().startswith(PNG_SIGNATURE)
    assert html_path.read_text().count('src="data:image/png;base64,') == 5


def test_an_unfinished_run_gets_a_report_of_its_curves_through_the_cli(run_copy, capsys):
    (run_copy / "summary.json").unlink()
    assert main(["report", str(run_copy)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {run_copy / 'report.md'} and {run_copy / 'report.html'}"
    markdown = (run_copy / "report.md").read_text()
    assert headings(markdown) == ["Outcome", "Training", "Configuration"]
    assert "did not finish" in markdown
    assert (run_copy / FIGURES["curves"]).exists() and not (run_copy / FIGURES["confusion"]).exists()
    assert (run_copy / "report.html").exists()


def test_missing_folder_config_or_broken_log_is_a_checkpoint_error(run_copy, tmp_path):
    with pytest.raises(CheckpointError, match="no run folder"):
        write_report(tmp_path / "nope")
    with open(run_copy / "steps.csv", "a") as handle:
        handle.write("4,25,not-a-number\n")
    with pytest.raises(CheckpointError, match="steps.csv"):
        write_report(run_copy)
    (run_copy / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        write_report(run_copy)


# -- mlplab report, and train writing it ----------------------------------------------------------
def test_cli_report_on_a_missing_folder_is_one_line_and_exit_1(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("mlplab report: error:")
    assert "Traceback" not in captured.err


def test_train_writes_the_report_unless_told_not_to(tmp_path):
    train_digits(tmp_path / "with", epochs=1, report=True)
    assert headings((tmp_path / "with" / "report.md").read_text()) == SECTIONS
    assert (tmp_path / "with" / "report.html").exists()
    train_digits(tmp_path / "without", epochs=1, report=False)
    assert not (tmp_path / "without" / "report.md").exists()


def test_figures_drawn_in_worker_processes_are_the_same_files_as_drawn_here(run_copy, tmp_path):
    serial = tmp_path / "serial"
    shutil.copytree(run_copy, serial)
    write_report(serial, parallel=False)
    write_report(run_copy, parallel=True)
    for name in ("loss_steps.png", "curves.png", "confusion.png", "per_class.png"):
        assert (run_copy / name).read_bytes() == (serial / name).read_bytes(), name
    assert (run_copy / "report.md").read_text().split("Report written")[1].split("\n", 1)[1] == \
        (serial / "report.md").read_text().split("Report written")[1].split("\n", 1)[1]


def _write_pid(path) -> None:
    path.write_text(str(os.getpid()))


@pytest.mark.skipif(not hasattr(os, "fork") or (os.cpu_count() or 1) < 2, reason="needs fork and two cores")
def test_figures_are_drawn_in_other_processes_when_there_are_cores(tmp_path):
    from mlplab import report

    jobs = report.FigureJobs(parallel=True)
    for k in range(3):
        jobs.add(_write_pid, tmp_path / f"{k}.pid")
    assert jobs.workers() >= 2
    jobs.draw()
    pids = {int((tmp_path / f"{k}.pid").read_text()) for k in range(3)}
    assert os.getpid() not in pids
    serial = report.FigureJobs(parallel=False)
    serial.add(_write_pid, tmp_path / "here.pid")
    serial.draw()
    assert int((tmp_path / "here.pid").read_text()) == os.getpid()


def test_a_figure_that_fails_in_a_worker_fails_the_report(run_copy, monkeypatch):
    from mlplab import report

    jobs = report.FigureJobs(parallel=True)
    monkeypatch.setattr(jobs, "workers", lambda: 2)
    jobs.add(np.save, run_copy / "ok.npy", np.arange(3))
    jobs.add(np.load, run_copy / "missing.npy")
    with pytest.raises(FileNotFoundError):
        jobs.draw()
    assert np.load(run_copy / "ok.npy").tolist() == [0, 1, 2]


def test_when_no_worker_process_can_be_had_the_figures_are_drawn_here(run_copy, monkeypatch):
    import concurrent.futures

    from mlplab import report
    from mlplab.plots import jobs as figure_jobs

    class NoFork(concurrent.futures.ProcessPoolExecutor):
        def submit(self, *args, **kwargs):
            raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(figure_jobs, "ProcessPoolExecutor", NoFork)
    jobs = report.FigureJobs(parallel=True)
    monkeypatch.setattr(jobs, "workers", lambda: 2)
    jobs.add(_write_pid, run_copy / "a.pid")
    jobs.add(_write_pid, run_copy / "b.pid")
    jobs.draw()
    assert {int((run_copy / n).read_text()) for n in ("a.pid", "b.pid")} == {os.getpid()}


def _die_unless_in(parent_pid, path) -> None:
    if os.getpid() != parent_pid:
        os._exit(1)  # a worker killed mid-figure (say, by the OOM killer)
    path.write_text(str(os.getpid()))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_worker_that_dies_leaves_the_figures_to_this_process(run_copy, monkeypatch):
    from mlplab import report

    jobs = report.FigureJobs(parallel=True)
    monkeypatch.setattr(jobs, "workers", lambda: 2)
    jobs.add(_die_unless_in, os.getpid(), run_copy / "a.pid")
    jobs.add(_die_unless_in, os.getpid(), run_copy / "b.pid")
    jobs.draw()
    assert {int((run_copy / n).read_text()) for n in ("a.pid", "b.pid")} == {os.getpid()}
