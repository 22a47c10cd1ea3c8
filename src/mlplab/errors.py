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
    """A run folder another process is writing (its lock is taken; exit code 1)."""


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
