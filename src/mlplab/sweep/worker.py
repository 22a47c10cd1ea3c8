"""Workers: one process taking queued trials until the queue is empty, and N such processes
on one machine (their BLAS thread pools sized to share its cores, signals passed on once).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mlplab.errors import CheckpointError, MlplabError, TrainingInterrupted
from mlplab.sweep._optuna import _optuna, _optuna_quietly
from mlplab.sweep.objective import Objective, _TrialFailed
from mlplab.sweep.queue import _fail_abandoned, _states
from mlplab.sweep.spec import read_spec
from mlplab.sweep.storage import STORAGE_VARIABLE, _load_study, _storage_errors, locate

#: how often a worker with nothing queued looks again while other workers' trials run
WAIT_POLL_SECONDS = 1.0
#: environment variables that size the BLAS / OpenMP thread pools of a worker process
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


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


def run_worker(
    storage: str | None = None,
    study_name: str | None = None,
    *,
    out=None,
    data_dir=None,
    jobs: int = 1,
    max_trials: int | None = None,
    quiet: bool = False,
    train=None,
) -> int:
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
        raise CheckpointError(
            f"cannot write trial run folders in {str(out)!r} ({exc.strerror or exc}); pass --out DIR for this machine"
        ) from None
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
                    echo(
                        f"waiting for {len(queued)} trial{'s' * (len(queued) != 1)} running in other workers "
                        f"(one whose worker stopped is queued again {2 * spec['heartbeat']} s after its last heartbeat)"
                    )
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
        raise TrainingInterrupted(
            "sweep interrupted: running trials are queued again and finished ones are kept; "
            "rerun the same command to continue",
            code,
        )
    return [process.returncode for process in processes]


def _raise_for_workers(codes: list[int]) -> None:
    interrupted = [c for c in codes if c in (130, 143)]
    if interrupted:
        raise TrainingInterrupted(
            "a worker was interrupted; its trial is queued again. Rerun the same command to continue", interrupted[0]
        )
    failed = [c for c in codes if c != 0]
    if failed:
        raise MlplabError(
            f"{len(failed)} of {len(codes)} workers stopped with an error (see above); "
            "rerun the same command to continue"
        )
