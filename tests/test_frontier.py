"""benchmarks/frontier.py on real (tiny) run folders: what it reads, the frontier line, the figure."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "frontier.py"
TIME_V = """\tCommand being timed: "mlplab train --preset cifar10-1min"
\tUser time (seconds): 80.10
\tElapsed (wall clock) time (h:mm:ss or m:ss): {clock}
\tMaximum resident set size (kbytes): 931132
"""


@pytest.fixture(scope="module")
def frontier():
    spec = importlib.util.spec_from_file_location("mlplab_frontier", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three digits runs: two search runs and one named as a preset's final run with a time.txt."""
    from mlplab import train

    root = tmp_path_factory.mktemp("frontier")
    for name, epochs in (("search-a", 1), ("search-b", 3), ("tiny-seed7", 2)):
        train(dataset="digits", hidden_dims=[16], epochs=epochs, out=str(root / name), quiet=True, report=False)
    (root / "tiny-seed7" / "time.txt").write_text(TIME_V.format(clock="1:02:03.5"))
    shutil.copytree(root / "search-a", root / "unfinished")
    (root / "unfinished" / "summary.json").write_text('{"status": "interrupted", "test_accuracy": null}')
    return root


def test_elapsed_seconds_reads_gnu_time_output(frontier, tmp_path):
    for clock, seconds in (("0:45.25", 45.25), ("4:03.21", 243.21), ("1:02:03.5", 3723.5)):
        (tmp_path / "t.txt").write_text(TIME_V.format(clock=clock))
        assert frontier.elapsed_seconds(tmp_path / "t.txt") == pytest.approx(seconds)
    (tmp_path / "t.txt").write_text("no such line\n")
    assert frontier.elapsed_seconds(tmp_path / "t.txt") is None


def test_runs_are_read_from_their_summaries(frontier, runs):
    found = {r["name"]: r for r in frontier.load_runs([runs])}
    assert sorted(found) == ["search-a", "search-b", "tiny-seed7"]  # the unfinished run is left out
    import json

    for name, run in found.items():
        summary = json.loads((runs / name / "summary.json").read_text())
        assert run["test_accuracy"] == summary["test_accuracy"]
        assert run["best_val_accuracy"] == summary["best_val_accuracy"]
        assert run["hidden_dims"] == [16] and run["backend"] == "numpy"
    assert found["tiny-seed7"]["preset"] == "tiny" and found["tiny-seed7"]["seed"] == 7
    assert found["tiny-seed7"]["seconds"] == pytest.approx(3723.5) and found["tiny-seed7"]["whole_command"]
    assert found["search-b"]["preset"] is None and not found["search-b"]["whole_command"]
    assert found["search-b"]["seconds"] == pytest.approx(
        json.loads((runs / "search-b" / "summary.json").read_text())["wall_seconds"]
    )


def test_frontier_is_the_best_accuracy_within_each_time(frontier):
    runs = [
        {"seconds": 10, "test_accuracy": 0.5},
        {"seconds": 30, "test_accuracy": 0.45},
        {"seconds": 20, "test_accuracy": 0.6},
        {"seconds": 40, "test_accuracy": 0.7},
        {"seconds": 35, "test_accuracy": 0.55},
    ]
    assert frontier.frontier(runs) == [(10, 0.5), (20, 0.6), (40, 0.7)]
    line = frontier.frontier(runs)
    for limit in (10, 25, 39, 40, 100):  # a step function: best accuracy of the runs within the limit
        best = max(r["test_accuracy"] for r in runs if r["seconds"] <= limit)
        assert max(acc for t, acc in line if t <= limit) == best


def test_figure_and_table(frontier, runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "figure.png"
    assert frontier.main([str(runs), "--out", str(out), "--table"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("| search-") == 2 and "| tiny-seed7 |" in printed
    from PIL import Image

    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 500
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # something was drawn


def test_no_runs_is_one_line_and_exit_1(frontier, tmp_path, capsys):
    assert frontier.main([str(tmp_path), "--out", str(tmp_path / "f.png")]) == 1
    assert "no finished run" in capsys.readouterr().err and not (tmp_path / "f.png").exists()
