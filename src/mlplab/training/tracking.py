"""TensorBoard and MLflow: listeners that send a run's numbers to the tools people watch runs in.

Both are off by default and optional extras (``pip install "mlplab[tracking]"``):

- :class:`TensorBoardListener` (``--tensorboard [DIR]``) writes event files into DIR (default
  ``RUN_DIR/tensorboard``) with the TensorBoard package's own writer, so neither TensorFlow nor
  torch is needed: the ``history.csv`` columns (``HISTORY_METRICS``) at step = epoch,
  ``step_loss`` at every global step and, at the end, ``test_accuracy`` and the options as the
  hparams plugin's session.
- :class:`MlflowListener` (``--mlflow [URI]``) logs one MLflow run through ``MlflowClient``:
  the options as params, the same metrics, and the report, figures and ``best.npz`` as
  artifacts. Its run id is kept in ``RUN_DIR/mlflow.json`` so ``--resume`` continues that run.

**No point twice.** A resumed run asks what was logged already (the event files, the run's
metric history), logs the epochs and steps of its restored history that are missing (a run killed
between its checkpoint and its next write loses none) and skips every step at or before the last
one logged. Steps that a killed run logged past its checkpoint stay as first logged.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from mlplab.errors import ConfigError, MissingDependencyError, MlplabError
from mlplab.training.hooks import Listener

#: the history.csv columns sent to both trackers, at step = epoch (same names)
HISTORY_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")
STEP_METRIC = "step_loss"
TEST_METRIC = "test_accuracy"
#: options that say where the numbers go rather than how the model trains (never logged as params)
TRACKING_OPTIONS = ("tensorboard", "mlflow", "mlflow_experiment")
#: the file in the run folder that records the run's MLflow run
MLFLOW_RECORD = "mlflow.json"
#: the study attribute holding the id of a sweep's parent MLflow run
SWEEP_PARENT_ATTR = "mlflow_parent_run_id"
#: files of the run folder uploaded as MLflow artifacts when they exist
ARTIFACTS = ("report.md", "report.html", "best.npz", "summary.json", "config.json", "history.csv")

TENSORBOARD_HINT = "--tensorboard needs the tensorboard package; install it with: pip install 'mlplab[tensorboard]'"
MLFLOW_HINT = "--mlflow needs MLflow; install it with: pip install 'mlplab[mlflow]'"


# =============================================================================================
# checks before any work
# =============================================================================================
def _tensorboard_modules():
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.hparams import summary_v2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise MissingDependencyError(TENSORBOARD_HINT) from None
    return EventFileWriter, event_pb2, summary_pb2, summary_v2


def _mlflow_client(uri):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise MissingDependencyError(MLFLOW_HINT) from None
    for name in ("mlflow.store.db.utils", "alembic"):
        # "Creating initial MLflow database tables..." on every new store; keep the CLI's output ours
        quiet = logging.getLogger(name)
        if quiet.level == logging.NOTSET:
            quiet.setLevel(logging.WARNING)
    with mlflow_errors():
        return MlflowClient(tracking_uri=uri if isinstance(uri, str) else None)


class mlflow_errors:
    """MLflow's failures (an unreachable server, a refused store, a missing database driver) as
    one :class:`MlplabError` line."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, MlplabError) or not isinstance(exc, Exception):
            return False
        if isinstance(exc, ImportError):
            missing = getattr(exc, "name", None) or str(exc)
            raise MissingDependencyError(
                f"--mlflow: this tracking store needs the {missing!r} module; "
                "install it with: pip install 'mlplab[mlflow]'"
            ) from None
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise MlplabError(f"--mlflow: {message}") from None


def tensorboard_dir(option, run_dir) -> Path | None:
    """Where ``--tensorboard`` (``option``) writes: its folder, else ``RUN_DIR/tensorboard``;
    None when off."""
    if not option:
        return None
    if isinstance(option, str):
        return Path(option)
    if run_dir is None:
        raise ConfigError(
            "--tensorboard without a folder writes into the run folder; give --out, or a folder: --tensorboard DIR"
        )
    return Path(run_dir) / "tensorboard"


def event_files(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("events.out.tfevents.*")) if Path(folder).is_dir() else []


def check_tracking(config, run_dir, *, resumed: bool = False) -> None:
    """Stop before training when a tracker asked for cannot work: its package is missing, or
    ``--tensorboard DIR`` holds another run's event files (``--overwrite`` removes them)."""
    if config.tensorboard:
        _tensorboard_modules()
        folder = tensorboard_dir(config.tensorboard, run_dir)
        assert folder is not None  # config.tensorboard is set, so there is a folder
        if not resumed and event_files(folder):
            if not config.overwrite:
                raise ConfigError(
                    f"--tensorboard {str(folder)!r} already holds the event files of another run; give each "
                    "run its own folder (tensorboard --logdir takes their parent) or pass --overwrite"
                )
            for path in event_files(folder):
                path.unlink()
    if config.mlflow:
        try:
            import mlflow.tracking  # noqa: F401
        except ImportError:
            raise MissingDependencyError(MLFLOW_HINT) from None


# =============================================================================================
# what is logged
# =============================================================================================
def option_values(config) -> dict:
    """The training options as TensorBoard hparams / MLflow params: numbers, booleans and
    strings, widths written ``128x64`` as on the command line; the trackers' own options left out."""
    values = {}
    for name, value in config.to_dict().items():
        if name in TRACKING_OPTIONS:
            continue
        if isinstance(value, (list, tuple)):
            value = "x".join(str(v) for v in value) or "none"
        values[name] = value
    return values


def history_points(trainer, after: dict) -> list[tuple[str, int, float]]:
    """(name, epoch, value) of the restored history's metrics logged after ``after[name]``."""
    points = []
    for row in trainer.history:
        for name in HISTORY_METRICS:
            if row.get(name) is not None and row["epoch"] > after.get(name, 0):
                points.append((name, int(row["epoch"]), float(row[name])))
    return points


def step_points(trainer, after: int) -> list[tuple[int, float]]:
    """(step, loss) from ``steps.csv`` for the steps after ``after`` up to the restored step
    (the losses before a resume are not in the checkpoint, only in the run folder)."""
    if trainer.run_dir is None or after >= trainer.global_step:
        return []
    from mlplab.training.run import read_csv

    return [
        (int(row["step"]), float(row["loss"]))
        for row in read_csv(Path(trainer.run_dir) / "steps.csv")
        if after < row["step"] <= trainer.global_step
    ]


# =============================================================================================
# TensorBoard
# =============================================================================================
class TensorBoardListener(Listener):
    """Writes TensorBoard event files (see the module's docstring). ``log_dir``: a folder, or
    True for ``RUN_DIR/tensorboard``."""

    def __init__(self, log_dir=True):
        self.log_dir = log_dir
        self.folder: Path | None = None
        self.writer = None
        self.last: dict[str, int] = {}

    def _scalar(self, name: str, step: int, value: float) -> None:
        summary = self.summary_pb2.Summary(value=[self.summary_pb2.Summary.Value(tag=name, simple_value=float(value))])
        self.writer.add_event(self.event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))
        self.last[name] = max(self.last.get(name, 0), int(step))

    def logged_steps(self) -> dict[str, int]:
        """The last step of each tag in the event files already in the folder."""
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        last: dict[str, int] = {}
        folder = self.folder
        assert folder is not None  # set by on_train_start before this is called
        for path in event_files(folder):
            try:
                for event in EventFileLoader(str(path)).Load():
                    for value in event.summary.value:
                        last[value.tag] = max(last.get(value.tag, 0), int(event.step))
            except Exception:  # noqa: BLE001 - a file cut short by a crash: keep what was read
                continue
        return last

    def on_train_start(self, trainer) -> None:
        EventFileWriter, self.event_pb2, self.summary_pb2, self.hparams = _tensorboard_modules()
        folder = tensorboard_dir(self.log_dir, trainer.run_dir)
        assert folder is not None  # the listener exists only when --tensorboard is on
        self.folder = folder
        resumed = trainer.global_step > 0
        self.last = self.logged_steps() if resumed else {}
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.writer = self._new_writer(EventFileWriter)
        except OSError as exc:
            raise MlplabError(
                f"--tensorboard: cannot write event files in {str(self.folder)!r}: {exc.strerror or exc}"
            ) from None
        for name, epoch, value in history_points(trainer, self.last):
            self._scalar(name, epoch, value)
        for step, loss in step_points(trainer, self.last.get(STEP_METRIC, 0)):
            self._scalar(STEP_METRIC, step, loss)

    def _new_writer(self, EventFileWriter):
        """A writer whose file sorts after the files already there. TensorBoard reads a folder's
        files in name order and drops the points after a step that goes backwards; the name is
        ``events.out.tfevents.<second>.<host>.<pid>.<counter>`` with the pid and counter not
        zero-padded, so a resume within the same second could sort first. Then wait for the next
        second (only a resume started within a second of the last writer can meet this)."""
        existing = event_files(self.folder)
        while True:
            writer = EventFileWriter(str(self.folder))
            (path,) = set(event_files(self.folder)) - set(existing)
            if not existing or path.name > existing[-1].name:
                return writer
            writer.close()
            path.unlink()
            time.sleep(1.0 - time.time() % 1.0 + 0.01)

    def on_step(self, trainer, loss: float) -> None:
        if trainer.global_step > self.last.get(STEP_METRIC, 0):
            self._scalar(STEP_METRIC, trainer.global_step, loss)

    def on_epoch_end(self, trainer, row: dict) -> None:
        for name in HISTORY_METRICS:
            if row[name] is not None and row["epoch"] > self.last.get(name, 0):
                self._scalar(name, row["epoch"], row[name])
        self.writer.flush()

    def on_train_end(self, trainer, result) -> None:
        self._scalar(TEST_METRIC, trainer.epoch, result.test_accuracy)
        hparams = {k: v for k, v in option_values(trainer.config).items() if v is not None}
        # The hparams plugin takes a run's latest session: a resumed run's options replace the first.
        self.writer.add_event(
            self.event_pb2.Event(
                wall_time=time.time(), step=int(trainer.epoch), summary=self.hparams.hparams_pb(hparams)
            )
        )
        self.writer.flush()

    def _flush(self, trainer, *args) -> None:
        if self.writer is not None:
            self.writer.flush()

    on_interrupt = on_diverged = _flush

    def close(self, trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# =============================================================================================
# MLflow
# =============================================================================================
def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name)
        except Exception:  # another process (a sweep worker) created it first
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise MlplabError(
            f"--mlflow-experiment {name!r} is deleted in this tracking store; restore it or choose another name"
        )
    return experiment.experiment_id


def _metric(name: str, value: float, step: int):
    from mlflow.entities import Metric

    return Metric(name, float(value), int(time.time() * 1000), int(step))


class MlflowListener(Listener):
    """Logs the run to MLflow (see the module's docstring). ``tracking_uri``: a URI, or True for
    MLflow's default (``MLFLOW_TRACKING_URI`` when set); ``parent_run_id``: nests the run (a
    sweep's trial under the sweep's run)."""

    #: MLflow takes at most this many metrics in one log_batch call
    BATCH = 1000

    def __init__(self, tracking_uri=True, experiment: str = "mlplab", *, parent_run_id: str | None = None):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self.client: Any = None  # an MlflowClient once on_train_start has run
        self.run_id: str | None = None
        self.ended = False
        self.last: dict[str, int] = {}
        self.pending: list = []

    def _record(self, trainer) -> Path | None:
        return Path(trainer.run_dir) / MLFLOW_RECORD if trainer.run_dir is not None else None

    def _previous_run(self, trainer):
        """The run this run folder logged to before a resume, if the store still has it."""
        import json

        record = self._record(trainer)
        if trainer.global_step == 0 or record is None or not record.exists():
            return None
        try:
            run_id = json.loads(record.read_text())["run_id"]
        except (ValueError, KeyError, OSError):
            return None
        try:
            return self.client.get_run(run_id)
        except Exception:  # noqa: BLE001 - another store, or a deleted run: start a new one
            return None

    def on_train_start(self, trainer) -> None:
        from mlflow.entities import Param

        from mlplab.training.checkpoint import write_json_atomic

        self.client = _mlflow_client(self.tracking_uri)
        params = {k: "none" if v is None else str(v) for k, v in option_values(trainer.config).items()}
        with mlflow_errors():
            run = self._previous_run(trainer)
            if run is not None:
                self.run_id = run.info.run_id
                self.client.update_run(self.run_id, status="RUNNING")
                logged = dict(run.data.params)
                self.last = {
                    name: max((m.step for m in self.client.get_metric_history(self.run_id, name)), default=0)
                    for name in (*HISTORY_METRICS, STEP_METRIC)
                }
                # MLflow refuses to change a param: an option changed on resume (--epochs) becomes a tag
                changed = {f"resumed.{k}": v for k, v in params.items() if k in logged and logged[k] != v}
                for key, value in changed.items():
                    self.client.set_tag(self.run_id, key, value)
                params = {k: v for k, v in params.items() if k not in logged}
            else:
                tags = {
                    "mlflow.source.name": "mlplab",
                    "mlplab.backend": trainer.backend.name,
                    "mlplab.dataset": trainer.data.name,
                }
                if self.parent_run_id:
                    tags["mlflow.parentRunId"] = self.parent_run_id
                if trainer.run_dir is not None:
                    tags["mlplab.run_dir"] = str(Path(trainer.run_dir).resolve())
                name = Path(trainer.run_dir).name if trainer.run_dir is not None else None
                run = self.client.create_run(_experiment_id(self.client, self.experiment), run_name=name, tags=tags)
                self.run_id = run.info.run_id
                self.last = {}
            items = [Param(k, v) for k, v in params.items()]
            for start in range(0, len(items), 100):  # MLflow's limit of params per call
                self.client.log_batch(self.run_id, params=items[start : start + 100])
        record = self._record(trainer)
        if record is not None:
            write_json_atomic(
                record, {"run_id": self.run_id, "experiment": self.experiment, "experiment_id": run.info.experiment_id}
            )
        self.pending = [_metric(n, v, e) for n, e, v in history_points(trainer, self.last)]
        self.pending += [
            _metric(STEP_METRIC, loss, step) for step, loss in step_points(trainer, self.last.get(STEP_METRIC, 0))
        ]
        self._send()

    def _send(self) -> None:
        with mlflow_errors():
            for start in range(0, len(self.pending), self.BATCH):
                self.client.log_batch(self.run_id, metrics=self.pending[start : start + self.BATCH])
        self.pending = []

    def on_step(self, trainer, loss: float) -> None:
        # Sent in batches at the epoch's end: one call per step costs a database write each.
        if trainer.global_step > self.last.get(STEP_METRIC, 0):
            self.pending.append(_metric(STEP_METRIC, loss, trainer.global_step))

    def on_epoch_end(self, trainer, row: dict) -> None:
        self.pending += [
            _metric(name, row[name], row["epoch"])
            for name in HISTORY_METRICS
            if row[name] is not None and row["epoch"] > self.last.get(name, 0)
        ]
        self._send()

    def _end(self, status: str) -> None:
        if self.run_id is not None and not self.ended:
            self.ended = True
            with mlflow_errors():
                self.client.set_terminated(self.run_id, status=status)

    def on_interrupt(self, trainer) -> None:
        self._send()
        self._end("KILLED")

    def on_diverged(self, trainer) -> None:
        self._send()
        self._end("FAILED")

    def on_train_end(self, trainer, result) -> None:
        from mlplab.training.run import FIGURES

        self.pending.append(_metric(TEST_METRIC, result.test_accuracy, trainer.epoch))
        self._send()
        if trainer.run_dir is not None:
            run_dir = Path(trainer.run_dir)
            with mlflow_errors():
                for name in (*ARTIFACTS, *FIGURES.values()):
                    if (run_dir / name).is_file():
                        self.client.log_artifact(self.run_id, str(run_dir / name))
        self._end("FINISHED")

    def close(self, trainer) -> None:
        if self.run_id is not None and not self.ended:
            try:
                self._end("FAILED")  # an error no other hook saw
            except MlplabError:
                pass  # the error that ended training is the one to report


def default_tracking_listeners(config) -> list:
    """The listeners ``--tensorboard`` and ``--mlflow`` ask for (none by default)."""
    listeners: list = []
    if config.tensorboard:
        listeners.append(TensorBoardListener(config.tensorboard))
    if config.mlflow:
        listeners.append(MlflowListener(config.mlflow, config.mlflow_experiment))
    return listeners


# =============================================================================================
# sweeps: one MLflow run per trial, nested under the sweep's run
# =============================================================================================
def start_sweep_run(study, spec: dict) -> str | None:
    """Create the sweep's parent MLflow run (or find the one a rerun of the sweep made) and keep
    its id in the study, where every worker reads it. None when the sweep does not use MLflow."""
    base = spec["base"]
    if base.get("tensorboard"):
        _tensorboard_modules()
    if not base.get("mlflow"):
        return None
    client = _mlflow_client(base["mlflow"])
    with mlflow_errors():
        run_id = study.user_attrs.get(SWEEP_PARENT_ATTR)
        if run_id is not None:
            try:
                client.update_run(client.get_run(run_id).info.run_id, status="RUNNING")
                return run_id
            except Exception:  # noqa: BLE001 - another store: a new parent run
                pass
        experiment_id = _experiment_id(client, base.get("mlflow_experiment") or "mlplab")
        run = client.create_run(
            experiment_id,
            run_name=study.study_name,
            tags={"mlflow.source.name": "mlplab sweep", "mlplab.search": spec["search"]},
        )
        from mlflow.entities import Param

        params = [
            Param(f"sweep.{d['name']}", str(d.get("values") or [d.get("low"), d.get("high")]))
            for d in spec["dimensions"]
        ]
        params += [Param("sweep.trials", str(spec["trials"])), Param("sweep.seed", str(spec["seed"]))]
        client.log_batch(run.info.run_id, params=params)
    study.set_user_attr(SWEEP_PARENT_ATTR, run.info.run_id)
    return run.info.run_id


def sweep_trial(base, config, run_dir: Path, parent_run_id: str | None):
    """A trial's config and extra listeners: its MLflow run is nested under the sweep's run (so
    the listener is made here, and ``mlflow`` is off in the trial's own config), and a
    ``--tensorboard DIR`` shared by the sweep becomes ``DIR/<trial folder>``."""
    listeners = []
    changes: dict[str, Any] = {}
    if base.mlflow:
        listeners.append(MlflowListener(base.mlflow, base.mlflow_experiment, parent_run_id=parent_run_id))
        changes["mlflow"] = False
    if isinstance(base.tensorboard, str):
        changes["tensorboard"] = str(Path(base.tensorboard) / Path(run_dir).name)
    return (config.updated(changes) if changes else config), listeners


def finish_sweep_run(study, spec: dict, result) -> None:
    """Log the sweep's outcome to its parent run, and close it when no trial is left to run."""
    run_id = study.user_attrs.get(SWEEP_PARENT_ATTR)
    if run_id is None or not spec["base"].get("mlflow"):
        return
    client = _mlflow_client(spec["base"]["mlflow"])
    with mlflow_errors():
        if result.best is not None:
            client.log_metric(run_id, "best_val_accuracy", float(result.best["val_accuracy"]))
            if result.best.get("test_accuracy") is not None:
                client.log_metric(run_id, "best_test_accuracy", float(result.best["test_accuracy"]))
        for path in result.files:
            if Path(path).is_file():
                client.log_artifact(run_id, str(path))
        counts = result.summary["trials"]
        if not counts["queued"] and not counts["running"]:
            client.set_terminated(run_id, status="FINISHED")
