"""The NumPy MLP: structure, gradients, state dicts (and their PyTorch names), prediction, fitting."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from mlplab.gradcheck import check_model
from mlplab.models import MLP
from mlplab.nn import (
    ELU, GELU, BatchNorm1d, Dropout, LeakyReLU, Linear, ReLU, Residual, Sequential, Sigmoid, SoftmaxCrossEntropy,
    Tanh, softmax,
)
from mlplab.optim import SGD, Adam

TOL = 1e-7

ACTIVATION_TYPES = {"elu": ELU, "relu": ReLU, "leaky_relu": LeakyReLU, "tanh": Tanh, "sigmoid": Sigmoid, "gelu": GELU}


def layer_types(model: MLP) -> list[type]:
    return [type(m) for m in model.layers]


def fit_steps(model, x, y, optimizer, steps):
    loss_fn = SoftmaxCrossEntropy()
    for _ in range(steps):
        _, dlogits = loss_fn.forward_backward(model.forward(x), y)
        model.backward(dlogits, need_input_grad=False)
        optimizer.step()


# -- structure -----------------------------------------------------------------------------
@pytest.mark.parametrize("activation", list(ACTIVATION_TYPES))
def test_layers_per_hidden_width(activation):
    model = MLP(6, [5, 4], 3, activation=activation)
    act = ACTIVATION_TYPES[activation]
    assert layer_types(model) == [Linear, act, Linear, act, Linear]
    first, second, last = model.layers[0], model.layers[2], model.layers[4]
    assert (first.in_features, first.out_features) == (6, 5)
    assert (second.in_features, second.out_features) == (5, 4)
    assert (last.in_features, last.out_features) == (4, 3)
    assert first.input_layer and not second.input_layer and not last.input_layer


def test_batch_norm_and_dropout_sit_between_linear_and_the_next_block():
    model = MLP(6, [5, 4], 3, use_batch_norm=True, dropout=0.2)
    assert layer_types(model) == [Linear, BatchNorm1d, ELU, Dropout, Linear, BatchNorm1d, ELU, Dropout, Linear]
    assert model.layers[3].p == 0.2


def test_empty_hidden_list_gives_softmax_regression():
    model = MLP(7, [], 4)
    assert layer_types(model) == [Linear]
    assert model.layers[0].input_layer
    assert model.layers[0].params["weight"].shape == (4, 7)


def test_residual_wraps_only_blocks_that_keep_the_width():
    model = MLP(6, [6, 6, 4], 3, residual=True, use_batch_norm=True)
    assert layer_types(model) == [Residual, Residual, Linear, BatchNorm1d, ELU, Linear]
    assert [type(m) for m in model.layers[0].block] == [Linear, BatchNorm1d, ELU]
    assert model.layers[0].block[0].input_layer


def test_input_layer_init_uses_the_smaller_std():
    model = MLP(2000, [400, 400], 10, seed=0)
    std_first = model.layers[0].params["weight"].std()
    std_second = model.layers[2].params["weight"].std()
    assert abs(std_first / np.sqrt(1 / 2000) - 1) < 0.05
    assert abs(std_second / np.sqrt(2 / 400) - 1) < 0.05


def test_numpy_integer_sizes():
    model = MLP(np.int64(5), np.array([4, 3]), np.int32(2))
    assert (model.n_inputs, model.n_hidden, model.n_classes) == (5, [4, 3], 2)
    assert model.forward(np.zeros((2, 5))).shape == (2, 2)
    assert MLP(5, np.int16(4), 2).n_hidden == [4]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"activation": "swish"}, "swish"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"n_hidden": "64"}, "n_hidden"),
        ({"n_hidden": [4, 0]}, "hidden width"),
        ({"n_inputs": 0}, "n_inputs"),
        ({"n_classes": 2.5}, "n_classes"),
    ],
)
def test_invalid_options_are_refused(kwargs, fragment):
    args = {"n_inputs": 5, "n_hidden": [4], "n_classes": 3}
    args.update(kwargs)
    n_inputs, n_hidden, n_classes = args.pop("n_inputs"), args.pop("n_hidden"), args.pop("n_classes")
    with pytest.raises(ValueError) as info:
        MLP(n_inputs, n_hidden, n_classes, **args)
    assert "MLP" in str(info.value) and fragment in str(info.value)


def test_wrong_input_width_names_the_layer_and_the_shape():
    with pytest.raises(ValueError) as info:
        MLP(5, [4], 3).forward(np.zeros((2, 6)))
    assert "Linear" in str(info.value) and "(2, 6)" in str(info.value)


def test_same_seed_same_model_and_different_seed_different_model():
    a, b, c = MLP(5, [4], 3, seed=1), MLP(5, [4], 3, seed=1), MLP(5, [4], 3, seed=2)
    for key, value in a.state_dict().items():
        np.testing.assert_array_equal(value, b.state_dict()[key])
    assert not np.array_equal(a.state_dict()["layers.0.weight"], c.state_dict()["layers.0.weight"])


def test_float32_model_has_float32_params_and_logits():
    model = MLP(5, [4], 3, use_batch_norm=True, dtype=np.float32, seed=0)
    assert all(p.dtype == np.float32 and g.dtype == np.float32 for p, g in model.parameters())
    x = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    logits = model.forward(x)
    assert logits.dtype == np.float32
    model.backward(np.ones_like(logits))
    assert model.predict_proba(x).dtype == np.float32


# -- gradients -----------------------------------------------------------------------------
VARIANTS = {
    **{f"activation={a}": ({"activation": a}, (6, 5), [4, 4], 3) for a in ACTIVATION_TYPES},
    "batch_norm": ({"use_batch_norm": True}, (6, 5), [4, 4], 3),
    "residual": ({"residual": True}, (6, 5), [5, 5], 3),
    "residual+batch_norm": ({"residual": True, "use_batch_norm": True}, (6, 4), [4, 3], 3),
    "dropout(eval)": ({"dropout": 0.3, "eval": True}, (6, 5), [4], 3),
    "dropout(train)": ({"dropout": 0.3}, (6, 5), [4], 3),
    "softmax_regression": ({}, (6, 5), [], 3),
    "batch_of_one": ({"use_batch_norm": True, "eval": True}, (1, 5), [4], 3),
    "one_feature": ({}, (5, 1), [3], 2),
    "one_class": ({}, (4, 3), [3], 1),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_model_gradients_match_finite_differences(variant):
    options, x_shape, hidden, classes = VARIANTS[variant]
    options = dict(options)
    to_eval = options.pop("eval", False)
    rng = np.random.default_rng(len(variant))
    model = MLP(x_shape[1], hidden, classes, seed=3, **options)
    if to_eval:
        model.eval()
        for _, module in model.named_modules():
            if isinstance(module, BatchNorm1d):  # make eval mode differ from the identity
                module.buffers["running_mean"][...] = rng.standard_normal(module.num_features)
                module.buffers["running_var"][...] = rng.uniform(0.5, 2.0, module.num_features)
    labels = rng.integers(0, classes, size=x_shape[0])
    results = check_model(model, rng.standard_normal(x_shape), labels, tol=TOL)
    assert len(results) == 1 + sum(1 for _ in model.parameters())
    bad = [(r.quantity, r.max_relative_error) for r in results if not r.passed]
    assert not bad, bad


def test_backward_overwrites_grads_in_place():
    rng = np.random.default_rng(0)
    model = MLP(5, [4, 4], 3, use_batch_norm=True, residual=True, seed=0)
    arrays = [g for _, g in model.parameters()]
    model.forward(rng.standard_normal((6, 5)))
    dlogits = rng.standard_normal((6, 3))
    model.backward(dlogits)
    first = [g.copy() for g in arrays]
    model.backward(dlogits)
    for (_, g), array, expected in zip(model.parameters(), arrays, first):
        assert g is array
        np.testing.assert_array_equal(g, expected)


def test_backward_returns_the_input_gradient_unless_told_not_to():
    rng = np.random.default_rng(1)
    model = MLP(5, [4], 3, seed=0)
    model.forward(rng.standard_normal((2, 5)))
    assert model.backward(np.ones((2, 3))).shape == (2, 5)
    assert model.backward(np.ones((2, 3)), need_input_grad=False) is None


def test_parameters_are_the_live_arrays():
    model = MLP(5, [4], 3, use_batch_norm=True)
    named = list(model.named_parameters())
    assert [n for n, _, _ in named] == [
        "layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias", "layers.3.weight", "layers.3.bias",
    ]
    assert named[0][1] is model.layers[0].params["weight"]
    assert named[0][2] is model.layers[0].grads["weight"]
    pairs = list(model.parameters())
    assert all(p is q and g is h for (p, g), (_, q, h) in zip(pairs, named))
    assert model.num_parameters() == 5 * 4 + 4 + 4 + 4 + 4 * 3 + 3


# -- state dict ----------------------------------------------------------------------------
def test_state_dict_keys_follow_the_pytorch_naming():
    model = MLP(5, [4], 3, use_batch_norm=True)
    state = model.state_dict()
    assert list(state) == [
        "layers.0.weight", "layers.0.bias",
        "layers.1.weight", "layers.1.bias", "layers.1.running_mean", "layers.1.running_var",
        "layers.1.num_batches_tracked",
        "layers.3.weight", "layers.3.bias",
    ]
    assert state["layers.0.weight"].shape == (4, 5) and state["layers.3.bias"].shape == (3,)
    assert state["layers.1.num_batches_tracked"].shape == ()
    assert all(isinstance(v, np.ndarray) for v in state.values())


def test_residual_state_dict_keys():
    assert "layers.0.block.0.weight" in MLP(4, [4], 2, residual=True).state_dict()


def test_state_dict_holds_copies():
    model = MLP(5, [4], 3)
    state = model.state_dict()
    state["layers.0.weight"][...] = 0
    assert np.any(model.layers[0].params["weight"] != 0)


def test_load_state_dict_copies_in_place_and_reproduces_the_outputs():
    rng = np.random.default_rng(2)
    source = MLP(5, [4], 3, use_batch_norm=True, seed=1)
    source.forward(rng.standard_normal((8, 5)))  # moves the running statistics
    target = MLP(5, [4], 3, use_batch_norm=True, seed=2)
    arrays = {name: param for name, param, _ in target.named_parameters()}
    running = target.layers[1].buffers["running_var"]
    target.load_state_dict(source.state_dict())
    for name, param, _ in target.named_parameters():
        assert param is arrays[name]
    assert target.layers[1].buffers["running_var"] is running
    assert int(target.layers[1].buffers["num_batches_tracked"]) == 1
    x = rng.standard_normal((3, 5))
    np.testing.assert_array_equal(target.predict_logits(x), source.predict_logits(x))


def test_load_state_dict_refuses_missing_extra_and_misshapen_entries():
    model = MLP(5, [4], 3)
    state = model.state_dict()
    missing = {k: v for k, v in state.items() if k != "layers.2.bias"}
    with pytest.raises(KeyError, match="layers.2.bias"):
        model.load_state_dict(missing)
    with pytest.raises(KeyError, match="layers.9.weight"):
        model.load_state_dict({**state, "layers.9.weight": np.zeros(1)})
    wrong = {**state, "layers.0.weight": np.zeros((4, 6))}
    with pytest.raises(ValueError) as info:
        model.load_state_dict(wrong)
    assert "layers.0.weight" in str(info.value) and "(4, 6)" in str(info.value) and "(4, 5)" in str(info.value)


def test_non_strict_load_fills_only_the_given_entries():
    model = MLP(5, [4], 3, seed=0)
    before = model.state_dict()
    model.load_state_dict({"layers.2.bias": np.array([1.0, 2.0, 3.0])}, strict=False)
    np.testing.assert_array_equal(model.layers[2].params["bias"], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(model.layers[0].params["weight"], before["layers.0.weight"])


def test_clear_cache_makes_copies_small():
    model = MLP(100, [50], 10, dropout=0.5, seed=0)
    model.forward(np.zeros((2000, 100)))
    assert len(pickle.dumps(model)) > 1_000_000
    model.clear_cache()
    assert len(pickle.dumps(model)) < 100_000
    clone = copy.deepcopy(model)
    x = np.random.default_rng(0).standard_normal((3, 100))
    np.testing.assert_array_equal(clone.predict(x), model.predict(x))


# -- the PyTorch twin's layout ---------------------------------------------------------------
def torch_mirror(model: MLP):
    """A torch module built the way the twin lays out an MLP, for names, shapes and values."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class TorchResidual(nn.Module):
        def __init__(self, block):
            super().__init__()
            self.block = block

        def forward(self, x):
            return x + self.block(x)

    def convert(module):
        if isinstance(module, Linear):
            return nn.Linear(module.in_features, module.out_features, dtype=torch.float64)
        if isinstance(module, BatchNorm1d):
            return nn.BatchNorm1d(module.num_features, dtype=torch.float64)
        if isinstance(module, Dropout):
            return nn.Dropout(module.p)
        if isinstance(module, Residual):
            return TorchResidual(convert(module.block))
        if isinstance(module, Sequential):
            return nn.Sequential(*[convert(m) for m in module])
        if isinstance(module, GELU):
            return nn.GELU(approximate=module.approximate)
        return {ELU: nn.ELU(), ReLU: nn.ReLU(), LeakyReLU: nn.LeakyReLU(), Tanh: nn.Tanh(), Sigmoid: nn.Sigmoid()}[type(module)]

    class TorchMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = convert(model.layers)

        def forward(self, x):
            return self.layers(x)

    return torch, TorchMLP()


@pytest.mark.parametrize(
    "options",
    [{"use_batch_norm": True, "dropout": 0.2}, {"residual": True, "use_batch_norm": True, "activation": "gelu"},
     {"activation": "leaky_relu"}],
    ids=["bn+dropout", "residual+bn+gelu", "leaky_relu"],
)
def test_weights_move_between_numpy_and_torch(options):
    model = MLP(5, [5, 4], 3, seed=4, **options)
    rng = np.random.default_rng(5)
    model.forward(rng.standard_normal((8, 5)))  # non-trivial running statistics
    torch, twin = torch_mirror(model)
    ours = model.state_dict()
    theirs = twin.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == tuple(theirs[k].shape) for k in ours)
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ours.items()})
    x = rng.standard_normal((4, 5))
    twin.eval()
    np.testing.assert_allclose(model.predict_logits(x), twin(torch.tensor(x)).detach().numpy(), rtol=1e-12, atol=1e-14)
    # And back: torch's values loaded into a fresh NumPy model.
    fresh = MLP(5, [5, 4], 3, seed=99, **options)
    fresh.load_state_dict({k: v.numpy() for k, v in twin.state_dict().items()})
    np.testing.assert_array_equal(fresh.predict_logits(x), model.predict_logits(x))


# -- prediction and fitting ------------------------------------------------------------------
def test_predict_proba_and_predict_in_eval_mode_and_restore_the_mode():
    rng = np.random.default_rng(6)
    model = MLP(5, [8], 4, dropout=0.5, use_batch_norm=True, seed=0)
    model.forward(rng.standard_normal((16, 5)))
    x = rng.standard_normal((10, 5))
    probs = model.predict_proba(x)
    assert model.training  # restored
    model.eval()
    logits = model.forward(x)
    np.testing.assert_allclose(probs, softmax(logits), rtol=1e-14)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-14)
    np.testing.assert_array_equal(model.predict(x), np.argmax(logits, axis=1))
    np.testing.assert_allclose(model.predict_logits(x, batch_size=3), logits, rtol=1e-14)
    assert not model.training


def test_dropout_masks_change_between_training_forwards_but_not_in_eval():
    x = np.random.default_rng(7).standard_normal((4, 5))
    model = MLP(5, [16], 3, dropout=0.5, seed=0)
    assert not np.array_equal(model.forward(x), model.forward(x))
    model.eval()
    np.testing.assert_array_equal(model.forward(x), model.forward(x))
    # The seed also fixes the masks.
    a, b = MLP(5, [16], 3, dropout=0.5, seed=1), MLP(5, [16], 3, dropout=0.5, seed=1)
    np.testing.assert_array_equal(a.forward(x), b.forward(x))


@pytest.mark.parametrize("options", [{}, {"use_batch_norm": True}, {"residual": True, "activation": "relu"}],
                         ids=["plain", "batch_norm", "residual"])
def test_fits_64_random_samples_to_full_training_accuracy(options):
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((64, 10)), rng.integers(0, 5, size=64)
    model = MLP(10, [64, 64], 5, seed=0, **options)
    optimizer = Adam(model.parameters(), lr=0.01)
    for _ in range(20):
        fit_steps(model, x, y, optimizer, 25)
        if np.all(model.predict(x) == y):
            break
    assert np.mean(model.predict(x) == y) == 1.0


def test_float32_training_step_keeps_float32():
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((16, 4)).astype(np.float32), rng.integers(0, 3, size=16)
    model = MLP(4, [8], 3, dtype=np.float32, use_batch_norm=True, seed=0)
    before = model.state_dict()["layers.0.weight"]
    fit_steps(model, x, y, SGD(model.parameters(), lr=0.1, momentum=0.9), 3)
    assert all(p.dtype == np.float32 for p, _ in model.parameters())
    assert not np.array_equal(model.state_dict()["layers.0.weight"], before)
