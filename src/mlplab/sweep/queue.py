"""The queue: every slot of a sweep is enqueued as a waiting trial; a slot is held while its
trial is done, queued or running, and is queued again when its worker stops or dies.
"""

from __future__ import annotations

import time

from mlplab.sweep._optuna import _optuna, _optuna_quietly
from mlplab.sweep.spec import _random_draws, planned_params, read_spec, slot_order


def _states():
    return _optuna().trial.TrialState


def _done(trial) -> bool:
    """A finished result: complete, or failed with a recorded reason (a divergence, say)."""
    states = _states()
    return trial.state == states.COMPLETE or (trial.state == states.FAIL and "error" in trial.user_attrs)


def _holds_slot(trial) -> bool:
    """Whether ``trial`` accounts for its slot: done, queued or running."""
    states = _states()
    if "slot" not in trial.user_attrs:
        return False
    return _done(trial) or trial.state in (states.WAITING, states.RUNNING)


def _enqueue_slot(study, spec: dict, slot: int, *, retry_of: int | None = None, params: dict | None = None) -> None:
    user_attrs = {"slot": int(slot)}
    if retry_of is not None:
        user_attrs["retry_of"] = int(retry_of)
    if params is None:
        params = planned_params(spec, slot)
    study.enqueue_trial(params, user_attrs=user_attrs)


def _requeue(study, trial, spec: dict | None = None) -> None:
    """Queue ``trial``'s slot again (its worker stopped or died before it finished)."""
    slot = trial.user_attrs.get("slot")
    if slot is None:
        return
    spec = spec or read_spec(study)
    params = dict(trial.params) if spec["search"] == "tpe" else None  # a TPE draw reruns as drawn
    _enqueue_slot(study, spec, slot, retry_of=trial.number, params=params)


def _requeue_stale_trial(study, trial) -> None:
    """Optuna's callback for a trial failed for a stale heartbeat (its worker is gone)."""
    if "slot" in trial.user_attrs and "error" not in trial.user_attrs:
        _requeue(study, trial)


def plan(study, spec: dict) -> int:
    """Queue every slot of the sweep that has no trial done, queued or running; return how
    many were queued. Planning twice queues nothing new."""
    held = {t.user_attrs["slot"] for t in study.get_trials(deepcopy=False) if _holds_slot(t)}
    missing = [slot for slot in slot_order(spec) if slot not in held]
    if spec["search"] == "random" and missing:
        draws = _random_draws(spec, max(missing) + 1)
        for slot in missing:
            _enqueue_slot(study, spec, slot, params=draws[slot])
    else:
        for slot in missing:
            _enqueue_slot(study, spec, slot)
    return len(missing)


def _fail_abandoned(study, spec: dict) -> None:
    """Fail and requeue stale trials: Optuna's heartbeat check, plus running trials that never
    started their objective (no heartbeat was ever sent, so Optuna would wait for them forever)."""
    optuna = _optuna()
    with _optuna_quietly():
        optuna.storages.fail_stale_trials(study)
    states = _states()
    limit = max(60, 6 * spec["heartbeat"])
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
        if "host" in trial.user_attrs or trial.datetime_start is None:
            continue
        if now - trial.datetime_start.timestamp() > limit:
            try:  # only the worker whose update succeeds queues the slot again
                study.tell(trial.number, state=states.FAIL)
            except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
                continue
            _requeue(study, trial, spec)
