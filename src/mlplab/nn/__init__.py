"""Modules with closed-form backward passes (the derivations: docs/backprop.md), on NumPy arrays
or, moved with ``Module.to``, any array-API library's (docs/array-api.md)."""

from mlplab.nn.activations import ELU, GELU, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh, make_activation, softmax
from mlplab.nn.base import Module
from mlplab.nn.containers import Residual, Sequential
from mlplab.nn.linear import Linear
from mlplab.nn.losses import CrossEntropy, SoftmaxCrossEntropy
from mlplab.nn.norm import BatchNorm1d, Dropout

# The names used in the deep-learning course this project grew from; same signatures.
LinearModule = Linear
ELUModule = ELU
SoftMaxModule = Softmax
CrossEntropyModule = CrossEntropy

__all__ = [
    "ELU",
    "GELU",
    "BatchNorm1d",
    "CrossEntropy",
    "CrossEntropyModule",
    "Dropout",
    "ELUModule",
    "LeakyReLU",
    "Linear",
    "LinearModule",
    "Module",
    "ReLU",
    "Residual",
    "Sequential",
    "Sigmoid",
    "SoftMaxModule",
    "Softmax",
    "SoftmaxCrossEntropy",
    "Tanh",
    "make_activation",
    "softmax",
]
