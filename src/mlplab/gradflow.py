"""How much gradient reaches each layer: per-Linear gradient statistics, during training and at init.

Two uses share the definitions here:

- ``mlplab train --track-gradients`` records, on every tracked step and for every Linear layer,
  ``‖dL/dW‖``, ``‖dL/dX‖`` (X: the layer's input) and ``‖W_after − W_before‖ / ‖W_before‖`` (the
  step's real update, whatever the optimiser). Asked with ``train_step(..., track=True)``, both
  backends return these as :class:`LayerGradients` in the step's ``StepResult.layer_stats``;
  :class:`mlplab.training.listeners.GradientTracker` asks for them and writes ``gradients.csv``.
- :func:`gradient_flow` (``mlplab gradflow``) measures ‖dL/dX‖ for every Linear of a deep plain MLP
  and of the same MLP with residual connections, at initialisation, on one batch.

A layer is a Linear, named by its state-dict prefix (``layers.0``, ``layers.2.block.0``). Its input
gradient is the gradient of the loss with respect to the *tensor* the Linear reads: for the Linear
inside a residual block that tensor is also the block's input, so the gradient includes the
identity path, dX = dY + J_Fᵀ dY (docs/backprop.md, "Residual connections"). For the first Linear
it is the gradient with respect to the data, which ordinary training steps skip. Norms are
Frobenius norms over the whole batch, accumulated in float64.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from mlplab import validation
from mlplab.errors import ConfigError
from mlplab.nn import Linear, Module

#: columns of ``gradients.csv``, one row per tracked step and Linear layer
GRADIENT_COLUMNS = ("step", "epoch", "layer", "weight_grad_norm", "input_grad_norm", "update_ratio")
#: the figure ``mlplab gradflow`` writes (drawn by :func:`mlplab.plots.plot_gradient_flow`)
FIGURE_NAME = "gradflow.png"


class LayerGradients(NamedTuple):
    """One Linear layer's statistics on one tracked step (the last three columns of gradients.csv)."""

    layer: str
    weight_grad_norm: float
    input_grad_norm: float
    update_ratio: float

    @classmethod
    def from_norms(
        cls, layer: str, weight_grad: float, input_grad: float, change: float, size: float
    ) -> LayerGradients:
        """The row of a layer whose step changed W by ``change`` = ‖W_after − W_before‖ from ``size``
        = ‖W_before‖ (the one definition both backends' tracked steps use; NaN for a zero weight)."""
        return cls(layer, weight_grad, input_grad, change / size if size > 0 else math.nan)


def norm(array: np.ndarray) -> float:
    """Frobenius norm accumulated in float64 (a float32 sum of squares loses digits on big layers)."""
    flat = np.asarray(array).ravel()
    if flat.dtype != np.float64:
        flat = flat.astype(np.float64)
    return math.sqrt(float(np.dot(flat, flat)))


def linear_layers(model: Module) -> list[tuple[str, Linear]]:
    """``(state-dict prefix, Linear)`` for every Linear of ``model``, in forward order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, Linear)]


def _outermost_readers(model: Module) -> dict[int, Module]:
    """For every module, the outermost module reading the same input tensor (itself if none).

    The gradient of a tensor is complete only where the tensor enters the outermost module that
    reads it: a Sequential hands its input to its first child alone, a Residual to its block
    (and adds the identity path to the block's gradient), so the Linears at the start of a block
    get the gradient the enclosing module returns.
    """
    owner: dict[int, Module] = {}
    for _, module in model.named_modules():  # parents come before their children
        root = owner.setdefault(id(module), module)
        for child in module.input_readers():
            owner[id(child)] = root
    return owner


def backward_with_input_grads(model: Module, dlogits: np.ndarray) -> dict[str, np.ndarray]:
    """Backward through ``model`` (an MLP or any Sequential/Residual tree) from dlogits:
    (batch, classes), filling every ``grads`` exactly as ``model.backward`` does, and return
    {Linear name: dL/d(its input)} including the first layer's gradient of the data."""
    tape: dict = {}
    model.record_backward(dlogits, tape)
    owner = _outermost_readers(model)
    return {name: tape[id(owner[id(linear)])]["dx"] for name, linear in linear_layers(model)}


def layer_statistics(linears, weights_before: list[np.ndarray], input_grads: dict) -> list[LayerGradients]:
    """The :class:`LayerGradients` of each ``(name, Linear)`` after its backward pass and update."""
    stats = []
    for (name, layer), before in zip(linears, weights_before):
        change = norm(layer.params["weight"] - before)
        stats.append(
            LayerGradients.from_norms(name, norm(layer.grads["weight"]), norm(input_grads[name]), change, norm(before))
        )
    return stats


# =============================================================================================
# mlplab gradflow: the gradient at every depth, plain against residual, at initialisation
# =============================================================================================
def _positive_int(value, name: str) -> int:
    return validation.integer(value, f"--{name.replace('_', '-')}")


def input_gradient_norms(model, x: np.ndarray, y: np.ndarray) -> dict:
    """One forward and backward pass of ``model`` on (x, y) with the mean softmax cross-entropy:
    {"loss", "names", "input_grad_norms"}, layers in forward order."""
    from mlplab.nn import SoftmaxCrossEntropy

    loss_module = SoftmaxCrossEntropy()
    model.train()
    logits = model.forward(x)
    loss, dlogits = loss_module.forward_backward(logits, y)
    grads = backward_with_input_grads(model, dlogits)
    names = [name for name, _ in linear_layers(model)]
    model.clear_cache()
    return {"loss": loss, "names": names, "input_grad_norms": [norm(grads[name]) for name in names]}


def gradient_flow(
    depth: int = 16,
    width: int = 128,
    activation: str = "sigmoid",
    residual: bool | None = None,
    dataset: str = "digits",
    batch_size: int = 128,
    seed: int = 0,
    data=None,
    data_dir=None,
) -> dict:
    """The input-gradient norm of every Linear of an MLP with ``depth`` hidden layers of ``width``
    units, at initialisation, on one batch of the training split (float64, mean cross-entropy).

    ``residual``: None measures the plain and the residual network (same seed, hence the very
    same weights: only the identity paths differ), True or False only one of them. ``data``: a
    ready :class:`~mlplab.data.DatasetSplits` instead of loading ``dataset`` (from ``data_dir``).
    The batch is ``batch_size`` training rows drawn without replacement by ``seed``, which also
    seeds the weights.

    Returns ``{"dataset", "depth", "width", "activation", "batch_size", "seed", "layers",
    "plain", "residual"}``: ``layers`` numbers the Linears from 1 (the first) to depth + 1 (the
    output layer), ordered **from the output back to the first layer**, as the backward pass
    meets them; ``plain`` and ``residual`` (absent when not measured) each hold ``names`` (the
    state-dict prefixes), ``input_grad_norms`` in the same order, ``loss`` and
    ``first_over_last`` (first layer's norm / output layer's norm).
    """
    from mlplab.models import MLP
    from mlplab.nn.activations import ACTIVATIONS

    depth = _positive_int(depth, "depth")
    width = _positive_int(width, "width")
    batch_size = _positive_int(batch_size, "batch_size")
    seed = validation.integer(seed, "--seed", low=0)
    key = validation.choice(activation, "--activation", ACTIVATIONS, what="activation")
    if residual not in (None, True, False):
        raise ConfigError(f"residual must be None, True or False, got {residual!r}")
    if data is None:
        from mlplab.data import get_dataset

        data = get_dataset(dataset, data_dir)
    train = data.train
    if batch_size > len(train):
        raise ConfigError(
            f"--batch-size {batch_size} is larger than the training split of {data.name} ({len(train)} rows)"
        )
    rows = np.sort(np.random.default_rng(seed).choice(len(train), size=batch_size, replace=False))
    x = train.x[rows].astype(np.float64)
    y = train.y[rows]

    result = {
        "dataset": data.name,
        "depth": depth,
        "width": width,
        "activation": key,
        "batch_size": batch_size,
        "seed": int(seed),
        "layers": list(range(depth + 1, 0, -1)),
    }
    variants = [("plain", False), ("residual", True)]
    for label, with_skips in variants:
        if residual is not None and residual != with_skips:
            continue
        model = MLP(
            data.num_features,
            [width] * depth,
            data.num_classes,
            activation=key,
            residual=with_skips,
            dtype=np.float64,
            seed=seed,
        )
        measured = input_gradient_norms(model, x, y)
        norms = measured["input_grad_norms"]
        result[label] = {
            "names": measured["names"][::-1],
            "input_grad_norms": norms[::-1],
            "loss": measured["loss"],
            "first_over_last": norms[0] / norms[-1] if norms[-1] > 0 else math.nan,
        }
    return result


def format_table(result: dict) -> str:
    """The table ``mlplab gradflow`` prints: one row per layer, output first, then the ratios."""
    columns = [label for label in ("plain", "residual") if label in result]
    lines = [f"{'layer':>10}  " + "  ".join(f"{label:>12}" for label in columns)]
    count = len(result["layers"])
    for row, layer in enumerate(result["layers"]):
        mark = " (output)" if row == 0 else (" (first)" if row == count - 1 else "")
        values = "  ".join(f"{result[label]['input_grad_norms'][row]:>12.3e}" for label in columns)
        lines.append(f"{layer:>10}  {values}{mark}")
    ratios = "  ".join(f"{result[label]['first_over_last']:>12.3e}" for label in columns)
    lines.append(f"{'first/last':>10}  {ratios}")
    return "\n".join(lines)
