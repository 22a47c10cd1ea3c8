"""``mlplab sweep``: a grid, random or TPE search over training options, on Optuna."""

from __future__ import annotations

import argparse

from mlplab.commands.train import S, add_tracking_options, add_training_options, options_from_args

EPILOG = """\
examples:
  mlplab sweep --dataset digits --epochs 20 --grid lr=0.01,0.1 --grid hidden-dims=64,128x64 --jobs 2
  mlplab sweep --dataset digits --param lr=log:1e-3:1e-1 --param dropout=float:0:0.5 --trials 30 --jobs 2
  mlplab sweep --worker --out runs/sweep-...        (one more worker for the sweep in that folder)
  mlplab sweep --worker --storage postgresql://user@db/sweeps --study-name NAME   (a worker on another machine)

--param kinds: log:LOW:HIGH (log-uniform), float:LOW:HIGH[:STEP], int:LOW:HIGH[:STEP], choice:V1,V2,...
Hidden widths are written 512x256 (commas separate values). Rerunning the same command resumes
the sweep: finished trials are kept, stopped ones are run again. See docs/sweeps.md.
"""


def register(subparsers, parents) -> None:
    parser = subparsers.add_parser(
        "sweep",
        parents=parents,
        help="sweep training options (grid, random or TPE search; parallel, resumable)",
        description="Train one run per configuration of a grid (--grid) or of a random or TPE search (--param, "
        "--trials), in parallel worker processes (--jobs), choosing the best by validation accuracy; then write "
        "results.csv (best first), sweep.png and sweep.json to --out and print the best configuration with its test "
        "accuracy. The sweep is an Optuna study (SQLite in --out, or --storage URL shared by workers on several "
        "machines); the remaining options set what every trial shares.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    search = parser.add_argument_group("search")
    search.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="NAME=V1,V2,...",
        help="sweep option NAME over these values; repeat for more options (every combination runs)",
    )
    search.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=KIND:...",
        help="search option NAME over a range or choice (see the kinds below); repeat for more options",
    )
    search.add_argument(
        "--sampler", choices=("tpe", "random"), default=None, help="how --param configurations are chosen (default tpe)"
    )
    search.add_argument(
        "--trials",
        type=int,
        default=None,
        metavar="N",
        help="trials in the sweep (default: the whole grid; 20 for --param); a larger N later extends the sweep",
    )
    search.add_argument(
        "--sweep-seed",
        dest="sweep_seed",
        type=int,
        default=0,
        metavar="SEED",
        help="seed of the random draws (and of a grid subset when --trials is smaller than the grid; default 0)",
    )
    add_training_options(parser)
    run = parser.add_argument_group("sweep execution")
    run.add_argument(
        "--out",
        default=S,
        metavar="DIR",
        help="sweep folder (default runs/sweep-<dataset>-<options>-<digest>, the same for the same sweep)",
    )
    run.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="worker processes on this machine (default 1; 0: only create the study and write results)",
    )
    run.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="Optuna storage (default $MLPLAB_SWEEP_STORAGE, else sqlite:///DIR/study.db; "
        "e.g. postgresql://user:pass@host/db to share)",
    )
    run.add_argument(
        "--study-name", dest="study_name", default=None, metavar="NAME", help="study name (default: the name of --out)"
    )
    run.add_argument(
        "--worker",
        action="store_true",
        help="join an existing sweep (--out, or --storage and --study-name) as a worker",
    )
    run.add_argument(
        "--worker-trials",
        dest="worker_trials",
        type=int,
        default=None,
        metavar="N",
        help="with --worker: stop each worker process after N trials",
    )
    run.add_argument(
        "--heartbeat",
        type=int,
        default=10,
        metavar="SECONDS",
        help="a running trial's heartbeat; one silent for twice this long is run again (default 10)",
    )
    run.add_argument(
        "--report",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="write report.md/report.html in every trial's run folder (default: no)",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="print only the results")
    add_tracking_options(parser.add_argument_group("tracking (one MLflow run per trial, nested under the sweep's run)"))
    parser.set_defaults(run=run_command)


def run_command(args) -> int:
    from mlplab.errors import ConfigError
    from mlplab.sweep import NOT_SWEPT, run_sweep, run_worker

    # --out, --quiet and --report name the sweep's own settings here, not the trials'.
    options = {name: value for name, value in options_from_args(args).items() if name not in NOT_SWEPT}
    out = getattr(args, "out", None)
    if args.jobs < 0:
        raise ConfigError(f"--jobs must be an integer >= 0, got {args.jobs}")
    if args.worker:
        extra = [f"--{name.replace('_', '-')}" for name in options if name != "data_dir"]
        extra += [
            flag
            for flag, given in (
                ("--grid", args.grid),
                ("--param", args.param),
                ("--sampler", args.sampler),
                ("--trials", args.trials),
                ("--preset", hasattr(args, "preset")),
                ("--config", hasattr(args, "config_file")),
            )
            if given
        ]
        if extra:
            raise ConfigError(f"--worker takes the sweep's options from the study; drop {', '.join(extra)}")
        if args.jobs < 1:
            raise ConfigError("--worker needs --jobs 1 or more")
        if args.worker_trials is not None and args.worker_trials < 1:
            raise ConfigError(f"--worker-trials must be a positive integer, got {args.worker_trials}")
        run_worker(
            args.storage,
            args.study_name,
            out=out,
            data_dir=options.get("data_dir"),
            jobs=args.jobs,
            max_trials=args.worker_trials,
            quiet=args.quiet,
        )
        return 0
    if args.worker_trials is not None:
        raise ConfigError("--worker-trials applies to --worker")
    run_sweep(
        grid=args.grid,
        params=args.param,
        sampler=args.sampler,
        trials=args.trials,
        options=options,
        preset=getattr(args, "preset", None),
        config_file=getattr(args, "config_file", None),
        out=out,
        jobs=args.jobs,
        storage=args.storage,
        study_name=args.study_name,
        seed=args.sweep_seed,
        report=args.report,
        heartbeat=args.heartbeat,
        quiet=args.quiet,
    )
    return 0
