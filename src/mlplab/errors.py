"""Typed errors. Library code raises these; only the CLI turns them into exit codes."""

from __future__ import annotations


class MlplabError(Exception):
    """Base class of every error mlplab raises on purpose."""

    exit_code = 1


class ConfigError(MlplabError, ValueError):
    """An option or input that is invalid before any work starts (exit code 2)."""

    exit_code = 2


class DataError(MlplabError):
    """A data set that is missing, unreadable or malformed (exit code 1)."""

    exit_code = 1


class CheckpointError(MlplabError):
    """A checkpoint or run folder that is missing, truncated or incompatible (exit code 1)."""

    exit_code = 1


class RunFolderBusy(CheckpointError):
    """A run folder another process is writing (its lock is taken; exit code 1). ``holder``:
    what the holding process wrote into the lock file (pid, host, command), when it could be read."""

    holder: dict | None = None


class StorageError(CheckpointError, OSError):
    """A file of a run that could not be written: a full, failing, read-only or vanished disk
    (exit code 1). The message names the cause, the file and the space it needed.

    It is also an ``OSError`` so that code which already treats a failed write as an OSError
    (a cache that is only an optimisation, a sweep that requeues a trial) keeps doing so."""

    exit_code = 1

    def __init__(self, message: str, *, errno: int | None = None, path: str | None = None, size: int | None = None):
        super().__init__(message)
        # OSError's own slots, so ``exc.errno`` / ``exc.strerror`` answer as for the original error
        self.errno, self.filename = errno, path
        self.strerror = message
        self.size = size

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):  # pickled back from a report's figure worker with its fields
        return (_storage_error, (self.args[0] if self.args else "", self.errno, self.filename, self.size))


def _storage_error(message, errno, path, size):
    return StorageError(message, errno=errno, path=path, size=size)


class DivergedError(MlplabError):
    """Training produced a non-finite loss (exit code 3)."""

    exit_code = 3


class MissingDependencyError(MlplabError):
    """An optional dependency (an extra) is needed but not installed (exit code 1)."""

    exit_code = 1


class TrainingInterrupted(MlplabError):
    """Training stopped by SIGINT (exit code 130) or SIGTERM (143) after saving a resumable state."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code
