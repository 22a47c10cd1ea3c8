"""Listeners: the side effects of training, called by the loop at step and epoch boundaries.

Every listener is a :class:`Listener`: it overrides the hooks it needs, and it acts on the
trainer only through what a hook returns (``wants_layer_stats``, ``on_epoch_end``), never by
setting fields on the trainer or its backend.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlplab.storage import format_size, free_space, storage_error
from mlplab.training.checkpoint import read_checkpoint_meta, save_checkpoint, write_json_atomic
from mlplab.training.hooks import Listener, as_listener  # noqa: F401  (as_listener: re-exported)
from mlplab.training.run import HISTORY_COLUMNS, STEP_COLUMNS, CsvLog, truncate_csv, write_config


def save_training_state(path: Path, state: dict) -> None:
    """Write :meth:`Trainer.training_state` as a checkpoint (``last.npz``)."""
    optimizer = state["optimizer"]
    meta = dict(state["meta"])
    meta["optimizer"] = {key: value for key, value in optimizer.items() if key != "state"}
    save_checkpoint(path, model=state["model"], optimizer=optimizer["state"], best=state["best"], meta=meta)


def best_meta(trainer) -> dict:
    """The metadata saved with ``best.npz``: enough to rebuild the model and its data."""
    return {
        "kind": "best",
        "config": trainer.config.to_dict(),
        "model_config": trainer.backend.model_config(),
        "dtype": trainer.config.dtype,
        "backend": trainer.backend.name,
        "dataset": trainer.data.name,
        "class_names": list(trainer.data.class_names),
        "image_shape": list(trainer.data.image_shape) if trainer.data.image_shape else None,
        "epoch": trainer.best_epoch,
        "val_accuracy": trainer.best_val_accuracy,
    }


class ConsoleListener(Listener):
    """A tqdm bar over each epoch's batches and one line per epoch (silent with ``quiet``)."""

    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stdout
        self.bar = None

    def on_train_start(self, trainer) -> None:
        if self.quiet:
            return
        c, d = trainer.config, trainer.data
        widths = "-".join(str(w) for w in [d.num_features, *c.hidden_dims, d.num_classes])
        print(
            f"training {widths} MLP ({c.activation}) on {d.name}: {len(d.train)} train / {len(d.validation)} validation / "
            f"{len(d.test)} test, {c.backend} backend ({getattr(trainer.backend, 'device', 'cpu')}, {c.dtype}), "
            f"{c.optimizer} lr {c.lr:g}, batch {c.batch_size}, {c.epochs} epochs, seed {c.seed}",
            file=self.stream,
            flush=True,
        )

    def on_epoch_start(self, trainer) -> None:
        if self.quiet:
            return
        from mlplab.display import progress_bar_class

        bar_class = progress_bar_class()  # a widget in a notebook, text in a terminal, else none
        if bar_class is None:
            return
        self.bar = bar_class(
            total=trainer.steps_per_epoch,
            initial=trainer.step_in_epoch,
            desc=f"epoch {trainer.epoch + 1}",
            leave=False,
            mininterval=0.25,
            unit="batch",
            dynamic_ncols=True,
        )

    def on_step(self, trainer, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if trainer.step_in_epoch % 20 == 0:
                self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_epoch_end(self, trainer, row: dict) -> None:
        self._close_bar()
        if self.quiet:
            return
        val = (
            f"val loss {row['val_loss']:.4f} acc {100 * row['val_accuracy']:6.2f}%"
            if row["val_accuracy"] is not None
            else "no validation split"
        )
        mark = " *" if trainer.improved and row["val_accuracy"] is not None else ""
        print(
            f"epoch {row['epoch']:>3}/{trainer.config.epochs}  train loss {row['train_loss']:.4f} "
            f"acc {100 * row['train_accuracy']:6.2f}%  {val}  lr {row['lr']:.4g}  {row['seconds']:.1f}s{mark}",
            file=self.stream,
            flush=True,
        )

    def on_interrupt(self, trainer) -> None:
        self._close_bar()

    def on_diverged(self, trainer) -> None:
        self._close_bar()

    def on_train_end(self, trainer, result) -> None:
        if self.quiet:
            return
        s = result.summary
        best = f"best epoch {s['best_epoch']}" + (
            f" (validation accuracy {100 * s['best_val_accuracy']:.2f}%)" if s["best_val_accuracy"] is not None else ""
        )
        print(
            f"{best}; test accuracy {100 * s['test_accuracy']:.2f}%; {s['wall_seconds']:.1f}s in all", file=self.stream
        )
        if trainer.run_dir is not None:
            print(f"run folder: {trainer.run_dir}", file=self.stream, flush=True)

    def close(self, trainer) -> None:
        self._close_bar()


class RunFolderListener(Listener):
    """Writes the run folder: config.json, steps.csv, history.csv, last.npz, best.npz, summary.json.

    The order keeps the folder resumable when a write fails (a full disk): at the end of an epoch
    the logs go to disk first, then last.npz (everything ``--resume`` needs, the best model
    included), and only then best.npz, a copy for readers. A failed last.npz leaves the previous
    one in place, and a resume drops the log rows after it; a best.npz left behind by a failure
    is written again when the run resumes."""

    def __init__(self, run_dir: Path, *, resumed: bool = False):
        self.run_dir = Path(run_dir)
        self.resumed = resumed
        self.steps: CsvLog | None = None
        self.history: CsvLog | None = None

    def on_train_start(self, trainer) -> None:
        for leftover in self.run_dir.glob(".*.tmp"):  # temporaries of a write cut short by kill -9
            try:
                leftover.unlink(missing_ok=True)
            except OSError:  # a read-only folder: the first write below says so
                pass
        extra = {"resumed_at_step": trainer.global_step} if self.resumed else {}
        # what the options resolved to: the array library and the device the run computes on
        extra["execution"] = {
            "backend": trainer.backend.name,
            "array_library": getattr(trainer.config, "array_library", "numpy"),
            "device": str(getattr(trainer.backend, "device", "cpu")),
        }
        write_config(self.run_dir, trainer.config.to_dict(), getattr(trainer.data, "info", {}), extra)
        steps_path, history_path = self.run_dir / "steps.csv", self.run_dir / "history.csv"
        if self.resumed:
            # Rows written after the checkpoint (by a run killed before it saved again) are dropped.
            truncate_csv(steps_path, lambda row: int(row["step"]) <= trainer.global_step)
            truncate_csv(history_path, lambda row: int(row["epoch"]) <= trainer.epoch)
            try:
                (self.run_dir / "summary.json").unlink(missing_ok=True)
            except OSError as exc:
                raise storage_error(exc, self.run_dir / "summary.json", action="removing") from exc
        self.steps = CsvLog(steps_path, STEP_COLUMNS, append=self.resumed)
        self.history = CsvLog(history_path, HISTORY_COLUMNS, append=self.resumed)
        if self.resumed and trainer.best_state:
            saved = read_checkpoint_meta(self.run_dir / "best.npz")
            if saved is None or saved.get("epoch") != trainer.best_epoch:  # its write failed last time
                save_checkpoint(self.run_dir / "best.npz", model=trainer.best_state, meta=best_meta(trainer))
        warn_if_short_of_space(trainer, self.run_dir)

    def on_step(self, trainer, loss: float) -> None:
        steps = self.steps
        assert steps is not None  # opened by on_train_start
        steps.write((trainer.epoch + 1, trainer.global_step, repr(float(loss))))

    def on_epoch_end(self, trainer, row: dict) -> None:
        steps, history = self.steps, self.history
        assert steps is not None and history is not None  # opened by on_train_start
        steps.flush()
        history.write(tuple("" if row[c] is None else row[c] for c in HISTORY_COLUMNS))
        history.flush()
        save_training_state(self.run_dir / "last.npz", trainer.training_state())
        if trainer.improved:
            save_checkpoint(self.run_dir / "best.npz", model=trainer.best_state, meta=best_meta(trainer))

    def on_interrupt(self, trainer) -> None:
        steps = self.steps
        assert steps is not None  # opened by on_train_start
        steps.flush()
        save_training_state(self.run_dir / "last.npz", trainer.training_state())

    def on_diverged(self, trainer) -> None:
        steps = self.steps
        assert steps is not None  # opened by on_train_start
        steps.flush()

    def on_train_end(self, trainer, result) -> None:
        write_json_atomic(self.run_dir / "summary.json", result.summary)

    def close(self, trainer) -> None:
        for log in (self.steps, self.history):
            if log is not None:
                log.close()


def _optimizer_copies(config) -> int:
    """Optimiser state arrays kept per parameter: a momentum buffer, or Adam's two moments."""
    from mlplab.optim import optimizer_class  # local: keeps this edit out of the import block

    cls = optimizer_class(config.optimizer)
    if "momentum" in cls.options and not config.momentum:
        return 0  # SGD without momentum keeps no buffer
    return len(cls.state_names)


def checkpoint_sizes(trainer) -> tuple[int, int]:
    """About the bytes of this run's ``(last.npz, best.npz)``: best.npz holds the model, last.npz
    the model, its optimiser state and the best model."""
    arrays = trainer.backend.state_dict()
    model = sum(a.nbytes + 200 for a in arrays.values())
    return model * (2 + _optimizer_copies(trainer.config)), model


def warn_if_short_of_space(trainer, run_dir: Path) -> None:
    """Warn, before the first epoch, when the run folder's disk cannot hold this run's checkpoints:
    two last.npz (the new one is complete before it replaces the old one) and best.npz."""
    import warnings

    free = free_space(run_dir)
    if free is None:
        return
    last, best = checkpoint_sizes(trainer)
    # files this run replaces free their space as it goes
    present = sum((run_dir / name).stat().st_size for name in ("last.npz", "best.npz") if (run_dir / name).exists())
    needed = 2 * last + best - present
    if needed > free:
        warnings.warn(
            f"only {format_size(free)} free in {run_dir}, and this run's checkpoints need about {format_size(needed)} more "
            f"(last.npz {format_size(last)} twice while it is replaced, best.npz {format_size(best)}): "
            "it may stop with 'no space left on device'",
            stacklevel=2,
        )


class GradientTracker(Listener):
    """Records per-layer gradient statistics (:mod:`mlplab.gradflow`) on steps 1, every + 1,
    2·every + 1, … (so the first step, at the initial weights, is always among them) into
    ``gradients.csv`` (``GRADIENT_COLUMNS``), or into ``rows`` when given no path.

    Before each step it answers :meth:`wants_layer_stats`; the step's measurements arrive in
    :meth:`on_layer_stats`. A resumed run drops the rows after its checkpoint's step.
    """

    def __init__(self, every: int, path: Path | None = None, *, resumed: bool = False):
        self.every = int(every)
        self.path = Path(path) if path is not None else None
        self.resumed = resumed
        self.log: CsvLog | None = None
        self.rows: list[tuple] = []
        self.warned = False

    def on_train_start(self, trainer) -> None:
        from mlplab.gradflow import GRADIENT_COLUMNS

        if self.path is not None:
            if self.resumed:
                truncate_csv(self.path, lambda row: int(row["step"]) <= trainer.global_step)
            self.log = CsvLog(self.path, GRADIENT_COLUMNS, append=self.resumed)

    def wants_layer_stats(self, trainer) -> bool:
        # Step global_step + 1 comes next; track it when it is 1 more than a multiple of every.
        return trainer.global_step % self.every == 0

    def on_layer_stats(self, trainer, stats) -> None:
        if stats is None:
            if not self.warned:
                import warnings

                self.warned = True  # asked for and not measured: this backend cannot track
                warnings.warn(
                    f"--track-gradients: the {type(trainer.backend).__name__} backend records no gradient statistics",
                    stacklevel=2,
                )
            return
        for layer in stats:
            row = (
                trainer.global_step,
                trainer.epoch + 1,
                layer.layer,
                repr(float(layer.weight_grad_norm)),
                repr(float(layer.input_grad_norm)),
                repr(float(layer.update_ratio)),
            )
            if self.log is not None:
                self.log.write(row)
            else:
                self.rows.append(row)

    def _flush(self, trainer, *args) -> None:
        if self.log is not None:
            self.log.flush()

    on_epoch_end = on_interrupt = on_diverged = _flush  # type: ignore[assignment]  # one flush for three hooks; row arrives positionally

    def close(self, trainer) -> None:
        if self.log is not None:
            self.log.close()


class ReportListener(Listener):
    """Writes report.md / report.html and the figures at the end of a run.

    matplotlib is imported only then. Importing it in a background thread during training was
    tried and dropped: on two cores the thread's 0.7 s of CPU (mostly under the GIL) slowed the
    first epoch by as much, so the run ended no sooner and its first epoch looked twice as slow."""

    #: the report writer, a layer above training (named, not imported: see mlplab.plugins)
    WRITER = "mlplab.report:write_report"

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def on_train_end(self, trainer, result) -> None:
        from mlplab.plugins import load

        load(self.WRITER)(self.run_dir)


class EarlyStopping(Listener):
    """Stops training after ``patience`` epochs without a better validation accuracy."""

    def __init__(self, patience: int):
        self.patience = patience

    def on_epoch_end(self, trainer, row: dict) -> str | None:
        if trainer.epochs_without_improvement >= self.patience:
            return "early_stopped"
        return None


def default_listeners(config, run_dir: Path | None, *, resumed: bool = False) -> list:
    listeners: list = [ConsoleListener(quiet=config.quiet)]
    if config.early_stopping:
        listeners.append(EarlyStopping(config.early_stopping))
    if run_dir is not None:
        # gradients.csv before the run folder's checkpoints: its rows reach the disk before the
        # last.npz that counts them
        if config.track_gradients:
            listeners.append(GradientTracker(config.track_gradients, Path(run_dir) / "gradients.csv", resumed=resumed))
        listeners.append(RunFolderListener(run_dir, resumed=resumed))
        if config.report:
            listeners.append(ReportListener(run_dir))
    if config.tensorboard or config.mlflow:  # after the report: MLflow uploads its files
        from mlplab.training.tracking import default_tracking_listeners

        listeners += default_tracking_listeners(config)
    return listeners
