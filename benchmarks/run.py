"""Speed of mlplab's NumPy backend against the PyTorch twin and the matrix-product bound.

    python benchmarks/run.py                 # default MLP + the width/batch grid, CIFAR-10 if cached
    python benchmarks/run.py --quick         # fewer repeats, a smaller grid epoch
    python benchmarks/run.py --data-dir DIR  # where cifar-10-python.tar.gz lies (else random data)

In one process, on the same data and the same batch order, it times one training epoch of:
- ``numpy``:   the NumPy backend's ``train_step`` over mlplab's batch iterator;
- ``torch``:   the PyTorch twin's ``train_step`` (eager, CPU) over the same batches;
- ``matmul``:  the bare matrix products of that epoch (forward, weight gradients and input
  gradients, without the first layer's input gradient, which training never needs), on
  preallocated operands: the limit the BLAS sets.
Contenders are interleaved, in a rotating order, and repeated, so that noise hits all alike.
It prints medians, min-max and the ratios (the median of each repeat's ratio between contenders
that ran back to back, beside the ratios of the medians and of the minima), then evaluation
speed (10,000 images), the whole default ``mlplab train`` run against ten bare epochs (also
timed in fresh processes just before and after each run, so both sides see the machine alike),
and its peak memory; and writes everything to a JSON file (``--json``, default
benchmarks/results.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from mlplab.config import TrainConfig
from mlplab.data import batches, get_dataset
from mlplab.training.backends import NumpyBackend
from mlplab.training.run import blas_info

REPO = Path(__file__).resolve().parent.parent


def load_data(data_dir: str | None, samples: int):
    """(x_train, y_train, x_test, y_test, source): CIFAR-10 when it can be had, else random data."""
    if data_dir and (Path(data_dir) / "cifar-10-python.tar.gz").exists() or data_dir and (Path(data_dir) / "cifar-10-batches-py").is_dir():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = get_dataset("cifar10", data_dir, download=False)
        return data.train.x[:samples], data.train.y[:samples], data.test.x, data.test.y, "cifar10"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((samples, 3072), dtype=np.float32)
    y = rng.integers(0, 10, samples)
    xt = rng.standard_normal((10_000, 3072), dtype=np.float32)
    return x, y, xt, rng.integers(0, 10, 10_000), "random"


class Contenders:
    """The three ways of spending one epoch, for one width and batch size."""

    def __init__(self, x, y, width: int, batch: int, with_torch: bool):
        self.x, self.y, self.width, self.batch = x, y, width, batch
        config = TrainConfig(hidden_dims=[width], batch_size=batch).validated()
        seed = np.random.SeedSequence(42)
        self.numpy = NumpyBackend(config, x.shape[1], 10, seed)
        self.torch = None
        if with_torch:
            from mlplab.torch.backend import TorchBackend

            self.torch = TorchBackend(config, x.shape[1], 10, seed)
        self.order_seed = 0
        rng = np.random.default_rng(1)
        d = x.shape[1]
        self.mm = {
            "w1": rng.standard_normal((width, d), dtype=np.float32),
            "w2": rng.standard_normal((10, width), dtype=np.float32), "h": np.empty((batch, width), np.float32),
            "z": np.empty((batch, 10), np.float32), "dz": rng.standard_normal((batch, 10), dtype=np.float32),
            "dh": np.empty((batch, width), np.float32), "dw1": np.empty((width, d), np.float32),
            "dw2": np.empty((10, width), np.float32),
        }
        self.steps = len(x) // batch

    def _batches(self):
        # the same batch order for every contender and every repeat
        return batches(self.x, self.y, self.batch, shuffle=True, rng=np.random.default_rng(self.order_seed), drop_last=True)

    def run_numpy(self) -> float:
        start = time.perf_counter()
        for xb, yb in self._batches():
            self.numpy.train_step(xb, yb, 0.01)
        return time.perf_counter() - start

    def run_torch(self) -> float:
        start = time.perf_counter()
        for xb, yb in self._batches():
            self.torch.train_step(xb, yb, 0.01)
        return time.perf_counter() - start

    def run_matmul(self) -> float:
        m, b = self.mm, self.batch
        start = time.perf_counter()
        for i in range(self.steps):
            x = self.x[i * b : (i + 1) * b]  # consecutive rows: the epoch's data, without a gather
            np.matmul(x, m["w1"].T, out=m["h"])          # forward, layer 1
            np.matmul(m["h"], m["w2"].T, out=m["z"])      # forward, layer 2
            np.matmul(m["dz"].T, m["h"], out=m["dw2"])    # dW2
            np.matmul(m["dz"], m["w2"], out=m["dh"])      # dX2
            np.matmul(m["dh"].T, x, out=m["dw1"])         # dW1 (no dX1)
        return time.perf_counter() - start


def time_interleaved(contenders: Contenders, names: list[str], repeats: int, min_seconds: float = 0.0,
                     max_repeats: int = 25) -> dict[str, list[float]]:
    """Epochs of each contender, interleaved in a rotating order: ``repeats`` of them, or more
    (up to ``max_repeats``) where epochs are short, so that each contender's timed epochs add up
    to ``min_seconds`` (the warm-up epoch sets the count). A grid cell of 0.15 s epochs swings by
    tens of per cent from one epoch to the next; the median of more of them holds steadier."""
    times: dict[str, list[float]] = {name: [] for name in names}
    warm = {}
    for name in names:  # warm-up: first-touch page faults, BLAS and torch start-up
        start = time.perf_counter()
        getattr(contenders, f"run_{name}")()
        warm[name] = time.perf_counter() - start
    fastest = min(warm.values())
    if min_seconds > 0 and fastest > 0:
        repeats = max(repeats, min(max_repeats, math.ceil(min_seconds / fastest)))
    for r in range(repeats):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            times[name].append(getattr(contenders, f"run_{name}")())
    return times


PAIRS = (("numpy", "matmul"), ("numpy", "torch"), ("torch", "matmul"))


def summarise(times: dict[str, list[float]]) -> dict:
    out = {name: {"median": statistics.median(t), "min": min(t), "max": max(t), "runs": t} for name, t in times.items()}
    pairs = [(a, b) for a, b in PAIRS if a in times and b in times]

    def ratios_of(stat: str) -> dict:
        return {f"{a}/{b}": out[a][stat] / out[b][stat] for a, b in pairs}

    # The headline ratio is the median over repeats of each repeat's own ratio: within a repeat
    # the contenders run back to back, so both sides of a ratio see the machine in one state. This
    # VM changes state by 30-50 % for minutes at a time; when that happens partway through a
    # cell, the medians of the two contenders can fall on opposite sides of the change (a cell
    # once read 1.62 as a ratio of medians, 1.29 of minima and 1.33 of paired ratios). The ratios
    # of medians and of minima (noise only ever adds time) are printed beside it.
    paired = {f"{a}/{b}": statistics.median(x / y for x, y in zip(times[a], times[b])) for a, b in pairs}
    return {"times": out, "ratios": paired, "ratios_of_medians": ratios_of("median"), "ratios_of_minima": ratios_of("min")}


def time_evaluation(contenders: Contenders, x_test, repeats: int) -> dict:
    import torch

    results: dict[str, list[float]] = {"numpy": [], "torch": []}
    model = contenders.numpy.model
    for _ in range(repeats + 1):
        start = time.perf_counter()
        model.predict_logits(x_test, 1000)
        results["numpy"].append(time.perf_counter() - start)
        if contenders.torch is not None:
            tm = contenders.torch.model.eval()
            start = time.perf_counter()
            with torch.inference_mode():
                for i in range(0, len(x_test), 1000):
                    tm(torch.from_numpy(x_test[i : i + 1000]))
            results["torch"].append(time.perf_counter() - start)
    out = {k: statistics.median(v[1:]) for k, v in results.items() if v}
    if "torch" in out:
        out["numpy/torch"] = out["numpy"] / out["torch"]
    return out


# The child reports its own peak memory: VmHWM, the high-water mark of its address space. Not
# getrusage's ru_maxrss, which Linux carries over exec from the forked copy of this (large) process.
CHILD = (
    "import sys; from mlplab.cli import main; code = main(sys.argv[1:]); "
    "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')] or ['-1']; "
    "print('PEAK_RSS_KIB', hwm[0], file=sys.stderr); sys.exit(code)"
)


def ten_bare_epochs(data_dir: str) -> float:
    """Ten epochs of the default MLP in this (fresh) process, the first one included: only the
    backend's steps over the batch iterator, no validation, logs or checkpoints."""
    x, y, _, _, _ = load_data(data_dir, 45_000)
    contenders = Contenders(x, y, 128, 128, with_torch=False)
    return sum(contenders.run_numpy() for _ in range(10))


def _ten_bare_epochs_in_child(data_dir: str) -> float | None:
    done = subprocess.run([sys.executable, __file__, "--data-dir", data_dir, "--ten-bare-epochs"], capture_output=True, text=True)
    return float(done.stdout.rsplit("TEN_BARE_EPOCHS", 1)[1].split()[0]) if done.returncode == 0 else None


def compile_package() -> None:
    """Write mlplab's bytecode caches now, as Python does on a package's first import. Where
    PYTHONDONTWRITEBYTECODE is set (as on the machine of the committed results), an editable install
    otherwise compiles its sources again in every fresh process: about 0.1 s of each whole run
    that no ordinary installation pays."""
    import compileall

    import mlplab

    compileall.compile_dir(str(Path(mlplab.__file__).parent), quiet=1)


def whole_run(data_dir: str, bare_epoch: float, repeats: int = 7) -> dict:
    """The default `mlplab train` (10 epochs, validation, test, report) in a fresh process, timed
    from the process start; the child reports its own peak resident memory.

    Each whole run is bracketed by ten bare epochs timed in another fresh process just before
    and just after it (bare, run, bare, run, ..., bare), and compared with the mean of the two,
    so that both sides of the ratio see the machine in the same state: this VM drifts by tens
    of per cent from one minute to the next, and a bracket cancels a steady drift."""
    walls, peaks, own, paired, bares, accuracy, failure = [], [], [], [], [], None, ""
    compile_package()
    before = _ten_bare_epochs_in_child(data_dir)
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            command = [sys.executable, "-c", CHILD, "train", "--data-dir", data_dir, "--out", f"{tmp}/run", "-q"]
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            walls.append(time.perf_counter() - start)
            if done.returncode:
                failure = done.stderr[-500:]
                break
            peak = int(done.stderr.rsplit("PEAK_RSS_KIB", 1)[1].split()[0])
            if peak > 0:
                peaks.append(peak / 1024)
            summary = json.loads(Path(f"{tmp}/run/summary.json").read_text())
            accuracy = summary["test_accuracy"]
            # The run's own ten epochs, timed inside it: the same moment as its wall time.
            own.append(walls[-1] / summary["train_seconds"])
        after = _ten_bare_epochs_in_child(data_dir)
        if before and after:
            bares.append((before + after) / 2)
            paired.append(walls[-1] / bares[-1])
        before = after
    wall = statistics.median(walls)
    return {
        "returncode": 1 if failure else 0, "wall_seconds": wall, "runs": walls, "ten_bare_epochs": 10 * bare_epoch,
        "ratio_to_ten_bare_epochs": wall / (10 * bare_epoch),
        "paired_ten_bare_epochs": bares, "paired_ratios": paired,
        "ratio_to_paired_bare_epochs": statistics.median(paired) if paired else None,
        "ratio_to_own_epochs": statistics.median(own) if own else None, "peak_rss_mib": max(peaks) if peaks else None,
        "test_accuracy": accuracy, "stderr_tail": failure,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("MLPLAB_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per contender (default 5)")
    parser.add_argument("--grid-samples", type=int, default=9000, help="samples per grid epoch (default 9000)")
    parser.add_argument("--min-seconds", type=float, default=2.0,
                        help="more repeats in a grid cell with short epochs, up to this many timed seconds per "
                             "contender (at most 25 epochs; default 2)")
    parser.add_argument("--widths", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--quick", action="store_true", help="2 repeats, 4,500-sample grid epochs, no whole run")
    parser.add_argument("--no-whole-run", action="store_true", help="skip the whole default `mlplab train` run")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results.json"))
    parser.add_argument("--ten-bare-epochs", action="store_true", help=argparse.SUPPRESS)  # the whole run's pair
    args = parser.parse_args(argv)
    if args.ten_bare_epochs:
        print("TEN_BARE_EPOCHS", ten_bare_epochs(args.data_dir))
        return 0
    if args.quick:
        args.repeats, args.grid_samples, args.no_whole_run, args.min_seconds = 2, 4500, True, 0.0
    try:
        import torch

        with_torch = True
        torch_info = {"version": torch.__version__, "threads": torch.get_num_threads()}
    except ImportError:
        with_torch, torch_info = False, None
    names = ["numpy", "torch", "matmul"] if with_torch else ["numpy", "matmul"]

    x, y, x_test, y_test, source = load_data(args.data_dir, 45_000)
    env = {"blas": blas_info(), "torch": torch_info, "numpy": np.__version__, "python": platform.python_version(),
           "cpus": os.cpu_count(), "data": source, "platform": platform.platform()}
    print(f"BLAS: {env['blas']}; torch: {torch_info}; data: {source}; {os.cpu_count()} CPUs")
    report: dict = {"environment": env, "default": None, "grid": [], "evaluation": None, "whole_run": None}

    print(f"\nDefault MLP 3072-128-10, batch 128, {len(x)} samples per epoch, {args.repeats} repeats (seconds per epoch)")
    default = Contenders(x, y, 128, 128, with_torch)
    result = summarise(time_interleaved(default, names, args.repeats))
    report["default"] = result
    for name, t in result["times"].items():
        print(f"  {name:<7} median {t['median']:.3f}  (min {t['min']:.3f}, max {t['max']:.3f})")
    print("  ratios (median of each repeat's): " + ", ".join(f"{k} {v:.2f}" for k, v in result["ratios"].items()))
    print("  ratios of medians:                " + ", ".join(f"{k} {v:.2f}" for k, v in result["ratios_of_medians"].items()))
    print("  ratios of minima:                 " + ", ".join(f"{k} {v:.2f}" for k, v in result["ratios_of_minima"].items()))

    report["evaluation"] = time_evaluation(default, x_test, args.repeats)
    ev = report["evaluation"]
    print(f"\nEvaluation of {len(x_test)} images: numpy {ev['numpy'] * 1e3:.1f} ms"
          + (f", torch {ev['torch'] * 1e3:.1f} ms, ratio {ev['numpy/torch']:.2f}" if "torch" in ev else ""))

    gx, gy = x[: args.grid_samples], y[: args.grid_samples]
    print(f"\nGrid: {len(gx)} samples per epoch, {args.repeats} timed epochs per contender or more, up to "
          f"{args.min_seconds:g} s of them where epochs are short; median seconds per epoch, the median of each repeat's "
          f"ratio, and the ratios of the medians and of the minima")
    print(f"  {'width':>5} {'batch':>5} {'numpy':>8} {'torch':>8} {'matmul':>8} {'np/torch':>9} {'np/matmul':>10}"
          f" {'(of medians':>12} {'of minima)':>11} {'epochs':>7}")
    for width in args.widths:
        for batch in args.batch_sizes:
            cell = summarise(time_interleaved(Contenders(gx, gy, width, batch, with_torch), names, args.repeats,
                                              args.min_seconds))
            cell.update(width=width, batch=batch, repeats=len(cell["times"]["numpy"]["runs"]))
            report["grid"].append(cell)
            t, r = cell["times"], cell["ratios"]
            torch_t = f"{t['torch']['median']:8.3f}" if "torch" in t else f"{'-':>8}"
            print(f"  {width:>5} {batch:>5} {t['numpy']['median']:8.3f} {torch_t} {t['matmul']['median']:8.3f} "
                  f"{r.get('numpy/torch', float('nan')):9.2f} {r['numpy/matmul']:10.2f}"
                  f" {cell['ratios_of_medians']['numpy/matmul']:12.2f} {cell['ratios_of_minima']['numpy/matmul']:11.2f}"
                  f" {cell['repeats']:7d}")

    if not args.no_whole_run and source == "cifar10":
        bare = result["times"]["numpy"]["median"]
        print("\nWhole default run (`mlplab train`, 10 epochs, validation, test, report) in a child process ...")
        report["whole_run"] = whole_run(args.data_dir, bare)
        w = report["whole_run"]
        paired = w["ratio_to_paired_bare_epochs"]
        print(f"  {w['wall_seconds']:.1f} s against ten bare epochs {w['ten_bare_epochs']:.1f} s (from the default "
              f"cell above): ratio {w['ratio_to_ten_bare_epochs']:.2f}")
        print(f"  against ten bare epochs in fresh processes just before and after each run (their mean: "
              f"{', '.join(f'{b:.1f}' for b in w['paired_ten_bare_epochs'])} s): ratios "
              f"{', '.join(f'{r:.2f}' for r in w['paired_ratios'])}, median "
              + (f"{paired:.2f}" if paired else "-") + f"; to the run's own epochs {w['ratio_to_own_epochs']:.2f}")
        print(f"  peak memory {w['peak_rss_mib']:.0f} MiB; test accuracy {w['test_accuracy']}")

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
