"""Metrics: the confusion matrix and everything derived from it, against scikit-learn and by hand;
evaluate() over NumPy models, torch modules and backends, batch by batch."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from mlplab.metrics import (
    classification_metrics,
    confusion_matrix,
    evaluate,
    f_beta_scores,
    most_confused,
    normalize_confusion,
    precision_recall_leaning,
)
from mlplab.models import MLP

sklearn_metrics = pytest.importorskip("sklearn.metrics")

# Rows: true class, columns: predicted class. Worked by hand below.
HAND_CM = np.array([
    [5, 1, 0],
    [2, 3, 1],
    [0, 0, 4],
])


def random_labels(seed: int, num_classes: int, n: int, never_predicted: int | None, never_true: int | None):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, num_classes, n)
    predictions = np.where(rng.random(n) < 0.6, targets, rng.integers(0, num_classes, n))
    if never_true is not None:
        targets[targets == never_true] = (never_true + 1) % num_classes
    if never_predicted is not None:
        predictions[predictions == never_predicted] = (never_predicted + 1) % num_classes
    return predictions, targets


CASES = [  # (seed, classes, samples, class never predicted, class that never occurs)
    (0, 2, 30, None, None),
    (1, 5, 200, 1, None),
    (2, 5, 200, None, 3),
    (3, 7, 120, 2, 5),
    (4, 10, 500, 0, 9),
    (5, 4, 9, 3, 0),
]


# -- the confusion matrix -------------------------------------------------------------------------
@pytest.mark.parametrize("seed, num_classes, n, never_predicted, never_true", CASES)
def test_confusion_matrix_matches_sklearn(seed, num_classes, n, never_predicted, never_true):
    predictions, targets = random_labels(seed, num_classes, n, never_predicted, never_true)
    expected = sklearn_metrics.confusion_matrix(targets, predictions, labels=np.arange(num_classes))
    np.testing.assert_array_equal(confusion_matrix(predictions, targets, num_classes), expected)


def test_confusion_matrix_of_scores_uses_their_argmax():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 4))
    targets = rng.integers(0, 4, 50)
    np.testing.assert_array_equal(confusion_matrix(scores, targets, 4), confusion_matrix(scores.argmax(1), targets, 4))


def test_confusion_matrix_rejects_mismatched_or_out_of_range_labels():
    with pytest.raises(ValueError, match="do not match"):
        confusion_matrix([0, 1], [0, 1, 1], 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        confusion_matrix([0, 2], [0, 1], 2)


# -- precision, recall, F-beta against scikit-learn -----------------------------------------------
@pytest.mark.parametrize("seed, num_classes, n, never_predicted, never_true", CASES)
@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("zero_division", [0.0, 1.0])
def test_classification_metrics_match_sklearn(seed, num_classes, n, never_predicted, never_true, beta, zero_division):
    predictions, targets = random_labels(seed, num_classes, n, never_predicted, never_true)
    labels = np.arange(num_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NaN, no division warning, whatever the classes
        metrics = classification_metrics(confusion_matrix(predictions, targets, num_classes), beta, zero_division)
    precision, recall, f_beta, support = sklearn_metrics.precision_recall_fscore_support(
        targets, predictions, labels=labels, beta=beta, zero_division=zero_division
    )
    np.testing.assert_allclose(metrics["precision"], precision, rtol=1e-12)
    np.testing.assert_allclose(metrics["recall"], recall, rtol=1e-12)
    np.testing.assert_allclose(metrics["f_beta"], f_beta, rtol=1e-12)
    np.testing.assert_array_equal(metrics["support"], support)
    for average in ("macro", "weighted"):
        expected = sklearn_metrics.precision_recall_fscore_support(
            targets, predictions, labels=labels, beta=beta, zero_division=zero_division, average=average
        )
        got = metrics[average]
        np.testing.assert_allclose([got["precision"], got["recall"], got["f_beta"]], expected[:3], rtol=1e-12)
    assert metrics["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(targets, predictions))


def test_a_class_never_predicted_or_absent_gets_zero_division_not_nan():
    cm = np.array([
        [3, 0, 0],
        [2, 0, 0],  # class 1 occurs but is never predicted
        [0, 0, 0],  # class 2 never occurs and is never predicted
    ])
    for zero_division in (0.0, 1.0):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            m = classification_metrics(cm, zero_division=zero_division)
        assert m["precision"][1] == zero_division  # no prediction of class 1
        assert m["recall"][2] == zero_division  # no sample of class 2
        assert m["f_beta"][2] == zero_division  # neither
        assert m["f_beta"][1] == 0.0  # present but never found: a real zero
        assert np.all(np.isfinite(m["precision"])) and np.all(np.isfinite(m["recall"]))


def test_an_empty_matrix_gives_zero_division_everywhere():
    m = classification_metrics(np.zeros((3, 3), dtype=int), zero_division=0.0)
    assert m["accuracy"] == 0.0
    assert m["macro"] == {"precision": 0.0, "recall": 0.0, "f_beta": 0.0}
    assert m["weighted"] == {"precision": 0.0, "recall": 0.0, "f_beta": 0.0}


# -- a hand-worked 3x3 example --------------------------------------------------------------------
def test_hand_worked_three_class_example():
    m = classification_metrics(HAND_CM)
    # Column sums (predictions per class) 7, 4, 5; row sums (support) 6, 6, 4; diagonal 5, 3, 4.
    np.testing.assert_allclose(m["precision"], [5 / 7, 3 / 4, 4 / 5])
    np.testing.assert_allclose(m["recall"], [5 / 6, 3 / 6, 4 / 4])
    # F1 = 2 tp / (support + predicted)
    np.testing.assert_allclose(m["f_beta"], [10 / 13, 6 / 10, 8 / 9])
    np.testing.assert_array_equal(m["support"], [6, 6, 4])
    assert m["accuracy"] == pytest.approx(12 / 16)
    assert m["macro"]["precision"] == pytest.approx((5 / 7 + 3 / 4 + 4 / 5) / 3)
    assert m["macro"]["recall"] == pytest.approx((5 / 6 + 1 / 2 + 1) / 3)
    # The support-weighted recall is the accuracy: sum(support * tp / support) / total.
    assert m["weighted"]["recall"] == pytest.approx(m["accuracy"])
    assert m["weighted"]["f_beta"] == pytest.approx((6 * 10 / 13 + 6 * 6 / 10 + 4 * 8 / 9) / 16)
    # F2 of class 0: 5 tp / (5 tp + 4 fn + fp) = 25 / (25 + 4 * 1 + 2)
    assert classification_metrics(HAND_CM, beta=2.0)["f_beta"][0] == pytest.approx(25 / 31)


def test_f_beta_tends_to_precision_and_to_recall():
    m = classification_metrics(HAND_CM)
    np.testing.assert_allclose(f_beta_scores(HAND_CM, 1e-4), m["precision"], rtol=1e-6)
    np.testing.assert_allclose(f_beta_scores(HAND_CM, 1e4), m["recall"], rtol=1e-6)
    np.testing.assert_allclose(f_beta_scores(HAND_CM, 0.0), m["precision"])
    np.testing.assert_allclose(f_beta_scores(HAND_CM, np.inf), m["recall"])
    # In between it moves monotonically from one to the other.
    betas = [0.01, 0.1, 0.5, 1, 2, 10, 100]
    scores = np.array([f_beta_scores(HAND_CM, b) for b in betas])
    leans_to_recall = m["recall"] > m["precision"]
    steps = np.diff(scores, axis=0)
    assert np.all(steps[:, leans_to_recall] >= 0) and np.all(steps[:, ~leans_to_recall] <= 0)


@pytest.mark.parametrize("beta", [-1.0, float("nan"), "1"])
def test_bad_beta_is_refused(beta):
    with pytest.raises(ValueError, match="beta"):
        classification_metrics(HAND_CM, beta=beta)


# -- normalising ----------------------------------------------------------------------------------
def test_normalize_by_true_pred_and_all_matches_sklearn():
    predictions, targets = random_labels(7, 6, 300, None, None)
    labels = np.arange(6)
    cm = confusion_matrix(predictions, targets, 6)
    for by in ("true", "pred", "all"):
        expected = sklearn_metrics.confusion_matrix(targets, predictions, labels=labels, normalize=by)
        np.testing.assert_allclose(normalize_confusion(cm, by), expected)


def test_normalize_gives_zeros_for_empty_rows_and_columns_without_warnings():
    cm = np.array([[2, 0, 0], [0, 0, 0], [1, 0, 3]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        by_true = normalize_confusion(cm, "true")
        by_pred = normalize_confusion(cm, "pred")
        empty = normalize_confusion(np.zeros((2, 2)), "all")
    np.testing.assert_allclose(by_true, [[1, 0, 0], [0, 0, 0], [0.25, 0, 0.75]])
    np.testing.assert_allclose(by_pred, [[2 / 3, 0, 0], [0, 0, 0], [1 / 3, 0, 1]])
    np.testing.assert_array_equal(empty, np.zeros((2, 2)))
    np.testing.assert_allclose(by_true.diagonal(), classification_metrics(cm)["recall"])
    with pytest.raises(ValueError, match="'true', 'pred' or 'all'"):
        normalize_confusion(cm, "rows")


# -- most confused pairs, leaning -----------------------------------------------------------------
def test_most_confused_lists_largest_off_diagonal_cells_with_share_of_true_class():
    pairs = most_confused(HAND_CM, top=3)
    assert pairs == [
        {"true": 1, "predicted": 0, "count": 2, "share": pytest.approx(2 / 6)},
        {"true": 0, "predicted": 1, "count": 1, "share": pytest.approx(1 / 6)},
        {"true": 1, "predicted": 2, "count": 1, "share": pytest.approx(1 / 6)},
    ]
    assert len(most_confused(HAND_CM, top=10)) == 3  # empty cells are not listed
    assert most_confused(np.diag([3, 4]), top=5) == []


def test_leaning_to_precision_or_recall():
    leaning = precision_recall_leaning(HAND_CM, margin=0.02)
    # precision - recall: 5/7 - 5/6 < 0, 3/4 - 1/2 > 0, 4/5 - 1 < 0
    assert leaning["precision"] == [1]
    assert leaning["recall"] == [0, 2]
    assert leaning["balanced"] == []
    assert precision_recall_leaning(HAND_CM, margin=0.5)["balanced"] == [0, 1, 2]
    f_low, f_high = f_beta_scores(HAND_CM, 0.1), f_beta_scores(HAND_CM, 10)
    assert list(np.flatnonzero(f_low > f_high)) == leaning["precision"]


# -- evaluate: any model, counts summed over batches ----------------------------------------------
@pytest.fixture(scope="module")
def model_and_data():
    rng = np.random.default_rng(0)
    model = MLP(12, [16], 5, dtype=np.float64, seed=3)
    x = rng.normal(size=(203, 12)).astype(np.float32)
    y = rng.integers(0, 5, 203)
    return model, x, y


@pytest.mark.parametrize("batch_size", [1, 7, 100, 1000])
def test_evaluate_sums_counts_over_batches(model_and_data, batch_size):
    model, x, y = model_and_data
    expected = confusion_matrix(model.predict(x), y, 5)
    result = evaluate(model, (x, y), batch_size=batch_size)
    np.testing.assert_array_equal(result.confusion_matrix, expected)
    assert result.count == 203
    assert result.accuracy == pytest.approx(np.mean(model.predict(x) == y))
    assert result.metrics["f_beta"] == pytest.approx(classification_metrics(expected)["f_beta"])


def test_evaluate_takes_a_dataset_object_and_anything_with_predict_logits(model_and_data):
    from mlplab.data import Dataset

    model, x, y = model_and_data

    class Backend:  # what the training loop drives
        def predict_logits(self, xb):
            return model.predict_logits(xb)

    a = evaluate(model, Dataset(x, y), batch_size=50)
    b = evaluate(Backend(), (x, y), batch_size=64)
    np.testing.assert_array_equal(a.confusion_matrix, b.confusion_matrix)
    assert a.at_beta(2.0)["f_beta"] == pytest.approx(classification_metrics(a.confusion_matrix, 2.0)["f_beta"])
    with pytest.raises(TypeError, match="predict_logits"):
        evaluate(object(), (x, y))
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(model, (x, y), batch_size=0)


def test_evaluate_an_empty_split_gives_an_empty_matrix(model_and_data):
    model, x, y = model_and_data
    result = evaluate(model, (x[:0], y[:0]))
    assert result.confusion_matrix.shape == (5, 5) and result.count == 0


def test_evaluate_with_flip_averaging_matches_the_training_loop():
    from mlplab.training.loop import evaluate_split

    rng = np.random.default_rng(1)
    image_shape = (3, 4, 4)
    model = MLP(48, [8], 3, dtype=np.float64, seed=0)
    x = rng.normal(size=(40, 48)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    loop = evaluate_split(model, x, y, batch_size=16, tta_flip=True, image_shape=image_shape)
    ours = evaluate(model, (x, y), batch_size=9, tta_flip=True, image_shape=image_shape)
    np.testing.assert_array_equal(ours.confusion_matrix, confusion_matrix(loop.predictions, y, 3))
    assert ours.accuracy == pytest.approx(loop.accuracy)


@pytest.mark.torch
def test_evaluate_runs_a_torch_module_in_eval_mode_and_restores_its_mode(model_and_data):
    torch = pytest.importorskip("torch")
    model, x, y = model_and_data
    state = model.state_dict()  # layers.0.* and layers.2.*, shaped as torch's Linear
    torch_model = torch.nn.Sequential(
        torch.nn.Linear(12, 16), torch.nn.ELU(), torch.nn.Dropout(0.9), torch.nn.Linear(16, 5)
    ).double()
    with torch.no_grad():
        for ours, theirs in (("layers.0", torch_model[0]), ("layers.2", torch_model[3])):
            theirs.weight.copy_(torch.from_numpy(state[f"{ours}.weight"]))
            theirs.bias.copy_(torch.from_numpy(state[f"{ours}.bias"]))
    torch_model.train()  # dropout 0.9 would scramble the answer unless evaluate switches it off
    result = evaluate(torch_model, (x, y), batch_size=64)
    np.testing.assert_array_equal(result.confusion_matrix, evaluate(model, (x, y)).confusion_matrix)
    assert torch_model.training
    assert all(p.grad is None for p in torch_model.parameters())
