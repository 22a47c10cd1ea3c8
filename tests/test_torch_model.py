"""mlplab.torch.MLP: the twin of the NumPy MLP (layers, names, init), and the missing-torch message."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from mlplab.models import MLP as NumpyMLP  # noqa: E402
from mlplab.nn.activations import ACTIVATIONS  # noqa: E402
from mlplab.torch import MLP, Dropout, from_numpy, to_numpy  # noqa: E402

OPTION_COMBOS = [
    dict(n_hidden=hidden, use_batch_norm=bn, dropout=p, residual=res)
    for hidden, bn, p, res in itertools.product([[], [8], [8, 8], [8, 6, 6]], [False, True], [0.0, 0.3], [False, True])
]


def combo_id(combo: dict) -> str:
    return f"h{'x'.join(map(str, combo['n_hidden'])) or 'none'}-bn{int(combo['use_batch_norm'])}-p{combo['dropout']}-res{int(combo['residual'])}"


@pytest.mark.parametrize("combo", OPTION_COMBOS, ids=combo_id)
def test_state_dict_keys_shapes_and_order_match_the_numpy_model(combo):
    numpy_state = NumpyMLP(5, combo["n_hidden"], 3, **{k: v for k, v in combo.items() if k != "n_hidden"}, seed=0).state_dict()
    torch_state = MLP(5, combo["n_hidden"], 3, **{k: v for k, v in combo.items() if k != "n_hidden"}).state_dict()
    assert list(numpy_state) == list(torch_state)
    for key, value in numpy_state.items():
        assert value.shape == tuple(torch_state[key].shape), key
    if combo["use_batch_norm"] and combo["n_hidden"]:
        tracked = [key for key in torch_state if key.endswith("num_batches_tracked")]
        assert tracked and all(torch_state[k].dtype == torch.int64 and torch_state[k].dim() == 0 for k in tracked)


@pytest.mark.parametrize("combo", OPTION_COMBOS, ids=combo_id)
def test_state_dicts_load_strictly_in_both_directions(combo):
    options = {k: v for k, v in combo.items() if k != "n_hidden"}
    numpy_model = NumpyMLP(5, combo["n_hidden"], 3, **options, seed=1)
    torch_model = MLP(5, combo["n_hidden"], 3, **options).double()
    # NumPy -> torch (NumPy arrays accepted), then torch -> NumPy (tensors accepted).
    torch_model.load_state_dict(numpy_model.state_dict(), strict=True)
    other = NumpyMLP(5, combo["n_hidden"], 3, **options, seed=2)
    other.load_state_dict(torch_model.state_dict(), strict=True)
    for key, value in numpy_model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[key], value)
        np.testing.assert_array_equal(torch_model.state_dict()[key].numpy(), value)


def test_load_state_dict_refuses_missing_and_unexpected_keys():
    model = MLP(4, [6], 2)
    state = NumpyMLP(4, [6], 2, seed=0).state_dict()
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict({k: v for k, v in state.items() if k != "layers.0.bias"})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        model.load_state_dict({**state, "layers.9.weight": np.zeros(2)})


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_from_numpy_and_to_numpy_give_the_same_logits(activation):
    numpy_model = NumpyMLP(7, [9, 9], 4, activation=activation, use_batch_norm=True, residual=True, seed=3).eval()
    numpy_model.load_state_dict({k: v + 0.1 if k.endswith("running_mean") else v for k, v in numpy_model.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((11, 7)) * 2
    torch_model = from_numpy(numpy_model)
    assert torch_model.config() == numpy_model.config() and not torch_model.training
    assert torch_model.layers[0].weight.dtype == torch.float64
    with torch.no_grad():
        logits = torch_model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, numpy_model.forward(x), rtol=1e-12, atol=1e-12)
    back = to_numpy(torch_model)
    assert back.dtype == np.float64 and back.config() == numpy_model.config()
    np.testing.assert_allclose(back.forward(x), logits, rtol=1e-12, atol=1e-12)


def test_gelu_is_the_tanh_form_and_slopes_match_the_numpy_activations():
    layers = MLP(2, [3], 2, activation="gelu").layers
    assert isinstance(layers[1], torch.nn.GELU) and layers[1].approximate == "tanh"
    assert MLP(2, [3], 2, activation="leaky_relu").layers[1].negative_slope == 0.01
    assert MLP(2, [3], 2, activation="elu").layers[1].alpha == 1.0


def test_init_follows_the_numpy_rule_not_pytorchs_default():
    torch.manual_seed(0)
    model = MLP(400, [300, 300], 10, residual=True)
    first, hidden, last = model.layers[0], model.layers[2].block[0], model.layers[3]
    assert abs(float(first.weight.detach().std()) - (1 / 400) ** 0.5) < 0.03 * (1 / 400) ** 0.5
    assert abs(float(hidden.weight.detach().std()) - (2 / 300) ** 0.5) < 0.03 * (2 / 300) ** 0.5
    assert abs(float(last.weight.detach().std()) - (2 / 300) ** 0.5) < 0.1 * (2 / 300) ** 0.5
    assert all(float(layer.bias.detach().abs().max()) == 0 for layer in (first, hidden, last))
    # softmax regression: the only Linear is the input layer
    assert abs(float(MLP(400, [], 10).layers[0].weight.detach().std()) - (1 / 400) ** 0.5) < 0.1 * (1 / 400) ** 0.5


def test_init_is_reproducible_from_a_generator():
    a = MLP(6, [5], 3, generator=torch.Generator().manual_seed(7))
    b = MLP(6, [5], 3, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_dropout_masks_come_from_the_generator_and_eval_is_the_identity():
    x = torch.ones(200, 50, dtype=torch.float64)
    first = Dropout(0.25, torch.Generator().manual_seed(5))(x)
    second = Dropout(0.25, torch.Generator().manual_seed(5))(x)
    assert torch.equal(first, second)
    kept = first != 0
    assert abs(float(kept.double().mean()) - 0.75) < 0.02
    assert torch.allclose(first[kept], torch.full_like(first[kept], 1 / 0.75))
    assert torch.equal(Dropout(0.25).eval()(x), x)
    assert torch.equal(Dropout(0.0)(x), x)


def test_bad_arguments_are_refused_like_the_numpy_model():
    with pytest.raises(ValueError, match="unknown activation"):
        MLP(3, [4], 2, activation="swish")
    with pytest.raises(ValueError, match="dropout"):
        MLP(3, [4], 2, dropout=1.0)
    with pytest.raises(ValueError, match="n_inputs"):
        MLP(0, [4], 2)


MISSING_TORCH = """
import sys
sys.modules["torch"] = None  # what an environment without PyTorch looks like to import
{body}
"""


def _run_without_torch(body: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", MISSING_TORCH.format(body=body)], capture_output=True, text=True, timeout=60)


def test_missing_torch_raises_one_line_naming_the_extra():
    proc = _run_without_torch(
        "from mlplab.errors import MissingDependencyError\n"
        "try:\n    import mlplab.torch\nexcept MissingDependencyError as exc:\n"
        "    assert isinstance(exc, ImportError)\n    print(exc)\nelse:\n    raise SystemExit('imported')\n"
        "import mlplab, mlplab.models, mlplab.training.loop, mlplab.cli  # everything else works without torch\n"
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "pip install 'mlplab[torch]'" in lines[0]


def test_missing_torch_makes_the_torch_backend_a_one_line_cli_error():
    proc = _run_without_torch(
        "from mlplab.config import TrainConfig\n"
        "from mlplab.errors import MissingDependencyError\n"
        "from mlplab.training.backends import make_backend\n"
        "import numpy as np\n"
        "try:\n    make_backend(TrainConfig(backend='torch').validated(), 4, 2, np.random.SeedSequence(0))\n"
        "except MissingDependencyError as exc:\n    print(exc)\n"
        "from mlplab.cli import main\n"
        "sys.exit(main(['compare', '--dataset', 'digits', '--epochs', '1', '-q']))\n"
    )
    assert proc.returncode == 1
    assert "mlplab[torch]" in proc.stdout and len(proc.stdout.strip().splitlines()) == 1
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("mlplab compare: error:") and "mlplab[torch]" in errors[0]
