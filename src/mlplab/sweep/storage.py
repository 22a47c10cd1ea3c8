"""Where a study lives: opening an Optuna RDB storage (SQLite serialised with ``BEGIN
IMMEDIATE``, PostgreSQL with an installed driver), database errors as one-line MlplabErrors,
hiding passwords, and finding the storage URL and study name of a sweep.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from mlplab.errors import ConfigError, MissingDependencyError, MlplabError
from mlplab.sweep._optuna import _optuna, _optuna_quietly
from mlplab.sweep.queue import _requeue_stale_trial

#: the storage URL when --storage is not given (keeps a database password off command lines)
STORAGE_VARIABLE = "MLPLAB_SWEEP_STORAGE"


def default_storage(out) -> str:
    return f"sqlite:///{Path(out).resolve() / 'study.db'}"


def redact(url: str) -> str:
    """The storage URL with any password hidden (for printing and sweep.json)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - no SQLAlchemy or a URL it rejects: hide the password by pattern
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
DRIVER_PACKAGES = {
    **POSTGRES_DRIVERS,
    "pg8000": "pg8000",
    "pymysql": "pymysql",
    "MySQLdb": "mysqlclient",
    "mysql": "mysql-connector-python",
}
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
        callback = (
            "heartbeat_stale_trial_callback"
            if "heartbeat_stale_trial_callback" in parameters
            else "failed_trial_callback"
        )
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
            message = (
                f"the database driver psycopg2 is not installed: pip install psycopg2-binary "
                f"(or write the URL as postgresql://, which needs only {POSTGRES_EXTRA})"
            )
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
                raise ConfigError(
                    f"--storage {url!r}: not a database URL (e.g. sqlite:///study.db, postgresql://user@host/db)"
                ) from None
            if type(exc).__name__ == "NoSuchModuleError":  # postgresql+typo://
                scheme = url.split("://")[0]
                raise MissingDependencyError(
                    f"--storage {redact(url)}: SQLAlchemy knows no database driver {scheme!r} "
                    "(for PostgreSQL write postgresql://, postgresql+psycopg:// or "
                    "postgresql+psycopg2://)"
                ) from None
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
            raise ConfigError(
                f"no sweep named {name!r} in {redact(url)}; start it with `mlplab sweep --grid/--param ... "
                f"--storage URL --study-name {name}` first"
            ) from None


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
