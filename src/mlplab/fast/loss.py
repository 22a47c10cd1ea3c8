"""Softmax cross-entropy and its gradient (p − t)/S from one softmax pass, for training.

The same quantities as :meth:`mlplab.nn.SoftmaxCrossEntropy.forward_backward` (the textbook
form, docs/backprop.md, "Softmax and cross-entropy together"), computed with fewer passes and Python calls:
see the package docstring of :mod:`mlplab.fast` for what each trick saves.
"""

from __future__ import annotations

import numpy as np

from mlplab.nn.base import check_2d
from mlplab.nn.losses import SoftmaxCrossEntropy, _targets


class FastSoftmaxCrossEntropy:
    """``forward_backward(logits, labels) -> (loss, dlogits)`` of a :class:`SoftmaxCrossEntropy`
    (its label smoothing), with the row offsets of the flat target index kept between calls."""

    def __init__(self, module: SoftmaxCrossEntropy):
        self.module = module
        self._row_offsets: np.ndarray | None = None
        self._offsets_classes = 0

    def _flat_positions(self, index: np.ndarray, classes: int) -> np.ndarray:
        """row * classes + index[row] for every row: the target entries of the flattened array."""
        offsets = self._row_offsets
        if offsets is None or len(offsets) != len(index) or self._offsets_classes != classes:
            offsets = self._row_offsets = np.arange(len(index)) * classes
            self._offsets_classes = classes
        return offsets + index.astype(np.intp, copy=False)  # (uint64 + int64 would give floats)

    def forward_backward(self, logits: np.ndarray, labels) -> tuple[float, np.ndarray]:
        module = self.module
        check_2d(module, logits, what="logits")
        batch, classes = logits.shape
        index, dist = _targets(module, labels, logits)
        eps = module.label_smoothing
        shifted = logits - np.maximum.reduce(logits, axis=1, keepdims=True)
        exps = np.exp(shifted)  # every exponent <= 0, each row sum >= 1: no overflow, safe log
        sums = np.add.reduce(exps, axis=1)
        lse = np.log(sums)
        # shifted and exps are fresh C-contiguous arrays, so their ravel() is a view
        flat = self._flat_positions(index, classes) if index is not None else None
        if flat is not None:
            target_term = shifted.ravel()[flat]
        else:
            target_term = np.add.reduce(dist * shifted, axis=1)
        nll = lse - target_term
        if eps:
            smooth = lse - np.add.reduce(shifted, axis=1) / classes  # −Σ_c (ε/C) log p_c
            nll = (1 - eps) * nll + eps * smooth
        loss = float(np.add.reduce(nll, dtype=np.float64)) / batch if batch else float("nan")
        # softmax / S in one pass over the kept exponentials, in place; then the target comes off
        grad = np.multiply(exps, (1.0 / (sums * batch))[:, None], out=exps)
        if flat is not None:
            grad.ravel()[flat] -= (1 - eps) / batch
        else:
            grad -= ((1 - eps) / batch) * dist
        if eps:
            grad -= eps / (classes * batch)
        return loss, grad
