"""What a worker runs for one trial: train its configuration into its own run folder (or
continue the stopped run it reruns) and return its best validation accuracy.
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

from mlplab.config import TrainConfig
from mlplab.errors import (
    CheckpointError,
    DataError,
    DivergedError,
    MissingDependencyError,
    MlplabError,
    RunFolderBusy,
    TrainingInterrupted,
)
from mlplab.sweep._optuna import _optuna
from mlplab.sweep.queue import _done, _requeue, _states
from mlplab.sweep.space import Dimension, _format_value

#: short names of options in trial folder names
FOLDER_ABBREVIATIONS = {
    "hidden_dims": "h",
    "batch_size": "bs",
    "weight_decay": "wd",
    "dropout": "drop",
    "momentum": "mom",
    "label_smoothing": "ls",
    "mixup": "mix",
    "use_batch_norm": "bn",
    "warmup_epochs": "warm",
    "epochs": "ep",
    "activation": "",
    "optimizer": "",
    "schedule": "",
    "dataset": "",
}


class _TrialFailed(Exception):
    """A trial that failed for reasons of its configuration (kept as a result, not rerun)."""


class _TrialGivenUp(Exception):
    """A trial this worker finished after another worker had failed it for a lapsed heartbeat."""


def trial_folder_name(number: int, params: dict, dimensions: list[Dimension]) -> str:
    """``trial-003-lr0.1-h512x256``: the trial number, then the swept values."""
    parts = []
    for dimension in dimensions:
        if dimension.name not in params:
            continue
        value = params[dimension.name]
        short = FOLDER_ABBREVIATIONS.get(dimension.name, dimension.flag)
        if isinstance(value, bool):
            parts.append(short if value else f"no-{short}")
        else:
            parts.append(f"{short}{_format_value(value)}")
    text = re.sub(r"[^A-Za-z0-9._+-]", "_", "-".join(parts))[:60].strip("-_")
    return f"trial-{number:03d}" + (f"-{text}" if text else "")


def _describe(params: dict, dimensions: list[Dimension]) -> str:
    return " ".join(f"{d.flag}={_format_value(params[d.name])}" for d in dimensions if d.name in params)


class Objective:
    """What a worker runs for each trial: train one configuration into its own run folder and
    return its best validation accuracy. Data sets are loaded once per worker process."""

    def __init__(self, study, spec: dict, *, out, data_dir=None, echo=print, train=None):
        self.study = study
        self.spec = spec
        self.out = Path(out)
        self.dimensions = [Dimension.from_json(d) for d in spec["dimensions"]]
        base = dict(spec["base"])
        if data_dir is not None:
            base["data_dir"] = str(data_dir)
        self.base = TrainConfig.from_options(base)
        self.echo = echo
        self._train = train
        self._data: dict = {}
        self.trained = 0
        self.host = socket.gethostname()
        #: the trial this worker runs (or ran last)
        self.current = None

    def data_for(self, config: TrainConfig):
        """The data set ``config`` asks for, loaded once per distinct split."""
        from mlplab.training.loop import load_data

        key = (
            config.dataset,
            config.data_dir,
            config.validation_size,
            config.split_seed,
            config.normalization,
            config.whitening,
            config.zca_epsilon if config.whitening == "zca" else None,
            config.pca_components if config.whitening == "pca" else None,
            config.whitening == "pca" and config.augment and config.augment_padding > 0,
        )
        if key not in self._data:
            self._data[key] = load_data(config, for_training=True)
        return self._data[key]

    def _slot_taken(self, trial, slot: int) -> int | None:
        """Another trial already holding ``slot`` (done, or running with a smaller number; not
        the stopped trial this one reruns, which may not be marked failed yet)."""
        states = _states()
        for other in self.study.get_trials(deepcopy=False):
            if other.number in (trial.number, trial.user_attrs.get("retry_of")) or other.user_attrs.get("slot") != slot:
                continue
            if _done(other) or (other.state == states.RUNNING and other.number < trial.number):
                return other.number
        return None

    def _stopped_run(self, trial) -> Path | None:
        """The run folder of the stopped trial that ``trial`` reruns, if it holds an unfinished
        run with a checkpoint on this machine."""
        retry_of = trial.user_attrs.get("retry_of")
        if retry_of is None:
            return None
        for other in self.study.get_trials(deepcopy=False):
            if other.number == retry_of and other.user_attrs.get("run_dir"):
                folder = Path(other.user_attrs["run_dir"])
                if (folder / "last.npz").is_file() and not (folder / "summary.json").exists():
                    return folder
        return None

    def _given_up(self, trial) -> bool:
        """Whether ``trial`` was failed while this worker still ran it: its heartbeat lapsed (a
        paused or overloaded worker) and another worker queued its slot again."""
        states = _states()
        return any(
            t.number == trial.number and t.state != states.RUNNING for t in self.study.get_trials(deepcopy=False)
        )

    def __call__(self, trial):
        optuna = _optuna()
        self.current = trial
        slot = trial.user_attrs.get("slot")
        if slot is None:  # the queue emptied between looking and taking
            trial.set_user_attr("surplus", True)
            raise optuna.TrialPruned("no queued trial was left")
        holder = self._slot_taken(trial, slot)
        if holder is not None:
            trial.set_user_attr("duplicate_of", holder)
            raise optuna.TrialPruned(f"slot {slot} is held by trial {holder}")
        trial.set_user_attr("host", self.host)
        trial.set_user_attr("pid", os.getpid())
        params = {d.name: d.suggest(trial) for d in self.dimensions}
        stopped_dir = self._stopped_run(trial)
        run_dir = stopped_dir or self.out / "trials" / trial_folder_name(trial.number, params, self.dimensions)
        trial.set_user_attr("run_dir", str(run_dir))
        described = _describe(params, self.dimensions)
        started = time.perf_counter()
        try:
            options = {d.name: d.train_value(params[d.name]) for d in self.dimensions}
            config = (
                self.base.updated(options)
                .updated({"out": str(run_dir), "quiet": True, "report": self.spec["report"], "overwrite": True})
                .validated()
            )
            tracking = {}
            if self.base.mlflow or self.base.tensorboard:
                from mlplab.training.tracking import SWEEP_PARENT_ATTR, sweep_trial

                config, listeners = sweep_trial(
                    self.base, config, run_dir, self.study.user_attrs.get(SWEEP_PARENT_ATTR)
                )
                tracking = {"listeners": listeners} if listeners else {}
            data = self.data_for(config)
            if self._train is not None:
                train = self._train
            else:
                from mlplab.training.loop import train
            result = None
            if stopped_dir is not None:
                # The trial this one reruns left a checkpoint: continue it rather than start again.
                self.echo(f"trial {trial.number}: {described}: continuing the stopped run in {stopped_dir}")
                try:
                    result = train(
                        resume=str(stopped_dir), data=data, quiet=True, report=self.spec["report"], **tracking
                    )
                except CheckpointError as exc:
                    run_dir = self.out / "trials" / trial_folder_name(trial.number, params, self.dimensions)
                    trial.set_user_attr("run_dir", str(run_dir))
                    config = config.updated({"out": str(run_dir)})
                    if isinstance(exc, RunFolderBusy):
                        # Its worker is alive (paused or overloaded, so it missed its heartbeats) and
                        # still writes there: never a second writer; this rerun trains in its own folder.
                        holder = (exc.holder or {}).get("pid", "?")
                        self.echo(
                            f"trial {trial.number}: the stopped run in {stopped_dir} is still being written by "
                            f"process {holder}; starting again in {run_dir}"
                        )
                    else:
                        self.echo(f"trial {trial.number}: cannot continue ({exc}); starting again in {run_dir}")
            if result is None:
                result = train(config, data=data, **tracking)
        except TrainingInterrupted as exc:
            _requeue(self.study, trial, self.spec)
            raise TrainingInterrupted(
                f"sweep stopped during trial {trial.number}, which is queued again; finished trials are kept. "
                "Rerun the same command to continue",
                exc.exit_code,
            ) from None
        except KeyboardInterrupt:
            _requeue(self.study, trial, self.spec)
            raise
        except (DataError, CheckpointError, MissingDependencyError, OSError) as exc:
            # This machine's problem (data, disk, a missing package), not the configuration's:
            # the trial goes back to the queue and the worker stops.
            _requeue(self.study, trial, self.spec)
            raise (
                type(exc)(f"trial {trial.number} ({described}): {exc}")
                if isinstance(exc, MlplabError)
                else MlplabError(f"trial {trial.number} ({described}): {exc}")
            ) from None
        except Exception as exc:  # noqa: BLE001 - a bad configuration must not stop the sweep
            seconds = time.perf_counter() - started
            kind = "diverged" if isinstance(exc, DivergedError) else type(exc).__name__
            message = str(exc).splitlines()[0] if str(exc) else kind
            trial.set_user_attr("error", f"{kind}: {message}" if kind != "diverged" else message)
            trial.set_user_attr("seconds", seconds)
            self.trained += 1
            self.echo(f"trial {trial.number}: {described} -> failed: {message}")
            raise _TrialFailed(message) from None
        seconds = time.perf_counter() - started
        if self._given_up(trial):
            # Optuna refuses a result for a failed trial; the rerun of its slot (in its own
            # folder, see docs/sweeps.md) is the one that counts. This run's folder stays complete.
            self.trained += 1
            self.echo(
                f"trial {trial.number}: {described} finished in {run_dir}, but it had been given up after its "
                "heartbeat lapsed and its slot queued again; that rerun's result counts, not this one"
            )
            raise _TrialGivenUp(f"trial {trial.number} was given up while it ran")
        trial.set_user_attr("test_accuracy", result.test_accuracy)  # recorded, never used to choose
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("seconds", seconds)
        self.trained += 1
        self.echo(
            f"trial {trial.number}: {described} -> validation {result.best_val_accuracy:.4f} "
            f"(test {result.test_accuracy:.4f}), {seconds:.1f} s"
        )
        return result.best_val_accuracy
