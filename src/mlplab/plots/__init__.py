"""Every figure mlplab draws (matplotlib), saved as PNG at :data:`DPI`.

Each ``plot_*`` function takes plain data (the columns of ``steps.csv`` / ``history.csv``, a
confusion matrix, per-class scores, a measured result), draws one figure, saves it when given a
``path`` and returns the :class:`~matplotlib.figure.Figure`, whose artists hold exactly the data
drawn (tests read them back). matplotlib is imported inside the functions, never at import time,
so ``import mlplab`` and ``mlplab --help`` stay light.

One module per subject, each importing only :mod:`~mlplab.plots.base` (and NumPy):

- ``base``: the figure class (:class:`~mlplab.plots.base.InlineFigure`, shown inline by a
  notebook), :data:`DPI`, :func:`save_figure` (atomic) and the fixed-margin layout.
- ``training``: the loss at every step and the curves per epoch.
- ``metrics``: the confusion matrix and per-class precision, recall and F-beta.
- ``gradflow``: per-layer gradients during training and the gradient flow at initialisation.
- ``compare``: several runs on shared axes (the NumPy-vs-PyTorch comparison).
- ``jobs``: :class:`~mlplab.plots.jobs.FigureJobs`, the report's figures drawn in parallel.
- ``sweep``: validation accuracy against each swept option (sweep.png), from plain panel
  descriptions that :func:`mlplab.sweep.results.sweep_panels` prepares.
- ``hessian``: the Hessian's spectral density, from anything with ``nodes`` and ``curve()``.

A new figure goes into the module of its subject (or a new one), is re-exported here and takes
``path=None`` and returns the figure, like the others. Figures take plain data, so this package
imports no tool (sweep, hessian, gradflow, report) and the modules that measure (metrics,
gradflow, hessian) do not import it: the commands and the report call both. The one exception
is :mod:`mlplab.sweep.results`, which draws sweep.png as part of writing a sweep's results.
"""

from mlplab.plots.base import DPI, save_figure
from mlplab.plots.compare import RUNS_SIZE, plot_runs, read_logs, read_run_curves
from mlplab.plots.gradflow import (
    GRADIENT_FLOW_SIZE,
    GRADIENTS_INPUT_SIZE,
    GRADIENTS_SIZE,
    plot_gradient_flow,
    plot_gradients,
)
from mlplab.plots.hessian import plot_density
from mlplab.plots.metrics import (
    ANNOTATE_MAX_CLASSES,
    CONFUSION_SIZE,
    PER_CLASS_SIZE,
    plot_confusion,
    plot_per_class,
)
from mlplab.plots.sweep import LOG_AXIS_OPTIONS, plot_sweep
from mlplab.plots.training import (
    CURVES_SIZE,
    LOSS_STEPS_QUANTILE,
    LOSS_STEPS_SETTLED,
    LOSS_STEPS_SIZE,
    epoch_ends,
    fractional_epochs,
    loss_axis_limits,
    plot_curves,
    plot_loss_steps,
    smooth,
)

__all__ = [
    "ANNOTATE_MAX_CLASSES",
    "CONFUSION_SIZE",
    "CURVES_SIZE",
    "DPI",
    "GRADIENTS_INPUT_SIZE",
    "GRADIENTS_SIZE",
    "GRADIENT_FLOW_SIZE",
    "LOG_AXIS_OPTIONS",
    "LOSS_STEPS_QUANTILE",
    "LOSS_STEPS_SETTLED",
    "LOSS_STEPS_SIZE",
    "PER_CLASS_SIZE",
    "RUNS_SIZE",
    "epoch_ends",
    "fractional_epochs",
    "loss_axis_limits",
    "plot_confusion",
    "plot_curves",
    "plot_density",
    "plot_gradient_flow",
    "plot_gradients",
    "plot_loss_steps",
    "plot_per_class",
    "plot_runs",
    "plot_sweep",
    "read_logs",
    "read_run_curves",
    "save_figure",
    "smooth",
]
