"""Probes of the learner's CrossEntropyModule: the mean loss, its gradient, a zero probability."""

from __future__ import annotations

import numpy as np

from mlplab.check import diagnose, reference
from mlplab.check.arrays import (
    FD_TOL,
    central_differences,
    close,
    rel_error,
    sample_indices,
)
from mlplab.check.context import LearnerError, Probe, tagged

NAME = "CrossEntropyModule"
#: (batch, classes); the first decides the label format, so batch ≠ classes there
SHAPES = [(64, 10), (1, 4), (5, 3)]
FD_ENTRIES = 12


def probabilities(rng: np.random.Generator, batch: int, classes: int) -> np.ndarray:
    return reference.softmax(rng.standard_normal((batch, classes)), np.zeros((batch, classes)))[0]


class Labels:
    """The label format the learner's module takes: integer classes (the default) or one-hot rows."""

    def __init__(self, one_hot: bool = False):
        self.one_hot = one_hot

    def __call__(self, labels: np.ndarray, classes: int) -> np.ndarray:
        return reference.one_hot(labels, classes) if self.one_hot else labels.copy()


def loss_value(probe: Probe, module, probs, labels, what: str) -> float:
    return probe.scalar(f"{NAME}.forward", probe.call(f"{NAME}.forward ({what})", module.forward, probs.copy(), labels))


def label_format(probe: Probe, cls) -> Labels:
    """Integer labels unless the module fails with them and gets the loss right with one-hot rows."""
    rng = probe.rng()
    batch, classes = SHAPES[0]
    probs = probabilities(rng, batch, classes)
    labels = rng.integers(0, classes, batch)
    expected, _ = reference.cross_entropy(probs, labels)
    try:
        if close(
            np.array([loss_value(probe, probe.call(f"{NAME}()", cls), probs, labels, "integer labels")]),
            np.array([expected]),
        ):
            return Labels(False)
    except LearnerError:
        pass
    try:
        value = loss_value(
            probe, probe.call(f"{NAME}()", cls), probs, reference.one_hot(labels, classes), "one-hot labels"
        )
    except LearnerError:
        return Labels(False)
    return Labels(close(np.array([value]), np.array([expected])))


def check(probe: Probe, cls) -> Labels:
    rows = {
        key: probe.row(NAME, label)
        for key, label in (
            ("forward", "loss: mean over the batch of −log p[true class]"),
            ("backward", "backward runs and returns dL/dx"),
            ("grad", "dL/dx against mlplab"),
            ("fd", "dL/dx vs central differences of your loss"),
            ("zero", "a true-class probability of exactly 0"),
        )
    }
    labels_as = label_format(probe, cls)
    for batch, classes in SHAPES:
        tag = f"S={batch}, {classes} classes"
        rng = probe.rng()
        probs = probabilities(rng, batch, classes)
        labels = rng.integers(0, classes, batch)
        given = labels_as(labels, classes)
        loss_ref, grad_ref = reference.cross_entropy(probs, labels)
        try:
            module = probe.call(f"{NAME}()", cls)
            loss = loss_value(probe, module, probs, given, tag)
        except LearnerError as exc:
            rows["forward"].fail(tagged(tag, exc), kind="error")
            continue
        if not close(np.array([loss]), np.array([loss_ref])):
            mistake, evidence = diagnose.cross_entropy_loss(loss, loss_ref, batch)
            rows["forward"].fail(f"{tag}: {evidence}", mistake)
        try:
            grad = probe.array(
                f"{NAME}.backward",
                probe.call(f"{NAME}.backward ({tag})", module.backward, probs.copy(), given),
                probs.shape,
            )
        except LearnerError as exc:
            rows["backward"].fail(tagged(tag, exc), kind="error")
            continue
        if not close(grad, grad_ref):
            mistake, evidence = diagnose.cross_entropy_grad(grad, grad_ref, batch)
            rows["grad"].fail(f"{tag}: {evidence}", mistake)
        work = probs.copy()
        index = sample_indices(work.shape, FD_ENTRIES, rng)

        def loss_at(module=module, work=work, given=given):
            return float(np.asarray(module.forward(work.copy(), given), dtype=np.float64).reshape(-1)[0])

        try:
            numeric = probe.call(
                f"{NAME}.forward (central differences, {tag})", central_differences, loss_at, work, index
            )
        except LearnerError as exc:
            rows["fd"].fail(tagged(tag, exc), kind="error")
        else:
            error = rel_error(np.array([grad[i] for i in index]), numeric)
            if error > FD_TOL:
                rows["fd"].fail(
                    f"{tag}: your dL/dx disagrees with central differences of your loss "
                    f"(relative error {error:.2g}, tolerance {FD_TOL:g})"
                )
    _zero_probability(probe, cls, rows["zero"], labels_as)
    for row in rows.values():
        row.done()
    probe.note(NAME, f"labels given as {'one-hot rows' if labels_as.one_hot else 'integer classes'}")
    return labels_as


def _zero_probability(probe: Probe, cls, row, labels_as: Labels) -> None:
    batch, classes = 6, 4
    rng = probe.rng()
    probs = probabilities(rng, batch, classes)
    labels = rng.integers(0, classes, batch)
    probs[0, labels[0]] = 0.0
    probs[0] /= probs[0].sum()
    given = labels_as(labels, classes)
    what = f"p = 0 for the true class of row 0 (S={batch})"
    try:
        module = probe.call(f"{NAME}()", cls)
        loss = loss_value(probe, module, probs, given, what)
        grad = probe.array(
            f"{NAME}.backward",
            probe.call(f"{NAME}.backward ({what})", module.backward, probs.copy(), given),
            probs.shape,
        )
    except LearnerError as exc:
        row.error(exc)
        return
    problems = []
    if not np.isfinite(loss):
        problems.append(f"your loss is {loss}")
    if not np.all(np.isfinite(grad)):
        bad = grad[~np.isfinite(grad)]
        problems.append(f"your dL/dx has {bad.size} non-finite entr{'y' if bad.size == 1 else 'ies'} ({bad[0]})")
    if problems:
        row.fail(f"{what}: {' and '.join(problems)}", "cross-entropy-log-zero")
