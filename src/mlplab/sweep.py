"""Hyper-parameter sweeps on Optuna: grids, random and TPE searches, in parallel and resumable.

A sweep is an Optuna study in an RDB storage (``sqlite:///OUT/study.db`` by default; a shared
PostgreSQL or MySQL URL lets workers on other machines join). The study carries everything a
worker needs — the sweep's definition is stored as a study attribute — so a worker is started
with nothing but the storage URL and the study name.

**The queue.** The sweep is planned up front as ``trials`` numbered *slots*, each enqueued as a
waiting trial (``study.enqueue_trial``) with user attribute ``slot``: a grid point (grid), a
configuration drawn by a seeded ``RandomSampler`` (random), or nothing, left for ``TPESampler``
to fill when a worker takes the trial (TPE). Workers only take queued trials, so every slot runs
once, whatever the number of workers and whenever they join. (Optuna's ``GridSampler`` hands a
grid point to each *new* trial instead; near the end of a parallel sweep and after a killed one
it re-evaluates points it counts as visited, and it counts a killed trial as visited.)

**Exactly once.** Taking a queued trial is a read-then-update in the storage; PostgreSQL and
MySQL lock the row, SQLite does not lock on reads, so for SQLite every transaction starts with
``BEGIN IMMEDIATE`` (two workers otherwise take the same trial now and then). A worker that finds
the queue empty between looking and taking gets a fresh trial instead; it is pruned at once and
marked ``surplus``. If two trials ever hold the same slot, the later one is pruned (``duplicate``).

**Resuming.** Rerunning the sweep plans again: slots with a finished trial (complete, or failed
with a recorded error such as a divergence) are skipped, missing ones are queued. A trial stopped
by SIGINT/SIGTERM queues its slot again before it stops; a trial whose worker died (``kill -9``,
a lost machine) stops sending Optuna's heartbeat, is failed after the grace period (twice the
heartbeat) by whichever worker looks next, and its slot is queued again. Workers whose queue is
empty wait while other trials run, so such a slot is still picked up. A rerun trial continues the
stopped trial's run from its checkpoint when that run folder is on the worker's machine and no
live process still writes it (a worker that only paused holds the folder's lock: the rerun then
trains in its own folder; see docs/sweeps.md).

Results: ``OUT/trials/trial-<number>-<params>/`` (one run folder per trial), ``results.csv``
(sorted by validation accuracy), ``sweep.png`` and ``sweep.json``. Trials are chosen by
validation accuracy only; test accuracy is recorded and reported, never compared.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from mlplab.config import TrainConfig, parse_widths, resolve_config
from mlplab.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DivergedError,
    MissingDependencyError,
    MlplabError,
    RunFolderBusy,
    TrainingInterrupted,
)

#: the study attribute holding the sweep's definition
SPEC_KEY = "mlplab_sweep"
SPEC_VERSION = 1
#: options a sweep sets itself for every trial, so they cannot be swept or given as the base
NOT_SWEPT = ("out", "overwrite", "quiet", "report", "track_gradients", "nproc")
#: options that may change when a sweep is resumed or joined (where the data lies, which device)
MACHINE_OPTIONS = ("data_dir", "device")
#: where the trials' numbers go (TensorBoard, MLflow): shared by every trial, never swept, free
#: to change when the sweep is rerun
TRACKING_OPTIONS = ("tensorboard", "mlflow", "mlflow_experiment")
#: numeric options drawn on a logarithmic axis in sweep.png (when every value is positive)
LOG_AXIS_OPTIONS = ("lr", "min_lr", "weight_decay")
DEFAULT_RANDOM_TRIALS = 20
DEFAULT_HEARTBEAT = 10
#: how often a worker with nothing queued looks again while other workers' trials run
WAIT_POLL_SECONDS = 1.0
#: the storage URL when --storage is not given (keeps a database password off command lines)
STORAGE_VARIABLE = "MLPLAB_SWEEP_STORAGE"
#: environment variables that size the BLAS / OpenMP thread pools of a worker process
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
#: short names of options in trial folder names
FOLDER_ABBREVIATIONS = {
    "hidden_dims": "h", "batch_size": "bs", "weight_decay": "wd", "dropout": "drop", "momentum": "mom",
    "label_smoothing": "ls", "use_batch_norm": "bn", "warmup_epochs": "warm", "epochs": "ep",
    "activation": "", "optimizer": "", "schedule": "", "dataset": "",
}
RESULT_COLUMNS_BEFORE = ("trial",)
RESULT_COLUMNS_AFTER = ("val_accuracy", "test_accuracy", "best_epoch", "seconds", "run_dir", "state", "error")


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


# =============================================================================================
# the search space
# =============================================================================================
def _flag(name: str) -> str:
    return name.replace("_", "-")


def _option_name(name: str, where: str) -> str:
    key = str(name).strip().replace("-", "_")
    fields = TrainConfig.field_names()
    if key not in fields or key in NOT_SWEPT + TRACKING_OPTIONS:
        known = ", ".join(_flag(f) for f in fields if f not in NOT_SWEPT + TRACKING_OPTIONS)
        raise ConfigError(f"{where}: {name!r} is not a training option that can be swept (choose from {known})")
    return key


def _option_type(name: str) -> str:
    """'widths', 'bool', 'int', 'float' or 'str', from the TrainConfig field's annotation."""
    if name == "hidden_dims":
        return "widths"
    annotation = next(f.type for f in dataclasses.fields(TrainConfig) if f.name == name)
    annotation = str(annotation)
    for kind in ("bool", "int", "float"):
        if annotation.split(" | ")[0] == kind:
            return kind
    return "str"


def _optional(name: str) -> bool:
    annotation = next(f.type for f in dataclasses.fields(TrainConfig) if f.name == name)
    return "None" in str(annotation)


def _widths_text(widths) -> str:
    return "x".join(str(int(w)) for w in widths) or "none"


def parse_value(name: str, value, where: str = "--grid"):
    """One value of option ``name`` as Optuna stores it: a str, int, float, bool or None.
    Text is parsed by the option's type; hidden widths become ``"512x256"`` (``"none"``: no
    hidden layer). Values that are already Python values are checked the same way."""
    kind = _option_type(name)
    text = value.strip() if isinstance(value, str) else None
    flag = f"{where} {_flag(name)}={value}"
    if text == "":
        raise ConfigError(f"{where} {_flag(name)}: an empty value (values are separated by commas)")
    if text is not None and text.lower() == "none" and _optional(name):
        return None
    if kind == "widths":
        if text is not None:
            try:
                return _widths_text(parse_widths(text))
            except ConfigError:
                raise ConfigError(f"{flag}: hidden widths are written 512x256 (or none for no hidden layer)") from None
        if isinstance(value, (list, tuple)):
            return _widths_text(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{flag}: hidden widths are written 512x256")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
        if text is not None and text.lower() in words:
            return words[text.lower()]
        raise ConfigError(f"{flag}: expected true or false")
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            return int(text) if text is not None else int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{flag}: expected an integer") from None
    if kind == "float":
        try:
            number = float(text) if text is not None else float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{flag}: expected a number") from None
        if not math.isfinite(number):
            raise ConfigError(f"{flag}: expected a finite number")
        return number
    if text is None:
        raise ConfigError(f"{flag}: expected a name")
    return text


@dataclass(frozen=True)
class Dimension:
    """One swept option. ``kind``: ``grid`` or ``choice`` (``values``), ``float``, ``log`` or
    ``int`` (``low``..``high``, optional ``step``). Values are kept as Optuna stores them."""

    name: str
    kind: str
    values: tuple = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None

    @property
    def flag(self) -> str:
        return _flag(self.name)

    @property
    def categorical(self) -> bool:
        return self.kind in ("grid", "choice")

    def distribution(self):
        distributions = _optuna().distributions
        if self.categorical:
            return distributions.CategoricalDistribution(list(self.values))
        if _option_type(self.name) in ("int", "widths"):
            return distributions.IntDistribution(int(self.low), int(self.high), log=self.kind == "log", step=int(self.step or 1))
        return distributions.FloatDistribution(self.low, self.high, log=self.kind == "log", step=self.step)

    def suggest(self, trial):
        """The trial's value (its queued value when the slot fixed one, else the sampler's)."""
        if self.categorical:
            return trial.suggest_categorical(self.name, list(self.values))
        if _option_type(self.name) in ("int", "widths"):
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.kind == "log", step=int(self.step or 1))
        return trial.suggest_float(self.name, self.low, self.high, log=self.kind == "log", step=self.step)

    def train_value(self, value):
        """The value as a training option (hidden widths as a list)."""
        if self.name == "hidden_dims":
            return parse_widths(value) if isinstance(value, str) else [int(value)]
        return value

    def describe(self) -> str:
        if self.categorical:
            return f"{self.flag}={','.join(_format_value(v, exact=True) for v in self.values)}"
        step = f":{self.step:g}" if self.step else ""
        return f"{self.flag}={self.kind}:{self.low:g}:{self.high:g}{step}"

    def to_json(self) -> dict:
        return {key: (list(value) if key == "values" else value) for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> Dimension:
        return cls(**{**data, "values": tuple(data.get("values", ()))})


def _split_assignment(text: str, where: str) -> tuple[str, str]:
    name, sep, rest = str(text).partition("=")
    if not sep or not name.strip() or not rest.strip():
        example = "lr=0.01,0.1" if where == "--grid" else "lr=log:1e-3:1e-1"
        raise ConfigError(f"{where} {text!r}: write NAME=VALUES, e.g. {where} {example}")
    return name.strip(), rest.strip()


def grid_dimension(name: str, values, where: str = "--grid") -> Dimension:
    """A grid over ``values`` (a list, or text ``"0.01,0.1"``) of option ``name``."""
    key = _option_name(name, where)
    if isinstance(values, str):
        values = values.split(",")
    parsed = [parse_value(key, v, where) for v in values]
    if not parsed:
        raise ConfigError(f"{where} {_flag(key)}: give at least one value")
    seen = set()
    for value in parsed:
        if (type(value), value) in seen:
            raise ConfigError(f"{where} {_flag(key)}: the value {_format_value(value, exact=True)} is given twice")
        seen.add((type(value), value))
    return Dimension(key, "grid", tuple(parsed))


def param_dimension(name: str, spec, where: str = "--param") -> Dimension:
    """A random/TPE dimension: ``log:LOW:HIGH``, ``float:LOW:HIGH[:STEP]``, ``int:LOW:HIGH[:STEP]``
    or ``choice:V1,V2,...`` (or a list, meaning a choice)."""
    key = _option_name(name, where)
    if isinstance(spec, (list, tuple)):
        dimension = grid_dimension(key, list(spec), where)
        return Dimension(key, "choice", dimension.values)
    kind, sep, rest = str(spec).strip().partition(":")
    kind = kind.strip().lower()
    usage = f"{where} {_flag(key)}={spec}"
    if kind == "choice":
        dimension = grid_dimension(key, rest, where) if rest.strip() else None
        if dimension is None:
            raise ConfigError(f"{usage}: write choice:V1,V2,...")
        return Dimension(key, "choice", dimension.values)
    if kind not in ("log", "float", "int") or not sep:
        raise ConfigError(f"{usage}: write log:LOW:HIGH, float:LOW:HIGH[:STEP], int:LOW:HIGH[:STEP] or choice:V1,V2,...")
    option_type = _option_type(key)
    integer = option_type in ("int", "widths")
    if option_type not in ("int", "widths", "float"):
        raise ConfigError(f"{usage}: --{_flag(key)} is not a number; use choice:V1,V2,...")
    if kind == "float" and integer:
        raise ConfigError(f"{usage}: --{_flag(key)} is an integer; use int:LOW:HIGH or log:LOW:HIGH")
    if kind == "int" and not integer:
        raise ConfigError(f"{usage}: --{_flag(key)} is not an integer; use float:LOW:HIGH or log:LOW:HIGH")
    parts = rest.split(":")
    if len(parts) not in (2, 3) or (kind == "log" and len(parts) != 2):
        raise ConfigError(f"{usage}: write {kind}:LOW:HIGH" + ("" if kind == "log" else f" or {kind}:LOW:HIGH:STEP"))
    try:
        numbers = [int(p) if integer else float(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{usage}: LOW, HIGH{'' if kind == 'log' else ' and STEP'} must be {'integers' if integer else 'numbers'}") from None
    if not all(math.isfinite(n) for n in numbers):
        raise ConfigError(f"{usage}: the bounds must be finite")
    low, high = numbers[0], numbers[1]
    step = numbers[2] if len(numbers) == 3 else None
    if not low < high:
        raise ConfigError(f"{usage}: LOW must be below HIGH")
    if kind == "log" and low <= 0:
        raise ConfigError(f"{usage}: a log range needs LOW above 0")
    if step is not None and step <= 0:
        raise ConfigError(f"{usage}: STEP must be above 0")
    return Dimension(key, kind, (), low, high, step)


def parse_grid(texts) -> list[Dimension]:
    """``["lr=0.01,0.1", "hidden-dims=256,512x256"]`` (the ``--grid`` flags) -> dimensions."""
    return _unique([grid_dimension(*_split_assignment(text, "--grid")) for text in texts], "--grid")


def parse_params(texts) -> list[Dimension]:
    """``["lr=log:1e-3:1e-1", "hidden-dims=choice:256,512x256"]`` (``--param``) -> dimensions."""
    return _unique([param_dimension(*_split_assignment(text, "--param")) for text in texts], "--param")


def _unique(dimensions: list[Dimension], where: str) -> list[Dimension]:
    seen = set()
    for dimension in dimensions:
        if dimension.name in seen:
            raise ConfigError(f"{where}: {dimension.flag} is given twice")
        seen.add(dimension.name)
    return dimensions


def _format_value(value, *, exact: bool = False) -> str:
    """A value as written on the command line; floats to 4 significant digits unless ``exact``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if exact else f"{value:.4g}"
    return "none" if value is None else str(value)


# =============================================================================================
# the sweep's definition (stored in the study) and its plan
# =============================================================================================
def grid_points(dimensions: list[Dimension]) -> list[dict]:
    """Every combination of the grid's values, the last dimension varying fastest."""
    names = [d.name for d in dimensions]
    return [dict(zip(names, combo)) for combo in itertools.product(*(d.values for d in dimensions))]


def _spec_identity(spec: dict) -> dict:
    """What makes two sweeps the same sweep (the budget, the machine and the output may differ)."""
    base = {k: v for k, v in spec["base"].items() if k not in MACHINE_OPTIONS + TRACKING_OPTIONS}
    return {"search": spec["search"], "dimensions": spec["dimensions"], "base": base, "seed": spec["seed"]}


def spec_digest(spec: dict) -> str:
    text = json.dumps(_spec_identity(spec), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def default_out(spec: dict, root: str = "runs") -> Path:
    """``runs/sweep-<dataset>-<swept options>-<digest>``: the same sweep always lands in the
    same folder, so rerunning the same command resumes it."""
    names = "-".join(_flag(d["name"]) for d in spec["dimensions"])
    return Path(root) / f"sweep-{spec['base']['dataset']}-{names}-{spec_digest(spec)}"


def slot_order(spec: dict) -> list[int]:
    """The slots a sweep of ``spec["trials"]`` trials runs, in queue order. Grid slots are grid
    point indices: the whole grid in order, or, for fewer trials, a seeded random subset (a
    larger budget later extends the same subset)."""
    if spec["search"] != "grid":
        return list(range(spec["trials"]))
    size = spec["grid_size"]
    if spec["trials"] >= size:
        return list(range(size))
    import numpy as np

    return [int(i) for i in np.random.default_rng(spec["seed"]).permutation(size)[: spec["trials"]]]


def planned_params(spec: dict, slot: int) -> dict:
    """The parameters queued for ``slot``: its grid point, its random draw, or none (TPE)."""
    dimensions = [Dimension.from_json(d) for d in spec["dimensions"]]
    if spec["search"] == "grid":
        sizes = [len(d.values) for d in dimensions]
        params, rest = {}, slot
        for dimension, size in zip(reversed(dimensions), reversed(sizes)):
            rest, index = divmod(rest, size)
            params[dimension.name] = dimension.values[index]
        return {d.name: params[d.name] for d in dimensions}
    if spec["search"] == "random":
        return _random_draws(spec, slot + 1)[slot]
    return {}


def _random_draws(spec: dict, count: int) -> list[dict]:
    """The first ``count`` configurations drawn by a RandomSampler seeded with the sweep's seed:
    the same for any number of workers, and a larger budget extends the same sequence."""
    with _optuna_quietly() as optuna:
        dimensions = [Dimension.from_json(d) for d in spec["dimensions"]]
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=spec["seed"]))
        distributions = {d.name: d.distribution() for d in dimensions}
        return [dict(study.ask(distributions).params) for _ in range(count)]


def make_spec(*, grid=None, params=None, sampler: str | None = None, trials: int | None = None, base_options: dict | None = None,
              preset: str | None = None, config_file=None, seed: int = 0, report: bool = False,
              heartbeat: int = DEFAULT_HEARTBEAT) -> dict:
    """Check a sweep's definition and return it as the dict stored in the study.

    ``grid``: ``{option: values}`` or ``--grid`` texts; ``params``: ``{option: spec}`` or
    ``--param`` texts (``sampler`` ``"tpe"`` (default) or ``"random"``); ``base_options``,
    ``preset``, ``config_file``: the training options every trial shares.
    """
    if bool(grid) == bool(params):
        raise ConfigError("give the options to sweep: either --grid NAME=V1,V2 (a grid) or --param NAME=KIND:... "
                          "(a random or TPE search), not both")
    if grid:
        dimensions = parse_grid(grid) if not isinstance(grid, dict) else _unique(
            [grid_dimension(name, values) for name, values in grid.items()], "--grid")
        if sampler not in (None, "grid"):
            raise ConfigError("--sampler applies to --param searches; a --grid runs every point")
        search = "grid"
    else:
        dimensions = parse_params(params) if not isinstance(params, dict) else _unique(
            [param_dimension(name, spec) for name, spec in params.items()], "--param")
        search = sampler or "tpe"
        if search not in ("random", "tpe"):
            raise ConfigError(f"--sampler: unknown sampler {sampler!r} (choose from random, tpe)")
    base_options = dict(base_options or {})
    for key in list(base_options):
        if key.replace("-", "_") in NOT_SWEPT:
            base_options.pop(key)
    base = resolve_config(preset=preset, config_file=config_file, options=base_options)
    if base.validation_size == 0:
        raise ConfigError("a sweep chooses by validation accuracy: --validation-size must be above 0")
    if base.nproc != 1:
        raise ConfigError("--nproc: sweep trials run one process each; scale a sweep with --jobs instead")
    base_dict = {k: v for k, v in base.to_dict().items() if k not in NOT_SWEPT}
    grid_size = math.prod(len(d.values) for d in dimensions) if search == "grid" else None
    if trials is None:
        trials = grid_size if search == "grid" else DEFAULT_RANDOM_TRIALS
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ConfigError(f"--trials must be a positive integer, got {trials!r}")
    if grid_size is not None and trials > grid_size:
        raise ConfigError(f"--trials {trials}: the grid has only {grid_size} point{'s' * (grid_size != 1)}")
    if not isinstance(heartbeat, int) or isinstance(heartbeat, bool) or heartbeat < 1:
        raise ConfigError(f"--heartbeat must be a whole number of seconds above 0, got {heartbeat!r}")
    _check_configurations(base, dimensions, search)
    _check_torch_installed(base, dimensions)
    return {
        "version": SPEC_VERSION, "search": search, "dimensions": [d.to_json() for d in dimensions], "base": base_dict,
        "trials": trials, "grid_size": grid_size, "seed": int(seed), "report": bool(report), "heartbeat": heartbeat,
    }


def _check_torch_installed(base: TrainConfig, dimensions: list[Dimension]) -> None:
    """Without PyTorch every torch trial would fail one by one; say it once, before the study exists."""
    import importlib.util

    swept = any(d.name == "backend" and "torch" in map(str, d.values) for d in dimensions)
    if (base.backend == "torch" or swept) and importlib.util.find_spec("torch") is None:
        raise MissingDependencyError("--backend torch needs PyTorch: pip install 'mlplab[torch]' (or pip install torch)")


def _check_configurations(base: TrainConfig, dimensions: list[Dimension], search: str) -> None:
    """Every grid point (or every bound and choice of a search) must be a valid configuration,
    so a typo fails now rather than as a failed trial later."""
    def check(values: dict, where: str) -> None:
        try:
            base.updated({d.name: d.train_value(values[d.name]) for d in dimensions if d.name in values}).validated()
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    if search == "grid":
        for dimension in dimensions:
            for value in dimension.values:
                check({dimension.name: value}, f"--grid {dimension.flag}={_format_value(value, exact=True)}")
        for point in grid_points(dimensions):
            check(point, "--grid point " + " ".join(f"{_flag(k)}={_format_value(v, exact=True)}" for k, v in point.items()))
        return
    for dimension in dimensions:
        candidates = dimension.values if dimension.categorical else (dimension.low, dimension.high)
        for value in candidates:
            check({dimension.name: value}, f"--param {dimension.describe()}")


# =============================================================================================
# storage and study
# =============================================================================================
def default_storage(out) -> str:
    return f"sqlite:///{Path(out).resolve() / 'study.db'}"


def redact(url: str) -> str:
    """The storage URL with any password hidden (for printing and sweep.json)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def _serialize_sqlite(engine) -> None:
    """Start every SQLite transaction with BEGIN IMMEDIATE. Python's sqlite3 only begins a
    transaction at the first write, so the read that finds a waiting trial and the write that
    takes it are not atomic, and two workers sometimes take the same trial."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, record):
        dbapi_connection.isolation_level = None  # sqlite3 issues no BEGIN of its own

    @event.listens_for(engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while Optuna set up its tables lack the listener


#: the PostgreSQL drivers a bare ``postgresql://`` URL may use, in order of preference, and the
#: pip package of each (``mlplab[postgres]`` installs the first)
POSTGRES_DRIVERS = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary"}
#: the pip package that provides each database module a storage URL may need
DRIVER_PACKAGES = {**POSTGRES_DRIVERS, "pg8000": "pg8000", "pymysql": "pymysql", "MySQLdb": "mysqlclient",
                   "mysql": "mysql-connector-python"}
POSTGRES_EXTRA = "pip install 'mlplab[postgres]'"


def _importable(module: str) -> bool:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:  # absent, or present but unusable (psycopg without a libpq, say)
        return False
    return True


def engine_url(url: str) -> str:
    """The URL handed to SQLAlchemy. A PostgreSQL URL that names no driver (``postgresql://``,
    or the short ``postgres://`` that SQLAlchemy refuses) gets an installed one: SQLAlchemy's own
    default moved from psycopg2 to psycopg 3 in version 2.1, so ``postgresql://`` alone fails
    wherever only the other one is installed. A URL that names its driver is left as it is."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("postgresql", "postgres"):
        return url
    for driver in POSTGRES_DRIVERS:
        # the dialect must exist in this SQLAlchemy too (psycopg 3 needs SQLAlchemy 2.0 or later)
        if _importable(f"sqlalchemy.dialects.postgresql.{driver}") and _importable(driver):
            return f"postgresql+{driver}://{rest}"
    raise MissingDependencyError(f"--storage {redact(url)}: PostgreSQL needs a database driver: {POSTGRES_EXTRA}")


def open_storage(url: str, *, heartbeat: int | None = None):
    """An Optuna RDB storage for ``url``. SQLite waits up to a minute for a busy database
    instead of failing with "database is locked". With ``heartbeat`` (seconds), running trials
    send a heartbeat and trials silent for twice that long are failed and queued again."""
    optuna = _optuna()
    sqlite = url.startswith("sqlite")
    engine_kwargs = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
    kwargs = {}
    if heartbeat is not None:
        import inspect

        parameters = inspect.signature(optuna.storages.RDBStorage).parameters
        callback = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in parameters else "failed_trial_callback"
        kwargs = {"heartbeat_interval": heartbeat, "grace_period": 2 * heartbeat, callback: _requeue_stale_trial}
    with _storage_errors(url), _optuna_quietly():
        if sqlite:
            path = url.split(":///", 1)[-1].split("?", 1)[0]
            if path and path != ":memory:" and not Path(path).parent.is_dir():
                raise ConfigError(f"--storage {url}: the folder {str(Path(path).parent)!r} does not exist")
        storage = optuna.storages.RDBStorage(engine_url(url), engine_kwargs=engine_kwargs, **kwargs)
    if sqlite:
        _serialize_sqlite(storage.engine)
    return storage


@contextlib.contextmanager
def _storage_errors(url: str):
    """Database problems as one-line MlplabErrors naming the (redacted) storage."""
    try:
        yield
    except MlplabError:
        raise
    except ImportError as exc:
        # Optuna re-raises a driver that fails to import as a bare ImportError; the cause names it.
        cause = exc.__cause__ if isinstance(exc.__cause__, ImportError) else exc
        name = (cause.name or "").split(".")[0]
        hint = POSTGRES_EXTRA if "postgres" in url.split("://")[0].lower() else ""
        if name == "psycopg":
            message = f"the database driver psycopg is not installed: {POSTGRES_EXTRA}"
        elif name == "psycopg2":
            message = (f"the database driver psycopg2 is not installed: pip install psycopg2-binary "
                       f"(or write the URL as postgresql://, which needs only {POSTGRES_EXTRA})")
        elif name in DRIVER_PACKAGES:
            message = f"the database driver {name} is not installed: pip install {DRIVER_PACKAGES[name]}"
        elif isinstance(cause, ModuleNotFoundError) and name:
            message = f"needs the module {name!r}, which is not installed: pip install {name}"
        else:
            message = f"cannot load its database driver: {_first_line(cause, url)}" + (f" ({hint})" if hint else "")
        raise MissingDependencyError(f"--storage {redact(url)}: {message}") from None
    except Exception as exc:
        module = type(exc).__module__ or ""
        if module.startswith(("sqlalchemy", "optuna", "sqlite3", "psycopg", "pymysql", "MySQLdb")):
            message = _first_line(exc, url)
            if "Could not parse" in message or "ArgumentError" in type(exc).__name__:
                raise ConfigError(f"--storage {url!r}: not a database URL (e.g. sqlite:///study.db, postgresql://user@host/db)") from None
            if type(exc).__name__ == "NoSuchModuleError":  # postgresql+typo://
                scheme = url.split("://")[0]
                raise MissingDependencyError(f"--storage {redact(url)}: SQLAlchemy knows no database driver {scheme!r} "
                                             "(for PostgreSQL write postgresql://, postgresql+psycopg:// or "
                                             "postgresql+psycopg2://)") from None
            raise MlplabError(f"study storage {redact(url)}: {message}") from None
        raise


def _first_line(exc: BaseException, url: str) -> str:
    """The first line of a driver's error, without SQLAlchemy's ``(module.Class)`` prefix and
    with the URL's password (should a driver ever quote it) hidden."""
    message = str(exc).strip().splitlines()[0].strip() if str(exc).strip() else type(exc).__name__
    message = re.sub(r"^\([\w.]+\)\s*", "", message)
    message = re.sub(r"\s{2,}", " ", message)
    password = None
    with contextlib.suppress(Exception):
        from sqlalchemy.engine import make_url

        password = make_url(url).password
    if password is None:
        found = re.search(r"//[^:/@]+:([^@]*)@", url)
        password = found.group(1) if found else None
    if password:
        message = message.replace(str(password), "***")
    return message


def _load_study(url: str, name: str, *, heartbeat: int | None = None, sampler=None):
    optuna = _optuna()
    storage = open_storage(url, heartbeat=heartbeat)
    with _storage_errors(url), _optuna_quietly():
        try:
            return optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        except KeyError:
            raise ConfigError(f"no sweep named {name!r} in {redact(url)}; start it with `mlplab sweep --grid/--param ... "
                              f"--storage URL --study-name {name}` first") from None


def read_spec(study) -> dict:
    spec = study.user_attrs.get(SPEC_KEY)
    if not isinstance(spec, dict):
        raise ConfigError(f"the study {study.study_name!r} was not created by mlplab sweep")
    if spec.get("version") != SPEC_VERSION:
        raise ConfigError(f"the study {study.study_name!r} was written by another mlplab version (sweep format {spec.get('version')})")
    return spec


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


# =============================================================================================
# trials
# =============================================================================================
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

        key = (config.dataset, config.data_dir, config.validation_size, config.split_seed, config.normalization)
        if key not in self._data:
            self._data[key] = load_data(config)
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
        return any(t.number == trial.number and t.state != states.RUNNING for t in self.study.get_trials(deepcopy=False))

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
            config = self.base.updated(options).updated(
                {"out": str(run_dir), "quiet": True, "report": self.spec["report"], "overwrite": True}).validated()
            tracking = {}
            if self.base.mlflow or self.base.tensorboard:
                from mlplab.training.tracking import SWEEP_PARENT_ATTR, sweep_trial

                config, listeners = sweep_trial(self.base, config, run_dir, self.study.user_attrs.get(SWEEP_PARENT_ATTR))
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
                    result = train(resume=str(stopped_dir), data=data, quiet=True, report=self.spec["report"], **tracking)
                except CheckpointError as exc:
                    run_dir = self.out / "trials" / trial_folder_name(trial.number, params, self.dimensions)
                    trial.set_user_attr("run_dir", str(run_dir))
                    config = config.updated({"out": str(run_dir)})
                    if isinstance(exc, RunFolderBusy):
                        # Its worker is alive (paused or overloaded, so it missed its heartbeats) and
                        # still writes there: never a second writer; this rerun trains in its own folder.
                        holder = (exc.holder or {}).get("pid", "?")
                        self.echo(f"trial {trial.number}: the stopped run in {stopped_dir} is still being written by "
                                  f"process {holder}; starting again in {run_dir}")
                    else:
                        self.echo(f"trial {trial.number}: cannot continue ({exc}); starting again in {run_dir}")
            if result is None:
                result = train(config, data=data, **tracking)
        except TrainingInterrupted as exc:
            _requeue(self.study, trial, self.spec)
            raise TrainingInterrupted(
                f"sweep stopped during trial {trial.number}, which is queued again; finished trials are kept. "
                "Rerun the same command to continue", exc.exit_code) from None
        except KeyboardInterrupt:
            _requeue(self.study, trial, self.spec)
            raise
        except (DataError, CheckpointError, MissingDependencyError, OSError) as exc:
            # This machine's problem (data, disk, a missing package), not the configuration's:
            # the trial goes back to the queue and the worker stops.
            _requeue(self.study, trial, self.spec)
            raise type(exc)(f"trial {trial.number} ({described}): {exc}") if isinstance(exc, MlplabError) \
                else MlplabError(f"trial {trial.number} ({described}): {exc}") from None
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
            self.echo(f"trial {trial.number}: {described} finished in {run_dir}, but it had been given up after its "
                      "heartbeat lapsed and its slot queued again; that rerun's result counts, not this one")
            raise _TrialGivenUp(f"trial {trial.number} was given up while it ran")
        trial.set_user_attr("test_accuracy", result.test_accuracy)  # recorded, never used to choose
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("seconds", seconds)
        self.trained += 1
        self.echo(f"trial {trial.number}: {described} -> validation {result.best_val_accuracy:.4f} "
                  f"(test {result.test_accuracy:.4f}), {seconds:.1f} s")
        return result.best_val_accuracy


# =============================================================================================
# workers
# =============================================================================================
def _sampler(spec: dict):
    """The sampler a worker fills empty (TPE) slots with. Each worker seeds its own from the
    sweep's seed and its host and process, so parallel workers never draw in lockstep."""
    optuna = _optuna()
    import numpy as np

    entropy = [spec["seed"], os.getpid(), int(hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8], 16)]
    seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
    if spec["search"] == "tpe":
        with _optuna_quietly():
            return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def locate(storage: str | None, study_name: str | None, out) -> tuple[str, str]:
    """The storage URL (``storage``, else $MLPLAB_SWEEP_STORAGE, else the SQLite database in
    ``out``) and the study name (default: the name of ``out``)."""
    storage = storage or os.environ.get(STORAGE_VARIABLE) or None
    if storage is None:
        if out is None:
            raise ConfigError("give --out DIR (the sweep's folder) or --storage URL with --study-name NAME")
        storage = default_storage(out)
    if study_name is None:
        if out is None:
            raise ConfigError("--study-name: give the name of the sweep to join (printed when it started)")
        study_name = Path(out).resolve().name
    return storage, study_name


def run_worker(storage: str | None = None, study_name: str | None = None, *, out=None, data_dir=None, jobs: int = 1,
               max_trials: int | None = None, quiet: bool = False, train=None) -> int:
    """Join a sweep and run its queued trials until none are queued or running; return how many
    trials this worker (with ``jobs`` > 1: its processes) trained. ``out``: where this machine
    writes trial run folders (default: the sweep's folder); ``max_trials``: stop after that many."""
    url, name = locate(storage, study_name, out)
    if jobs > 1:
        argv = ["--worker", "--study-name", name]
        argv += (["--out", str(out)] if out is not None else []) + (["--data-dir", str(data_dir)] if data_dir else [])
        argv += (["--worker-trials", str(max_trials)] if max_trials else []) + (["-q"] if quiet else [])
        _raise_for_workers(run_processes(argv, jobs, storage=url))
        return 0
    probe = _load_study(url, name)
    spec = read_spec(probe)
    study = _load_study(url, name, heartbeat=spec["heartbeat"], sampler=_sampler(spec))
    out = Path(out if out is not None else spec["out"])
    try:
        (out / "trials").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot write trial run folders in {str(out)!r} ({exc.strerror or exc}); pass --out DIR for this machine") from None
    echo = (lambda line: None) if quiet else (lambda line: print(line, flush=True))
    objective = Objective(study, spec, out=out, data_dir=data_dir, echo=echo, train=train)
    base = objective.base.validated()
    objective.data_for(base)  # data problems stop the worker now, before it takes a trial
    states = _states()
    waiting_since = None
    with _storage_errors(url):
        while max_trials is None or objective.trained < max_trials:
            _fail_abandoned(study, spec)
            queued = study.get_trials(deepcopy=False, states=(states.WAITING, states.RUNNING))
            if not any(t.state == states.WAITING for t in queued):
                if not queued:
                    break
                # Other workers' trials are still running; if one of them dies, its trial is
                # queued again, and this worker should be there to take it.
                if waiting_since is None:
                    waiting_since = time.monotonic()
                elif waiting_since > 0 and time.monotonic() - waiting_since > spec["heartbeat"]:
                    echo(f"waiting for {len(queued)} trial{'s' * (len(queued) != 1)} running in other workers "
                         f"(one whose worker stopped is queued again {2 * spec['heartbeat']} s after its last heartbeat)")
                    waiting_since = -1.0
                time.sleep(WAIT_POLL_SECONDS)
                continue
            waiting_since = None
            with _optuna_quietly():
                try:
                    study.optimize(objective, n_trials=1, catch=(_TrialFailed,))
                except ValueError:
                    # Optuna's "Cannot tell a FAIL trial": another worker failed this worker's trial for a
                    # lapsed heartbeat while it ran (see Objective._given_up); its slot is queued again.
                    if objective.current is None or not objective._given_up(objective.current):
                        raise
    return objective.trained


def worker_threads(jobs: int) -> int:
    """BLAS / OpenMP threads for each of ``jobs`` workers sharing this machine's cores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, jobs))


def worker_environment(jobs: int) -> dict:
    """The environment of ``jobs`` worker processes sharing this machine: each BLAS / OpenMP
    pool gets :func:`worker_threads` threads, unless the variable is set already. (The pools
    are sized when NumPy loads, so this is set before the worker process starts.)"""
    env = dict(os.environ)
    for variable in THREAD_VARIABLES:
        env.setdefault(variable, str(worker_threads(jobs)))
    return env


def run_processes(worker_argv: list[str], jobs: int, *, storage: str) -> list[int]:
    """Run ``jobs`` copies of ``mlplab sweep <worker_argv>`` on ``storage`` (passed in the
    environment) and wait for them; return their exit codes. SIGINT / SIGTERM reaching this
    process are passed on once to each worker, which finishes its current step, queues its
    trial again and exits."""
    env = worker_environment(jobs)
    env[STORAGE_VARIABLE] = storage
    command = [sys.executable, "-m", "mlplab", "sweep", *worker_argv]
    # Own sessions: a Ctrl-C in the terminal reaches this process only, and is forwarded once.
    processes = [subprocess.Popen(command, env=env, start_new_session=True) for _ in range(jobs)]
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    previous = {}
    try:
        with contextlib.suppress(ValueError):  # not the main thread: no forwarding
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, forward)
        for process in processes:
            process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for process in processes:
            if process.poll() is None:  # pragma: no cover - only when waiting itself failed
                process.kill()
                process.wait()
    if received:
        code = 143 if received[-1] == signal.SIGTERM else 130
        raise TrainingInterrupted("sweep interrupted: running trials are queued again and finished ones are kept; "
                                  "rerun the same command to continue", code)
    return [process.returncode for process in processes]


def _raise_for_workers(codes: list[int]) -> None:
    interrupted = [c for c in codes if c in (130, 143)]
    if interrupted:
        raise TrainingInterrupted("a worker was interrupted; its trial is queued again. Rerun the same command to continue",
                                  interrupted[0])
    failed = [c for c in codes if c != 0]
    if failed:
        raise MlplabError(f"{len(failed)} of {len(codes)} workers stopped with an error (see above); "
                          "rerun the same command to continue")


# =============================================================================================
# the sweep
# =============================================================================================
@dataclass
class SweepResult:
    """What :func:`run_sweep` returns: ``rows`` as in results.csv (best first), ``best`` (the
    row with the highest validation accuracy, or None) and the written files."""

    out: Path
    study_name: str
    storage: str
    rows: list[dict]
    best: dict | None
    summary: dict
    trained: int = 0
    files: list[Path] = field(default_factory=list)


def run_sweep(*, grid=None, params=None, sampler: str | None = None, trials: int | None = None, options: dict | None = None,
              preset: str | None = None, config_file=None, out=None, jobs: int = 1, storage: str | None = None,
              study_name: str | None = None, seed: int = 0, report: bool = False, heartbeat: int = DEFAULT_HEARTBEAT,
              quiet: bool = False, train=None) -> SweepResult:
    """Create (or resume) a sweep, run it with ``jobs`` worker processes and write its results.

    ``grid={"lr": [0.01, 0.1], "hidden_dims": ["256", "512x256"]}`` runs every combination;
    ``params={"lr": "log:1e-3:1e-1"}`` with ``sampler="tpe"`` or ``"random"`` runs ``trials``
    configurations. ``options``: training options shared by every trial. ``jobs=0`` only
    creates the study (workers join with :func:`run_worker`) and writes what is finished.
    ``train``: replaces :func:`mlplab.train` in-process (``jobs=1``; for tests).
    """
    spec = make_spec(grid=grid, params=params, sampler=sampler, trials=trials, base_options=options, preset=preset,
                     config_file=config_file, seed=seed, report=report, heartbeat=heartbeat)
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 0:
        raise ConfigError(f"--jobs must be an integer >= 0, got {jobs!r}")
    out = Path(out) if out is not None else default_out(spec)
    spec["out"] = str(out.resolve())
    url, name = locate(storage, study_name, out)
    say = (lambda line: None) if quiet else (lambda line: print(line, flush=True))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create the sweep folder {str(out)!r}: {exc.strerror or exc}") from None
    optuna = _optuna()
    with _storage_errors(url):
        study_storage = open_storage(url)
        with _optuna_quietly():
            study = optuna.create_study(study_name=name, storage=study_storage, direction="maximize", load_if_exists=True)
        spec = _adopt_spec(study, spec, out, url)
        queued = plan(study, spec)
    if any(spec["base"].get(name) for name in TRACKING_OPTIONS[:2]):
        from mlplab.training.tracking import start_sweep_run

        start_sweep_run(study, spec)  # the parent MLflow run the trials nest under
    states = _states()
    trials_now = study.get_trials(deepcopy=False)
    finished = sum(1 for t in trials_now if "slot" in t.user_attrs and _done(t))
    pending = [t for t in trials_now if t.state in (states.WAITING, states.RUNNING)]
    what = {"grid": "grid", "random": "random search", "tpe": "TPE search"}[spec["search"]]
    say(f"sweep {name!r} ({what} over {', '.join(_flag(d['name']) for d in spec['dimensions'])}, {spec['trials']} trials) "
        f"in {out}: {finished} finished, {len(pending)} to run" + (f" ({queued} newly queued)" if queued and finished else ""))
    workers = min(jobs, len(pending))
    trained = 0
    stopped = None
    if workers:
        threads = worker_threads(workers)
        say(f"running with {workers} worker{'s' * (workers != 1)}" + (f" ({threads} BLAS thread{'s' * (threads != 1)} each)" if workers > 1 else "")
            + f"; more workers can join with: {join_command(url, name, out)}")
        try:
            if workers == 1:
                trained = run_worker(url, name, out=out, quiet=quiet, train=train)
            else:
                argv = ["--worker", "--study-name", name, "--out", str(out)] + (["-q"] if quiet else [])
                _raise_for_workers(run_processes(argv, workers, storage=url))
        except MlplabError as exc:  # interrupted, or a worker stopped: the results so far are still written
            stopped = exc
    elif jobs == 0 and pending:
        say(f"no workers started (--jobs 0); start them with: {join_command(url, name, out)}")
    elif not pending:
        say("nothing to run: every trial of the sweep has finished")
    result = write_results(study, spec, out, storage_url=url, jobs=jobs)
    result.trained = trained
    if spec["base"].get("mlflow"):
        from mlplab.training.tracking import finish_sweep_run

        finish_sweep_run(study, spec, result)
    if not quiet:
        print(format_results(result, spec))
    if stopped is not None:
        raise stopped
    return result


def join_command(url: str, name: str, out) -> str:
    """The command line that adds a worker to this sweep (the password, if any, hidden)."""
    if url == default_storage(out):
        return f"mlplab sweep --worker --out {out}"
    return f"mlplab sweep --worker --storage '{redact(url)}' --study-name {name}"


def _adopt_spec(study, spec: dict, out: Path, url: str) -> dict:
    """Store ``spec`` in a new study, or check it against the one the study was created with
    (the budget, report flag, heartbeat and machine options may change; they are updated)."""
    stored = study.user_attrs.get(SPEC_KEY)
    if stored is None:
        trials_dir = out / "trials"
        if study.get_trials(deepcopy=False) or (trials_dir.is_dir() and any(trials_dir.iterdir())):
            raise ConfigError(f"{str(out)!r} or the study {study.study_name!r} already holds trials of another sweep; "
                              "choose another --out or --study-name")
    else:
        read_spec(study)
        old, new = _spec_identity(stored), _spec_identity(spec)
        if old != new:
            differs = [key for key in new if old.get(key) != new.get(key)]
            if "base" in differs:
                differs.remove("base")
                differs += [f"--{_flag(k)}" for k in sorted(new["base"]) if old["base"].get(k) != new["base"].get(k)]
            raise ConfigError(f"the sweep in {redact(url)} (study {study.study_name!r}) was started with different options "
                              f"({', '.join(differs)}); rerun it with the same ones, or choose another --out or --study-name")
    study.set_user_attr(SPEC_KEY, spec)
    return spec


# =============================================================================================
# results
# =============================================================================================
def collect_rows(study, spec: dict, out: Path) -> list[dict]:
    """One row per finished trial (complete or failed), sorted by validation accuracy, best
    first (failed trials last); ties go to the earlier trial."""
    dimensions = [Dimension.from_json(d) for d in spec["dimensions"]]
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if "slot" not in trial.user_attrs or not _done(trial):
            continue
        attrs = trial.user_attrs
        run_dir = attrs.get("run_dir", "")
        with contextlib.suppress(ValueError):
            run_dir = str(Path(run_dir).relative_to(out.resolve())) if run_dir else ""
        row = {"trial": trial.number}
        for dimension in dimensions:
            row[dimension.flag] = trial.params.get(dimension.name)
        row.update({
            "val_accuracy": trial.value if trial.state == _states().COMPLETE else None,
            "test_accuracy": attrs.get("test_accuracy"),
            "best_epoch": attrs.get("best_epoch"),
            "seconds": attrs.get("seconds"),
            "run_dir": run_dir,
            "state": trial.state.name,
            "error": attrs.get("error", ""),
        })
        rows.append(row)
    rows.sort(key=lambda r: (r["val_accuracy"] is None, -(r["val_accuracy"] or 0.0), r["trial"]))
    return rows


def best_row(rows: list[dict]) -> dict | None:
    """The row with the highest validation accuracy (the earliest trial on a tie). Test
    accuracy plays no part."""
    complete = [r for r in rows if r["val_accuracy"] is not None]
    return max(complete, key=lambda r: (r["val_accuracy"], -r["trial"])) if complete else None


def write_results(study, spec: dict, out: Path, *, storage_url: str, jobs: int | None = None) -> SweepResult:
    """results.csv, sweep.json and sweep.png in ``out``, from the study as it stands."""
    from mlplab.training.checkpoint import atomic_write, write_json_atomic

    out = Path(out)
    dimensions = [Dimension.from_json(d) for d in spec["dimensions"]]
    rows = collect_rows(study, spec, out)
    best = best_row(rows)
    columns = [*RESULT_COLUMNS_BEFORE, *(d.flag for d in dimensions), *RESULT_COLUMNS_AFTER]

    def write_csv(handle):
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        swept = {d.flag for d in dimensions}
        for row in rows:
            writer.writerow({k: ("" if v is None else _format_value(v, exact=True) if k in swept else v) for k, v in row.items()})

    atomic_write(out / "results.csv", write_csv, mode="w")
    states = _states()
    trials = study.get_trials(deepcopy=False)
    counts = {
        "planned": spec["trials"],
        "complete": sum(1 for t in trials if "slot" in t.user_attrs and t.state == states.COMPLETE),
        "failed": sum(1 for t in trials if "slot" in t.user_attrs and t.state == states.FAIL and "error" in t.user_attrs),
        "queued": sum(1 for t in trials if t.state == states.WAITING),
        "running": sum(1 for t in trials if t.state == states.RUNNING),
        "retried": sum(1 for t in trials if "retry_of" in t.user_attrs),
    }
    summary = {
        "study": study.study_name,
        "storage": redact(storage_url),
        "out": str(out),
        "search": spec["search"],
        "dimensions": [d.describe() for d in dimensions],
        "base_options": spec["base"],
        "seed": spec["seed"],
        "trials": counts,
        "selection": "highest best-epoch validation accuracy; test accuracy is reported, never used to choose",
        "best": None if best is None else {
            "trial": best["trial"], "params": {d.flag: best[d.flag] for d in dimensions},
            "val_accuracy": best["val_accuracy"], "test_accuracy": best["test_accuracy"], "best_epoch": best["best_epoch"],
            "run_dir": best["run_dir"],
        },
        "jobs": jobs,
        "blas_threads_per_worker": worker_threads(jobs) if jobs and jobs > 1 else None,
        "files": ["results.csv", "sweep.png", "sweep.json", "trials/", "study.db" if storage_url == default_storage(out) else None],
    }
    summary["files"] = [f for f in summary["files"] if f]
    write_json_atomic(out / "sweep.json", summary)
    files = [out / "results.csv", out / "sweep.json"]
    plot_sweep(rows, dimensions, out / "sweep.png", best=best, title=f"Sweep {study.study_name}: validation accuracy")
    files.append(out / "sweep.png")
    return SweepResult(out=out, study_name=study.study_name, storage=storage_url, rows=rows, best=best, summary=summary, files=files)


def format_results(result: SweepResult, spec: dict, limit: int = 20) -> str:
    """The results table (best first, at most ``limit`` rows) and the best configuration."""
    dimensions = [Dimension.from_json(d) for d in spec["dimensions"]]
    header = ["trial", *(d.flag for d in dimensions), "val acc", "test acc", "epoch", "seconds", "state"]
    def number(value, spec: str) -> str:
        return "" if value is None else format(value, spec)

    lines = []
    for row in result.rows[:limit]:
        lines.append([str(row["trial"]), *(_format_value(row[d.flag]) for d in dimensions), number(row["val_accuracy"], ".4f"),
                      number(row["test_accuracy"], ".4f"), "" if row["best_epoch"] is None else str(row["best_epoch"]),
                      number(row["seconds"], ".1f"), row["state"]])
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    text = [""]
    if lines:
        text.append("  ".join(h.rjust(w) for h, w in zip(header, widths)))
        text += ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines]
    if len(result.rows) > limit:
        text.append(f"... {len(result.rows) - limit} more in results.csv")
    for row in result.rows:
        if row["error"]:
            text.append(f"trial {row['trial']} failed: {row['error']}")
    best = result.best
    if best is None:
        text.append("no trial has finished yet")
    else:
        values = ", ".join(f"{d.flag}={_format_value(best[d.flag])}" for d in dimensions)
        text.append(f"\nbest (by validation accuracy): trial {best['trial']} ({values}): validation accuracy "
                    f"{best['val_accuracy']:.4f}, test accuracy {best['test_accuracy']:.4f}")
        text.append(f"  run folder: {result.out / best['run_dir']}")
    text.append(f"written to {result.out}: results.csv, sweep.png, sweep.json")
    return "\n".join(text)


def _numeric(dimension: Dimension) -> bool:
    if not dimension.categorical:
        return True
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in dimension.values)


def plot_sweep(rows: list[dict], dimensions: list[Dimension], path=None, *, best: dict | None = None, title: str | None = None):
    """Validation accuracy against each swept option, one panel per option; the best trial is
    a red star. Numeric options get a numeric axis (logarithmic for log ranges and for lr,
    min-lr and weight-decay when all values are positive); the others one tick per value.
    Failed trials have no validation accuracy and are left out (the panel title counts them)."""
    import numpy as np
    from matplotlib.figure import Figure

    from mlplab.plots import save_figure

    complete = [r for r in rows if r["val_accuracy"] is not None]
    failed = len(rows) - len(complete)
    columns = min(3, len(dimensions))
    lines = math.ceil(len(dimensions) / columns)
    width, height = 4.0 * columns + 0.6, 3.4 * lines + (0.4 if title else 0.0)
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(lines, columns, squeeze=False).ravel()
    y = np.array([r["val_accuracy"] for r in complete], dtype=np.float64)
    for ax, dimension in zip(axes, dimensions):
        values = [r[dimension.flag] for r in complete]
        if _numeric(dimension):
            x = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
            candidates = [float(v) for v in dimension.values] if dimension.categorical else [dimension.low, dimension.high]
            if dimension.kind == "log" or (dimension.name in LOG_AXIS_OPTIONS and min(candidates) > 0):
                ax.set_xscale("log")
            if dimension.categorical:  # a tick at each value of the grid or choice
                ax.set_xticks(candidates, [_format_value(v) for v in dimension.values], minor=False)
                ax.set_xticks([], minor=True)
        else:
            labels = [_format_value(v) for v in dimension.values]
            x = np.array([labels.index(_format_value(v)) for v in values], dtype=np.float64)
            ax.set_xticks(np.arange(len(labels)), labels, rotation=30 if max(map(len, labels)) > 6 else 0)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.scatter(x, y, s=28, alpha=0.75, color="tab:blue", label="trial")
        if best is not None:
            value = best[dimension.flag]
            bx = float(value) if _numeric(dimension) else [_format_value(v) for v in dimension.values].index(_format_value(value))
            ax.scatter([bx], [best["val_accuracy"]], s=160, marker="*", color="tab:red", zorder=3,
                       label=f"best (trial {best['trial']})")
        ax.set_xlabel(dimension.flag)
        if failed:
            ax.set_title(f"{failed} failed trial{'s' * (failed != 1)} not shown", fontsize=9)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(dimensions):]:
        ax.set_visible(False)
    for row_start in range(0, len(dimensions), columns):
        axes[row_start].set_ylabel("validation accuracy")
    if best is not None:
        axes[0].legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    top = 0.45 + (0.35 if title else 0.0)
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.2 / width, bottom=0.7 / height, top=1 - top / height,
                        wspace=0.35, hspace=0.6)
    if path is not None:
        save_figure(fig, path)
    return fig
