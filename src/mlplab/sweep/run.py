"""The sweep as one command: create or resume the study, queue its slots, start its workers,
and write and print the results (:func:`run_sweep`).
"""

from __future__ import annotations

from pathlib import Path

from mlplab import validation
from mlplab.errors import CheckpointError, ConfigError, MlplabError
from mlplab.sweep._optuna import _optuna, _optuna_quietly
from mlplab.sweep.queue import _done, _states, plan
from mlplab.sweep.results import SweepResult, format_results, write_results
from mlplab.sweep.space import TRACKING_OPTIONS, _flag
from mlplab.sweep.spec import (
    DEFAULT_HEARTBEAT,
    SPEC_KEY,
    _spec_identity,
    default_out,
    make_spec,
    read_spec,
)
from mlplab.sweep.storage import (
    _storage_errors,
    default_storage,
    locate,
    open_storage,
    redact,
)
from mlplab.sweep.worker import (
    _raise_for_workers,
    run_processes,
    run_worker,
    worker_threads,
)


def run_sweep(
    *,
    grid=None,
    params=None,
    sampler: str | None = None,
    trials: int | None = None,
    options: dict | None = None,
    preset: str | None = None,
    config_file=None,
    out=None,
    jobs: int = 1,
    storage: str | None = None,
    study_name: str | None = None,
    seed: int = 0,
    report: bool = False,
    heartbeat: int = DEFAULT_HEARTBEAT,
    quiet: bool = False,
    train=None,
) -> SweepResult:
    """Create (or resume) a sweep, run it with ``jobs`` worker processes and write its results.

    ``grid={"lr": [0.01, 0.1], "hidden_dims": ["256", "512x256"]}`` runs every combination;
    ``params={"lr": "log:1e-3:1e-1"}`` with ``sampler="tpe"`` or ``"random"`` runs ``trials``
    configurations. ``options``: training options shared by every trial. ``jobs=0`` only
    creates the study (workers join with :func:`run_worker`) and writes what is finished.
    ``train``: replaces :func:`mlplab.train` in-process (``jobs=1``; for tests).
    """
    spec = make_spec(
        grid=grid,
        params=params,
        sampler=sampler,
        trials=trials,
        base_options=options,
        preset=preset,
        config_file=config_file,
        seed=seed,
        report=report,
        heartbeat=heartbeat,
    )
    jobs = validation.integer(jobs, "--jobs", low=0)
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
            study = optuna.create_study(
                study_name=name, storage=study_storage, direction="maximize", load_if_exists=True
            )
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
    say(
        f"sweep {name!r} ({what} over {', '.join(_flag(d['name']) for d in spec['dimensions'])}, {spec['trials']} trials) "
        f"in {out}: {finished} finished, {len(pending)} to run"
        + (f" ({queued} newly queued)" if queued and finished else "")
    )
    workers = min(jobs, len(pending))
    trained = 0
    stopped = None
    if workers:
        threads = worker_threads(workers)
        say(
            f"running with {workers} worker{'s' * (workers != 1)}"
            + (f" ({threads} BLAS thread{'s' * (threads != 1)} each)" if workers > 1 else "")
            + f"; more workers can join with: {join_command(url, name, out)}"
        )
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
            raise ConfigError(
                f"{str(out)!r} or the study {study.study_name!r} already holds trials of another sweep; "
                "choose another --out or --study-name"
            )
    else:
        read_spec(study)
        old, new = _spec_identity(stored), _spec_identity(spec)
        if old != new:
            differs = [key for key in new if old.get(key) != new.get(key)]
            if "base" in differs:
                differs.remove("base")
                differs += [f"--{_flag(k)}" for k in sorted(new["base"]) if old["base"].get(k) != new["base"].get(k)]
            raise ConfigError(
                f"the sweep in {redact(url)} (study {study.study_name!r}) was started with different options "
                f"({', '.join(differs)}); rerun it with the same ones, or choose another --out or --study-name"
            )
    study.set_user_attr(SPEC_KEY, spec)
    return spec
