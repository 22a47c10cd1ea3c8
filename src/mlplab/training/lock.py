"""One writer per run folder: an exclusive OS lock on ``RUN_DIR/.lock``.

Every command that writes into a run folder (``train``, ``train --resume``, ``train --overwrite``,
``report``, ``hessian``) holds the lock for as long as it writes; a second one is refused at once
with a line naming the holder. Reading commands (``evaluate``, ``report --out`` elsewhere) never
take it.

The lock is ``flock(2)`` on an open descriptor, so the kernel drops it when the holder's last
descriptor closes: a process that crashed or was killed with ``kill -9`` leaves no stale lock,
and the next command takes it at once. The holder writes its pid, host and command into the file
only so that whoever is refused can say who holds it; the file itself is never removed (unlinking
it would let a newcomer lock a fresh file of the same name while an old holder still writes).

Inside one process the lock is re-entrant for the thread that holds it (``train`` writes its
report through :func:`mlplab.report.write_report`, which takes the lock too).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shlex
import socket
import sys
import threading
import time
import warnings
from pathlib import Path

from mlplab.errors import CheckpointError, RunFolderBusy

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock, run folders are not locked
    fcntl = None  # type: ignore[assignment]  # checked before every use

LOCK_NAME = ".lock"
#: how long a refused process waits for a holder that has the lock but has not yet written its name
_NAME_WAIT_SECONDS = 0.5

_registry_guard = threading.Lock()
_held: dict[str, RunLock] = {}


class RunLock:
    """The lock on one run folder, held by this process. ``release()`` once per acquire."""

    def __init__(self, folder: Path, key: str | None = None, fd: int | None = None):
        self.folder = folder
        self.key = key
        self.fd = fd
        self.thread = threading.get_ident()
        self.count = 1

    @property
    def locked(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        if self.fd is None:
            return
        with _registry_guard:
            self.count -= 1
            if self.count > 0:
                return
            if self.key is not None:
                _held.pop(self.key, None)
            fd, self.fd = self.fd, None
        with contextlib.suppress(OSError):
            # An empty file tells a process that finds the lock taken by a newcomer, before the
            # newcomer wrote its name, not to name this (finished) holder instead.
            os.ftruncate(fd, 0)
        os.close(fd)  # drops the flock

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder_info() -> dict:
    """What this process writes into the lock file: pid, host, command line, start time."""
    argv = list(sys.argv) or ["python"]
    program = Path(argv[0]).name
    if program == "__main__.py":  # python -m mlplab ...
        program = f"python -m {Path(argv[0]).resolve().parent.name}"
    elif program == "-c":
        program = "python -c"
    command = " ".join([program, *(shlex.quote(arg) for arg in argv[1:])]).replace("\n", " ")  # the message is one line
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command if len(command) <= 300 else command[:297] + "...",
        "since": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_holder(fd: int) -> dict | None:
    """The holder's record, waiting briefly for one that has locked but not yet written it."""
    deadline = time.monotonic() + _NAME_WAIT_SECONDS
    while True:
        try:
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            info = json.loads(text) if text.strip() else None
        except (OSError, ValueError):
            info = None
        # A record left by a killed holder names a dead process: the new holder is still about
        # to write its own.
        if (
            isinstance(info, dict)
            and isinstance(info.get("pid"), int)
            and (info.get("host") != socket.gethostname() or _alive(info["pid"]))
        ):
            return info
        if time.monotonic() >= deadline:
            return info if isinstance(info, dict) else None
        time.sleep(0.02)


def _busy(folder: Path, info: dict | None) -> RunFolderBusy:
    error = RunFolderBusy(busy_message(folder, info))
    error.holder = info
    return error


def busy_message(folder: Path, info: dict | None) -> str:
    """``run folder 'R' is being written by process 123 (mlplab train ...) since ...; ...``"""
    if not info:
        who = "another process"
    else:
        who = f"process {info.get('pid', '?')}"
        if info.get("host") and info.get("host") != socket.gethostname():
            who += f" on {info['host']}"
        if info.get("command"):
            who += f" ({info['command']})"
        if info.get("since"):
            who += f" since {info['since']}"
    return f"run folder {str(folder)!r} is being written by {who}; wait for it to finish or stop it first"


def lock_run_dir(run_dir, *, create: bool = False) -> RunLock:
    """Take the lock on ``run_dir`` without waiting, or raise :class:`RunFolderBusy` naming the
    process that holds it. ``create``: make the folder first. A folder that does not exist (and
    is not created) or cannot be written gets a lock that locks nothing: whatever the caller
    does there next fails with its own message."""
    folder = Path(run_dir)
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"cannot create run folder {str(folder)!r}: {exc.strerror or exc}") from None
    if fcntl is None or not folder.is_dir():
        return RunLock(folder)
    key = os.path.realpath(folder)
    with _registry_guard:
        held = _held.get(key)
        if held is not None:
            if held.thread != threading.get_ident():
                raise _busy(folder, {**holder_info(), "command": "another thread of this process"})
            held.count += 1
            return held
        try:
            fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError:
            return RunLock(folder)  # read-only folder: nothing can be written there anyway
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read_holder(fd)
            os.close(fd)
            raise _busy(folder, info) from None
        except OSError as exc:  # a file system without locks (some network mounts)
            os.close(fd)
            warnings.warn(
                f"cannot lock run folder {str(folder)!r} ({exc.strerror or exc}); "
                "make sure no other process writes into it",
                stacklevel=2,
            )
            return RunLock(folder)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder_info()) + "\n").encode("utf-8"), 0)
        held = RunLock(folder, key, fd)
        _held[key] = held
        return held
