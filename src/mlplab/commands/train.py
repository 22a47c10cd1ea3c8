"""``mlplab train``: train an MLP and write its run folder."""

from __future__ import annotations

import argparse
import contextlib

from mlplab.config import BACKENDS, DEVICES, DTYPES
from mlplab.nn.activations import ACTIVATIONS  # the registries: already loaded by `mlplab --help`'s other commands
from mlplab.optim import OPTIMIZERS, SCHEDULES

S = argparse.SUPPRESS  # options not given stay absent, so presets and config files can fill them


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """The options shared by ``train``, ``compare`` and ``sweep`` (defaults: the reference setup)."""
    group = parser.add_argument_group("setup")
    group.add_argument("--preset", default=S, metavar="NAME", help="start from a shipped preset (see `mlplab presets`)")
    group.add_argument(
        "--config",
        dest="config_file",
        default=S,
        metavar="FILE",
        help="options from a TOML or JSON file; flags given here win",
    )

    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset", default=S, help="the data set (default cifar10; an unknown name lists the known ones)"
    )
    data.add_argument(
        "--data-dir",
        "--data_dir",
        dest="data_dir",
        default=S,
        metavar="DIR",
        help="where the data set lies (default: $MLPLAB_DATA, else ./data)",
    )
    data.add_argument(
        "--validation-size",
        "--validation_size",
        dest="validation_size",
        type=int,
        default=S,
        metavar="N",
        help="training images held out for validation (default: the data set's own, 5000 for CIFAR-10)",
    )
    data.add_argument(
        "--split-seed",
        dest="split_seed",
        type=int,
        default=S,
        metavar="SEED",
        help="seed of the train/validation split (default 42)",
    )
    data.add_argument(
        "--normalization",
        default=S,
        metavar="NAME",
        help="per-channel statistics: published (default) or train (computed on the training split)",
    )
    data.add_argument(
        "--whitening",
        default=S,
        metavar="NAME",
        help="after normalising: none (default), per_image standardisation, zca, or pca (fitted on the "
        "training split; pca keeps --pca-components coordinates, flips still work)",
    )
    data.add_argument(
        "--pca-components",
        dest="pca_components",
        type=int,
        default=S,
        metavar="K",
        help="with --whitening pca: principal directions kept (default 768)",
    )
    data.add_argument(
        "--zca-epsilon",
        dest="zca_epsilon",
        type=float,
        default=S,
        metavar="EPS",
        help="ZCA regularisation added to the eigenvalues (default 0.1)",
    )
    data.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=S,
        help="random crops (4-pixel padding) and horizontal flips while training",
    )
    data.add_argument(
        "--augment-padding",
        dest="augment_padding",
        type=int,
        default=S,
        metavar="PIXELS",
        help="with --augment: crop shifts of up to PIXELS (default 4; 0 for flips only)",
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--hidden-dims",
        "--hidden_dims",
        dest="hidden_dims",
        nargs="*",
        default=S,
        metavar="WIDTH",
        help="hidden widths, e.g. 512 256 (default 128; none for softmax regression)",
    )
    model.add_argument("--activation", default=S, metavar="NAME", help=f"one of {', '.join(ACTIVATIONS)} (default elu)")
    model.add_argument(
        "--use-batch-norm",
        "--use_batch_norm",
        dest="use_batch_norm",
        action=argparse.BooleanOptionalAction,
        default=S,
        help="batch normalisation after each hidden Linear",
    )
    model.add_argument(
        "--dropout",
        type=float,
        default=S,
        metavar="P",
        help="dropout probability after each hidden activation (default 0)",
    )
    model.add_argument(
        "--residual",
        action=argparse.BooleanOptionalAction,
        default=S,
        help="residual connections around equal-width hidden blocks",
    )

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--optimizer", default=S, metavar="NAME", help=f"one of {', '.join(OPTIMIZERS)} (default sgd)")
    optim.add_argument("--lr", type=float, default=S, help="learning rate (default 0.1)")
    optim.add_argument("--momentum", type=float, default=S, help="SGD momentum (default 0)")
    optim.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=S, help="Nesterov momentum (SGD)")
    optim.add_argument(
        "--weight-decay",
        "--weight_decay",
        dest="weight_decay",
        type=float,
        default=S,
        metavar="L2",
        help="weight decay (default 0)",
    )
    optim.add_argument(
        "--schedule",
        default=S,
        metavar="NAME",
        help=f"learning-rate schedule: {', '.join(SCHEDULES)} (default constant)",
    )
    optim.add_argument(
        "--warmup-epochs",
        "--warmup_epochs",
        dest="warmup_epochs",
        type=float,
        default=S,
        metavar="E",
        help="linear warm-up length in epochs (default 0)",
    )
    optim.add_argument(
        "--min-lr",
        dest="min_lr",
        type=float,
        default=S,
        metavar="LR",
        help="final learning rate of the cosine schedule (default 0)",
    )
    optim.add_argument(
        "--step-epochs",
        dest="step_epochs",
        type=int,
        default=S,
        metavar="E",
        help="step schedule: decay every E epochs (default epochs/3)",
    )
    optim.add_argument("--gamma", type=float, default=S, help="step schedule: decay factor (default 0.1)")
    optim.add_argument(
        "--label-smoothing",
        dest="label_smoothing",
        type=float,
        default=S,
        metavar="EPS",
        help="label smoothing of the loss (default 0)",
    )
    optim.add_argument(
        "--mixup",
        type=float,
        default=S,
        metavar="ALPHA",
        help="mix each training batch with a shuffled copy of itself, λ ~ Beta(ALPHA, ALPHA) (default 0: off)",
    )
    optim.add_argument(
        "--batch-size",
        "--batch_size",
        dest="batch_size",
        type=int,
        default=S,
        metavar="N",
        help="batch size (default 128)",
    )
    optim.add_argument("--epochs", type=int, default=S, help="number of epochs (default 10)")
    optim.add_argument(
        "--early-stopping",
        dest="early_stopping",
        type=int,
        default=S,
        metavar="PATIENCE",
        help="stop after PATIENCE epochs without a better validation accuracy",
    )
    optim.add_argument(
        "--seed",
        type=int,
        default=S,
        help="seed of every random choice: init, shuffling, dropout, augmentation (default 42)",
    )
    optim.add_argument(
        "--tta-flip",
        dest="tta_flip",
        action=argparse.BooleanOptionalAction,
        default=S,
        help="evaluate with test-time horizontal-flip averaging",
    )

    run = parser.add_argument_group("execution")
    run.add_argument("--backend", default=S, metavar="NAME", help=f"{' or '.join(BACKENDS)} (default numpy)")
    run.add_argument("--device", default=S, metavar="NAME", help=f"torch device: {', '.join(DEVICES)} (default auto)")
    run.add_argument(
        "--array-library",
        "--array_library",
        dest="array_library",
        default=S,
        metavar="NAME",
        help="arrays the hand-derived modules compute on: numpy (default), torch, cupy or array-api-strict",
    )
    run.add_argument("--dtype", default=S, metavar="NAME", help=f"{' or '.join(DTYPES)} (default float32)")


def add_tracking_options(group) -> None:
    """``--tensorboard`` and ``--mlflow`` (shared by ``train`` and ``sweep``)."""
    group.add_argument(
        "--tensorboard",
        nargs="?",
        const=True,
        default=S,
        metavar="DIR",
        help="write TensorBoard event files into DIR (default RUN_DIR/tensorboard); needs mlplab[tensorboard]",
    )
    group.add_argument(
        "--mlflow",
        nargs="?",
        const=True,
        default=S,
        metavar="TRACKING_URI",
        help="log the run to MLflow (default: MLflow's own default, $MLFLOW_TRACKING_URI when set); needs mlplab[mlflow]",
    )
    group.add_argument(
        "--mlflow-experiment",
        dest="mlflow_experiment",
        default=S,
        metavar="NAME",
        help="the MLflow experiment to log into (default mlplab)",
    )


def options_from_args(args) -> dict:
    """The training options given explicitly on the command line."""
    from mlplab.config import TrainConfig, parse_widths

    options = {name: getattr(args, name) for name in TrainConfig.field_names() if hasattr(args, name)}
    if "hidden_dims" in options:
        widths: list[int] = []
        for token in options["hidden_dims"]:
            widths.extend(parse_widths(token))
        options["hidden_dims"] = widths
    return options


def register(subparsers, parents) -> None:
    parser = subparsers.add_parser(
        "train",
        parents=parents,
        help="train an MLP and write its run folder",
        description="Train an MLP (by default the reference setup: CIFAR-10, 3072-128-10, ELU, SGD lr 0.1, "
        "batch 128, 10 epochs, seed 42), keep the best epoch by validation accuracy, evaluate it on the "
        "test split and write a run folder with logs, checkpoints, a summary and a report.",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue an interrupted run from its last.npz (optionally with a larger --epochs)",
    )
    add_training_options(parser)
    output = parser.add_argument_group("output")
    output.add_argument("--out", default=S, metavar="DIR", help="run folder (default runs/<date-time>-<short config>)")
    output.add_argument("--overwrite", action="store_true", default=S, help="replace a finished run in --out")
    output.add_argument("-q", "--quiet", action="store_true", default=S, help="no progress bar or per-epoch lines")
    output.add_argument(
        "--no-report", dest="report", action="store_false", default=S, help="skip report.md/report.html"
    )
    output.add_argument(
        "--track-gradients",
        dest="track_gradients",
        type=int,
        nargs="?",
        const=10,
        default=S,
        metavar="EVERY",
        help="record per-layer gradient norms every EVERY steps (default 10) into gradients.csv",
    )
    add_tracking_options(output)
    output.add_argument(
        "--nproc", type=int, default=S, metavar="N", help="data-parallel processes (torch backend; launches torchrun)"
    )
    parser.set_defaults(run=run)


def run(args) -> int:
    from mlplab.config import resolve_config
    from mlplab.training.loop import train
    from mlplab.training.run import default_run_dir

    options = options_from_args(args)
    if args.resume:
        with _storage_advice(args.resume):
            train(resume=args.resume, **options)
        return 0
    config = resolve_config(
        preset=getattr(args, "preset", None), config_file=getattr(args, "config_file", None), options=options
    )
    if config.nproc > 1:
        from mlplab.torch.distributed import launch
        from mlplab.training.lock import lock_run_dir

        if (
            config.out
        ):  # rank 0 takes the lock; a folder in use is refused here, in one line, not amid torchrun's report
            with lock_run_dir(config.out):
                pass

        return launch(args, config)
    if not config.out:
        config.out = str(default_run_dir(config.short_name()))
    with _storage_advice(config.out):
        train(config)
    return 0


@contextlib.contextmanager
def _storage_advice(run_dir):
    """A failed write (full disk) ends with what the run folder still offers: the epoch to resume from."""
    import errno

    from mlplab.errors import StorageError
    from mlplab.training.run import after_storage_error

    try:
        yield
    except StorageError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise StorageError(
            f"{exc}; {after_storage_error(run_dir, full)}", errno=exc.errno, path=exc.filename, size=exc.size
        ) from exc
