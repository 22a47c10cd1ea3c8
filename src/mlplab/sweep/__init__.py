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

**The map** (each file holds one idea; arrows point to what a file imports)::

    run.py        run_sweep: create or resume the study, start workers, write the results
      -> results.py   results.csv rows, the best trial, sweep.json, the printed table; sweep.png is
                      drawn by mlplab.plots.plot_sweep from the plain panels of sweep_panels()
      -> worker.py    one worker's loop; N worker processes on one machine
           -> objective.py one trial: train its configuration into its run folder
      -> storage.py   opening the study's database; error lines; the storage URL
      -> queue.py     slots as queued trials: plan, requeue, fail abandoned trials
      -> spec.py      the sweep's definition stored in the study, and its plan of slots
      -> space.py     the swept options (Dimension) from --grid / --param
      _optuna.py    Optuna imported on demand, and quiet

Training, configuration and errors come from :mod:`mlplab.training`, :mod:`mlplab.config` and
:mod:`mlplab.errors`; within mlplab only ``mlplab.commands.sweep`` imports this package.
"""

from __future__ import annotations

from mlplab.sweep.objective import FOLDER_ABBREVIATIONS, Objective, trial_folder_name
from mlplab.sweep.queue import plan
from mlplab.sweep.results import (
    RESULT_COLUMNS_AFTER,
    RESULT_COLUMNS_BEFORE,
    SweepResult,
    best_row,
    collect_rows,
    format_results,
    sweep_panels,
    write_results,
)
from mlplab.sweep.run import join_command, run_sweep
from mlplab.sweep.space import (
    NOT_SWEPT,
    TRACKING_OPTIONS,
    Dimension,
    grid_dimension,
    param_dimension,
    parse_grid,
    parse_params,
    parse_value,
)
from mlplab.sweep.spec import (
    DEFAULT_HEARTBEAT,
    DEFAULT_RANDOM_TRIALS,
    MACHINE_OPTIONS,
    SPEC_KEY,
    SPEC_VERSION,
    _random_draws,
    default_out,
    grid_points,
    make_spec,
    planned_params,
    read_spec,
    slot_order,
    spec_digest,
)
from mlplab.sweep.storage import (
    DRIVER_PACKAGES,
    POSTGRES_DRIVERS,
    POSTGRES_EXTRA,
    STORAGE_VARIABLE,
    default_storage,
    engine_url,
    locate,
    open_storage,
    redact,
)
from mlplab.sweep.worker import (
    THREAD_VARIABLES,
    WAIT_POLL_SECONDS,
    run_processes,
    run_worker,
    worker_environment,
    worker_threads,
)

#: the names other code uses; ``_random_draws`` stays importable for the tests that check the draws
__all__ = [
    "DEFAULT_HEARTBEAT",
    "DEFAULT_RANDOM_TRIALS",
    "DRIVER_PACKAGES",
    "FOLDER_ABBREVIATIONS",
    "MACHINE_OPTIONS",
    "NOT_SWEPT",
    "POSTGRES_DRIVERS",
    "POSTGRES_EXTRA",
    "RESULT_COLUMNS_AFTER",
    "RESULT_COLUMNS_BEFORE",
    "SPEC_KEY",
    "SPEC_VERSION",
    "STORAGE_VARIABLE",
    "THREAD_VARIABLES",
    "TRACKING_OPTIONS",
    "WAIT_POLL_SECONDS",
    "Dimension",
    "Objective",
    "SweepResult",
    "_random_draws",
    "best_row",
    "collect_rows",
    "default_out",
    "default_storage",
    "engine_url",
    "format_results",
    "grid_dimension",
    "grid_points",
    "join_command",
    "locate",
    "make_spec",
    "open_storage",
    "param_dimension",
    "parse_grid",
    "parse_params",
    "parse_value",
    "plan",
    "planned_params",
    "read_spec",
    "redact",
    "run_processes",
    "run_sweep",
    "run_worker",
    "slot_order",
    "spec_digest",
    "sweep_panels",
    "trial_folder_name",
    "worker_environment",
    "worker_threads",
    "write_results",
]
