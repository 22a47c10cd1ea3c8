"""Data-parallel training on torch.distributed (DistributedDataParallel).

``torchrun --nproc_per_node=N -m mlplab train --backend torch ...`` (or ``mlplab train --backend
torch --nproc N``, which launches exactly that) starts N processes. Each builds the same model
from the same seed and draws the same batch order; of every global batch of ``--batch-size``
rows, rank r trains on rows [r·B/N, (r+1)·B/N). DDP averages the gradients, so each step is the
step one process would take on the whole batch: N processes follow the same trajectory as one.
Reported losses and correct counts, and evaluation, are summed over the ranks; only rank 0
writes the run folder. Process groups: gloo on the CPU, NCCL on CUDA.

Known difference from one process: batch normalisation normalises each rank's shard with that
shard's own statistics (as DDP does by default), and dropout masks come from per-rank
generators; runs with either follow a close but not identical trajectory.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from mlplab.errors import ConfigError
from mlplab.torch.backend import TorchBackend


def world() -> tuple[int, int, int]:
    """(rank, local rank, world size) from torchrun's environment; (0, 0, 1) outside it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_distributed() -> bool:
    return world()[2] > 1


class DistributedTorchBackend(TorchBackend):
    """:class:`TorchBackend` on one rank of a DistributedDataParallel run."""

    def __init__(self, config, n_inputs: int, n_classes: int, seed):
        self.rank, self.local_rank, self.world_size = world()
        if config.batch_size % self.world_size:
            raise ConfigError(
                f"--batch-size {config.batch_size} must be divisible by the {self.world_size} processes "
                "(each takes an equal share of every batch)"
            )
        if config.device in ("auto", "cuda") and torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            config = type(config)(**{**config.to_dict(), "device": f"cuda:{self.local_rank}"})
        elif config.device == "auto":
            config = type(config)(**{**config.to_dict(), "device": "cpu"})
        super().__init__(config, n_inputs, n_classes, seed)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.torch_device.type == "cuda" else "gloo")
        # Per-rank dropout masks: the generator's seed is offset by the rank.
        self.generator.manual_seed(self.generator.initial_seed() + self.rank)
        device_ids = [self.torch_device.index] if self.torch_device.type == "cuda" else None
        self.ddp: DistributedDataParallel | None = DistributedDataParallel(self.model, device_ids=device_ids)

    @property
    def forward_module(self):
        return self.ddp  # its backward all-reduces (averages) the gradients

    def _local_batch(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Of the global batch (B rows), rows [r·B/N, (r+1)·B/N) for rank r."""
        per_rank = x.shape[0] // self.world_size
        share = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        return x[share], y[share]

    def _batch_totals(self, loss, correct, rows: int) -> tuple[float, int]:
        """Mean loss and correct count of the whole global batch, summed over the ranks."""
        totals = torch.stack((loss.to(torch.float64) * rows, correct.to(torch.float64)))
        dist.all_reduce(totals)
        loss_sum, correct_sum = totals.tolist()
        return loss_sum / (rows * self.world_size), int(correct_sum)

    def predict_logits(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Logits of all rows: each rank computes a contiguous share, then they are gathered."""
        n = x.shape[0]
        bounds = np.linspace(0, n, self.world_size + 1).astype(int)
        mine = super().predict_logits(x[bounds[self.rank] : bounds[self.rank + 1]], batch_size)
        width = self.model.n_classes
        size = int(np.diff(bounds).max())
        padded = torch.zeros((size, width), dtype=torch.float64, device=self.torch_device)
        padded[: mine.shape[0]] = torch.from_numpy(mine.astype(np.float64)).to(self.torch_device)
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded)
        parts = [g[: bounds[r + 1] - bounds[r]].cpu().numpy() for r, g in enumerate(gathered)]
        return np.concatenate(parts).astype(self.dtype, copy=False)

    def close(self) -> None:
        """Tear the process group down in an order that cannot deadlock: gloo's worker threads
        free finished work (and the Python tensors it holds, which needs the GIL) while the
        barrier waits; only then are DDP's reducer and the group itself destroyed."""
        if dist.is_initialized():
            dist.barrier()
            self.ddp = None
            gc.collect()
            dist.destroy_process_group()


def strip_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N`` (the children must not launch again)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        out.append(arg)
    return out


def launch(args, config) -> int:
    """``mlplab train --nproc N``: run the same command under torchrun with N processes."""
    from mlplab.storage import default_run_dir

    argv = strip_nproc(list(getattr(args, "argv", None) or sys.argv[1:]))
    if "--out" not in argv and not any(a.startswith("--out=") for a in argv):
        # every rank must agree on the run folder: fix it here, once
        argv += ["--out", str(default_run_dir(config.short_name()))]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={config.nproc}",
        "-m",
        "mlplab",
        *argv,
    ]
    env = dict(os.environ)
    # each process gets an equal share of the cores (torchrun would say 1 and warn)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // config.nproc)))
    return subprocess.call(command, env=env)
