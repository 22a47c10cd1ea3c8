"""The benchmark's statistics (benchmarks/run.py), on made-up epoch times: no timing here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def bench():
    if not SCRIPT.exists():
        pytest.skip("benchmarks/run.py is not part of this checkout")
    spec = importlib.util.spec_from_file_location("mlplab_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_headline_ratio_pairs_epochs_of_the_same_repeat(bench):
    # The machine speeds up by a third after the sixth repeat, but the two contenders' medians
    # land on opposite sides of the change: their ratio says 1.875, each repeat but one says 1.25.
    numpy_times = [0.25] * 7 + [1 / 6] * 6
    matmul_times = [0.2] * 6 + [2 / 15] * 7
    summary = bench.summarise({"numpy": numpy_times, "matmul": matmul_times})
    assert summary["ratios_of_medians"]["numpy/matmul"] == pytest.approx(0.25 / (2 / 15))
    assert summary["ratios"]["numpy/matmul"] == pytest.approx(1.25)
    assert summary["ratios_of_minima"]["numpy/matmul"] == pytest.approx(1.25)
    assert summary["times"]["numpy"]["median"] == 0.25 and summary["times"]["matmul"]["max"] == 0.2


def test_all_three_ratios_with_torch(bench):
    times = {"numpy": [1.0, 2.0, 3.0], "torch": [2.0, 2.0, 2.0], "matmul": [0.5, 1.0, 1.5]}
    summary = bench.summarise(times)
    assert set(summary["ratios"]) == {"numpy/matmul", "numpy/torch", "torch/matmul"}
    assert summary["ratios"]["numpy/matmul"] == pytest.approx(2.0)
    assert summary["ratios"]["numpy/torch"] == pytest.approx(1.0)  # median of 0.5, 1, 1.5
    assert summary["ratios"]["torch/matmul"] == pytest.approx(2.0)  # median of 4, 2, 4/3


def test_short_epochs_get_more_repeats_up_to_the_cap(bench):
    class Fake:
        calls = {"a": 0, "b": 0}

        def run_a(self):
            self.calls["a"] += 1
            return 0.0

        def run_b(self):
            self.calls["b"] += 1
            return 0.0

    fake = Fake()
    times = bench.time_interleaved(fake, ["a", "b"], repeats=3, min_seconds=10.0, max_repeats=7)
    # near-instant epochs: the cap of 7 timed epochs each, after one warm-up epoch each
    assert len(times["a"]) == len(times["b"]) == 7 and fake.calls == {"a": 8, "b": 8}
    fake.calls = {"a": 0, "b": 0}
    assert len(bench.time_interleaved(fake, ["a", "b"], repeats=3)["a"]) == 3
