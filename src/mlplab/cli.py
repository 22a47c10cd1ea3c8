"""The ``mlplab`` command line: subcommands, and the one place that turns errors into exit codes.

Each subcommand lives in ``mlplab.commands.<name>`` with ``register(subparsers, parents)`` (adds
its parser and sets ``run``) and keeps heavy imports inside its ``run`` so ``mlplab --help``
stays fast. Library code raises :class:`~mlplab.errors.MlplabError`; here it becomes one line
on stderr and an exit code: 2 usage/config, 1 runtime (data, checkpoint), 3 divergence,
130/143 interrupted. ``--debug`` re-raises for a full traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from mlplab import __version__
from mlplab.errors import MlplabError, TrainingInterrupted

#: subcommand modules, in the order ``mlplab --help`` lists them
COMMANDS = ("train", "evaluate", "report", "compare", "gradcheck", "presets", "hessian", "gradflow", "sweep", "check")


#: what to pip install for an import name, where the two differ or an extra of mlplab provides it
PIP_NAMES = {
    "sklearn": "scikit-learn",
    "psycopg2": "psycopg2-binary",
    "psycopg": "'psycopg[binary]'",
    "torch": "'mlplab[torch]'",
    "optuna": "'mlplab[sweep]'",
    "tensorboard": "'mlplab[tensorboard]'",
    "mlflow": "'mlplab[mlflow]'",
}


def missing_package_message(exc: ImportError) -> str:
    """One line for an ImportError that escaped the commands: its message and, when the missing
    module is another package's, the pip command that installs it."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    package = (exc.name or "").partition(".")[0]
    if package and package != "mlplab":
        return f"{text}: pip install {PIP_NAMES.get(package, package)}"
    return text


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error (for bug reports)")
    parser = argparse.ArgumentParser(
        prog="mlplab",
        description="Multilayer perceptrons from first principles: train, evaluate, compare and inspect.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"mlplab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"mlplab.commands.{name}")
        except ModuleNotFoundError as exc:  # a command not built yet
            if exc.name != f"mlplab.commands.{name}":
                raise
            continue
        module.register(subparsers, [common])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help, --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    prog = f"mlplab {args.command}"
    # Warnings (a data set whose checksum differs, say) as one line each, not a source excerpt.
    previous_format = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *rest, **kw: f"{prog}: warning: {message}\n"
    try:
        code = args.run(args)
        return 0 if code is None else int(code)
    except TrainingInterrupted as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_code
    except MlplabError as exc:
        if args.debug:
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ImportError as exc:  # an optional package missing on a path with no message of its own
        if args.debug:
            raise
        print(f"{prog}: error: {missing_package_message(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mlplab ... | head`
        return 0
    finally:
        warnings.formatwarning = previous_format
