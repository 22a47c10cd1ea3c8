"""Where the hand-derived backend's arrays live: the array library, the device and the data on it.

``--array-library`` picks the namespace (:func:`mlplab.xp.library`), ``--device`` the device
within it. The NumPy generators still draw every random number (initialisation, dropout masks,
shuffling), so a run follows the same trajectory on every library up to rounding; what this
module adds is moving the results there. The training split is copied to the device once when it
fits (:func:`fits_on_device`) and each batch is then gathered there with ``xp.take``; when it does
not fit, or when augmentation (a NumPy transform) has to see every batch, batches are gathered on
the host as before and copied one at a time. Evaluation splits follow the same rule: copied once at
their first evaluation when they fit (``NumpyBackend.predict_logits``), else chunk by chunk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlplab import xp as xpmod
from mlplab.errors import ConfigError

#: the share of the device's free memory the training split may take (the rest is for the model,
#: its activations and the other splits' chunks)
DEVICE_DATA_SHARE = 0.5
#: ``MLPLAB_DEVICE_DATA=0`` keeps the splits on the host (batches are copied one by one), ``1``
#: moves them whatever the estimate says; unset, :func:`fits_on_device` decides
DEVICE_DATA_ENV = "MLPLAB_DEVICE_DATA"


@dataclass(frozen=True)
class Placement:
    """An array library and a device of it: ``xp`` the namespace, ``device`` the library's own
    device object (None: the library's default), ``name`` how the run folder records it."""

    library: str
    xp: Any
    device: Any
    name: str

    @property
    def is_numpy(self) -> bool:
        return self.library == "numpy"

    def asarray(self, array, dtype=None):
        return xpmod.asarray(array, self.xp, device=self.device, dtype=dtype)


def placement(library: str, device: str = "auto") -> Placement:
    """The namespace and device of ``--array-library library --device device``; one line
    (MissingDependencyError naming what to install, ConfigError for a missing GPU) otherwise."""
    xp = xpmod.library(library)
    if library != "numpy":
        xpmod.namespace(xpmod.asarray(np.zeros(1), xp))  # array-api-compat too, or its one line now
    if library == "numpy":  # the CPU whatever --device says (it names the torch twin's device)
        return Placement(library, xp, None, "cpu")
    if library == "array-api-strict":
        if device == "cuda":
            raise ConfigError("--device cuda: array-api-strict computes on the CPU; use --array-library torch or cupy")
        return Placement(library, xp, None, "cpu")
    if library == "torch":
        import torch

        if device in ("auto", "cuda") and torch.cuda.is_available():
            return Placement(
                library, xp, torch.device("cuda", torch.cuda.current_device()), f"cuda:{torch.cuda.current_device()}"
            )
        if device == "cuda":
            why = "this PyTorch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise ConfigError(f"--device cuda: CUDA is not available to torch ({why}); use --device cpu or auto")
        return Placement(library, xp, torch.device("cpu"), "cpu")
    if library == "cupy":
        import cupy

        if device == "cpu":
            raise ConfigError("--device cpu: CuPy arrays live on a GPU; use --array-library numpy or torch for the CPU")
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception:  # noqa: BLE001 - CUDARuntimeError without a driver: the same answer as no device
            count = 0
        if count == 0:
            raise ConfigError("--array-library cupy: no CUDA device is visible; use --array-library numpy or torch")
        current = cupy.cuda.Device()
        return Placement(library, xp, current, f"cuda:{current.id}")
    raise ConfigError(f"--array-library: unknown library {library!r}")  # pragma: no cover - validated before


def free_device_bytes(where: Placement) -> int | None:
    """Free memory of a GPU placement in bytes; None for a CPU (host memory already holds the data)."""
    if where.name == "cpu":
        return None
    if where.library == "torch":
        import torch

        return int(torch.cuda.mem_get_info(where.device)[0])
    if where.library == "cupy":
        import cupy

        return int(cupy.cuda.runtime.memGetInfo()[0])
    return None  # pragma: no cover


def fits_on_device(nbytes: int, free_bytes: int | None, share: float = DEVICE_DATA_SHARE) -> bool:
    """Whether ``nbytes`` of data may be moved to a device with ``free_bytes`` free (None: a CPU
    device, whose arrays share host memory: always)."""
    if free_bytes is None:
        return True
    return nbytes <= share * free_bytes


def split_on_device(where: Placement, x: np.ndarray, y: np.ndarray) -> bool:
    """Whether the split (x, y) goes to the device whole (the environment may force either way)."""
    forced = os.environ.get(DEVICE_DATA_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return fits_on_device(int(x.nbytes + y.nbytes), free_device_bytes(where))


class DeviceBatches:
    """The training batches of one split on a device: the same batches, in the same order and
    from the same draws of the shuffling generator as :func:`mlplab.data.batches`, gathered on
    the device from a copy of the split made once (when it fits)."""

    def __init__(self, where: Placement):
        self.where = where
        self._source: tuple[int, int] | None = None  # ids of the host arrays the copy was made from
        self._arrays: tuple[Any, Any] | None = None
        self.resident: bool | None = None  # whether the last pass gathered on the device (None: no pass yet)

    def _device_split(self, x: np.ndarray, y: np.ndarray):
        key = (id(x), id(y))
        if self._source != key:
            on_device = split_on_device(self.where, x, y)
            self._arrays = (self.where.asarray(x), self.where.asarray(y)) if on_device else None
            self._source = key
        self.resident = self._arrays is not None
        return self._arrays

    def __call__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = False,
        rng=None,
        drop_last: bool = False,
        augment=None,
        start: int = 0,
    ):
        from mlplab.data import batches

        if augment is not None:  # a NumPy transform: it must see every batch on the host
            self.resident, arrays = False, None
        else:
            arrays = self._device_split(x, y)
        if arrays is None:  # per batch: gathered (and augmented) on the host, then copied
            for xb, yb in batches(
                x, y, batch_size, shuffle=shuffle, rng=rng, drop_last=drop_last, augment=augment, start=start
            ):
                yield self.where.asarray(xb), self.where.asarray(yb)
            return
        # The host iterator draws the permutation and checks the arguments; only its order is used
        # here, so the generator advances exactly as on NumPy.
        from mlplab.data.batches import num_batches

        xd, yd = arrays
        total = num_batches(len(x), batch_size, drop_last)
        if not 0 <= start <= total:
            raise ConfigError(f"start must be between 0 and {total} batches in this pass, got {start}")
        n = len(x)
        order = rng.permutation(n) if shuffle else np.arange(n)
        xp = self.where.xp
        for i in range(start, total):
            index = self.where.asarray(order[i * batch_size : min((i + 1) * batch_size, n)])
            yield xp.take(xd, index, axis=0), xp.take(yd, index, axis=0)
