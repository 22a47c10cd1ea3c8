"""``mlplab compare``: the NumPy and the PyTorch MLP trained side by side from the same start."""

from __future__ import annotations

from mlplab.commands.train import S, add_training_options, options_from_args


def register(subparsers, parents) -> None:
    parser = subparsers.add_parser(
        "compare",
        parents=parents,
        help="train the NumPy and the PyTorch MLP on the same batches and compare them",
        description="Train the NumPy and the PyTorch MLP of one configuration (the options of `mlplab train`) "
        "from the same initial weights on the same batches, then write both run folders, a table "
        "(comparison.md: test accuracy, best validation accuracy, best epoch, seconds per epoch) and a "
        "figure of both training-loss and validation-accuracy curves (comparison.png) to --out. Needs PyTorch.",
    )
    add_training_options(parser)
    output = parser.add_argument_group("output")
    output.add_argument("--out", default=S, metavar="DIR", help="output folder (default runs/compare-<date-time>)")
    output.add_argument("--overwrite", action="store_true", default=S, help="replace earlier runs in --out")
    output.add_argument("-q", "--quiet", action="store_true", default=S, help="no progress bars or per-epoch lines")
    output.add_argument(
        "--no-report", dest="report", action="store_false", default=S, help="skip each run's report.md/report.html"
    )
    parser.set_defaults(run=run)


def run(args) -> int:
    from mlplab.config import resolve_config
    from mlplab.errors import ConfigError

    options = options_from_args(args)
    if "backend" in options:
        raise ConfigError("--backend: compare trains both backends (numpy and torch); drop the option")
    # Fails here, with one line naming the extra, before the NumPy run when torch is missing.
    from mlplab.compare import compare, default_compare_dir

    config = resolve_config(
        preset=getattr(args, "preset", None), config_file=getattr(args, "config_file", None), options=options
    )
    out = config.out or str(default_compare_dir())
    comparison = compare(config, out)
    print()
    print(comparison["table"].split("\n## ")[0].rstrip())
    print(f"\nwritten to {comparison['out']}: numpy/, torch/, comparison.md, comparison.png")
    return 0
