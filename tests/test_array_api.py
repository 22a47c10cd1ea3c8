"""The hand-derived modules, the MLP and the optimisers on other array libraries (docs/array-api.md).

Each case builds the NumPy module, moves a deep copy to another library with ``Module.to`` and
runs both on the same float64 inputs: outputs, input gradients, parameter gradients, buffers and
optimiser state must agree to 1e-10 relative. array-api-strict is the guard: it raises on any
call outside the standard, so a NumPy-only call in the shared path fails here. PyTorch CPU tensors
go through array-api-compat. CuPy and torch on CUDA skip without a GPU.
"""

from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest

from mlplab.models import MLP
from mlplab.nn import (
    GELU,
    BatchNorm1d,
    CrossEntropy,
    Dropout,
    Linear,
    ReLU,
    Residual,
    Sequential,
    Softmax,
    SoftmaxCrossEntropy,
    Tanh,
)
from mlplab.nn.activations import ACTIVATIONS
from mlplab.optim import SGD, Adam, AdamW
from mlplab.xp import asarray, library, to_numpy

pytest.importorskip("array_api_compat")

RTOL, ATOL = 1e-10, 1e-13


def _gpu_count(name: str) -> int:
    try:
        if name == "cupy":
            import cupy

            return int(cupy.cuda.runtime.getDeviceCount())
        import torch

        return torch.cuda.device_count()
    except (ImportError, RuntimeError):  # no driver, no runtime: no GPU
        return 0


#: (id, --array-library name, device)
LIBRARIES = [
    ("array-api-strict", "array-api-strict", None),
    ("torch-cpu", "torch", "cpu"),
    ("cupy", "cupy", None),
    ("torch-cuda", "torch", "cuda"),
]


@pytest.fixture(params=LIBRARIES, ids=[case[0] for case in LIBRARIES])
def lib(request):
    """(namespace, device) of one library; skips when it is not installed or needs a missing GPU."""
    case, name, device = request.param
    module = {"array-api-strict": "array_api_strict", "torch": "torch", "cupy": "cupy"}[name]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{name} is not installed")
    if (name == "cupy" or device == "cuda") and _gpu_count(name) == 0:
        pytest.skip(f"{case} needs a GPU")
    return library(name), device


def close(actual, expected, what: str = "") -> None:
    assert not isinstance(actual, np.ndarray), f"{what}: came back as a NumPy array"
    np.testing.assert_allclose(to_numpy(actual), expected, rtol=RTOL, atol=ATOL, err_msg=what)


def moved(module, lib):
    xp, device = lib
    return copy.deepcopy(module).to(xp, device=device)


def on(lib, array):
    xp, device = lib
    return asarray(array, xp, device=device)


def same_state(module, reference) -> None:
    """Parameters, buffers and gradients of ``module`` (another library) equal ``reference``'s."""
    state, expected = module.state_dict(), reference.state_dict()
    assert state.keys() == expected.keys()
    for key in expected:
        assert isinstance(state[key], np.ndarray), f"state_dict()[{key!r}] is not NumPy"
        np.testing.assert_allclose(state[key], expected[key], rtol=RTOL, atol=ATOL, err_msg=key)
    for (name, _, grad), (_, _, grad_ref) in zip(module.named_parameters(), reference.named_parameters()):
        close(grad, grad_ref, f"grad of {name}")


def warmed_batch_norm():
    bn = BatchNorm1d(5)
    bn.forward(np.random.default_rng(3).standard_normal((9, 5)) * 2 + 1)  # running statistics away from 0, 1
    bn.params["weight"][:] = np.linspace(0.5, 1.5, 5)
    return bn.eval()


MODULES = {
    "linear": lambda: Linear(5, 4, rng=0),
    **ACTIVATIONS,
    "gelu-exact": lambda: GELU(approximate="none"),
    "softmax": Softmax,
    "batch-norm-train": lambda: BatchNorm1d(5),
    "batch-norm-eval": warmed_batch_norm,
    "dropout": lambda: Dropout(0.3, rng=7),
    "dropout-all": lambda: Dropout(1.0, rng=7),
    "residual": lambda: Residual(Sequential(Linear(5, 5, rng=1), Tanh())),
    "sequential": lambda: Sequential(Linear(5, 6, input_layer=True, rng=2), BatchNorm1d(6), ReLU(), Dropout(0.2, rng=3),
                                     Linear(6, 4, rng=4)),
}


@pytest.mark.parametrize("name", list(MODULES))
def test_every_module_gives_numpys_forward_and_backward(lib, name):
    reference = MODULES[name]()
    module = moved(reference, lib)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((8, 5)) * 3
    y = reference.forward(x)
    dout = rng.standard_normal(y.shape)
    dx = reference.backward(dout)
    y_lib = module.forward(on(lib, x))
    close(y_lib, y, "forward")
    close(module.backward(on(lib, dout)), dx, "backward")
    same_state(module, reference)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("targets", ["indices", "distributions"])
def test_softmax_cross_entropy_loss_and_gradient(lib, smoothing, targets):
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((7, 4)) * 4
    labels = rng.integers(0, 4, 7)
    if targets == "distributions":
        labels = rng.dirichlet(np.ones(4), 7)
    loss = SoftmaxCrossEntropy(label_smoothing=smoothing)
    expected_loss, expected_grad = loss.forward_backward(logits, labels)
    for given in (labels, on(lib, labels)):  # labels on the host or beside the logits
        value, grad = loss.forward_backward(on(lib, logits), given)
        assert value == pytest.approx(expected_loss, rel=RTOL)
        assert loss.forward(on(lib, logits), given) == pytest.approx(expected_loss, rel=RTOL)
        close(grad, expected_grad, "dL/dlogits")
        close(loss.backward(on(lib, logits), given), expected_grad, "backward")


@pytest.mark.parametrize("targets", ["indices", "distributions"])
def test_cross_entropy_on_probabilities(lib, targets):
    rng = np.random.default_rng(6)
    probs = Softmax().forward(rng.standard_normal((6, 3)))
    labels = rng.integers(0, 3, 6) if targets == "indices" else np.eye(3)[rng.integers(0, 3, 6)]
    loss = CrossEntropy()
    assert loss.forward(on(lib, probs), on(lib, labels)) == pytest.approx(loss.forward(probs, labels), rel=RTOL)
    close(loss.backward(on(lib, probs), on(lib, labels)), loss.backward(probs, labels), "dL/dprobs")


def test_bad_labels_are_refused_on_every_library(lib):
    logits = on(lib, np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\).*from 0 to 4"):
        SoftmaxCrossEntropy().forward(logits, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="class labels must be integers"):
        SoftmaxCrossEntropy().forward(logits, on(lib, np.array([0.0, 1.5, 1.0])))


MLPS = {
    "plain-elu": {},
    "batch-norm-relu": {"use_batch_norm": True, "activation": "relu"},
    "dropout-gelu": {"dropout": 0.25, "activation": "gelu"},
    "residual-batch-norm-dropout-tanh": {"residual": True, "use_batch_norm": True, "dropout": 0.1, "activation": "tanh"},
    "softmax-regression": {"n_hidden": []},
}


@pytest.mark.parametrize("config", list(MLPS))
def test_the_mlp_forward_loss_backward_and_predictions(lib, config):
    options = dict(MLPS[config])
    reference = MLP(6, options.pop("n_hidden", [8, 8]), 3, seed=4, **options)
    model = moved(reference, lib)
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((10, 6)), rng.integers(0, 3, 10)
    loss = SoftmaxCrossEntropy()
    logits = reference.forward(x)
    value, dlogits = loss.forward_backward(logits, y)
    dx = reference.backward(dlogits)
    logits_lib = model.forward(on(lib, x))
    close(logits_lib, logits, "logits")
    value_lib, dlogits_lib = loss.forward_backward(logits_lib, on(lib, y))
    assert value_lib == pytest.approx(value, rel=RTOL)
    close(model.backward(dlogits_lib), dx, "dL/dx")
    same_state(model, reference)
    close(model.predict_logits(on(lib, x), batch_size=4), reference.predict_logits(x, batch_size=4), "eval logits")
    assert np.array_equal(to_numpy(model.predict(on(lib, x))), reference.predict(x))


OPTIMIZERS = {
    "sgd": (SGD, {"lr": 0.1}),
    "sgd-momentum": (SGD, {"lr": 0.1, "momentum": 0.9, "dampening": 0.1}),
    "sgd-nesterov": (SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    "sgd-weight-decay": (SGD, {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.01}),
    "adam": (Adam, {"lr": 0.01, "weight_decay": 0.001}),
    "adamw": (AdamW, {"lr": 0.01, "weight_decay": 0.1}),
}


def train(model, optimizer, x, y, steps: int) -> list[float]:
    loss, losses = SoftmaxCrossEntropy(label_smoothing=0.05), []
    for step in range(steps):
        optimizer.lr = 0.1 / (1 + step) if isinstance(optimizer, SGD) else optimizer.lr  # a schedule: plain floats
        value, dlogits = loss.forward_backward(model.forward(x), y)
        model.backward(dlogits, need_input_grad=False)
        optimizer.step()
        losses.append(value)
    return losses


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_optimiser_takes_the_same_steps(lib, name):
    cls, settings = OPTIMIZERS[name]
    # No batch norm here: the bias of a Linear before it has a zero gradient up to rounding,
    # which Adam's m/√v scales up to full steps, so libraries would differ by their rounding.
    reference = MLP(6, [8], 3, dropout=0.1, seed=9)
    model = moved(reference, lib)
    rng = np.random.default_rng(10)
    x, y = rng.standard_normal((12, 6)), rng.integers(0, 3, 12)
    optimizer_ref, optimizer = cls(reference.parameters(), **settings), cls(model.parameters(), **settings)
    losses_ref = train(reference, optimizer_ref, x, y, 4)
    losses = train(model, optimizer, on(lib, x), on(lib, y), 4)
    np.testing.assert_allclose(losses, losses_ref, rtol=RTOL)
    same_state(model, reference)
    state, state_ref = optimizer.state_dict(), optimizer_ref.state_dict()
    assert state["step"] == state_ref["step"] == 4 and state["state"].keys() == state_ref["state"].keys()
    for key, value in state_ref["state"].items():
        assert isinstance(state["state"][key], np.ndarray)
        np.testing.assert_allclose(state["state"][key], value, rtol=RTOL, atol=ATOL, err_msg=key)
    # resumed from NumPy state on the other library, both keep walking together
    resumed_model = moved(reference, lib)
    resumed = cls(resumed_model.parameters(), **settings)
    resumed.load_state_dict(state_ref)
    train(reference, optimizer_ref, x, y, 2)
    train(resumed_model, resumed, on(lib, x), on(lib, y), 2)
    same_state(resumed_model, reference)


def test_state_moves_back_and_forth_and_loads_in_place(lib):
    reference = MLP(4, [5], 2, use_batch_norm=True, seed=1)
    model = moved(reference, lib)
    optimizer = SGD(model.parameters(), lr=0.1)
    weight = model.layers[0].params["weight"]
    other = MLP(4, [5], 2, use_batch_norm=True, seed=2)
    model.load_state_dict(other.state_dict())  # NumPy arrays into the other library's, in place
    assert model.layers[0].params["weight"] is weight and optimizer.pairs[0][0] is weight
    np.testing.assert_array_equal(to_numpy(weight), other.layers[0].params["weight"])
    model.zero_grad()
    assert not np.any(to_numpy(model.layers[0].grads["weight"]))
    back = model.to(np)
    assert all(isinstance(value, np.ndarray) for _, value, _ in back.named_parameters())
    for key, value in other.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[key], value)


def test_moving_to_numpy_keeps_a_numpy_model_exactly():
    reference = MLP(4, [5], 2, dropout=0.2, seed=1)
    model = copy.deepcopy(reference).to("numpy")
    x = np.random.default_rng(0).standard_normal((6, 4))
    np.testing.assert_array_equal(model.forward(x), reference.forward(x))
    for key, value in reference.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[key], value)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_float32_runs_the_same_formulas(lib, activation):
    """float32 takes its own branches (ELU's clipped exp, GELU's constants): the same numbers up
    to float32 rounding, and the arrays stay float32 in the other library."""
    reference = MLP(6, [8, 8], 3, activation=activation, use_batch_norm=True, dropout=0.2, dtype=np.float32, seed=2)
    model = moved(reference, lib)
    rng = np.random.default_rng(12)
    x, y = rng.standard_normal((10, 6)).astype(np.float32), rng.integers(0, 3, 10)
    optimizer_ref, optimizer = SGD(reference.parameters(), lr=0.1, momentum=0.9), SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses_ref = train(reference, optimizer_ref, x, y, 3)
    losses = train(model, optimizer, on(lib, x), on(lib, y), 3)
    np.testing.assert_allclose(losses, losses_ref, rtol=1e-5)
    logits = model.forward(on(lib, x))
    assert logits.dtype == lib[0].float32
    np.testing.assert_allclose(to_numpy(logits), reference.forward(x), rtol=1e-4, atol=1e-5)
