"""The training loop: one loop for every backend.

``train(**options)`` resolves and validates the options, loads the data, builds the backend
and runs :class:`Trainer`. The trainer only trains and evaluates; everything with a side
effect — progress bars, CSV logs, checkpoints, early stopping — is a listener called at step
and epoch boundaries (:mod:`mlplab.training.listeners`).
"""

from __future__ import annotations

import copy
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from mlplab.config import MODEL_OPTIONS, TrainConfig, resolve_config
from mlplab.errors import CheckpointError, ConfigError, DivergedError, TrainingInterrupted
from mlplab.optim import make_schedule
from mlplab.training.backends import make_backend
from mlplab.training.checkpoint import load_checkpoint
from mlplab.training.hooks import as_listener
from mlplab.training.run import prepare_run_dir
from mlplab.training.signals import StopSignals

if TYPE_CHECKING:
    from mlplab.data.augment import Mixup

#: options a resumed run may change; everything else must match the saved run
RESUMABLE_OPTIONS = (
    "epochs",
    "quiet",
    "report",
    "data_dir",
    "device",
    "early_stopping",
    "out",
    "overwrite",
    "tensorboard",
    "mlflow",
    "mlflow_experiment",
    "array_library",
)


@dataclass
class EvalResult:
    """Loss (mean cross-entropy), accuracy and predicted classes over a whole split."""

    loss: float
    accuracy: float
    predictions: np.ndarray
    count: int


@dataclass
class TrainResult:
    """What :func:`train` returns. ``model`` is the best model (by validation accuracy)."""

    model: object
    backend: object
    config: TrainConfig
    history: list[dict]
    best_epoch: int
    best_val_accuracy: float | None
    test_accuracy: float
    test_loss: float
    summary: dict
    run_dir: Path | None = None
    class_names: list[str] = field(default_factory=list)

    @property
    def val_accuracies(self) -> list[float | None]:
        return [row["val_accuracy"] for row in self.history]

    def _repr_html_(self) -> str:
        # In a notebook, the outcome as a small table instead of the dataclass's long repr.
        from mlplab.display import train_result_html

        return train_result_html(self)

    def _repr_pretty_(self, printer, cycle) -> None:
        from mlplab.display import train_result_text

        printer.text(train_result_text(self))


def evaluate_split(
    backend,
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int = 1000,
    tta_flip: bool = False,
    image_shape=None,
    mirror=None,
) -> EvalResult:
    """Mean cross-entropy, accuracy and predictions of ``backend`` over a whole split, in chunks.
    With ``tta_flip`` the class probabilities are averaged with those of the mirrored images."""
    from mlplab.metrics import chunked_log_probs

    n = x.shape[0]
    if n == 0:
        return EvalResult(float("nan"), float("nan"), np.empty(0, dtype=np.int64), 0)
    loss_sum = 0.0
    predictions = np.empty(n, dtype=np.int64)
    for start, stop, log_probs in chunked_log_probs(
        backend.predict_logits, x, batch_size, tta_flip=tta_flip, image_shape=image_shape, mirror=mirror
    ):
        loss_sum -= float(log_probs[np.arange(stop - start), y[start:stop]].sum())
        predictions[start:stop] = np.argmax(log_probs, axis=1)
    accuracy = float(np.count_nonzero(predictions == y)) / n
    return EvalResult(loss_sum / n, accuracy, predictions, n)


class Trainer:
    """Runs epochs over a :class:`~mlplab.data.DatasetSplits` with a backend, calling listeners.

    Listeners are :class:`mlplab.training.hooks.Listener` objects (an object with only some of
    the hooks is wrapped as one); the trainer's fields are the trainer's own: a listener stops
    training by what its ``on_epoch_end`` returns, and asks for gradient statistics by what its
    ``wants_layer_stats`` returns.
    """

    def __init__(self, config: TrainConfig, data, *, listeners=(), run_dir: Path | None = None):
        from mlplab.data import num_batches
        from mlplab.data.augment import batch_augmentation

        self.config = config
        self.data = data
        self.run_dir = run_dir
        self.listeners = [as_listener(listener) for listener in listeners]
        model_seed, shuffle_seed, augment_seed = np.random.SeedSequence(config.seed).spawn(3)
        self.backend = make_backend(config, data.num_features, data.num_classes, model_seed)
        self.shuffle_rng = np.random.default_rng(shuffle_seed)
        self.augment = batch_augmentation(
            data, augment=config.augment, padding=config.augment_padding, rng=np.random.default_rng(augment_seed)
        )
        self.mixup: Mixup | None = None
        if config.mixup:  # off: no generator, no draws. spawn(3)'s children are the first three of spawn(4)
            from mlplab.data.augment import Mixup

            mixup_rng = np.random.default_rng(np.random.SeedSequence(config.seed).spawn(4)[3])
            self.mixup = Mixup(data.num_classes, config.mixup, rng=mixup_rng)
        self.steps_per_epoch = num_batches(len(data.train), config.batch_size, drop_last=True)
        self.schedule = make_schedule(
            config.schedule,
            config.lr,
            steps_per_epoch=self.steps_per_epoch,
            epochs=config.epochs,
            warmup_epochs=config.warmup_epochs,
            step_epochs=config.step_epochs,
            gamma=config.gamma,
            min_lr=config.min_lr,
        )
        # progress
        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0
        self.global_step = 0
        self.history: list[dict] = []
        self.best_epoch = 0
        self.best_val_accuracy: float | None = None
        self.best_state: dict | None = None
        self.epochs_without_improvement = 0
        self.improved = False
        self.stop = False
        self.stop_reason = "completed"
        self.epoch_start_shuffle_state = self.shuffle_rng.bit_generator.state
        self.epoch_sums: dict[str, Any] = {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        self.train_seconds = 0.0
        self.samples_trained = 0
        self.wall_start = time.perf_counter()
        self.wall_before = 0.0  # wall seconds of earlier sessions of a resumed run
        self.lr = self.schedule(0)
        self.last_loss = float("nan")
        self._signal: int | None = None

    # -- listeners ---------------------------------------------------------------------
    def close_listeners(self) -> None:
        for listener in self.listeners:
            listener.close(self)

    # -- resumable state ---------------------------------------------------------------
    def training_state(self) -> dict:
        """Everything ``last.npz`` needs to continue exactly where the run stands now."""
        return {
            "model": self.backend.state_dict(),
            "optimizer": self.backend.optimizer_state(),
            "best": self.best_state or {},
            "meta": {
                "config": self.config.to_dict(),
                "model_config": self.backend.model_config(),
                "dtype": self.config.dtype,
                "backend": self.backend.name,
                "dataset": self.data.name,
                "class_names": list(self.data.class_names),
                "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step,
                "epoch_sums": dict(self.epoch_sums),
                "history": self.history,
                "best_epoch": self.best_epoch,
                "best_val_accuracy": self.best_val_accuracy,
                "epochs_without_improvement": self.epochs_without_improvement,
                "train_seconds": self.train_seconds,
                "samples_trained": self.samples_trained,
                "wall_seconds": self.wall_seconds(),
                "rng": {
                    "shuffle_at_epoch_start": self.epoch_start_shuffle_state,
                    "augment": self.augment.rng.bit_generator.state if self.augment else None,
                    "mixup": self.mixup.rng.bit_generator.state if self.mixup else None,
                    "backend": self.backend.rng_state(),
                },
            },
        }

    def restore(self, checkpoint) -> None:
        """Continue from a ``last.npz`` written by :meth:`training_state`."""
        meta = checkpoint.meta
        try:
            self.backend.load_state_dict(checkpoint.model)
            optimizer = dict(meta["optimizer"].items())
            optimizer["state"] = dict(checkpoint.optimizer)
            self.backend.load_optimizer_state(optimizer)
            self.backend.load_rng_state(meta["rng"]["backend"])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{checkpoint.path}: cannot restore the training state ({exc})") from None
        self.best_state = dict(checkpoint.best) or None
        self.epoch = int(meta["epoch"])
        self.step_in_epoch = int(meta["step_in_epoch"])
        self.global_step = int(meta["global_step"])
        self.epoch_sums = dict(meta["epoch_sums"])
        self.history = list(meta["history"])
        self.best_epoch = int(meta["best_epoch"])
        self.best_val_accuracy = meta["best_val_accuracy"]
        self.epochs_without_improvement = int(meta["epochs_without_improvement"])
        self.train_seconds = float(meta["train_seconds"])
        self.samples_trained = int(meta["samples_trained"])
        self.wall_before = float(meta["wall_seconds"])
        self.epoch_start_shuffle_state = meta["rng"]["shuffle_at_epoch_start"]
        self.shuffle_rng.bit_generator.state = self.epoch_start_shuffle_state
        if self.augment and meta["rng"]["augment"]:
            self.augment.rng.bit_generator.state = meta["rng"]["augment"]
        if self.mixup and meta["rng"].get("mixup"):
            self.mixup.rng.bit_generator.state = meta["rng"]["mixup"]

    def wall_seconds(self) -> float:
        return self.wall_before + (time.perf_counter() - self.wall_start)

    # -- the loop ----------------------------------------------------------------------
    def run(self) -> TrainResult:
        for listener in self.listeners:
            listener.on_train_start(self)
        # Overflow on the way to a diverging loss is reported once, as DivergedError, not as
        # a stream of NumPy warnings: the loss itself is checked after every step.
        with StopSignals(self), np.errstate(over="ignore", invalid="ignore"):
            while self.epoch < self.config.epochs and not self.stop:
                self.run_epoch()
        return self.finish()

    def run_epoch(self) -> None:
        from mlplab.data import batches

        config, train = self.config, self.data.train
        if self.step_in_epoch == 0:
            self.epoch_start_shuffle_state = self.shuffle_rng.bit_generator.state
        for listener in self.listeners:
            listener.on_epoch_start(self)
        started = time.perf_counter()
        sums = self.epoch_sums
        # a backend on another array library gathers its batches on its device (same order, same draws)
        stream = (getattr(self.backend, "batches", None) or batches)(
            train.x,
            train.y,
            config.batch_size,
            shuffle=True,
            rng=self.shuffle_rng,
            drop_last=True,
            augment=self.augment,
            start=self.step_in_epoch,
        )
        if self.mixup is not None:  # yb becomes soft targets (B, C)
            stream = self.mixup.batches(stream)
        for xb, yb in stream:
            self.lr = self.schedule(self.global_step)
            # every listener is asked (none is skipped because an earlier one said yes)
            wants = [listener.wants_layer_stats(self) for listener in self.listeners]
            track = any(wants)
            step = self.backend.train_step(xb, yb, self.lr, track=track)
            loss, correct = step.loss, step.correct
            if not math.isfinite(loss):
                self.diverged(loss)
            n = yb.shape[0]
            sums["loss"] += loss * n
            sums["correct"] += correct
            sums["seen"] += n
            self.global_step += 1
            self.step_in_epoch += 1
            self.last_loss = loss
            if track:
                for listener in self.listeners:
                    listener.on_layer_stats(self, step.layer_stats)
            for listener in self.listeners:
                listener.on_step(self, loss)
            if self._signal is not None:
                sums["seconds"] += time.perf_counter() - started
                self.interrupted()
        train_seconds = sums["seconds"] + (time.perf_counter() - started)
        self.train_seconds += train_seconds - sums["seconds"]
        self.samples_trained += sums["seen"]
        val = self.evaluate("validation")
        row = {
            "epoch": self.epoch + 1,
            "train_loss": sums["loss"] / max(1, sums["seen"]),
            "train_accuracy": sums["correct"] / max(1, sums["seen"]),
            "val_loss": val.loss if val.count else None,
            "val_accuracy": val.accuracy if val.count else None,
            "lr": self.lr,
            "seconds": sums["seconds"] + (time.perf_counter() - started),
        }
        self.history.append(row)
        self.epoch += 1
        self.step_in_epoch = 0
        # A checkpoint written at this boundary resumes with the next epoch's order, not this one's.
        self.epoch_start_shuffle_state = self.shuffle_rng.bit_generator.state
        self.epoch_sums = {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        self.track_best(row)
        for listener in self.listeners:
            decision = listener.on_epoch_end(self, row)
            if decision and not self.stop:
                self.stop = True
                self.stop_reason = decision if isinstance(decision, str) else "stopped"

    def track_best(self, row: dict) -> None:
        accuracy = row["val_accuracy"]
        # Without a validation split the last epoch counts as the best one.
        self.improved = accuracy is None or self.best_val_accuracy is None or accuracy > self.best_val_accuracy
        if self.improved:
            self.best_epoch = row["epoch"]
            self.best_val_accuracy = accuracy
            self.best_state = copy.deepcopy(self.backend.state_dict())
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1

    def evaluate(self, split: str) -> EvalResult:
        dataset = getattr(self.data, split)
        return evaluate_split(
            self.backend,
            dataset.x,
            dataset.y,
            tta_flip=self.config.tta_flip,
            image_shape=self.data.image_shape,
            mirror=getattr(self.data, "mirror", None),
        )

    def diverged(self, loss: float) -> None:
        self.stop_reason = "diverged"
        for listener in self.listeners:
            listener.on_diverged(self)
        epoch, step = self.epoch + 1, self.step_in_epoch + 1
        raise DivergedError(
            f"training diverged: the loss became {loss} at epoch {epoch}, step {step} (global step {self.global_step + 1}, "
            f"lr {self.lr:g}); try a lower learning rate, e.g. --lr {self.config.lr / 10:g}"
            + (
                f"; the best model so far (epoch {self.best_epoch}) is in {self.run_dir / 'best.npz'}"
                if self.run_dir and self.best_state
                else ""
            )
        )

    def interrupted(self) -> None:
        signum = self._signal
        self.stop_reason = "interrupted"
        for listener in self.listeners:
            listener.on_interrupt(self)
        name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT"
        where = f"epoch {self.epoch + 1}, step {self.step_in_epoch}"
        if self.run_dir is not None:
            message = f"stopped by {name} at {where}; saved {self.run_dir / 'last.npz'}. Resume with: mlplab train --resume {self.run_dir}"
        else:
            message = f"stopped by {name} at {where} (no run folder, nothing saved)"
        raise TrainingInterrupted(message, 143 if signum == signal.SIGTERM else 130)

    def finish(self) -> TrainResult:
        if self.best_state is not None:
            self.backend.load_state_dict(self.best_state)
        test = self.evaluate("test")
        from mlplab.metrics import confusion_matrix

        cm = confusion_matrix(test.predictions, self.data.test.y, self.data.num_classes)
        wall = self.wall_seconds()
        summary = {
            "status": self.stop_reason,
            "dataset": self.data.name,
            "backend": self.backend.name,
            "array_library": getattr(self.config, "array_library", "numpy"),
            "device": str(getattr(self.backend, "device", "cpu")),
            "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val_accuracy,
            "test_accuracy": test.accuracy,
            "test_loss": test.loss,
            "val_accuracies": [row["val_accuracy"] for row in self.history],
            "epochs_run": self.epoch,
            "wall_seconds": wall,
            "train_seconds": self.train_seconds,
            "seconds_per_epoch": self.train_seconds / max(1, self.epoch),
            "train_samples_per_second": self.samples_trained / self.train_seconds if self.train_seconds else None,
            "class_names": list(self.data.class_names),
            "test_confusion_matrix": cm.tolist(),
        }
        result = TrainResult(
            model=self.backend.model,
            backend=self.backend,
            config=self.config,
            history=self.history,
            best_epoch=self.best_epoch,
            best_val_accuracy=self.best_val_accuracy,
            test_accuracy=test.accuracy,
            test_loss=test.loss,
            summary=summary,
            run_dir=self.run_dir,
            class_names=list(self.data.class_names),
        )
        for listener in self.listeners:
            listener.on_train_end(self, result)
        return result


def _resume_config(run_dir: Path, options: dict):
    checkpoint = load_checkpoint(run_dir / "last.npz") if (run_dir / "last.npz").exists() else None
    if checkpoint is None:
        if not run_dir.exists():
            raise CheckpointError(f"--resume: no run folder at {str(run_dir)!r}")
        raise CheckpointError(f"--resume: run folder {str(run_dir)!r} holds no last.npz to resume from")
    saved = TrainConfig.from_options(checkpoint.meta["config"])
    changes = {}
    for key, value in options.items():
        name = key.replace("-", "_")
        if name not in TrainConfig.field_names():
            raise ConfigError(f"unknown option {key!r}")
        current = getattr(saved, name)
        if name in ("out", "overwrite"):
            continue
        candidate = TrainConfig.from_options({name: value}).validated() if name in MODEL_OPTIONS else None
        new_value = getattr(candidate, name) if candidate is not None else value
        if new_value == current:
            continue
        if name not in RESUMABLE_OPTIONS:
            kind = "the model" if name in MODEL_OPTIONS else "the training"
            raise ConfigError(
                f"--resume: the run was trained with --{name.replace('_', '-')} {current!r}; "
                f"changing it to {new_value!r} would change {kind} (start a new run instead)"
            )
        changes[name] = value
    config = saved.updated(changes).validated()
    return config, checkpoint


def train(
    config: TrainConfig | None = None,
    *,
    data=None,
    listeners=(),
    resume=None,
    preset: str | None = None,
    config_file=None,
    **options,
) -> TrainResult:
    """Train an MLP; the Python face of ``mlplab train`` (same option names, underscores).

    ``data``: a ready :class:`~mlplab.data.DatasetSplits` instead of loading ``dataset``.
    ``out``: the run folder (``None``, the default here, writes no files). ``resume``: a run
    folder to continue from its ``last.npz`` (``epochs`` may be raised). Returns a
    :class:`TrainResult` with the best model, its test accuracy and the history.
    """
    from contextlib import ExitStack

    with ExitStack() as run_lock:  # the run folder's lock (mlplab.training.lock), held until training ends
        return _train(
            config,
            data=data,
            listeners=listeners,
            resume=resume,
            preset=preset,
            config_file=config_file,
            run_lock=run_lock,
            **options,
        )


def _train(config, *, data, listeners, resume, preset, config_file, run_lock, **options) -> TrainResult:
    from mlplab.training.listeners import default_listeners
    from mlplab.training.lock import lock_run_dir

    checkpoint = None
    run_dir: Path | None
    if resume is not None:
        run_dir = Path(resume)
        if run_dir.is_dir() and is_primary_process():  # before last.npz is read: its writer may still be running
            run_lock.enter_context(lock_run_dir(run_dir))
        config, checkpoint = _resume_config(run_dir, options)
        config.out = str(run_dir)
    else:
        if config is None:
            config = resolve_config(preset=preset, config_file=config_file, options=options)
        elif options:
            config = config.updated(options).validated()
        else:
            config = config.validated()
        run_dir = Path(config.out) if config.out else None
        if run_dir is not None and is_primary_process():
            if run_dir.is_dir():  # refuse now, before data is loaded, if another process writes there
                run_lock.enter_context(lock_run_dir(run_dir))
            prepare_run_dir(run_dir, overwrite=config.overwrite, create=False)
    if (config.tensorboard or config.mlflow) and is_primary_process():
        from mlplab.training.tracking import check_tracking

        check_tracking(config, run_dir, resumed=checkpoint is not None)
    if data is None:
        data = load_data(config, for_training=True)
    if len(data.train) < config.batch_size:
        raise ConfigError(
            f"--batch-size {config.batch_size} is larger than the training split ({len(data.train)} samples)"
        )
    if run_dir is not None and checkpoint is None and is_primary_process():
        # locked before --overwrite deletes anything (a no-op when already held from above)
        run_lock.enter_context(lock_run_dir(run_dir, create=True))
        prepare_run_dir(run_dir, overwrite=config.overwrite)
    if (
        checkpoint is not None
        and checkpoint.meta.get("epoch", 0) >= config.epochs
        and checkpoint.meta.get("step_in_epoch", 0) == 0
        and (cast(Path, run_dir) / "summary.json").exists()
    ):  # a checkpoint comes from --resume: run_dir is set
        raise CheckpointError(
            f"--resume: the run in {str(run_dir)!r} already finished {checkpoint.meta['epoch']} epochs; "
            "pass a larger --epochs to continue it"
        )
    if is_primary_process():
        all_listeners = default_listeners(config, run_dir, resumed=checkpoint is not None) + list(listeners)
    else:  # another rank of a data-parallel run: rank 0 alone prints and writes the run folder
        quiet = TrainConfig(**{**config.to_dict(), "quiet": True, "tensorboard": False, "mlflow": False})
        all_listeners = default_listeners(quiet, None) + list(listeners)
    trainer = Trainer(config, data, listeners=all_listeners, run_dir=run_dir)
    if checkpoint is not None:
        if checkpoint.meta.get("backend") != trainer.backend.name:
            raise CheckpointError(f"--resume: last.npz was written by the {checkpoint.meta.get('backend')} backend")
        trainer.restore(checkpoint)
    try:
        return trainer.run()
    finally:
        trainer.close_listeners()
        close = getattr(trainer.backend, "close", None)
        if close is not None:
            close()


def is_primary_process() -> bool:
    """False on every rank but 0 of a torchrun launch (RANK is set by torchrun)."""
    return os.environ.get("RANK", "0") == "0"


def load_data(config: TrainConfig, *, for_training: bool = False):
    """The data set ``config`` names, split and normalised as it asks. ``for_training`` with
    ``--whitening pca`` and random crops keeps the training rows as images (the loop crops, then
    projects each batch); otherwise every split is in the coordinates the model takes."""
    from mlplab.data import get_dataset

    options = {"split_seed": config.split_seed, "normalization": config.normalization}
    if config.validation_size is not None:
        options["validation_size"] = config.validation_size
    data = get_dataset(config.dataset, config.data_dir, **options)
    if config.whitening != "none":
        from mlplab.data.whitening import whiten

        crops = config.augment and config.augment_padding > 0
        whiten(
            data,
            config.whitening,
            zca_epsilon=config.zca_epsilon,
            pca_components=config.pca_components,
            project_train=not (for_training and crops),
        )
    return data
