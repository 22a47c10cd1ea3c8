"""The loss Hessian: R-operator products against a dense Hessian built by finite differences of
gradients, Lanczos against numpy.linalg.eigvalsh, Hutchinson's trace, the density, the verdict on
functions with a known minimum and saddle, and `mlplab hessian` on a real run folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlplab import hessian as hs
from mlplab import plots
from mlplab.cli import main
from mlplab.gradcheck import relative_error
from mlplab.models import MLP
from mlplab.nn import SoftmaxCrossEntropy
from mlplab.nn.activations import ACTIVATIONS


# -- helpers -------------------------------------------------------------------------------------
def data(samples=10, features=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((samples, features)), rng.integers(0, classes, size=samples)


def tiny_model(seed=1, hidden=(5, 5), **options):
    """A 4-input, 3-class MLP in eval mode with non-zero biases (a zero bias after a dead ReLU
    layer puts a pre-activation exactly on the kink, where finite differences break down);
    batch norm gets non-trivial running statistics."""
    model = MLP(4, list(hidden), 3, seed=seed, **options).eval()
    rng = np.random.default_rng(seed + 100)
    for _, module in model.named_modules():
        if "bias" in module.params:
            module.params["bias"][:] = rng.uniform(-0.5, 0.5, module.params["bias"].shape)
        if "running_var" in module.buffers:
            module.buffers["running_var"][:] = rng.uniform(0.5, 2.0, module.buffers["running_var"].shape)
            module.buffers["running_mean"][:] = rng.standard_normal(module.buffers["running_mean"].shape)
    return model


def loss_gradient(model, x, y) -> np.ndarray:
    """The mean cross-entropy's gradient through the modules' own backward passes, flat."""
    loss = SoftmaxCrossEntropy()
    model.backward(loss.backward(model.forward(x), y))
    return np.concatenate([grad.reshape(-1).copy() for _, _, grad in model.named_parameters()])


def finite_difference_hessian(model, x, y, h=1e-5) -> np.ndarray:
    """Dense Hessian: column i is (g(θ + h eᵢ) − g(θ − h eᵢ)) / 2h, then symmetrised."""
    columns = []
    for _, param, _ in model.named_parameters():
        flat = param.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + h
            plus = loss_gradient(model, x, y)
            flat[i] = old - h
            minus = loss_gradient(model, x, y)
            flat[i] = old
            columns.append((plus - minus) / (2 * h))
    dense = np.stack(columns, axis=1)
    return 0.5 * (dense + dense.T)


MODELS = {
    "elu": {},
    **{name: {"activation": name} for name in ACTIVATIONS if name != "elu"},  # every registered one
    "batch_norm": {"use_batch_norm": True},
    "residual": {"residual": True},
    "residual+batch_norm": {"residual": True, "use_batch_norm": True, "activation": "tanh"},
    "dropout(eval)": {"dropout": 0.3},
    "softmax regression": {"hidden": ()},
}


def build(name):
    options = dict(MODELS[name])
    hidden = options.pop("hidden", (5, 5))
    return tiny_model(hidden=hidden, **options)


# -- Hessian-vector products ---------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_r_operator_matches_the_finite_difference_hessian(name):
    model = build(name)
    x, y = data()
    operator = hs.ModelHessian(model, x, y, batch_size=4)  # three chunks: the sum over them is exact
    assert operator.method == "r-operator"
    reference = finite_difference_hessian(model, x, y)
    assert relative_error(operator.dense(), reference) < 1e-6
    v = np.random.default_rng(5).standard_normal(operator.dim)
    assert relative_error(operator.hvp(v), reference @ v) < 1e-6
    assert operator.loss == pytest.approx(SoftmaxCrossEntropy().forward(model.forward(x), y), rel=1e-12)
    np.testing.assert_allclose(operator.gradient, loss_gradient(model, x, y), rtol=1e-10, atol=1e-14)


def test_exact_gelu_matches_the_finite_difference_hessian():
    model = MLP(4, [5], 3, seed=2, activation="gelu").eval()
    model.layers[1].approximate = "none"
    x, y = data()
    reference = finite_difference_hessian(model, x, y)
    assert relative_error(hs.ModelHessian(model, x, y).dense(), reference) < 1e-6


def test_modules_without_an_exact_product_fall_back_to_finite_differences():
    model = tiny_model(use_batch_norm=True).train()  # batch statistics: no R-operator rule
    x, y = data()
    with pytest.raises(ValueError, match="BatchNorm1d in train mode"):
        hs.ModelHessian(model, x, y, method="r-operator")
    operator = hs.ModelHessian(model, x, y, batch_size=len(y))
    assert operator.method == "finite-difference"
    assert "BatchNorm1d" in operator.fallback_reason
    before = {key: value.copy() for key, value in model.state_dict().items()}
    reference = finite_difference_hessian(model, x, y)
    v = np.random.default_rng(6).standard_normal(operator.dim)
    model.load_state_dict(before)  # the reference's train-mode forwards moved the running statistics
    assert relative_error(operator.hvp(v), reference @ v) < 1e-6
    after = model.state_dict()
    for key in before:  # the products leave parameters and running statistics as they were
        np.testing.assert_array_equal(after[key], before[key])


def test_float64_model_keeps_weights_config_and_mode():
    model = MLP(4, [5], 3, seed=3, use_batch_norm=True, dtype=np.float32).eval()
    copy = hs.float64_model(model)
    assert copy.dtype == np.float64 and not copy.training and copy.config() == model.config()
    x, _ = data()
    np.testing.assert_allclose(copy.forward(x), model.forward(x.astype(np.float32)), rtol=1e-5, atol=1e-5)


def test_hvp_rejects_a_vector_of_the_wrong_length():
    operator = hs.ModelHessian(tiny_model(), *data())
    with pytest.raises(ValueError, match="parameters"):
        operator.hvp(np.ones(operator.dim + 1))


# -- Lanczos -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["elu", "tanh", "residual+batch_norm"])
def test_lanczos_finds_the_extreme_eigenvalues_of_the_dense_hessian(name):
    model = build(name)
    x, y = data()
    reference = np.linalg.eigvalsh(finite_difference_hessian(model, x, y))
    operator = hs.ModelHessian(model, x, y)
    # a basis of 16 for 73+ parameters forces several thick restarts
    result = hs.lanczos_extremes(operator, operator.dim, top=3, bottom=3, tol=1e-10, basis_size=16, max_products=2000)
    assert result.converged and result.restarts > 0
    scale = np.max(np.abs(reference))
    np.testing.assert_allclose(result.top, reference[::-1][:3], atol=1e-7 * scale)
    np.testing.assert_allclose(result.bottom, reference[:3], atol=1e-7 * scale)


def spectrum_operator(eigenvalues, seed=0):
    """A dense symmetric matrix with the given eigenvalues in a random basis, as a callable."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigenvalues),) * 2))
    matrix = (q * np.asarray(eigenvalues)) @ q.T
    return (lambda v: matrix @ v), matrix


def test_lanczos_on_a_large_spectrum_with_default_settings():
    eigenvalues = np.concatenate([[50.0, 40, 30], np.random.default_rng(1).uniform(-0.5, 5, 294), [-3.0, -2, -1]])
    matvec, _ = spectrum_operator(eigenvalues)
    result = hs.lanczos_extremes(matvec, len(eigenvalues), top=3, bottom=3, tol=1e-8)
    assert result.converged and not result.exhausted
    ordered = np.sort(eigenvalues)
    np.testing.assert_allclose(result.top, ordered[::-1][:3], rtol=1e-8)
    np.testing.assert_allclose(result.bottom, ordered[:3], rtol=1e-8)
    assert np.all(result.top_residuals <= 1e-8 * 50) and np.all(result.bottom_residuals <= 1e-8 * 50)


def test_lanczos_is_exact_once_the_basis_spans_the_space():
    matvec, matrix = spectrum_operator([3.0, 1.0, -2.0, 0.5])
    result = hs.lanczos_extremes(matvec, 4, top=3, bottom=3)
    assert result.exhausted and result.converged and result.products == 4
    np.testing.assert_allclose(result.top, [3.0, 1.0, 0.5])
    np.testing.assert_allclose(result.bottom, [-2.0, 0.5, 1.0])


def test_lanczos_survives_an_invariant_subspace():
    # the start vector meets the identity's only eigenvalue at once: the basis must continue
    result = hs.lanczos_extremes(lambda v: 2.0 * v, 30, top=2, bottom=2, tol=1e-10)
    assert result.converged
    np.testing.assert_allclose(np.concatenate([result.top, result.bottom]), 2.0)


def test_unconverged_ritz_values_stay_inside_the_spectrum():
    eigenvalues = np.linspace(-1.0, 10.0, 400)
    matvec, _ = spectrum_operator(eigenvalues, seed=2)
    result = hs.lanczos_extremes(matvec, 400, top=2, bottom=2, tol=1e-12, max_products=30)
    assert not result.converged and result.products == 30
    assert result.bottom[0] >= -1.0 - 1e-9 and result.top[0] <= 10.0 + 1e-9


def test_lanczos_rejects_an_empty_request():
    with pytest.raises(ValueError):
        hs.lanczos_extremes(lambda v: v, 5, top=0, bottom=0)


# -- trace and density ---------------------------------------------------------------------------
def test_hutchinson_is_exact_for_a_diagonal_matrix():
    diagonal = np.arange(1.0, 21.0)
    estimate = hs.hutchinson_trace(lambda v: diagonal * v, 20, samples=5)
    assert estimate.estimate == pytest.approx(diagonal.sum()) and estimate.standard_error == pytest.approx(0.0)


def test_hutchinson_trace_is_close_to_the_dense_trace():
    model = build("elu")
    x, y = data()
    dense = finite_difference_hessian(model, x, y)
    estimate = hs.hutchinson_trace(lambda v: dense @ v, len(dense), samples=2000, seed=3)
    assert abs(estimate.estimate - np.trace(dense)) < 4 * estimate.standard_error
    assert estimate.standard_error < 0.1 * abs(np.trace(dense))


def test_spectral_density_is_a_quadrature_of_the_spectrum():
    eigenvalues = np.linspace(-1.0, 4.0, 50)
    matvec, matrix = spectrum_operator(eigenvalues, seed=4)
    density = hs.spectral_density(matvec, 50, vectors=3, steps=20, seed=0)
    assert density.nodes.shape == (3, 20)
    np.testing.assert_allclose(density.weights.sum(axis=1), 1.0)
    assert density.nodes.min() >= -1.0 - 1e-9 and density.nodes.max() <= 4.0 + 1e-9
    # the quadrature integrates low-degree polynomials exactly: its mean is vᵀHv ≈ tr(H)/n
    assert np.mean(np.sum(density.weights * density.nodes, axis=1)) == pytest.approx(np.trace(matrix) / 50, abs=0.5)
    grid = np.linspace(-2, 5, 2001)
    assert np.trapezoid(density.curve(grid, 0.1), grid) == pytest.approx(1.0, abs=1e-3)
    fig = plots.plot_density(density)
    assert fig.axes[0].get_yscale() == "log"


# -- the verdict ---------------------------------------------------------------------------------
def test_quadratic_with_known_positive_eigenvalues_is_a_minimum():
    eigenvalues = np.concatenate([[9.0, 7.5, 5.0], np.linspace(0.01, 2.0, 57)])
    hvp, _ = spectrum_operator(eigenvalues, seed=7)  # f(θ) = ½ θᵀAθ: the HVP is A v everywhere
    result = hs.lanczos_extremes(hvp, 60, top=3, bottom=3, tol=1e-10)
    np.testing.assert_allclose(result.top, [9.0, 7.5, 5.0], rtol=1e-9)
    np.testing.assert_allclose(result.bottom, np.sort(eigenvalues)[:3], rtol=1e-8)
    verdict = hs.classify(np.concatenate([result.top, result.bottom]))
    assert verdict["verdict"] == "minimum" and verdict["smallest"] == pytest.approx(0.01)


def double_well_gradient(theta):
    """f(θ) = Σᵢ (θᵢ² − 1)² + ½ Σᵢ θᵢθᵢ₊₁ couplings; its gradient (minima near ±1, a saddle at 0)."""
    grad = 4 * theta * (theta * theta - 1)
    grad[:-1] += 0.5 * theta[1:]
    grad[1:] += 0.5 * theta[:-1]
    return grad


def finite_difference_hvp(gradient, theta, h=1e-5):
    return lambda v: (gradient(theta + h * v) - gradient(theta - h * v)) / (2 * h)


def test_function_with_a_known_saddle_is_a_saddle_and_its_minimum_a_minimum():
    n = 12
    # at θ = 0 the Hessian is −4I plus the coupling: every eigenvalue lies in [−5, −3]; add one
    # positive direction by sitting at +1 in the first coordinate: a saddle with mixed signs
    theta = np.zeros(n)
    theta[0] = 1.0
    hvp = finite_difference_hvp(double_well_gradient, theta)
    dense = np.stack([hvp(e) for e in np.eye(n)], axis=1)
    reference = np.linalg.eigvalsh(0.5 * (dense + dense.T))
    result = hs.lanczos_extremes(hvp, n, top=2, bottom=2, tol=1e-10)
    np.testing.assert_allclose(result.bottom, reference[:2], atol=1e-6)
    verdict = hs.classify(np.concatenate([result.top, result.bottom]))
    assert verdict["verdict"] == "saddle" and verdict["smallest"] < -2 and verdict["largest"] > 7
    assert verdict["negative_count"] >= 2 and "smallest eigenvalue" in verdict["reason"]
    # at the all-ones point every eigenvalue is 8 + coupling > 0: a minimum
    hvp = finite_difference_hvp(double_well_gradient, np.ones(n))
    result = hs.lanczos_extremes(hvp, n, top=2, bottom=2, tol=1e-10)
    assert hs.classify(np.concatenate([result.top, result.bottom]))["verdict"] == "minimum"


def test_verdict_tolerance_ignores_rounding_noise():
    assert hs.classify([10.0, 1.0, -1e-6])["verdict"] == "minimum"
    assert hs.classify([10.0, 1.0, -0.02])["verdict"] == "saddle"
    assert hs.classify([10.0, -0.02], rel_tol=0.01)["verdict"] == "minimum"
    assert hs.classify([-1.0, -3.0])["verdict"] == "maximum"
    assert hs.classify([0.0, 0.0])["verdict"] == "flat"
    verdict = hs.classify([4.0, -0.5])
    assert verdict["threshold"] == pytest.approx(-4e-3) and verdict["max_abs"] == 4.0


# -- mlplab hessian ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import mlplab

    run_dir = tmp_path_factory.mktemp("hessian") / "run"
    mlplab.train(out=str(run_dir), dataset="digits", hidden_dims=[8], epochs=2, lr=0.1, validation_size=300,
                 quiet=True, report=False)
    return run_dir


def test_cli_writes_hessian_json(run, capsys):
    code = main(["hessian", str(run), "--samples", "200", "--top", "3", "--bottom", "3", "--trace-samples", "5",
                 "--density", "--density-vectors", "2", "--density-steps", "10", "-q"])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads((run / "hessian.json").read_text())
    assert {"loss", "gradient_norm", "eigenvalues", "trace", "verdict", "timing", "parameters", "method",
            "samples", "split", "density"} <= set(result)
    assert result["samples"] == 200 and result["split"] == "train" and result["method"] == "r-operator"
    eig = result["eigenvalues"]
    assert len(eig["top"]) == 3 and len(eig["bottom"]) == 3 and eig["top"][0] >= eig["top"][-1]
    assert result["verdict"]["verdict"] in ("minimum", "saddle")
    assert result["verdict"]["smallest"] == min(eig["bottom"]) and result["trace"]["samples"] == 5
    assert (run / "hessian_density.png").stat().st_size > 0
    assert "verdict:" in out and "trace" in out


def test_cli_matches_the_dense_hessian_of_the_same_subset(run, capsys):
    assert main(["hessian", str(run), "--samples", "50", "--split", "validation", "--top", "2", "--bottom", "2",
                 "--trace-samples", "0", "--lanczos-tol", "1e-8", "--json", "-q"]) == 0
    result = json.loads(capsys.readouterr().out)
    from mlplab.commands.hessian import _load

    model, _, _, dataset = _load(run, "validation", None)
    order = np.random.default_rng(np.random.SeedSequence(0).spawn(4)[0]).permutation(len(dataset))[:50]
    dense = hs.ModelHessian(model, dataset.x[order].astype(np.float64), dataset.y[order]).dense()
    reference = np.linalg.eigvalsh(dense)
    scale = np.max(np.abs(reference))
    np.testing.assert_allclose(result["eigenvalues"]["top"], reference[::-1][:2], atol=1e-6 * scale)
    np.testing.assert_allclose(result["eigenvalues"]["bottom"], reference[:2], atol=1e-6 * scale)
    assert result["trace"] is None


@pytest.mark.parametrize("options", [["--samples", "0"], ["--top", "-1"], ["--bottom", "0"], ["--tol", "0"],
                                     ["--trace-samples", "-2"], ["--max-products", "0"], ["--split", "nope"]])
def test_cli_bad_options_exit_2(run, capsys, options):
    code = main(["hessian", str(run), *options])
    assert code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_cli_defaults_are_the_librarys():
    from mlplab.commands import hessian as command

    assert command.VERDICT_TOLERANCE == hs.VERDICT_TOLERANCE
    assert command.LANCZOS_TOLERANCE == hs.LANCZOS_TOLERANCE


def test_cli_missing_run_folder_exits_1(tmp_path, capsys):
    code = main(["hessian", str(tmp_path / "absent")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("mlplab hessian: error:") and err.count("\n") == 1
