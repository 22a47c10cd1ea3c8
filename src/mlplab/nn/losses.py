"""Losses (docs/backprop.md, "Softmax and cross-entropy together").

Both losses are means over the batch. Labels are integer class indices of shape (batch,) or
target distributions of shape (batch, classes) (one-hot rows, or smoothed ones). Their backward
passes are stateless: they take the same arguments as forward and keep nothing between calls.

Class indices pick entries by comparison with ``arange`` (a one-hot mask) or ``take_along_axis``,
not by NumPy's integer-array indexing, which the array API standard lacks (docs/array-api.md).
"""

from __future__ import annotations

import numbers

import numpy as np

from mlplab.nn.base import Module, check_2d
from mlplab.xp import asarray, is_numpy, namespace
from mlplab.xp import device as device_of


def _targets(module: Module, labels, scores) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Validate ``labels`` for the (batch, classes) ``scores``; return (indices, None) for class
    indices or (None, distribution), in the scores' library and on their device."""
    batch, num_classes = scores.shape
    dtype = scores.dtype
    name = type(module).__name__
    xp = namespace(scores)
    # labels given as NumPy arrays or lists go to the scores' library and device
    labels = np.asarray(labels) if is_numpy(xp) else asarray(labels, xp, device=device_of(scores))
    if labels.ndim == 1:
        if labels.shape[0] != batch:
            raise ValueError(
                f"{name}: {labels.shape[0]} labels for a batch of {batch} (scores of shape ({batch}, {num_classes}))"
            )
        if not xp.isdtype(labels.dtype, ("signed integer", "unsigned integer")):  # accept only whole numbers
            if batch and bool(xp.any(labels != xp.round(labels))):
                raise ValueError(f"{name}: class labels must be integers, got dtype {labels.dtype}")
            labels = xp.astype(labels, xp.int64)
        if batch and bool((xp.min(labels) < 0) | (xp.max(labels) >= num_classes)):
            raise ValueError(
                f"{name}: labels must lie in [0, {num_classes}) for scores of shape ({batch}, {num_classes}); "
                f"got values from {int(xp.min(labels))} to {int(xp.max(labels))}"
            )
        return labels, None
    if labels.ndim == 2:
        if tuple(labels.shape) != (batch, num_classes):
            raise ValueError(
                f"{name}: one-hot labels have shape {tuple(labels.shape)}, expected ({batch}, {num_classes})"
            )
        return None, xp.astype(labels, dtype, copy=False)
    raise ValueError(f"{name}: labels must have shape ({batch},) or ({batch}, {num_classes}), got {labels.shape}")


def one_hot(index, classes: int, xp, device) -> np.ndarray:
    """The (batch, classes) boolean mask of each row's class: ``index`` compared with arange."""
    return index[:, None] == xp.arange(classes, dtype=index.dtype, device=device)


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
        batch = probs.shape[0]
        index, dist = _targets(self, labels, probs)
        xp = namespace(probs)
        clipped = xp.clip(probs, self.eps, 1.0)
        if index is not None:  # p of each row's class: take_along_axis, the standard's gather
            return float(-xp.mean(xp.log(xp.take_along_axis(clipped, index[:, None], axis=1)[:, 0])))
        return float(-xp.sum(dist * xp.log(clipped)) / batch)

    def backward(self, probs: np.ndarray, labels) -> np.ndarray:  # type: ignore[override]  # a loss maps (scores, labels) to a number, not x to y
        """dL/dprobs = −t / (S · clip(p)), zero where the target is zero."""
        check_2d(self, probs, what="probs")
        batch, classes = probs.shape
        index, dist = _targets(self, labels, probs)
        xp = namespace(probs)
        clipped = xp.clip(probs, self.eps, 1.0)
        if index is not None:  # only each row's class entry is nonzero
            grad = xp.where(one_hot(index, classes, xp, device_of(probs)), -1.0 / (batch * clipped), 0.0)
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
        if (
            isinstance(label_smoothing, bool)
            or not isinstance(label_smoothing, numbers.Real)
            or not 0 <= label_smoothing <= 1
        ):
            raise ValueError(f"SoftmaxCrossEntropy: label_smoothing must be in [0, 1], got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def _targets_and_log_probs(self, logits: np.ndarray, labels) -> tuple[np.ndarray, np.ndarray]:
        """The (smoothed) target rows t and log softmax(logits), both (batch, classes)."""
        check_2d(self, logits, what="logits")
        classes = logits.shape[1]
        index, target = _targets(self, labels, logits)
        xp = namespace(logits)
        if index is not None:  # class indices: one-hot rows
            target = xp.astype(one_hot(index, classes, xp, device_of(logits)), logits.dtype)
        assert target is not None  # _targets returns either class indices or a distribution
        if self.label_smoothing:
            target = (1 - self.label_smoothing) * target + self.label_smoothing / classes
        # log p = z − logsumexp(z), with the row maximum taken out first: every exponent is <= 0
        # and each row's sum is >= 1 (its maximum contributes exp(0)), so nothing overflows.
        shifted = logits - xp.max(logits, axis=1, keepdims=True)
        log_probs = shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))
        return target, log_probs

    @staticmethod
    def _loss(target: np.ndarray, log_probs: np.ndarray) -> float:
        xp, batch = namespace(log_probs), log_probs.shape[0]
        return float(-xp.sum(target * log_probs, dtype=xp.float64)) / batch if batch else float("nan")

    def forward(self, logits: np.ndarray, labels) -> float:  # type: ignore[override]  # a loss maps (scores, labels) to a number, not x to y
        """logits: (batch, classes); labels: (batch,) ints or (batch, classes). Returns the mean loss."""
        return self._loss(*self._targets_and_log_probs(logits, labels))

    def backward(self, logits: np.ndarray, labels) -> np.ndarray:  # type: ignore[override]  # a loss maps (scores, labels) to a number, not x to y
        """dL/dlogits = (softmax(logits) − target) / batch, shape (batch, classes)."""
        target, log_probs = self._targets_and_log_probs(logits, labels)
        return (namespace(log_probs).exp(log_probs) - target) / log_probs.shape[0]

    def forward_backward(self, logits: np.ndarray, labels) -> tuple[float, np.ndarray]:
        """Loss and dL/dlogits = (p − t)/S from one softmax. (Training uses the same formulas
        in fewer passes: mlplab.fast.loss.)"""
        target, log_probs = self._targets_and_log_probs(logits, labels)
        return self._loss(target, log_probs), (namespace(log_probs).exp(log_probs) - target) / log_probs.shape[0]

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}" if self.label_smoothing else ""

    # -- the R-operator: docs/hessian.md, "Hessian–vector products: the R-operator" ----------
    @staticmethod
    def r_gradient(probs: np.ndarray, rlogits: np.ndarray, batch: int | None = None) -> np.ndarray:
        """R{dL/dz} for dL/dz = (p − t)/S: the targets drop out, and per row R{p} = (diag p − p pᵀ) R{z},
        so R{dz} = (p ⊙ R{z} − p (pᵀR{z})) / S. ``batch``: S (default: the rows of ``probs``)."""
        out = probs * (rlogits - namespace(probs).sum(probs * rlogits, axis=1, keepdims=True))
        out /= probs.shape[0] if batch is None else batch
        return out
