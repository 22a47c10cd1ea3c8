"""Optuna, imported when a sweep first needs it and kept quiet while it works.

Optuna is an optional dependency (``mlplab[sweep]``): every module of the sweep package reaches
it through :func:`_optuna`, so a plain install gets one clear line instead of an ImportError.
"""

from __future__ import annotations

import contextlib
import warnings

from mlplab.errors import MissingDependencyError


def _optuna():
    try:
        import optuna
    except ModuleNotFoundError:
        raise MissingDependencyError("mlplab sweep runs on Optuna: pip install 'mlplab[sweep]'") from None
    return optuna


@contextlib.contextmanager
def _optuna_quietly():
    """Optuna's heartbeat is marked experimental and warns on every use; its INFO lines repeat
    what the sweep prints. Both are silenced here (and restored afterwards)."""
    optuna = _optuna()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield optuna
    finally:
        optuna.logging.set_verbosity(verbosity)
