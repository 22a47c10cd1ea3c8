"""Gradient figures: per-layer gradient norms and update ratios recorded during training
(``gradients.csv``, :func:`plot_gradients`) and the gradient reaching each layer at
initialisation, plain against residual (``mlplab gradflow``, :func:`plot_gradient_flow`). The
numbers are measured by :mod:`mlplab.gradflow`; this module only draws them."""

from __future__ import annotations

import numpy as np

from mlplab.plots.base import colormap, column, finish, new_figure, save_figure

#: figure sizes in inches, (width, height)
GRADIENTS_SIZE = (10.0, 4.0)
GRADIENTS_INPUT_SIZE = (15.0, 4.0)  # with the input-gradient panel
GRADIENT_FLOW_SIZE = (8.0, 4.5)


def plot_gradients(
    steps, layers, weight_grad_norms, update_ratios, path=None, *, input_grad_norms=None, title: str | None = None
):
    """Per-layer gradient norms (left), input-gradient norms (middle, only when
    ``input_grad_norms`` is given) and update/weight ratios (right) against the step, on log
    scales; one line per layer (labelled with the layer's name). The arrays are the columns of
    ``gradients.csv`` (one row per step and layer). Beyond ten layers the lines take colours
    along a colour map, first layer to last, so depth reads as a gradient of colour."""
    steps = column(steps)
    layers = np.asarray([str(layer) for layer in layers])
    norms, ratios = column(weight_grad_norms), column(update_ratios)
    inputs = None if input_grad_norms is None else column(input_grad_norms)
    fig = new_figure(GRADIENTS_SIZE if inputs is None else GRADIENTS_INPUT_SIZE)
    axes = fig.subplots(1, 2 if inputs is None else 3, sharex=True)
    norm_ax, ratio_ax = axes[0], axes[-1]
    panels = [(norm_ax, norms, "weight gradient norm")]
    if inputs is not None:
        panels.append((axes[1], inputs, "input gradient norm"))
    panels.append((ratio_ax, ratios, "update / weight norm"))
    _, first = np.unique(layers, return_index=True)
    order = layers[np.sort(first)]  # in the order the layers first appear
    colors = (
        [f"C{i}" for i in range(len(order))]
        if len(order) <= 10
        else [colormap("viridis")(i / (len(order) - 1)) for i in range(len(order))]
    )
    for layer, color in zip(order, colors):
        mask = layers == layer
        for ax, values, _ in panels:
            ax.plot(steps[mask], values[mask], linewidth=1, color=color, label=layer)
    for ax, _, label in panels:
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    norm_ax.set_title("Gradient norm per layer")
    if inputs is not None:
        axes[1].set_title("Gradient at each layer's input")
    ratio_ax.set_title("Update ratio per layer")
    if norm_ax.lines:
        norm_ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return finish(fig, path, left=0.9, gap=0.9, suptitle=bool(title))


def plot_gradient_flow(result: dict, path=None):
    """Input-gradient norm against the layer, plain and residual on one log-scale axis; the x axis
    runs from the output layer (left) back to the first layer (right), the backward pass's order.

    result: what :func:`mlplab.gradflow.gradient_flow` returns. Lines are labelled ``'plain'`` and
    ``'residual'``. Saved at :data:`mlplab.plots.DPI` when given a ``path``; returns the figure."""
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(GRADIENT_FLOW_SIZE)
    ax = fig.add_subplot()
    layers = np.asarray(result["layers"])
    for label, style in (("plain", "o-"), ("residual", "s-")):
        if label in result:
            ax.plot(layers, result[label]["input_grad_norms"], style, markersize=3, linewidth=1.4, label=label)
    ax.set_yscale("log")
    ax.set_xlim(layers.max() + 0.5, layers.min() - 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"Linear layer ({layers.max()} = output, 1 = first): the backward pass runs left to right")
    ax.set_ylabel("‖dL/d(layer input)‖")
    ax.set_title(
        f"Gradient at each layer at initialisation: {result['depth']} × {result['width']} "
        f"{result['activation']}, {result['dataset']}, batch {result['batch_size']}"
    )
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend()
    # fixed fractions, as this figure has always had (finish() takes inches)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.9)
    if path is not None:
        save_figure(fig, path)
    return fig
