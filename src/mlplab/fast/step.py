"""The fused NumPy training step: forward, loss, backward and update, with the update of every
large Linear weight folded into its weight-gradient product when the optimiser is plain SGD.

The textbook step is ``model.backward`` (each Linear fills ``grads['weight']`` with dYᵀX) and
then ``optimizer.step()`` (W ← W − lr·dW). For plain SGD this step instead walks the model's
backward pass itself and, at each Linear of at least :data:`FUSE_MIN_WEIGHT` weights, computes
db = 1ᵀdY and dX = dY·W (with W from before the update) as ``Linear.backward`` does, and then
W ← W − lr·dYᵀX as one BLAS product (PyTorch calls this "optimizer in backward"). Every other
parameter gets the plain-SGD update through a BLAS axpy. For any other optimiser the backward
pass is the textbook one, and the update is :class:`mlplab.fast.update.Updater`'s.
"""

from __future__ import annotations

import numpy as np

from mlplab.fast._blas import axpy, gemm_tn_update
from mlplab.fast.loss import FastSoftmaxCrossEntropy
from mlplab.fast.update import Updater
from mlplab.models import MLP
from mlplab.nn import Linear, Module, Residual, Sequential, SoftmaxCrossEntropy
from mlplab.nn.base import require_cache
from mlplab.optim import SGD, Optimizer

#: Smallest weight (elements) whose plain-SGD update is folded into backward. The folded call
#: costs ~5 µs more Python and ctypes work than matmul + axpy, and saves ~0.65 µs per thousand
#: elements: below ~8,000 (the 128 → 10 output layer) it would not pay.
FUSE_MIN_WEIGHT = 8192


class FusedStep:
    """``step(x, y, lr) -> (loss, logits)``: one training step of ``model`` (an MLP or any tree of
    Sequential / Residual / modules) with ``loss`` and ``optimizer``, updating in place."""

    def __init__(self, model: MLP | Sequential, loss: SoftmaxCrossEntropy, optimizer: Optimizer):
        self.model, self.optimizer = model, optimizer
        self.loss = FastSoftmaxCrossEntropy(loss)
        weights = {
            id(module.params["weight"]): module
            for _, module in model.named_modules()
            if isinstance(module, Linear) and module.params["weight"].size >= FUSE_MIN_WEIGHT
        }
        fused = [(index, weights[id(p)]) for index, (p, _) in enumerate(optimizer.pairs) if id(p) in weights]
        #: the Linear layers whose weight update is folded into their backward pass
        self.fused_layers = [layer for _, layer in fused]
        self._fused_ids = frozenset(id(layer) for layer in self.fused_layers)
        self._fused_indices = frozenset(index for index, _ in fused)
        # the containers on the way to a fused layer: the walk goes inside those only
        self._route: set[int] = set()
        for _, module in model.named_modules():
            if any(id(m) in self._fused_ids for _, m in module.named_modules()):
                self._route.add(id(module))
        self.updater = Updater()

    @property
    def fuses(self) -> bool:
        """Whether this step folds updates into backward (the optimiser is plain SGD)."""
        return isinstance(self.optimizer, SGD) and self.optimizer.plain

    def step(self, x: np.ndarray, y: np.ndarray, lr: float) -> tuple[float, np.ndarray]:
        model, optimizer = self.model, self.optimizer
        if not model.training:  # walking the module tree costs ~8 µs, paid only after an evaluation
            model.train()
        logits = model.forward(x)
        loss, dlogits = self.loss.forward_backward(logits, y)
        optimizer.lr = lr
        if self.fuses:
            # The gradient with respect to the data is never used: skip the first layer's dX product.
            self._backward(model, dlogits, False, lr)
            self.updater.update(optimizer, skip=self._fused_indices)
        else:
            model.backward(dlogits, need_input_grad=False)
            self.updater.update(optimizer)
        return loss, logits

    def _backward(self, module: Module, dout: np.ndarray, need_input_grad: bool, lr: float):
        """``module.backward(dout)``, with the fused update at each fused Linear inside it."""
        if id(module) not in self._route:
            if need_input_grad or not isinstance(module, (Linear, Sequential, MLP)):
                return module.backward(dout)
            return module.backward(dout, need_input_grad=False)
        if id(module) in self._fused_ids:
            return self._fused_linear(module, dout, need_input_grad, lr)
        if isinstance(module, Residual):
            return dout + self._backward(module.block, dout, True, lr)
        if isinstance(module, Sequential):
            modules = list(module)
            for child in reversed(modules[1:]):
                dout = self._backward(child, dout, True, lr)
            return self._backward(modules[0], dout, need_input_grad, lr)
        if isinstance(module, MLP):
            return self._backward(module.layers, dout, need_input_grad, lr)
        raise TypeError(f"FusedStep: cannot walk the backward pass of {type(module).__name__}")

    @staticmethod
    def _fused_linear(layer: Module, dout: np.ndarray, need_input_grad: bool, lr: float):
        """Linear.backward's db and dX, then W ← W − lr·dYᵀX without writing dW out."""
        x = require_cache(layer, "x")
        weight = layer.params["weight"]
        np.add.reduce(dout, axis=0, out=layer.grads["bias"])
        dx = dout @ weight if need_input_grad else None  # before the update changes W
        if not gemm_tn_update(-lr, dout, x, weight):  # BLAS cannot take these arrays: two steps
            np.matmul(dout.T, x, out=layer.grads["weight"])
            axpy(-lr, layer.grads["weight"], weight)
        return dx
