"""The listener interface: :class:`Listener`, whose hooks the training loop calls.

A module of its own so that every listener (:mod:`mlplab.training.listeners`,
:mod:`mlplab.training.tracking`, a user's) can subclass it without importing the others.
"""

from __future__ import annotations


class Listener:
    """Base class of training listeners (in the manner of Keras callbacks): every hook does nothing.

    The trainer calls, in this order, on every listener in its list:

    - ``on_train_start(trainer)``: once, before the first step (also when resuming);
    - ``on_epoch_start(trainer)``: before each epoch's first step;
    - ``wants_layer_stats(trainer) -> bool``: before each step; True asks the backend to measure
      per-layer gradient statistics on the coming step (global step ``trainer.global_step + 1``);
    - ``on_layer_stats(trainer, stats)``: after a step that measured them, with a list of
      :class:`mlplab.gradflow.LayerGradients` (None when the backend could not measure them);
    - ``on_step(trainer, loss)``: after each step, with the batch's mean loss;
    - ``on_epoch_end(trainer, row) -> stop``: after each epoch with its history row; a truthy
      return stops training after this epoch (a string is the reason: ``"early_stopped"``);
    - ``on_interrupt(trainer)`` / ``on_diverged(trainer)``: before the run stops on a signal or a
      non-finite loss;
    - ``on_train_end(trainer, result)``: with the :class:`~mlplab.training.loop.TrainResult`;
    - ``close(trainer)``: always, last, also after an error.
    """

    def on_train_start(self, trainer) -> None:
        pass

    def on_epoch_start(self, trainer) -> None:
        pass

    def wants_layer_stats(self, trainer) -> bool:
        return False

    def on_layer_stats(self, trainer, stats) -> None:
        pass

    def on_step(self, trainer, loss: float) -> None:
        pass

    def on_epoch_end(self, trainer, row: dict) -> str | bool | None:
        return None

    def on_interrupt(self, trainer) -> None:
        pass

    def on_diverged(self, trainer) -> None:
        pass

    def on_train_end(self, trainer, result) -> None:
        pass

    def close(self, trainer) -> None:
        pass


#: the hooks of :class:`Listener`
HOOKS = (
    "on_train_start",
    "on_epoch_start",
    "wants_layer_stats",
    "on_layer_stats",
    "on_step",
    "on_epoch_end",
    "on_interrupt",
    "on_diverged",
    "on_train_end",
    "close",
)


class _Adapted(Listener):
    """A listener written without the base class: the hooks it defines, the base's no-ops for the rest."""

    def __init__(self, listener):
        self.listener = listener
        for hook in HOOKS:
            method = getattr(listener, hook, None)
            if method is not None:
                setattr(self, hook, method)


def as_listener(listener) -> Listener:
    """``listener`` as a :class:`Listener` (an object with only some of the hooks is wrapped, once)."""
    return listener if isinstance(listener, Listener) else _Adapted(listener)
