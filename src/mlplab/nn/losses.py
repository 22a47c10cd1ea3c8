"""Losses (docs/backprop.md, "Softmax and cross-entropy together").

Both losses are means over the batch. Labels are integer class indices of shape (batch,) or
target distributions of shape (batch, classes) (one-hot rows, or smoothed ones). Their backward
passes are stateless: they take the same arguments as forward and keep nothing between calls.
"""

from __future__ import annotations

import numbers

import numpy as np

from mlplab.nn.base import Module, check_2d


def _targets(module: Module, labels, num_classes: int, batch: int, dtype) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Validate ``labels``; return (indices, None) for class indices or (None, distribution)."""
    name = type(module).__name__
    labels = np.asarray(labels)
    if labels.ndim == 1:
        if labels.shape[0] != batch:
            raise ValueError(f"{name}: {labels.shape[0]} labels for a batch of {batch} (scores of shape ({batch}, {num_classes}))")
        if labels.dtype.kind not in "iu":  # not an integer dtype: accept only whole numbers
            if labels.size and np.any(labels != np.round(labels)):
                raise ValueError(f"{name}: class labels must be integers, got dtype {labels.dtype}")
            labels = labels.astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"{name}: labels must lie in [0, {num_classes}) for scores of shape ({batch}, {num_classes}); "
                f"got values from {labels.min()} to {labels.max()}"
            )
        return labels, None
    if labels.ndim == 2:
        if labels.shape != (batch, num_classes):
            raise ValueError(f"{name}: one-hot labels have shape {labels.shape}, expected ({batch}, {num_classes})")
        return None, labels.astype(dtype, copy=False)
    raise ValueError(f"{name}: labels must have shape ({batch},) or ({batch}, {num_classes}), got {labels.shape}")


class CrossEntropy(Module):
    """Cross-entropy of probabilities: L = mean over the batch of −Σ_c t_c log p_c.

    probs: (batch, classes), labels: (batch,) ints or (batch, classes) targets. Probabilities
    are clipped to [eps, 1] inside the log, so p = 0 gives a large but finite loss and gradient.
    """

    def __init__(self, eps: float = 1e-12):
        super().__init__()
        self.eps = float(eps)

    def forward(self, probs: np.ndarray, labels) -> float:  # type: ignore[override]  # a loss maps (scores, labels) to a number, not x to y
        check_2d(self, probs, what="probs")
        batch, classes = probs.shape
        index, dist = _targets(self, labels, classes, batch, probs.dtype)
        clipped = np.clip(probs, self.eps, 1.0)
        if index is not None:
            return float(-np.mean(np.log(clipped[np.arange(batch), index])))
        return float(-np.sum(dist * np.log(clipped)) / batch)

    def backward(self, probs: np.ndarray, labels) -> np.ndarray:  # type: ignore[override]  # a loss maps (scores, labels) to a number, not x to y
        """dL/dprobs = −t / (S · clip(p)), zero where the target is zero."""
        check_2d(self, probs, what="probs")
        batch, classes = probs.shape
        index, dist = _targets(self, labels, classes, batch, probs.dtype)
        clipped = np.clip(probs, self.eps, 1.0)
        grad = np.zeros_like(probs)
        if index is not None:
            rows = np.arange(batch)
            grad[rows, index] = -1.0 / (batch * clipped[rows, index])
        else:
            assert dist is not None  # _targets returns either class indices or a distribution
            grad = -dist / (batch * clipped)
        return grad


class SoftmaxCrossEntropy(Module):
    """Softmax followed by cross-entropy, fused and stable on logits.

    L = mean over the batch of (logsumexp(z) − Σ_c t_c z_c); dL/dz = (softmax(z) − t) / S, where
    t is the one-hot (or given, or smoothed) target. ``label_smoothing`` ε replaces the target t
    with (1 − ε) t + ε/C, exactly as ``torch.nn.CrossEntropyLoss(label_smoothing=ε)``.
    """

    label_smoothing: float

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real) or not 0 <= label_smoothing <= 1:
            raise ValueError(f"SoftmaxCrossEntropy: label_smoothing must be in [0, 1], got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def _targets_and_log_probs(self, logits: np.ndarray, labels) -> tuple[np.ndarray, np.ndarray]:
        """The (smoothed) target rows t and log softmax(logits), both (batch, classes)."""
        check_2d(self, logits, what="logits")
        batch, classes = logits.shape
        index, target = _targets(self, labels, classes, batch, logits.dtype)
        if index is not None:  # class indices: one-hot rows
            target = np.zeros_like(logits)
            target[np.arange(batch), index] = 1
        assert target is not None  # _targets returns either class indices or a distribution
        if self.label_smoothing:
            target = (1 - self.label_smoothing) * target + self.label_smoothing / classes
        # log p = z − logsumexp(z), with the row maximum taken out first: every exponent is <= 0
        # and each row's sum is >= 1 (its maximum contributes exp(0)), so nothing overflows.
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return target, log_probs

    @staticmethod
    def _loss(target: np.ndarray, log_probs: np.ndarray) -> float:
        batch = len(log_probs)
        return float(-np.sum(target * log_probs, dtype=np.float64)) / batch if batch else float("nan")

    def forward(self, logits: np.ndarray, labels) -> float:  # type: ignore[override]  # a loss maps (scores, labels) to a number, not x to y
        """logits: (batch, classes); labels: (batch,) ints or (batch, classes). Returns the mean loss."""
        return self._loss(*self._targets_and_log_probs(logits, labels))

    def backward(self, logits: np.ndarray, labels) -> np.ndarray:  # type: ignore[override]  # a loss maps (scores, labels) to a number, not x to y
        """dL/dlogits = (softmax(logits) − target) / batch, shape (batch, classes)."""
        target, log_probs = self._targets_and_log_probs(logits, labels)
        return (np.exp(log_probs) - target) / len(log_probs)

    def forward_backward(self, logits: np.ndarray, labels) -> tuple[float, np.ndarray]:
        """Loss and dL/dlogits = (p − t)/S from one softmax. (Training uses the same formulas
        in fewer passes: mlplab.fast.loss.)"""
        target, log_probs = self._targets_and_log_probs(logits, labels)
        return self._loss(target, log_probs), (np.exp(log_probs) - target) / len(log_probs)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}" if self.label_smoothing else ""

    # -- the R-operator: docs/hessian.md, "Hessian–vector products: the R-operator" ----------
    @staticmethod
    def r_gradient(probs: np.ndarray, rlogits: np.ndarray, batch: int | None = None) -> np.ndarray:
        """R{dL/dz} for dL/dz = (p − t)/S: the targets drop out, and per row R{p} = (diag p − p pᵀ) R{z},
        so R{dz} = (p ⊙ R{z} − p (pᵀR{z})) / S. ``batch``: S (default: the rows of ``probs``)."""
        out = probs * (rlogits - np.sum(probs * rlogits, axis=1, keepdims=True))
        out /= probs.shape[0] if batch is None else batch
        return out
