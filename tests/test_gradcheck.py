"""The gradient checker itself: its error measure, its finite differences, and that it catches bugs."""

from __future__ import annotations

import numpy as np
import pytest

from mlplab import gradcheck
from mlplab.gradcheck import CheckResult, check_loss, check_model, check_module, numerical_gradient, relative_error
from mlplab.models import MLP
from mlplab.nn import ELU, BatchNorm1d, Dropout, Linear, Sequential, SoftmaxCrossEntropy, Tanh


def scaled_backward(cls, monkeypatch, factor=1.01):
    """Make ``cls.backward`` return ``factor`` times the right input gradient."""
    original = cls.backward

    def broken(self, dout, *args, **kwargs):
        return original(self, dout, *args, **kwargs) * factor

    monkeypatch.setattr(cls, "backward", broken)


# -- the error measure -------------------------------------------------------------------------
def test_relative_error_hand_computed():
    # max|a − n| = 0.1; max|a| + max|n| = 2 + 2.1
    assert relative_error(np.array([1.0, 2.0]), np.array([1.0, 2.1])) == pytest.approx(0.1 / 4.1, rel=1e-12)


def test_relative_error_uses_the_floor_for_tiny_gradients():
    assert relative_error(np.array([1e-10]), np.array([0.0])) == pytest.approx(1e-10 / 1e-8)
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(np.zeros(0), np.zeros(0)) == 0.0


def test_relative_error_refuses_different_shapes():
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        relative_error(np.zeros(2), np.zeros(3))


def test_noise_level_rule_passes_only_gradients_that_are_zero():
    # Both sides rounding noise (a bias in front of batch norm): passes on the absolute error.
    assert CheckResult("m", "q", 0.5, 1e-6, max_abs_error=1e-10, scale=1e-9).passed
    # A real gradient with the same relative error fails.
    assert not CheckResult("m", "q", 0.5, 1e-6, max_abs_error=0.5, scale=1.0).passed
    # Small scale but a discrepancy above the noise level fails too.
    assert not CheckResult("m", "q", 0.5, 1e-6, max_abs_error=1e-8 * 5, scale=1e-8).passed
    assert CheckResult("m", "q", 1e-7, 1e-6).passed


# -- finite differences ---------------------------------------------------------------------------
def test_numerical_gradient_of_a_known_function_and_restores_the_array():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2))
    before = x.copy()
    numeric = numerical_gradient(lambda: float(np.sum(x**3) + x[0, 0] * x[2, 1]), x)
    expected = 3 * before**2
    expected[0, 0] += before[2, 1]
    expected[2, 1] += before[0, 0]
    np.testing.assert_allclose(numeric, expected, rtol=1e-8, atol=1e-9)
    np.testing.assert_array_equal(x, before)


def test_check_module_leaves_the_parameters_unchanged():
    rng = np.random.default_rng(1)
    layer = Linear(3, 2, rng=rng)
    before = {k: v.copy() for k, v in layer.params.items()}
    check_module(layer, rng.standard_normal((4, 3)))
    for key, value in before.items():
        np.testing.assert_array_equal(layer.params[key], value)


def test_check_module_reports_the_input_and_every_parameter():
    rng = np.random.default_rng(2)
    seq = Sequential(Linear(3, 4, rng=rng), BatchNorm1d(4), ELU(), Linear(4, 2, rng=rng))
    results = check_module(seq, rng.standard_normal((5, 3)), name="block")
    assert [(r.module, r.quantity) for r in results] == [
        ("block", "input"), ("block", "0.weight"), ("block", "0.bias"), ("block", "1.weight"), ("block", "1.bias"),
        ("block", "3.weight"), ("block", "3.bias"),
    ]
    assert all(r.passed for r in results), results


def test_dropout_masks_are_replayed_and_the_generator_restored():
    module = Dropout(0.5, rng=3)
    state = module.rng.bit_generator.state
    results = check_module(module, np.random.default_rng(4).standard_normal((4, 5)))
    assert results[0].passed and results[0].max_relative_error < 1e-8
    assert module.rng.bit_generator.state == state


# -- it catches mistakes -----------------------------------------------------------------------------
def test_a_one_percent_error_in_an_input_gradient_fails(monkeypatch):
    scaled_backward(Tanh, monkeypatch)
    result = check_module(Tanh(), np.random.default_rng(5).standard_normal((4, 3)))[0]
    assert not result.passed
    assert result.max_relative_error == pytest.approx(0.01 / 2.01, rel=0.05)


def test_a_wrong_parameter_gradient_fails_alone(monkeypatch):
    original = Linear.backward

    def broken(self, dout, need_input_grad=True):
        out = original(self, dout, need_input_grad)
        self.grads["bias"] *= 1.01
        return out

    monkeypatch.setattr(Linear, "backward", broken)
    rng = np.random.default_rng(6)
    results = {r.quantity: r for r in check_module(Linear(3, 2, rng=rng), rng.standard_normal((4, 3)))}
    assert results["input"].passed and results["weight"].passed
    assert not results["bias"].passed


def test_batch_norm_backward_without_the_batch_terms_fails(monkeypatch):
    # The classic mistake: treating the batch mean and variance as constants in train mode.
    original = BatchNorm1d.backward

    def treat_statistics_as_constants(self, dout):
        self.cache["training"] = False
        return original(self, dout)

    monkeypatch.setattr(BatchNorm1d, "backward", treat_statistics_as_constants)
    rng = np.random.default_rng(7)
    results = check_module(BatchNorm1d(3), rng.standard_normal((6, 3)))
    assert not results[0].passed
    assert results[1].passed and results[2].passed  # γ and β gradients do not involve that term


def test_check_loss_catches_a_missing_batch_average():
    class Unaveraged(SoftmaxCrossEntropy):
        def backward(self, logits, labels):
            return super().backward(logits, labels) * logits.shape[0]

    rng = np.random.default_rng(8)
    logits, labels = rng.standard_normal((4, 3)), rng.integers(0, 3, 4)
    assert check_loss(SoftmaxCrossEntropy(), logits, labels).passed
    assert not check_loss(Unaveraged(), logits, labels).passed


def test_check_model_catches_a_broken_activation(monkeypatch):
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((5, 4)), rng.integers(0, 3, 5)
    assert all(r.passed for r in check_model(MLP(4, [3], 3, seed=0), x, y))
    scaled_backward(ELU, monkeypatch)
    results = {r.quantity: r for r in check_model(MLP(4, [3], 3, seed=0), x, y)}
    assert not results["input"].passed and not results["layers.0.weight"].passed
    assert results["layers.2.weight"].passed  # the layer after the activation is unaffected


def test_check_model_handles_dropout_in_train_mode():
    rng = np.random.default_rng(10)
    model = MLP(4, [6, 6], 3, dropout=0.4, seed=1)
    results = check_model(model, rng.standard_normal((5, 4)), rng.integers(0, 3, 5), tol=1e-7)
    assert all(r.passed for r in results), results


# -- the full suite --------------------------------------------------------------------------------
def test_run_all_covers_every_module_and_option_and_passes():
    results = gradcheck.run_all(seed=0)
    modules = {r.module for r in results}
    for name in ("Linear", "ELU", "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "GELU", "GELU(none)", "Softmax",
                 "BatchNorm1d(train)", "BatchNorm1d(eval)", "Dropout(train)", "Residual", "CrossEntropy",
                 "SoftmaxCrossEntropy", "SoftmaxCrossEntropy(smoothing)", "SoftmaxCrossEntropy(soft)"):
        assert name in modules, name
    for variant in ("MLP[batch_norm]", "MLP[residual]", "MLP[dropout, eval]", "MLP[relu]", "MLP[gelu]",
                    "MLP[sigmoid]", "MLP[tanh]", "MLP[leaky_relu]", "MLP[softmax regression]"):
        assert variant in modules, variant
    failed = [(r.module, r.quantity, r.max_relative_error) for r in results if not r.passed]
    assert not failed
    # Only gradients that are zero in exact arithmetic may pass on the noise rule.
    noise_passes = [r for r in results if r.max_relative_error > r.tolerance]
    assert all(r.scale < 1e-8 and r.quantity.endswith("bias") for r in noise_passes), noise_passes


# -- docs/backprop.md points at code and tests that exist ----------------------------------------
def test_backprop_doc_pointers_exist():
    import ast
    import importlib
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    doc = root / "docs" / "backprop.md"
    if not doc.exists():
        pytest.skip("docs/backprop.md is not part of this checkout")
    text = doc.read_text(encoding="utf-8")
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    assert len(sections) >= 8
    for section in sections:
        title = section.splitlines()[0]
        code_lines = re.findall(r"^Code: (.+)$", section, flags=re.M)
        test_lines = re.findall(r"^Test: (.+)$", section, flags=re.M)
        assert code_lines and test_lines, f"section {title!r} lacks a Code: or Test: pointer"
        for dotted in re.findall(r"`(mlplab\.[\w.]+)`", code_lines[0]):
            parts = dotted.split(".")
            # the longest importable module prefix, then attributes
            for cut in range(len(parts), 0, -1):
                try:
                    obj = importlib.import_module(".".join(parts[:cut]))
                    break
                except ModuleNotFoundError:
                    continue
            for attr in parts[cut:]:
                assert hasattr(obj, attr), f"{title}: {dotted} does not exist"
                obj = getattr(obj, attr)
        for pointer in re.findall(r"`(tests/[\w./]+::\w+)`", test_lines[0]):
            path, name = pointer.split("::")
            tree = ast.parse((root / path).read_text(encoding="utf-8"))
            names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
            assert name in names, f"{title}: {pointer} does not exist"
