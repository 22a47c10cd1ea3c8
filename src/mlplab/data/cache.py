"""The decoded-array cache under ``$MLPLAB_CACHE`` (default ``~/.cache/mlplab``).

Layout: ``<root>/<dataset>/<key>/`` holds uncompressed ``.npy`` files and ``meta.json``, where
``key`` is derived from the source's size and checksum, so the same bytes are decoded once
wherever they lie. Hashing a 170 MB archive costs ~0.5 s, so ``<root>/<dataset>/index.json``
maps a source path and its (size, mtime) stamp to the key; a load whose stamp matches skips the
hash. Entries are built in a temporary folder and renamed into place, so a crash never leaves a
half-written entry; ``meta.json`` is written last and marks an entry complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mlplab.data.core import cache_root

META = "meta.json"
INDEX = "index.json"


def dataset_folder(dataset: str, create: bool = True) -> Path:
    folder = cache_root() / dataset
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def lookup(folder: Path, source: str, stamp) -> tuple[Path, dict] | None:
    """The complete cache entry recorded for ``source`` with this ``stamp``, or None."""
    entry = _read_json(folder / INDEX).get(source)
    if not isinstance(entry, dict) or entry.get("stamp") != stamp:
        return None
    return entry_at(folder / str(entry.get("key", "")))


def entry_at(path: Path) -> tuple[Path, dict] | None:
    meta = _read_json(path / META)
    return (path, meta) if meta else None


def remember(folder: Path, source: str, stamp, key: str) -> None:
    """Record ``source`` -> ``key``; a failure to write the index only costs a re-hash later.

    When the file at ``source`` changed, its previous entry is deleted unless another source
    still refers to it, so replacing an archive does not leave 180 MB behind.
    """
    index = _read_json(folder / INDEX)
    previous = index.get(source)
    old = previous.get("key") if isinstance(previous, dict) else None
    index[source] = {"stamp": stamp, "key": key}
    try:
        _write_json(folder / INDEX, index)
    except OSError:
        return
    still_used = {entry.get("key") for entry in index.values() if isinstance(entry, dict)}
    if isinstance(old, str) and old not in still_used and old not in ("", ".", "..") and "/" not in old:
        discard(folder / old)


def new_entry(folder: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=folder, prefix=".building-"))


def commit(building: Path, folder: Path, key: str, meta: dict) -> Path:
    """Write ``meta.json`` and rename the finished entry to ``folder/key``."""
    _write_json(building / META, meta)
    target = folder / key
    try:
        os.rename(building, target)
    except OSError:  # another process built the same entry meanwhile, or a stale one is there
        if entry_at(target) is None:
            shutil.rmtree(target, ignore_errors=True)
            os.rename(building, target)
        else:
            shutil.rmtree(building, ignore_errors=True)
    return target


def discard(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# -- .npy files written piecewise and read in row chunks without memory-mapping -----------------
def open_npy_writer(path: Path, shape: tuple[int, ...], dtype) -> tuple[BinaryIO, int]:
    """An open file with an .npy header for a C-order array, and the byte offset of its data."""
    handle = open(path, "wb")
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(handle, header)
    return handle, handle.tell()


class NpyRows:
    """Reads row ranges of a 2-D .npy file into one reused buffer.

    Plain reads rather than ``mmap``: a memory map would leave every page it touched counted in
    the process's resident memory, adding the whole uint8 file to the peak of a load.
    """

    def __init__(self, path: Path, chunk_rows: int):
        self.handle = open(path, "rb")
        try:
            version = np.lib.format.read_magic(self.handle)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(self.handle)
            self.offset = self.handle.tell()
            if len(shape) != 2 or fortran:
                raise ValueError(f"expected a 2-D C-order array, got shape {shape}")
            expected = self.offset + shape[0] * shape[1] * dtype.itemsize
            actual = os.fstat(self.handle.fileno()).st_size
            if actual != expected:
                raise ValueError(f"size {actual} bytes, expected {expected}")
        except BaseException:
            self.handle.close()
            raise
        self.shape, self.dtype = tuple(shape), dtype
        self.buffer = np.empty((min(chunk_rows, shape[0]), shape[1]), dtype)

    def __call__(self, start: int, stop: int) -> np.ndarray:
        if stop - start > len(self.buffer):
            self.buffer = np.empty((stop - start, self.shape[1]), self.dtype)
        out = self.buffer[: stop - start]
        self.handle.seek(self.offset + start * self.shape[1] * self.dtype.itemsize)
        if self.handle.readinto(out.data.cast("B")) != out.nbytes:
            raise OSError(f"{self.handle.name}: unexpected end of file")
        return out

    def close(self) -> None:
        self.handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _write_json(path: Path, value: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(value, handle, indent=1)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# -- prepared (normalised float32) splits, memory-mapped -----------------------------------------
# Converting the uint8 entry to float32 writes 0.7 GB of fresh memory, and fresh pages are what a
# load pays for: on the VMs this project is measured on, 0.25 s on a good day and over 2 s on a
# bad one, against about 10 ms to map the same arrays from a file the page cache already holds.
# So the float32 splits of each (normalisation, split) variant are saved next to the uint8 entry
# and mapped copy-on-write on later loads: in-place work on them (whitening) still works and
# never reaches the file, and runs going at once share one copy of the data in memory.
PREPARED = "prepared"
#: how many prepared variants one entry keeps (least recently used ones are deleted)
PREPARED_KEEP = 2
#: bumped when the way prepared splits are computed changes, so older ones are not used
PREPARED_FORMAT = 1


def prepared_enabled() -> bool:
    """False when ``MLPLAB_PREPARED_CACHE=0`` asks loads to convert from uint8 every time."""
    return os.environ.get("MLPLAB_PREPARED_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def load_prepared(
    entry: Path, variant: str, shapes: dict[str, tuple[int, int]]
) -> tuple[dict[str, np.ndarray], dict] | None:
    """The float32 arrays ``{name: (rows, features)}`` saved for ``variant`` in ``entry`` (mapped
    copy-on-write) and their meta.json, or None when they are missing, incomplete or of other shapes."""
    if not prepared_enabled():
        return None
    folder = entry / PREPARED / variant
    meta = _read_json(folder / META)
    if meta.get("format") != PREPARED_FORMAT:
        return None
    arrays = {}
    try:
        for name, shape in shapes.items():
            array = np.load(folder / f"{name}.npy", mmap_mode="c")
            if array.shape != tuple(shape) or array.dtype != np.float32:
                raise ValueError(f"{name}.npy has shape {array.shape} and dtype {array.dtype}")
            arrays[name] = np.asarray(array)  # a plain ndarray view; it keeps the mapping alive
        _mark_used(folder)
    except (OSError, ValueError):
        # Damaged (truncated, rewritten): delete it, so that this load saves a sound one.
        # A run that still maps the old files keeps reading them (an unlinked file lives on).
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return arrays, meta


def save_prepared(entry: Path, variant: str, arrays: dict[str, np.ndarray], meta: dict) -> bool:
    """Save ``arrays`` (float32) as ``variant`` of ``entry``; best effort, False when skipped.

    Skipped when disabled, when the disk would keep less than 1 GiB free, or on any OSError: the
    load that asked for it goes on with its arrays in memory. Written in a temporary folder
    renamed into place (``meta.json`` last), then the entry keeps its :data:`PREPARED_KEEP`
    most recently used variants."""
    if not prepared_enabled():
        return False
    root = entry / PREPARED
    target = root / variant
    building = None
    try:
        root.mkdir(exist_ok=True)
        size = sum(array.nbytes for array in arrays.values())
        if shutil.disk_usage(root).free < size + (1 << 30):
            return False
        building = Path(tempfile.mkdtemp(dir=root, prefix=".building-"))
        for name, array in arrays.items():
            np.save(building / f"{name}.npy", array)
        _write_json(building / META, {**meta, "format": PREPARED_FORMAT})
        _mark_used(building)
        if _read_json(target / META).get("format") != PREPARED_FORMAT:
            shutil.rmtree(target, ignore_errors=True)  # an incomplete or outdated earlier try
            os.rename(building, target)
            building = None
        # else another load saved the same variant meanwhile: keep it, drop this copy (finally)
    except OSError:
        return False
    finally:
        if building is not None:
            shutil.rmtree(building, ignore_errors=True)
    _evict_prepared(root, keep=PREPARED_KEEP)
    return True


def _mark_used(folder: Path) -> None:
    # The exact time, not the file system's coarse clock (a few ms), which can tie two loads.
    now = time.time_ns()
    os.utime(folder / META, ns=(now, now))


def _evict_prepared(root: Path, keep: int) -> None:
    """Delete all but the ``keep`` most recently used complete variants under ``root``."""
    variants = []
    for folder in root.iterdir():
        if folder.name.startswith(".building-"):
            try:  # left by a load that was killed while writing; an hour is plenty for one write
                if time.time() - os.stat(folder).st_mtime > 3600:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass
            continue
        try:
            variants.append((os.stat(folder / META).st_mtime_ns, folder.name, folder))
        except OSError:
            continue
    for _, _, folder in sorted(variants, reverse=True)[keep:]:
        shutil.rmtree(folder, ignore_errors=True)
