"""Writing a run's files: atomically, and with a full or failing disk as one clear error.

Every file mlplab keeps is written to a temporary file in the same folder, flushed and fsynced,
then renamed over the target, and the folder is fsynced: a crash or ``kill -9`` at any moment
leaves either the previous file or the new one, never a torn one. When the disk refuses (full,
failing, read-only, or the folder removed meanwhile) the temporary file is removed, the previous
file stays as it was, and the ``OSError`` becomes a :class:`~mlplab.errors.StorageError` that
says what happened, to which file, and how much space the file needed::

    no space left on device while writing R/last.npz (needs about 35 MB, 20 MB free)
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from mlplab.errors import StorageError

#: what an errno means for someone whose run just stopped; others use the system's wording
_MEANINGS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system",
    errno.EIO: "input/output error (a failing disk or a lost network mount)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOENT: "no such file or folder",
}

#: errors where the free space is worth printing beside the size needed
_FULL = (errno.ENOSPC, errno.EDQUOT)


def format_size(size: float) -> str:
    """``17 MB``, ``3.4 MB``, ``812 kB``, ``90 bytes`` (decimal units, as ``df -H`` prints them)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{int(size)} bytes"


def free_space(folder) -> int | None:
    """Bytes free for this user on the file system holding ``folder`` (None when unknown)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def storage_error(exc: OSError, path, *, size: int | None = None, action: str = "writing") -> StorageError:
    """The :class:`StorageError` for ``exc``, raised while ``action`` (writing, removing, ...) ``path``."""
    if isinstance(exc, StorageError):
        return exc
    path = Path(path)
    meaning = (exc.errno is not None and _MEANINGS.get(exc.errno)) or (
        exc.strerror or str(exc) or type(exc).__name__
    ).lower()
    message = f"{meaning} while {action} {path}"
    details = []
    if size is not None:
        details.append(f"needs about {format_size(size)}")
    if exc.errno in _FULL:
        free = free_space(path.parent)
        if free is not None:
            details.append(f"{format_size(free)} free")
    if details:
        message += f" ({', '.join(details)})"
    if exc.errno == errno.ENOENT and not path.parent.is_dir():
        message += f"; the folder {path.parent} no longer exists"
    return StorageError(message, errno=exc.errno, path=str(path), size=size)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable. A folder that cannot be opened or synced (some network
    # and Windows file systems) is not an error: the file's own data is already on disk.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


#: permissions of the files mlplab writes: what open() would give (mkstemp alone makes them 0600)
FILE_MODE = 0o666 & ~_umask()


def atomic_write(path, write, mode: str = "wb", *, size: int | None = None) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it into place.

    ``size``: about how many bytes ``write`` writes, for the message when the disk is full.
    An ``OSError`` on the way (also one raised by ``write``) becomes a :class:`StorageError`;
    the temporary file is removed and a previous ``path`` is left untouched."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:  # the folder itself is gone or unwritable: nothing is left behind there
                pass
        if isinstance(exc, OSError):
            raise storage_error(exc, path, size=size) from exc
        raise
    _fsync_dir(folder)


def write_bytes_atomic(path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data), size=len(data))


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value):
    import numpy as np

    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# -- run folders: named here, below every layer that creates one (training, torch's launcher, sweeps)
def stamped_dir(root: str, prefix: str = "", name: str = "") -> Path:
    """``root/<prefix><date-time>[-<name>]``, with ``-2``, ``-3``, … appended while that exists."""
    base = prefix + _dt.datetime.now().strftime("%Y%m%d-%H%M%S") + (f"-{name}" if name else "")
    path, suffix = Path(root) / base, 1
    while path.exists():
        suffix += 1
        path = Path(root) / f"{base}-{suffix}"
    return path


def default_run_dir(short_name: str, root: str = "runs") -> Path:
    return stamped_dir(root, name=short_name)
