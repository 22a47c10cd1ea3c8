"""The PyTorch MLP: the same layers, names, initialisation and semantics as :class:`mlplab.models.MLP`."""

from __future__ import annotations

import math
from typing import cast

import numpy as np
import torch
from torch import nn

from mlplab.models import LayerSpec, architecture, layer_plan
from mlplab.nn.activations import make_activation as make_numpy_activation

#: torch dtypes for the NumPy dtypes mlplab trains in
TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
NUMPY_DTYPES = {value: key for key, value in TORCH_DTYPES.items()}


def make_activation(name: str) -> nn.Module:
    """The torch module computing what ``mlplab.nn.make_activation(name)`` computes: the
    ``torch.nn`` class and arguments that the NumPy activation names (its ``torch_twin``)."""
    class_name, kwargs = make_numpy_activation(name).torch_twin()  # type: ignore[attr-defined]  # every activation class has it, Module does not
    return getattr(nn, class_name)(**kwargs)


class Dropout(nn.Module):
    """Inverted dropout drawing its masks from an explicit ``torch.Generator``.

    ``nn.Dropout`` only uses the global RNG; a generator of our own is what makes a run's
    masks reproducible and its state part of a resumable checkpoint. Eval mode is the identity.
    """

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        mask = torch.empty_like(x).bernoulli_(1 - self.p, generator=self.generator)
        mask.div_(1 - self.p)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Residual(nn.Module):
    """y = x + block(x); the block keeps the width."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _kaiming_linear(in_features: int, out_features: int, input_layer: bool, generator=None) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    # The rule of mlplab.nn.Linear, not PyTorch's default (uniform, fan-in/sqrt(5)) init.
    std = math.sqrt((1.0 if input_layer else 2.0) / in_features)
    with torch.no_grad():
        layer.weight.normal_(0.0, std, generator=generator)
        layer.bias.zero_()
    return layer


class MLP(nn.Module):
    """Multilayer perceptron: [Linear → (BatchNorm1d) → activation → (Dropout)] per hidden width,
    then Linear to the classes. x: (batch, n_inputs) -> logits (batch, n_classes).

    Same layer order, ``state_dict()`` keys and shapes as :class:`mlplab.models.MLP`, so the
    state of either model loads into the other with ``load_state_dict(strict=True)`` (this
    ``load_state_dict`` also takes NumPy arrays). Kaiming-normal init with std sqrt(1/in) for the
    first Linear and sqrt(2/in) for the others, zero biases. ``generator`` (a ``torch.Generator``)
    draws the initial weights; ``dropout_generator`` the dropout masks.
    """

    def __init__(
        self,
        n_inputs,
        n_hidden,
        n_classes,
        *,
        activation: str = "elu",
        use_batch_norm: bool = False,
        dropout: float = 0.0,
        residual: bool = False,
        generator: torch.Generator | None = None,
        dropout_generator: torch.Generator | None = None,
    ):
        super().__init__()
        arch = architecture(
            n_inputs,
            n_hidden,
            n_classes,
            activation=activation,
            use_batch_norm=use_batch_norm,
            dropout=dropout,
            residual=residual,
        )
        self.n_inputs, self.n_hidden, self.n_classes = arch["n_inputs"], arch["n_hidden"], arch["n_classes"]
        self.activation, self.use_batch_norm = arch["activation"], arch["use_batch_norm"]
        self.dropout, self.residual = arch["dropout"], arch["residual"]

        def build(spec: LayerSpec) -> nn.Module:
            if spec.kind == "linear":
                return _kaiming_linear(spec.in_width, spec.width, spec.input_layer, generator)
            if spec.kind == "batch_norm":
                return nn.BatchNorm1d(spec.width, eps=1e-5, momentum=0.1)
            if spec.kind == "activation":
                return make_activation(spec.activation)
            if spec.kind == "dropout":
                return Dropout(spec.p, dropout_generator)
            return Residual(nn.Sequential(*map(build, spec.block)))

        # the plan of mlplab.models.MLP: same order, same names, same init rule per Linear
        layers = [build(spec) for spec in layer_plan(**arch)]
        self.layers = nn.Sequential(*layers)

    def config(self) -> dict:
        """The constructor arguments (without generators), enough to rebuild the architecture."""
        return {
            "n_inputs": self.n_inputs,
            "n_hidden": list(self.n_hidden),
            "n_classes": self.n_classes,
            "activation": self.activation,
            "use_batch_norm": self.use_batch_norm,
            "dropout": self.dropout,
            "residual": self.residual,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, n_inputs) -> logits (batch, n_classes)."""
        return self.layers(x)

    def set_dropout_generator(self, generator: torch.Generator | None) -> None:
        for module in self.modules():
            if isinstance(module, Dropout):
                module.generator = generator

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict`` that also accepts NumPy arrays (a NumPy MLP's state)."""
        converted = {
            key: torch.from_numpy(np.array(value)) if isinstance(value, (np.ndarray, np.generic)) else value
            for key, value in state_dict.items()
        }
        return super().load_state_dict(converted, strict=strict, assign=assign)

    def numpy_state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer as NumPy arrays (from any device)."""
        return {key: value.detach().to("cpu", copy=True).numpy() for key, value in self.state_dict().items()}

    def extra_repr(self) -> str:
        return f"{self.n_inputs} -> {self.n_hidden} -> {self.n_classes}, activation={self.activation!r}"


def from_numpy(numpy_mlp, *, device=None, dtype=None) -> MLP:
    """A torch :class:`MLP` with the architecture, weights, buffers and mode of a NumPy
    :class:`mlplab.models.MLP`; ``dtype`` defaults to the NumPy model's."""
    model = MLP(
        numpy_mlp.n_inputs,
        numpy_mlp.n_hidden,
        numpy_mlp.n_classes,
        activation=numpy_mlp.activation,
        use_batch_norm=numpy_mlp.use_batch_norm,
        dropout=numpy_mlp.dropout,
        residual=numpy_mlp.residual,
    )
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else TORCH_DTYPES[np.dtype(dtype or numpy_mlp.dtype)]
    model.to(device=device, dtype=torch_dtype)
    model.load_state_dict(numpy_mlp.state_dict(), strict=True)
    return model.train(numpy_mlp.training)


def to_numpy(torch_mlp: MLP, *, dtype=None):
    """A NumPy :class:`mlplab.models.MLP` with the weights, buffers and mode of a torch :class:`MLP`;
    ``dtype`` defaults to the torch model's."""
    from mlplab.models import MLP as NumpyMLP

    config = torch_mlp.config()
    if dtype is None:
        last = cast(nn.Linear, torch_mlp.layers[-1])  # the logits layer of every MLP
        dtype = NUMPY_DTYPES.get(last.weight.dtype, np.dtype(np.float32))
    model = NumpyMLP(config.pop("n_inputs"), config.pop("n_hidden"), config.pop("n_classes"), dtype=dtype, **config)
    model.load_state_dict(torch_mlp.numpy_state_dict(), strict=True)
    return model.train(torch_mlp.training)
