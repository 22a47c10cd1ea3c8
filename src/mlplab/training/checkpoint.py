"""Checkpoints (``.npz``), written atomically (see :mod:`mlplab.storage`, whose helpers this
module re-exports for its older callers).

A checkpoint holds arrays under prefixes — ``model/<state-dict key>``, ``optimizer/<state key>``,
``best/<state-dict key>`` — and one JSON document, ``__meta__``, with everything else (format
version, model config, epoch, history, RNG states, ...). It loads without pickle.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlplab._version import __version__
from mlplab.errors import CheckpointError
from mlplab.storage import _json_default, atomic_write, write_json_atomic, write_text_atomic  # noqa: F401

FORMAT = "mlplab-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``model`` state dict, optional ``optimizer`` and ``best`` state, ``meta``."""

    model: dict[str, np.ndarray]
    meta: dict
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    best: dict[str, np.ndarray] = field(default_factory=dict)
    path: Path | None = None


def save_checkpoint(path, *, model: dict, meta: dict, optimizer: dict | None = None, best: dict | None = None) -> None:
    """Write a checkpoint atomically. ``model``/``optimizer``/``best`` map names to arrays."""
    arrays: dict[str, np.ndarray] = {}
    for prefix, group in (("model", model), ("optimizer", optimizer or {}), ("best", best or {})):
        for key, value in group.items():
            arrays[f"{prefix}/{key}"] = np.asarray(value)
    full_meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "mlplab_version": __version__, **meta}
    arrays["__meta__"] = np.array(json.dumps(full_meta, default=_json_default))
    # numpy's stub reads **arrays as if it could fill allow_pickle (a bool); every key here holds an array
    atomic_write(path, lambda f: np.savez(f, **arrays), size=checkpoint_size(arrays))  # type: ignore[arg-type]


def checkpoint_size(arrays) -> int:
    """About the bytes of an ``.npz`` holding ``arrays`` (stored, not compressed, as np.savez does)."""
    # each member carries a .npy header and two zip headers with its name: about 200 bytes
    return sum(np.asarray(a).nbytes + 200 for a in arrays.values())


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint, or raise CheckpointError saying what is wrong with which file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    if path.is_dir():
        raise CheckpointError(f"{str(path)!r} is a folder, not a checkpoint file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as exc:
        raise CheckpointError(f"{str(path)!r} is not a readable checkpoint (truncated or corrupted: {exc})") from None
    if "__meta__" not in arrays:
        raise CheckpointError(f"{str(path)!r} is not an mlplab checkpoint (no metadata)")
    try:
        meta = json.loads(str(arrays.pop("__meta__")))
    except ValueError:
        raise CheckpointError(f"{str(path)!r} has unreadable metadata") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an mlplab checkpoint")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} was written in checkpoint format {version} (by mlplab {meta.get('mlplab_version')}); "
            f"this mlplab {__version__} reads format {FORMAT_VERSION}"
        )
    groups: dict[str, dict[str, np.ndarray]] = {"model": {}, "optimizer": {}, "best": {}}
    for key, value in arrays.items():
        prefix, _, name = key.partition("/")
        if prefix in groups and name:
            groups[prefix][name] = value
    if not groups["model"]:
        raise CheckpointError(f"{str(path)!r} holds no model weights")
    return Checkpoint(groups["model"], meta, groups["optimizer"], groups["best"], path)


def read_checkpoint_meta(path) -> dict | None:
    """The metadata of the checkpoint at ``path`` without reading its arrays; None when the file
    is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["__meta__"]))
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def checkpoint_path(run_or_file, name: str = "best.npz") -> Path:
    """``run_or_file`` itself if it is a file, else ``run_or_file/name`` (with a clear error)."""
    path = Path(run_or_file)
    if path.is_dir():
        target = path / name
        if not target.exists():
            raise CheckpointError(f"run folder {str(path)!r} holds no {name}")
        return target
    if not path.exists():
        raise CheckpointError(f"no run folder or checkpoint at {str(path)!r}")
    return path


def build_numpy_model(meta: dict, state: dict | None = None):
    """The NumPy MLP described by a checkpoint's ``meta['model_config']`` (weights loaded if given)."""
    from mlplab.models import MLP

    config = dict(meta.get("model_config") or {})
    if not config:
        raise CheckpointError("checkpoint has no model configuration")
    dtype = np.float64 if meta.get("dtype") == "float64" else np.float32
    try:
        model = MLP(config.pop("n_inputs"), config.pop("n_hidden"), config.pop("n_classes"), dtype=dtype, **config)
        if state is not None:
            model.load_state_dict(state)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint does not match the model it describes: {exc}") from None
    return model.eval()


def load_model(run_or_file, name: str = "best.npz"):
    """The NumPy MLP saved in a run folder's ``best.npz`` (or a checkpoint file), in eval mode,
    together with the checkpoint's metadata: ``(model, meta)``."""
    checkpoint = load_checkpoint(checkpoint_path(run_or_file, name))
    return build_numpy_model(checkpoint.meta, checkpoint.model), checkpoint.meta
