"""CrossEntropy and the fused SoftmaxCrossEntropy: values, gradients, label forms and errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from mlplab.gradcheck import check_loss
from mlplab.nn import CrossEntropy, CrossEntropyModule, Softmax, SoftmaxCrossEntropy, softmax

TOL = 1e-7

# (batch, classes), including batch size 1 and one class.
SHAPES = [(1, 1), (1, 4), (5, 1), (2, 2)] + [
    tuple(int(v) for v in np.random.default_rng(seed).integers(2, 9, size=2)) for seed in range(3)
]


def random_problem(shape, seed=None):
    rng = np.random.default_rng(sum(shape) if seed is None else seed)
    logits = rng.standard_normal(shape) * 2
    labels = rng.integers(0, shape[1], size=shape[0])
    return logits, labels


def one_hot(labels, classes):
    out = np.zeros((len(labels), classes))
    out[np.arange(len(labels)), labels] = 1.0
    return out


# -- CrossEntropy on probabilities -------------------------------------------------------
def test_cross_entropy_hand_computed_example():
    probs = np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]])
    labels = np.array([0, 1])
    expected = -(math.log(0.5) + math.log(0.8)) / 2
    assert CrossEntropy().forward(probs, labels) == pytest.approx(expected, rel=1e-14)
    grad = CrossEntropy().backward(probs, labels)
    np.testing.assert_allclose(grad, [[-1 / (2 * 0.5), 0, 0], [0, -1 / (2 * 0.8), 0]], rtol=1e-14)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cross_entropy_equals_mean_negative_log_probability(shape):
    logits, labels = random_problem(shape)
    probs = softmax(logits)
    expected = np.mean([-math.log(probs[s, labels[s]]) for s in range(shape[0])])
    assert CrossEntropy().forward(probs, labels) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cross_entropy_gradient_matches_finite_differences(shape):
    rng = np.random.default_rng(sum(shape))
    probs = rng.uniform(0.05, 1.0, shape)  # away from the clip, where the loss is smooth
    labels = rng.integers(0, shape[1], size=shape[0])
    result = check_loss(CrossEntropy(), probs, labels)
    assert result.passed and result.max_relative_error <= TOL, result


def test_cross_entropy_backward_works_on_a_fresh_instance():
    probs = softmax(np.random.default_rng(0).standard_normal((4, 3)))
    labels = np.array([2, 0, 1, 1])
    used = CrossEntropy()
    used.forward(probs[:1], labels[:1])  # a forward on other data leaves nothing behind
    np.testing.assert_array_equal(CrossEntropy().backward(probs, labels), used.backward(probs, labels))
    assert CrossEntropy().cache == {}


def test_cross_entropy_one_hot_labels_equal_int_labels():
    probs = softmax(np.random.default_rng(1).standard_normal((5, 4)))
    labels = np.array([3, 0, 1, 1, 2])
    module = CrossEntropy()
    assert module.forward(probs, one_hot(labels, 4)) == pytest.approx(module.forward(probs, labels), rel=1e-14)
    np.testing.assert_allclose(module.backward(probs, one_hot(labels, 4)), module.backward(probs, labels), rtol=1e-14)


def test_cross_entropy_of_a_zero_probability_is_finite():
    probs = np.array([[0.0, 1.0], [1.0, 0.0]])
    labels = np.array([0, 0])
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        loss = CrossEntropy().forward(probs, labels)
        grad = CrossEntropy().backward(probs, labels)
    assert np.isfinite(loss) and loss > 10  # −log of the clip, halved: large but finite
    assert np.all(np.isfinite(grad))
    assert grad[0, 0] < -1e6 and grad[1, 0] == pytest.approx(-0.5)


def test_cross_entropy_float_labels_holding_integers_are_accepted():
    probs = np.array([[0.25, 0.75]])
    assert CrossEntropy().forward(probs, np.array([1.0])) == pytest.approx(-math.log(0.75))


def test_cross_entropy_chained_with_softmax_gives_the_fused_gradient():
    logits, labels = random_problem((4, 5), seed=2)
    soft = Softmax()
    probs = soft.forward(logits)
    chained = soft.backward(CrossEntropy().backward(probs, labels))
    np.testing.assert_allclose(chained, SoftmaxCrossEntropy().backward(logits, labels), rtol=1e-10, atol=1e-15)


def test_course_alias():
    assert CrossEntropyModule is CrossEntropy
    assert CrossEntropyModule().forward(np.array([[1.0]]), [0]) == 0.0


# -- SoftmaxCrossEntropy on logits -------------------------------------------------------
def test_fused_loss_hand_computed_example():
    # Logits [0, ln 3]: probabilities 1/4 and 3/4.
    logits = np.array([[0.0, math.log(3)], [0.0, math.log(3)]])
    labels = np.array([0, 1])
    expected = -(math.log(0.25) + math.log(0.75)) / 2
    assert SoftmaxCrossEntropy().forward(logits, labels) == pytest.approx(expected, rel=1e-14)
    # (softmax − one-hot) / S
    np.testing.assert_allclose(
        SoftmaxCrossEntropy().backward(logits, labels),
        [[(0.25 - 1) / 2, 0.75 / 2], [0.25 / 2, (0.75 - 1) / 2]], rtol=1e-13,
    )


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fused_loss_equals_cross_entropy_of_softmax(shape):
    logits, labels = random_problem(shape)
    fused = SoftmaxCrossEntropy().forward(logits, labels)
    assert fused == pytest.approx(CrossEntropy().forward(softmax(logits), labels), rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fused_gradient_matches_finite_differences(shape, smoothing):
    logits, labels = random_problem(shape)
    result = check_loss(SoftmaxCrossEntropy(label_smoothing=smoothing), logits, labels)
    assert result.passed and result.max_relative_error <= TOL, result


@pytest.mark.parametrize("shape", [(3, 4), (1, 2)], ids=str)
def test_fused_gradient_with_one_hot_targets_matches_finite_differences(shape):
    logits, labels = random_problem(shape)
    result = check_loss(SoftmaxCrossEntropy(label_smoothing=0.2), logits, one_hot(labels, shape[1]))
    assert result.passed and result.max_relative_error <= TOL, result


def test_fused_backward_is_softmax_minus_one_hot_over_batch():
    logits, labels = random_problem((6, 4), seed=5)
    expected = (softmax(logits) - one_hot(labels, 4)) / 6
    np.testing.assert_allclose(SoftmaxCrossEntropy().backward(logits, labels), expected, rtol=1e-12, atol=1e-16)


def test_label_smoothing_hand_computed():
    eps, classes = 0.3, 3
    logits = np.array([[1.0, -0.5, 2.0]])
    log_p = [v - math.log(sum(math.exp(u) for u in logits[0])) for v in logits[0]]
    target = [eps / classes + (1 - eps) * (c == 1) for c in range(classes)]
    expected = -sum(t * lp for t, lp in zip(target, log_p))
    module = SoftmaxCrossEntropy(label_smoothing=eps)
    assert module.forward(logits, [1]) == pytest.approx(expected, rel=1e-14)
    np.testing.assert_allclose(
        module.backward(logits, [1])[0], [math.exp(lp) - t for lp, t in zip(log_p, target)], rtol=1e-12,
    )


def test_fused_loss_and_label_smoothing_match_torch():
    torch = pytest.importorskip("torch")
    logits, labels = random_problem((7, 5), seed=9)
    for eps in (0.0, 0.15):
        module = SoftmaxCrossEntropy(label_smoothing=eps)
        for target in (labels, one_hot(labels, 5)):
            t = torch.tensor(logits, requires_grad=True)
            loss = torch.nn.functional.cross_entropy(t, torch.tensor(target), label_smoothing=eps)
            loss.backward()
            assert module.forward(logits, target) == pytest.approx(loss.item(), rel=1e-12)
            np.testing.assert_allclose(module.backward(logits, target), t.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_fused_loss_is_stable_on_huge_logits():
    logits = np.array([[1000.0, 0.0], [1000.0, 0.0], [-1000.0, 1000.0]])
    labels = np.array([0, 1, 0])
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        loss = SoftmaxCrossEntropy().forward(logits, labels)
        grad = SoftmaxCrossEntropy().backward(logits, labels)
    # −log p: ≈0 for the first row, 1000 for the second, 2000 for the third.
    assert loss == pytest.approx(3000 / 3, rel=1e-12)
    np.testing.assert_allclose(grad, [[0, 0], [1 / 3, -1 / 3], [-1 / 3, 1 / 3]], atol=1e-15)


def test_fused_backward_is_stateless_and_forward_backward_agrees():
    logits, labels = random_problem((4, 3), seed=11)
    module = SoftmaxCrossEntropy(label_smoothing=0.1)
    loss, grad = module.forward_backward(logits, labels)
    assert loss == module.forward(logits, labels)
    np.testing.assert_array_equal(grad, SoftmaxCrossEntropy(label_smoothing=0.1).backward(logits, labels))


def test_fused_one_hot_labels_equal_int_labels():
    logits, labels = random_problem((5, 4), seed=12)
    module = SoftmaxCrossEntropy()
    assert module.forward(logits, one_hot(labels, 4)) == pytest.approx(module.forward(logits, labels), rel=1e-14)
    np.testing.assert_allclose(module.backward(logits, one_hot(labels, 4)), module.backward(logits, labels), rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.uint64, np.float32])
def test_fused_loss_takes_any_integer_label_dtype(dtype):
    # the targets are addressed by flat positions row * classes + label: an unsigned or narrow
    # label type must give the same entries (uint64 + int64 would otherwise turn into floats)
    logits, labels = random_problem((6, 5), seed=13)
    module = SoftmaxCrossEntropy()
    expected_loss, expected_grad = module.forward_backward(logits, labels.astype(np.int64))
    for batch_logits in (logits, logits[:4]):  # a batch of another size after the first
        n = len(batch_logits)
        loss, grad = module.forward_backward(batch_logits, labels[:n].astype(dtype))
        reference_loss, reference_grad = SoftmaxCrossEntropy().forward_backward(batch_logits, labels[:n].astype(np.int64))
        assert loss == reference_loss
        np.testing.assert_array_equal(grad, reference_grad)
    assert module.forward_backward(logits, labels.astype(dtype))[0] == expected_loss


def test_one_class_gives_zero_loss_and_gradient():
    logits = np.array([[5.0], [-2.0]])
    assert SoftmaxCrossEntropy().forward(logits, [0, 0]) == 0.0
    np.testing.assert_array_equal(SoftmaxCrossEntropy().backward(logits, [0, 0]), [[0.0], [0.0]])


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.1", True])
def test_invalid_label_smoothing_is_refused(bad):
    with pytest.raises(ValueError, match="label_smoothing"):
        SoftmaxCrossEntropy(label_smoothing=bad)


# -- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize("loss_cls", [CrossEntropy, SoftmaxCrossEntropy])
@pytest.mark.parametrize("method", ["forward", "backward"])
@pytest.mark.parametrize(
    "labels, fragments",
    [
        (np.array([0, 3]), ["[0, 3)", "(2, 3)", "3"]),  # out of range
        (np.array([-1, 0]), ["[0, 3)", "(2, 3)", "-1"]),  # negative
        (np.array([0, 1, 2]), ["3 labels", "batch of 2"]),  # wrong count
        (np.zeros((2, 4)), ["(2, 4)", "(2, 3)"]),  # one-hot of the wrong width
        (np.zeros((2, 3, 1)), ["(2, 3, 1)"]),  # wrong rank
        (np.array([0.5, 1.0]), ["integers"]),  # not integral
    ],
)
def test_bad_labels_name_the_module_and_the_shapes(loss_cls, method, labels, fragments):
    scores = np.full((2, 3), 1 / 3)
    with pytest.raises(ValueError) as info:
        getattr(loss_cls(), method)(scores, labels)
    message = str(info.value)
    assert loss_cls.__name__ in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("loss_cls", [CrossEntropy, SoftmaxCrossEntropy])
@pytest.mark.parametrize("scores, shape_text", [(np.zeros(3), "(3,)"), (np.zeros((1, 2, 3)), "(1, 2, 3)")])
def test_bad_score_shapes_name_the_module_and_the_shape(loss_cls, scores, shape_text):
    with pytest.raises(ValueError) as info:
        loss_cls().forward(scores, np.array([0]))
    assert loss_cls.__name__ in str(info.value) and shape_text in str(info.value)
