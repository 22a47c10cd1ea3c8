"""``mlplab check DIR``: test a learner's own modules.py / mlp_numpy.py and name the mistakes."""

from __future__ import annotations

from pathlib import Path


def register(subparsers, parents) -> None:
    from mlplab.check.runner import DEFAULT_TIMEOUT

    parser = subparsers.add_parser(
        "check",
        parents=parents,
        help="test your own NumPy modules (the course API) and name the mistakes",
        description="Run the LinearModule, ELUModule, SoftMaxModule and CrossEntropyModule of DIR/modules.py, and "
        "the MLP of DIR/mlp_numpy.py when present, against mlplab's modules and central differences, in a separate "
        "process with a time limit. Each failure that matches a known mistake is named, with the evidence, the "
        "right formula and the section of docs/backprop.md that derives it. Exit 0 when every check passes, 1 "
        "when any fails, 2 for a usage error.",
    )
    parser.add_argument("folder", metavar="DIR", help="folder holding modules.py (and optionally mlp_numpy.py)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs and weights (default 0)")
    parser.add_argument(
        "--train",
        action="store_true",
        help="also train your MLP and mlplab's for 20 steps on digits from the same weights",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds the checks may take before they are stopped (default {DEFAULT_TIMEOUT:g})",
    )
    parser.set_defaults(run=run)


def run(args) -> int:
    from mlplab.check.report import as_json, as_text
    from mlplab.check.runner import run_probe
    from mlplab.errors import ConfigError

    folder = Path(args.folder)
    if not folder.exists():
        raise ConfigError(f"no such folder: {folder}")
    if not folder.is_dir():
        raise ConfigError(f"{folder} is a file; give the folder that holds modules.py")
    if not (folder / "modules.py").is_file():
        raise ConfigError(
            f"{folder} holds no modules.py (the LinearModule, ELUModule, SoftMaxModule and CrossEntropyModule to check)"
        )
    if args.train and not (folder / "mlp_numpy.py").is_file():
        raise ConfigError(f"--train needs {folder / 'mlp_numpy.py'} (the MLP to train)")
    if not args.timeout > 0:
        raise ConfigError(f"--timeout must be positive, got {args.timeout}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer, got {args.seed}")
    outcome = run_probe(folder, seed=args.seed, train=args.train, timeout=args.timeout)
    print(as_json(outcome) if args.json else as_text(outcome))
    return 0 if outcome.passed else 1
