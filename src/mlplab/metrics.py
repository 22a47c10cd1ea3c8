"""Classification metrics from the confusion matrix.

Everything here derives from one integer matrix ``cm`` (C, C) whose rows are the true class and
whose columns are the predicted one: ``cm[i, j]`` samples of class ``i`` were predicted as ``j``.
Counting first and dividing last lets :func:`evaluate` sum counts over batches (or processes)
and gives exact results however a split is chunked.

A ratio whose denominator is zero (a class never predicted has no precision, a class with no
samples has no recall) is set to ``zero_division`` instead of producing a NaN and a warning.
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass, field

import numpy as np

from mlplab import validation

#: the betas ``mlplab evaluate`` and the report show: precision-heavy, balanced, recall-heavy
DEFAULT_BETAS = (0.1, 1.0, 10.0)


def confusion_matrix(predictions, targets, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes): rows are the true class, columns the predicted one.

    predictions: class indices (S,) or scores (S, C) (their argmax is taken); targets: (S,).
    """
    predictions = np.asarray(predictions)
    targets = np.asarray(targets)
    if predictions.ndim == 2:
        predictions = np.argmax(predictions, axis=1)
    if predictions.shape != targets.shape or predictions.ndim != 1:
        raise ValueError(f"confusion_matrix: predictions {predictions.shape} and targets {targets.shape} do not match")
    for name, values in (("predictions", predictions), ("targets", targets)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"confusion_matrix: {name} must lie in [0, {num_classes}), got {values.min()}..{values.max()}"
            )
    flat = targets.astype(np.int64) * num_classes + predictions.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _as_matrix(cm) -> np.ndarray:
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix must be square (C, C), got shape {cm.shape}")
    if cm.size and (not np.all(np.isfinite(cm)) or cm.min() < 0):
        raise ValueError("a confusion matrix holds non-negative finite counts")
    return cm


def _divide(numerator, denominator, zero_division: float) -> np.ndarray:
    """``numerator / denominator`` elementwise, ``zero_division`` where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.full(np.broadcast(numerator, denominator).shape, float(zero_division))
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def normalize_confusion(cm, by: str = "true") -> np.ndarray:
    """The confusion matrix as fractions (float64 (C, C)).

    by: ``'true'`` divides each row by its class's sample count (the diagonal is the recall),
    ``'pred'`` each column by the number of predictions of that class (the diagonal is the
    precision), ``'all'`` everything by the total. Rows, columns or matrices that sum to zero
    give zeros.
    """
    cm = _as_matrix(cm).astype(np.float64)
    if by == "true":
        return _divide(cm, cm.sum(axis=1, keepdims=True), 0.0)
    if by == "pred":
        return _divide(cm, cm.sum(axis=0, keepdims=True), 0.0)
    if by == "all":
        return _divide(cm, cm.sum(), 0.0)
    raise ValueError(f"normalize_confusion: by must be 'true', 'pred' or 'all', got {by!r}")


def _check_beta(beta) -> float:
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or math.isnan(beta) or beta < 0:
        raise ValueError(f"beta must be a number >= 0 (0: precision, inf: recall), got {beta!r}")
    return float(beta)


def f_beta_scores(cm, beta: float = 1.0, zero_division: float = 0.0) -> np.ndarray:
    """Per-class F-beta (C,): ``(1 + b²) tp / ((1 + b²) tp + b² fn + fp)``.

    Written with counts rather than as the weighted harmonic mean of precision and recall, it is
    defined whenever the class occurs or is predicted (a class predicted never but present scores
    0); only a class that is neither gets ``zero_division``. ``beta=0`` gives the precision and
    ``beta=inf`` the recall, the two limits of the formula.
    """
    cm = _as_matrix(cm)
    beta = _check_beta(beta)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    if math.isinf(beta):
        return _divide(tp, support, zero_division)
    beta2 = beta * beta
    # tp + fn = support and tp + fp = predicted, so the denominator is b² support + predicted.
    return _divide((1.0 + beta2) * tp, beta2 * support + predicted, zero_division)


def classification_metrics(cm, beta: float = 1.0, zero_division: float = 0.0) -> dict:
    """Accuracy and per-class precision, recall, F-beta and support from a confusion matrix.

    cm: counts (C, C), rows true class, columns predicted. Returns a dict with ``accuracy``
    (float), ``precision``, ``recall``, ``f_beta`` (float64 (C,)), ``support`` (int64 (C,)),
    ``beta``, and ``macro`` / ``weighted`` dicts holding the unweighted and the support-weighted
    means of ``precision``, ``recall`` and ``f_beta``. A class with no predictions (precision),
    no samples (recall) or neither (F-beta) gets ``zero_division``, as in scikit-learn's
    ``precision_recall_fscore_support(..., labels=range(C), zero_division=...)``.
    """
    cm = _as_matrix(cm)
    beta = _check_beta(beta)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    total = cm.sum()
    per_class = {
        "precision": _divide(tp, predicted, zero_division),
        "recall": _divide(tp, support, zero_division),
        "f_beta": f_beta_scores(cm, beta, zero_division),
    }
    weights = support.astype(np.float64)
    macro = {key: float(values.mean()) if values.size else float(zero_division) for key, values in per_class.items()}
    weighted = {
        key: float(weights @ values / weights.sum()) if weights.sum() > 0 else float(zero_division)
        for key, values in per_class.items()
    }
    return {
        "accuracy": float(tp.sum() / total) if total > 0 else float(zero_division),
        **per_class,
        "support": support.astype(np.int64),
        "beta": beta,
        "macro": macro,
        "weighted": weighted,
    }


def most_confused(cm, top: int = 5) -> list[dict]:
    """The ``top`` largest off-diagonal cells, largest first (ties: lower true, then predicted
    class first), as dicts ``{'true', 'predicted', 'count', 'share'}`` where ``share`` is the
    fraction of the true class's samples that went to ``predicted``. Empty cells are left out."""
    cm = _as_matrix(cm)
    off = cm.astype(np.float64).copy()
    np.fill_diagonal(off, 0)
    flat = off.ravel()
    # A stable sort on the negated counts keeps row-major order among equal counts.
    order = np.argsort(-flat, kind="stable")[: max(0, int(top))]
    rows = normalize_confusion(cm, "true")
    pairs = []
    for index in order:
        if flat[index] <= 0:
            break
        i, j = divmod(int(index), cm.shape[1])
        pairs.append({"true": i, "predicted": j, "count": int(cm[i, j]), "share": float(rows[i, j])})
    return pairs


def precision_recall_leaning(cm, margin: float = 0.02, zero_division: float = 0.0) -> dict:
    """Which classes lean to precision and which to recall.

    A class leans to precision when its precision exceeds its recall by more than ``margin``
    (the model is careful to call it: few false positives, missed samples), to recall in the
    opposite case (it is called readily: found, at the cost of false positives). Since F-beta
    moves monotonically from the precision (beta -> 0) to the recall (beta -> inf), that is
    the same as F0.1 above F10 or below it. Returns ``{'precision': [...], 'recall': [...],
    'balanced': [...]}`` lists of class indices, and ``difference`` (precision - recall, (C,)).
    """
    metrics = classification_metrics(cm, zero_division=zero_division)
    difference = metrics["precision"] - metrics["recall"]
    classes = np.arange(difference.size)
    return {
        "precision": [int(c) for c in classes[difference > margin]],
        "recall": [int(c) for c in classes[difference < -margin]],
        "balanced": [int(c) for c in classes[np.abs(difference) <= margin]],
        "difference": difference,
    }


# -- evaluating a model over a whole split --------------------------------------------------


@dataclass
class Evaluation:
    """The outcome of :func:`evaluate`: the confusion matrix (C, C) over ``count`` samples, the
    accuracy and :func:`classification_metrics` at ``metrics['beta']``."""

    confusion_matrix: np.ndarray
    accuracy: float
    metrics: dict
    count: int
    num_classes: int = field(init=False)

    def __post_init__(self):
        self.num_classes = int(self.confusion_matrix.shape[0])

    def at_beta(self, beta: float, zero_division: float = 0.0) -> dict:
        """:func:`classification_metrics` of the same counts for another beta."""
        return classification_metrics(self.confusion_matrix, beta=beta, zero_division=zero_division)


def _is_torch_module(model) -> bool:
    # A torch module can only exist if torch has been imported already, so checking
    # sys.modules keeps `import torch` (seconds) out of NumPy-only evaluations.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def _torch_logits(model):
    import torch

    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32

    def logits(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = model(torch.as_tensor(np.ascontiguousarray(x)).to(device=device, dtype=dtype))
        return out.detach().to("cpu", torch.float64).numpy()

    return logits


def _split_arrays(dataset):
    if hasattr(dataset, "x") and hasattr(dataset, "y"):
        return np.asarray(dataset.x), np.asarray(dataset.y)
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        return np.asarray(dataset[0]), np.asarray(dataset[1])
    raise TypeError(
        f"evaluate: dataset must have .x and .y (a mlplab.data.Dataset) or be an (x, y) pair, got {type(dataset).__name__}"
    )


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def chunked_log_probs(
    logits_of, x: np.ndarray, batch_size: int = 1000, *, tta_flip: bool = False, image_shape=None, mirror=None
):
    """Yield ``(start, stop, log_probs)`` over the rows of ``x``, ``batch_size`` rows at a time.

    ``logits_of(xb) -> (rows, C)`` is any model's prediction (a backend's ``predict_logits``);
    ``log_probs`` are float64 log-softmax scores. With ``tta_flip`` they are the log of the mean
    of the probabilities of the chunk and of its horizontally mirrored images (``image_shape``;
    or ``mirror``, the data set's ±1 signs, when its rows are mirror-symmetric coordinates).
    The one prediction loop behind both the training loop's evaluation and :func:`evaluate`."""
    if tta_flip:
        from mlplab.data.augment import mirror_rows
    for start in range(0, x.shape[0], batch_size):
        stop = min(x.shape[0], start + batch_size)
        log_probs = _log_softmax(np.asarray(logits_of(x[start:stop]), dtype=np.float64))
        if tta_flip:
            # the probabilities of both views are averaged, not their logits
            mirrored = mirror_rows(x[start:stop], image_shape, mirror)
            flipped = _log_softmax(np.asarray(logits_of(mirrored), dtype=np.float64))
            log_probs = np.log(0.5 * (np.exp(log_probs) + np.exp(flipped)))
        yield start, stop, log_probs


def evaluate(
    model,
    dataset,
    batch_size: int = 1000,
    *,
    num_classes: int | None = None,
    beta: float = 1.0,
    zero_division: float = 0.0,
    tta_flip: bool = False,
    image_shape=None,
    mirror=None,
) -> Evaluation:
    """Run ``model`` over a whole split and count its confusion matrix, batch by batch.

    model: a NumPy :class:`mlplab.models.MLP`, a ``torch.nn.Module`` (run in eval mode under
    ``torch.no_grad`` on the device of its parameters, then put back in its previous mode), or
    anything with ``predict_logits(x) -> (batch, C)`` (the training backends).
    dataset: a :class:`mlplab.data.Dataset` (``x`` (N, D), ``y`` (N,)) or an ``(x, y)`` pair.
    num_classes: C, by default the width of the logits (needed only for an empty split
    without ``model.n_classes``). With ``tta_flip`` the class probabilities are averaged with
    those of the horizontally mirrored images (``image_shape``, the data set's, needed; or
    ``mirror``, its ±1 signs after ``--whitening pca``), as training evaluates with ``--tta-flip``.
    """
    batch_size = validation.integer(batch_size, "evaluate: batch_size", error=ValueError)
    x, y = _split_arrays(dataset)
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"evaluate: need x (N, D) and y (N,), got x {x.shape} and y {y.shape}")
    restore_training = None
    if _is_torch_module(model):
        restore_training = model.training
        model.eval()
        logits_of = _torch_logits(model)
    elif hasattr(model, "predict_logits"):
        logits_of = model.predict_logits
    else:
        raise TypeError(
            f"evaluate: cannot run a {type(model).__name__}; give a NumPy MLP, a torch module or an object with predict_logits(x)"
        )
    cm = None
    if num_classes is None:
        num_classes = getattr(model, "n_classes", None)
    try:
        for start, stop, scores in chunked_log_probs(
            logits_of, x, batch_size, tta_flip=tta_flip, image_shape=image_shape, mirror=mirror
        ):
            yb = y[start:stop]
            if cm is None:
                num_classes = int(num_classes or scores.shape[1])
                if scores.ndim != 2 or scores.shape[1] != num_classes:
                    raise ValueError(
                        f"evaluate: the model gives scores of shape {scores.shape}, expected (batch, {num_classes})"
                    )
                cm = np.zeros((num_classes, num_classes), dtype=np.int64)
            cm += confusion_matrix(scores, yb, cm.shape[0])
    finally:
        if restore_training is not None:
            model.train(restore_training)
    if cm is None:
        if not num_classes:
            raise ValueError("evaluate: an empty split needs num_classes")
        cm = np.zeros((int(num_classes), int(num_classes)), dtype=np.int64)
    metrics = classification_metrics(cm, beta=beta, zero_division=zero_division)
    return Evaluation(confusion_matrix=cm, accuracy=metrics["accuracy"], metrics=metrics, count=int(cm.sum()))
