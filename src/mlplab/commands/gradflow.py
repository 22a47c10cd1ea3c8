"""``mlplab gradflow``: how much gradient reaches each layer of a deep MLP, plain against residual."""

from __future__ import annotations

import argparse

from mlplab.nn.activations import ACTIVATIONS


def register(subparsers, parents) -> None:
    parser = subparsers.add_parser(
        "gradflow",
        parents=parents,
        help="gradient norm at every layer of a deep MLP, plain against residual",
        description="Build a deep MLP at initialisation, push one training batch forward and backward (float64, "
        "cross-entropy), and report the norm of the gradient arriving at every Linear layer's input, from the "
        "output back to the first layer, for the plain network and for the same network (same weights) with "
        "residual connections around its equal-width hidden blocks. Prints one table and writes one figure.",
    )
    parser.add_argument("--depth", type=int, default=16, metavar="N", help="hidden layers (default 16)")
    parser.add_argument("--width", type=int, default=128, metavar="UNITS", help="units per hidden layer (default 128)")
    parser.add_argument(
        "--activation", default="sigmoid", metavar="NAME", help=f"one of {', '.join(ACTIVATIONS)} (default sigmoid)"
    )
    parser.add_argument(
        "--residual",
        action="store_true",
        help="accepted for symmetry with `mlplab train`: both networks are always measured",
    )
    parser.add_argument(
        "--dataset",
        default="digits",
        help="the data set of the batch (default digits; an unknown name lists the known ones)",
    )
    parser.add_argument(
        "--data-dir",
        "--data_dir",
        dest="data_dir",
        default=None,
        metavar="DIR",
        help="where the data set lies (default: $MLPLAB_DATA, else ./data)",
    )
    parser.add_argument(
        "--batch-size",
        "--batch_size",
        dest="batch_size",
        type=int,
        default=128,
        metavar="N",
        help="rows of the batch (default 128)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and of the batch (default 0)")
    parser.add_argument(
        "--out",
        default=".",
        metavar="PATH",
        help="folder for gradflow.png, or a .png file name (default: the current folder)",
    )
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON instead of the table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from mlplab.errors import ConfigError
    from mlplab.gradflow import FIGURE_NAME, format_table, gradient_flow
    from mlplab.plots import plot_gradient_flow

    out = Path(args.out)
    path = out if out.suffix.lower() == ".png" else out / FIGURE_NAME
    if path.parent.exists() and not path.parent.is_dir():
        raise ConfigError(f"--out {str(out)!r}: {str(path.parent)!r} is not a folder")
    result = gradient_flow(
        depth=args.depth,
        width=args.width,
        activation=args.activation,
        dataset=args.dataset,
        batch_size=args.batch_size,
        seed=args.seed,
        data_dir=args.data_dir,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_gradient_flow(result, path)
    if args.json:
        print(json.dumps({**result, "figure": str(path)}, indent=2))
        return 0
    print(
        f"gradient norm at each Linear layer's input, {result['depth']} hidden layers of {result['width']} "
        f"{result['activation']} units at initialisation, one batch of {result['batch_size']} from {result['dataset']}:"
    )
    print(format_table(result))
    print(f"wrote {path}")
    return 0
