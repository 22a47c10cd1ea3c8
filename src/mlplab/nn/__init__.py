"""NumPy modules with closed-form backward passes (the derivations: docs/backprop.md)."""

from mlplab.nn.activations import ELU, GELU, ReLU, LeakyReLU, Sigmoid, Softmax, Tanh, make_activation, softmax
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
    "Module", "Linear", "ELU", "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "GELU", "Softmax",
    "CrossEntropy", "SoftmaxCrossEntropy", "BatchNorm1d", "Dropout", "Sequential", "Residual",
    "make_activation", "softmax",
    "LinearModule", "ELUModule", "SoftMaxModule", "CrossEntropyModule",
]
