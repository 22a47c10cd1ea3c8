"""Seconds per epoch of the hand-derived modules on each array library against the autograd twin.

    python benchmarks/array_library.py --quick                     # CPU: numpy, torch tensors, the twin
    python benchmarks/array_library.py --device cuda --libraries torch cupy   # on a GPU

In one process, on the same data (CIFAR-10 when it can be had, else random data of its shape)
and the same batch order, it times one training epoch of the reference MLP (3072-128-10, ELU,
SGD, batch 128) with:
- ``numpy``: the hand-derived backend on NumPy arrays (the fast path as configured);
- ``<library>``: the same backend with ``--array-library <library>`` (batches gathered on the
  device through the backend's own batch source, as the training loop does);
- ``twin``: the PyTorch autograd twin (``--backend torch``) on the same device.
Contenders are interleaved in a rotating order and repeated; it prints the median seconds per
epoch, min-max, and each contender's median against the twin's, and writes them to a JSON file
(``--json``, default benchmarks/array_library.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from mlplab.config import TrainConfig
from mlplab.data import batches, get_dataset
from mlplab.training.backends import NumpyBackend

REPO = Path(__file__).resolve().parent.parent


def load_data(data_dir: str | None, samples: int):
    """(x, y, source): the first ``samples`` CIFAR-10 training images, else random data of that shape."""
    if data_dir and ((Path(data_dir) / "cifar-10-python.tar.gz").exists() or (Path(data_dir) / "cifar-10-batches-py").is_dir()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = get_dataset("cifar10", data_dir, download=False)
        return data.train.x[:samples], data.train.y[:samples], "cifar10"
    rng = np.random.default_rng(0)
    return rng.standard_normal((samples, 3072), dtype=np.float32), rng.integers(0, 10, samples), "random"


def make_backend(kind: str, device: str, dtype: str):
    """``numpy``, an array library's name (the hand-derived backend on it) or ``twin``."""
    if kind == "twin":
        from mlplab.torch.backend import TorchBackend

        config = TrainConfig(backend="torch", device=device, dtype=dtype).validated()
        return TorchBackend(config, 3072, 10, np.random.SeedSequence(0))
    config = TrainConfig(array_library=kind, device=device if kind != "numpy" else "auto", dtype=dtype).validated()
    return NumpyBackend(config, 3072, 10, np.random.SeedSequence(0))


def synchronise(backend) -> None:
    """Wait for a GPU's queued work, so that an epoch's time is the work's and not its queueing."""
    device = str(getattr(backend, "device", "cpu"))
    if not device.startswith("cuda"):
        return
    library = getattr(backend, "array_library", "torch")
    if library == "cupy":
        import cupy

        cupy.cuda.Device().synchronize()
    else:
        import torch

        torch.cuda.synchronize()


def epoch_seconds(backend, x, y, batch_size: int, seed: int, max_batches: int | None = None) -> float:
    source = getattr(backend, "batches", None) or batches
    rng = np.random.default_rng(seed)
    synchronise(backend)
    started = time.perf_counter()
    loss = 0.0
    for index, (xb, yb) in enumerate(source(x, y, batch_size, shuffle=True, rng=rng, drop_last=True)):
        if max_batches is not None and index == max_batches:
            break
        loss = backend.train_step(xb, yb, 0.01).loss
    synchronise(backend)
    seconds = time.perf_counter() - started
    if not np.isfinite(loss):
        raise SystemExit(f"{getattr(backend, 'array_library', 'twin')}: the loss diverged")
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--libraries", nargs="*", default=["torch"], help="array libraries besides numpy (default torch)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: where the libraries and the twin run")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--samples", type=int, default=45_000, help="images per epoch (default 45,000: a CIFAR-10 epoch)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per contender (default 3)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="9,000-image epochs, 2 repeats")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "array_library.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.repeats = min(args.samples, 9_000), min(args.repeats, 2)
    x, y, source = load_data(args.data_dir, args.samples)
    kinds = (["numpy"] if args.device == "cpu" else []) + list(args.libraries) + ["twin"]
    backends = {kind: make_backend(kind, args.device, args.dtype) for kind in kinds}
    for backend in backends.values():  # warm-up: allocations, kernels, the device copy of the data (made once)
        epoch_seconds(backend, x, y, args.batch_size, 0, max_batches=10)
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for repeat in range(args.repeats):
        order = kinds[repeat % len(kinds):] + kinds[: repeat % len(kinds)]
        for kind in order:
            times[kind].append(epoch_seconds(backends[kind], x, y, args.batch_size, repeat))
    twin = statistics.median(times["twin"])
    rows = {}
    print(f"{args.samples} {source} images per epoch, batch {args.batch_size}, {args.dtype}, device {args.device}, "
          f"{args.repeats} repeats (seconds per epoch)")
    for kind in kinds:
        median = statistics.median(times[kind])
        label = kind if kind in ("numpy", "twin") else f"hand-derived on {kind}"
        rows[kind] = {"median": median, "min": min(times[kind]), "max": max(times[kind]), "vs_twin": median / twin,
                      "device": str(getattr(backends[kind], "device", "cpu"))}
        print(f"  {label:<28} {median:8.3f} s  ({min(times[kind]):.3f}-{max(times[kind]):.3f})  "
              f"{median / twin:5.2f}x the twin's time")
    result = {"samples": args.samples, "data": source, "batch_size": args.batch_size, "dtype": args.dtype,
              "device": args.device, "repeats": args.repeats, "python": sys.version.split()[0],
              "platform": platform.platform(), "seconds_per_epoch": rows}
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
