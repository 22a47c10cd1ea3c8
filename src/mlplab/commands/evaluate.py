"""``mlplab evaluate``: a run's best model on its test (or validation) split, class by class."""

from __future__ import annotations

import math
from pathlib import Path

SPLITS = ("test", "validation")


def register(subparsers, parents) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        parents=parents,
        help="confusion matrix, precision, recall and F-beta of a run's best model",
        description="Load RUN_DIR/best.npz (written by either backend), rebuild the run's data with its saved "
        "options and print the accuracy, the confusion matrix (rows: true class, columns: predicted class) and "
        "each class's precision, recall and F-beta.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `mlplab train`")
    parser.add_argument("--split", choices=SPLITS, default="test", help="the split to evaluate (default test)")
    parser.add_argument(
        "--beta",
        type=float,
        nargs="+",
        default=[0.1, 1.0, 10.0],
        metavar="B",
        help="F-beta for each B (default 0.1 1 10: precision-heavy, balanced, recall-heavy)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--data-dir",
        "--data_dir",
        dest="data_dir",
        default=None,
        metavar="DIR",
        help="where the data set lies, if not where the run found it",
    )
    parser.add_argument(
        "--batch-size",
        "--batch_size",
        dest="batch_size",
        type=int,
        default=1000,
        metavar="N",
        help="samples per forward pass (default 1000)",
    )
    parser.set_defaults(run=run)


def _betas(values) -> list[float]:
    from mlplab.errors import ConfigError

    betas: list[float] = []
    for beta in values:
        if not (math.isfinite(beta) and beta > 0):
            raise ConfigError(f"--beta must be positive and finite, got {beta:g}")
        if beta not in betas:
            betas.append(beta)
    return betas


def evaluate_run(
    run_dir, *, split: str = "test", betas=(0.1, 1.0, 10.0), data_dir=None, batch_size: int = 1000
) -> dict:
    """Evaluate ``run_dir/best.npz`` on ``split`` of the run's data; the JSON-able result that
    ``mlplab evaluate`` prints (see :func:`result_dict`)."""
    from mlplab.config import TrainConfig
    from mlplab.errors import CheckpointError, ConfigError
    from mlplab.metrics import evaluate
    from mlplab.training.checkpoint import load_model
    from mlplab.training.loop import load_data
    from mlplab.training.run import read_config

    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise CheckpointError(f"no run folder at {str(run_dir)!r}")
    if not run_dir.is_dir():
        raise CheckpointError(f"{str(run_dir)!r} is not a run folder")
    model, meta = load_model(run_dir)
    # config.json holds the options the run was started with; best.npz carries a copy, so a
    # folder that lost config.json still evaluates.
    options = read_config(run_dir).get("options") if (run_dir / "config.json").exists() else meta.get("config")
    if not options:
        raise CheckpointError(f"run folder {str(run_dir)!r} records no training options")
    if data_dir is not None:
        options = {**options, "data_dir": str(data_dir)}
    config = TrainConfig.from_options(options).validated()
    data = load_data(config)
    dataset = getattr(data, split)
    if split == "validation" and len(dataset) == 0:
        raise ConfigError(
            f"the run in {str(run_dir)!r} has no validation split (--validation-size 0); use --split test"
        )
    if model.n_classes != data.num_classes or model.n_inputs != data.num_features:
        raise CheckpointError(
            f"best.npz in {str(run_dir)!r} expects {model.n_inputs} features and {model.n_classes} classes, "
            f"but the data has {data.num_features} and {data.num_classes}"
        )
    result = evaluate(
        model,
        dataset,
        batch_size=batch_size,
        tta_flip=config.tta_flip,
        image_shape=data.image_shape,
        mirror=data.mirror,
    )
    return result_dict(
        result,
        betas,
        class_names=list(data.class_names),
        run_dir=str(run_dir),
        split=split,
        dataset=data.name,
        backend=meta.get("backend"),
        epoch=meta.get("epoch"),
    )


def result_dict(result, betas, *, class_names, **extra) -> dict:
    """An :class:`~mlplab.metrics.Evaluation` at several betas as plain JSON-able values:
    ``accuracy``, ``count``, ``class_names``, ``confusion_matrix`` (rows true, columns predicted),
    per-class ``precision``, ``recall``, ``support``, ``f_beta`` (``{str(beta): [...]}``) and
    ``macro`` / ``weighted`` averages (``f_beta`` again keyed by beta)."""
    by_beta = {f"{beta:g}": result.at_beta(beta) for beta in betas}
    first = result.at_beta(1.0)
    return {
        **extra,
        "count": result.count,
        "accuracy": result.accuracy,
        "class_names": class_names,
        "confusion_matrix": result.confusion_matrix.tolist(),
        "betas": [float(beta) for beta in betas],
        "precision": first["precision"].tolist(),
        "recall": first["recall"].tolist(),
        "support": first["support"].tolist(),
        "f_beta": {key: m["f_beta"].tolist() for key, m in by_beta.items()},
        **{
            average: {
                "precision": first[average]["precision"],
                "recall": first[average]["recall"],
                "f_beta": {key: m[average]["f_beta"] for key, m in by_beta.items()},
            }
            for average in ("macro", "weighted")
        },
    }


def format_text(result: dict) -> str:
    """The human-readable form of :func:`result_dict`."""
    names = result["class_names"]
    cm = result["confusion_matrix"]
    lines = []
    where = f"{result.get('dataset', '?')} {result.get('split', '?')} split"
    origin = f"best epoch {result['epoch']}, " if result.get("epoch") is not None else ""
    lines.append(f"{result.get('run_dir', '')} ({origin}{result.get('backend') or '?'} backend)")
    lines.append(f"{where}: {result['count']:,} samples, accuracy {100 * result['accuracy']:.2f}%")
    lines.append("")

    lines.append("confusion matrix (rows: true class, columns: predicted class)")
    corner = "true \\ pred"
    label_width = max([len(n) for n in names] + [len(corner)])
    largest = max((v for row in cm for v in row), default=0)
    cell = max(len(str(largest)), 5)
    header = f"{corner:<{label_width}}" + "".join(f" {name[:cell]:>{cell}}" for name in names)
    lines.append(header)
    for name, counts in zip(names, cm):
        lines.append(f"{name:<{label_width}}" + "".join(f" {v:>{cell}}" for v in counts))
    lines.append("")

    keys = list(result["f_beta"])
    columns = ["precision", "recall", *(f"F{key}" for key in keys), "support"]
    widths = [max(9, len(c)) for c in columns]
    name_width = max([len(n) for n in names] + [len("weighted avg")])
    lines.append(f"{'class':<{name_width}}" + "".join(f"  {c:>{w}}" for c, w in zip(columns, widths)))

    def row(label, precision, recall, f_values, support):
        values = [f"{precision:.3f}", f"{recall:.3f}", *(f"{v:.3f}" for v in f_values), str(support)]
        return f"{label:<{name_width}}" + "".join(f"  {v:>{w}}" for v, w in zip(values, widths))

    for index, name in enumerate(names):
        lines.append(
            row(
                name,
                result["precision"][index],
                result["recall"][index],
                [result["f_beta"][key][index] for key in keys],
                result["support"][index],
            )
        )
    total = sum(result["support"])
    for average, label in (("macro", "macro avg"), ("weighted", "weighted avg")):
        a = result[average]
        lines.append(row(label, a["precision"], a["recall"], [a["f_beta"][key] for key in keys], total))
    return "\n".join(lines)


def run(args) -> int:
    import json

    if args.batch_size < 1:
        from mlplab.errors import ConfigError

        raise ConfigError(f"--batch-size must be a positive integer, got {args.batch_size}")
    betas = _betas(args.beta)
    result = evaluate_run(
        args.run_dir, split=args.split, betas=betas, data_dir=args.data_dir, batch_size=args.batch_size
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_text(result))
    return 0
