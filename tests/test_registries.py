"""One registry per concept: the activations, optimisers, schedules and data sets are each listed
once, and config validation, the CLI, both backends and the README follow that list. A name added
to a registry alone is accepted everywhere; one dropped from it is refused everywhere."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlplab import validation
from mlplab.cli import build_parser
from mlplab.config import TrainConfig, registry_names
from mlplab.data.core import NORMALIZATIONS
from mlplab.data.registry import DATASETS
from mlplab.data.whitening import WHITENINGS
from mlplab.errors import ConfigError
from mlplab.models import MLP
from mlplab.nn import activations
from mlplab.nn.activations import ACTIVATIONS, _Elementwise
from mlplab.optim import OPTIMIZERS, SCHEDULES, make_schedule

REPO = Path(__file__).resolve().parent.parent


def _subparser(name: str):
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    return subparsers.choices[name]


def _help_names(command: str, dest: str) -> list[str]:
    """The names an option's help lists (``one of a, b, c`` / ``...: a, b, c (default x)``)."""
    action = next(a for a in _subparser(command)._actions if a.dest == dest)
    listed = re.search(r"(?:one of|:) ([a-z0-9_, -]+?) \(default", action.help)
    assert listed, action.help
    return [name.strip() for name in listed.group(1).split(",")]


@pytest.mark.parametrize(("command", "dest", "registry"), [
    ("train", "activation", ACTIVATIONS),
    ("train", "optimizer", OPTIMIZERS),
    ("train", "schedule", SCHEDULES),
    ("gradflow", "activation", ACTIVATIONS),
    ("compare", "activation", ACTIVATIONS),
])
def test_cli_lists_exactly_the_registered_names(command, dest, registry):
    assert _help_names(command, dest) == list(registry)


def test_config_names_are_the_registries():
    assert registry_names("ACTIVATIONS") == tuple(ACTIVATIONS)
    assert registry_names("OPTIMIZERS") == tuple(OPTIMIZERS)
    assert registry_names("SCHEDULES") == tuple(SCHEDULES)
    assert registry_names("DATASETS") == tuple(DATASETS)
    from mlplab import config

    assert config.ACTIVATIONS == tuple(ACTIVATIONS)  # the old spelling still answers
    with pytest.raises(AttributeError):
        config.NOT_A_REGISTRY  # noqa: B018


def test_readme_training_options_list_the_registered_names():
    readme = (REPO / "README.md").read_text()
    for flag, registry in (("activation", ACTIVATIONS), ("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                           ("dataset", DATASETS)):
        listed = re.search(rf"`--{flag}\s+([a-z0-9_|-]+)`", readme)
        assert listed, f"README.md lists no --{flag} choices"
        assert listed.group(1).split("|") == list(registry), f"README.md's --{flag} list is not the registry's"


@pytest.mark.parametrize(("option", "registry"), [("activation", ACTIVATIONS), ("optimizer", OPTIMIZERS),
                                                   ("schedule", SCHEDULES), ("dataset", DATASETS),
                                                   ("normalization", NORMALIZATIONS), ("whitening", WHITENINGS)])
def test_config_accepts_each_registered_name_and_lists_them_for_an_unknown_one(option, registry):
    for name in registry:
        assert getattr(TrainConfig(**{option: name.upper()}).validated(), option) == name
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{option: "nonesuch"}).validated()
    assert str(info.value).endswith(f"(choose from {', '.join(registry)})")


class Softplus(_Elementwise):
    """h(x) = log(1 + eˣ), h' = σ(x): an activation that exists only in this test's registry entry."""

    def forward(self, x):
        self.cache["dydx"] = 1 / (1 + np.exp(-x))
        return np.logaddexp(0, x)

    def torch_twin(self):
        return "Softplus", {}


def test_an_activation_added_to_the_registry_alone_works_in_config_cli_and_both_backends(monkeypatch):
    monkeypatch.setitem(ACTIVATIONS, "softplus", Softplus)
    assert TrainConfig(activation="Softplus").validated().activation == "softplus"
    assert "softplus" in _help_names("train", "activation")
    numpy_model = MLP(5, [6], 3, activation="softplus", seed=1)
    assert isinstance(numpy_model.layers[1], Softplus)
    torch = pytest.importorskip("torch")
    from mlplab.torch import from_numpy

    x = np.random.default_rng(0).standard_normal((4, 5))
    with torch.no_grad():
        torch_logits = from_numpy(numpy_model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(torch_logits, numpy_model.forward(x), rtol=1e-12, atol=1e-12)
    monkeypatch.delitem(ACTIVATIONS, "softplus")
    with pytest.raises(ConfigError):
        TrainConfig(activation="softplus").validated()
    with pytest.raises(ValueError, match="unknown activation"):
        MLP(5, [6], 3, activation="softplus")


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_each_activation_and_its_torch_twin_compute_the_same(name):
    torch = pytest.importorskip("torch")
    from mlplab.torch.model import make_activation as make_torch_activation

    x = np.linspace(-6, 6, 97).reshape(1, -1)
    module = activations.make_activation(name)
    class_name, _ = module.torch_twin()
    twin = make_torch_activation(name)
    assert type(twin).__name__ == class_name
    np.testing.assert_allclose(twin(torch.from_numpy(x)).numpy(), module.forward(x), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("module", [activations.ELU(alpha=0.4), activations.LeakyReLU(0.2), activations.GELU("none")],
                         ids=repr)
def test_the_torch_twin_carries_the_module_parameters(module):
    torch = pytest.importorskip("torch")
    class_name, kwargs = module.torch_twin()
    x = np.linspace(-6, 6, 97).reshape(1, -1)
    twin = getattr(torch.nn, class_name)(**kwargs)
    np.testing.assert_allclose(twin(torch.from_numpy(x)).numpy(), module.forward(x), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_optimizer_declares_what_both_backends_build_alike(name):
    torch = pytest.importorskip("torch")
    from mlplab.torch.backend import STATE_NAMES, make_torch_optimizer
    from mlplab.training.backends import make_optimizer

    cls = OPTIMIZERS[name]
    momentum = 0.9 if "momentum" in cls.options else 0.0
    config = TrainConfig(optimizer=name, lr=0.05, weight_decay=1e-3, momentum=momentum).validated()
    settings = cls.settings(config)
    assert settings["lr"] == 0.05 and settings["weight_decay"] == 1e-3
    numpy_opt = make_optimizer(config, [(np.ones(3), np.full(3, 0.5))])
    assert type(numpy_opt) is cls
    hyper = {k: tuple(v) if isinstance(v, list) else v for k, v in numpy_opt.hyperparameters().items()}
    assert hyper == settings

    param = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    torch_opt = make_torch_optimizer(config, [param])
    assert type(torch_opt).__name__ == cls.torch_name
    group = torch_opt.param_groups[0]
    assert {k: group[k] for k in settings} == settings
    param.grad = torch.full((3,), 0.5, dtype=torch.float64)
    torch_opt.step()
    numpy_opt.step()
    assert set(torch_opt.state[param]) - {"step"} == set(cls.state_names) == set(STATE_NAMES[cls.__name__])
    np.testing.assert_allclose(param.detach().numpy(), numpy_opt.pairs[0][0], rtol=1e-15)


def test_momentum_and_nesterov_are_refused_for_optimizers_that_do_not_take_them():
    takers = [name for name, cls in OPTIMIZERS.items() if "momentum" in cls.options]
    others = [name for name in OPTIMIZERS if name not in takers]
    assert takers and others
    for name in others:
        with pytest.raises(ConfigError, match=f"--momentum applies to --optimizer {' or '.join(takers)} only"):
            TrainConfig(optimizer=name, momentum=0.9).validated()
        with pytest.raises(ConfigError, match="--nesterov needs"):
            TrainConfig(optimizer=name, nesterov=True).validated()


def test_every_schedule_is_built_by_name_and_an_unknown_one_names_the_registry():
    for name, cls in SCHEDULES.items():
        schedule = make_schedule(name, 0.2, steps_per_epoch=10, epochs=6, warmup_epochs=1)
        assert type(schedule) is cls
        assert schedule(0) == pytest.approx(0.02) and schedule(9) == pytest.approx(0.2)
    with pytest.raises(ValueError, match=f"unknown schedule 'linear'; choose one of {', '.join(SCHEDULES)}"):
        make_schedule("linear", 0.2, steps_per_epoch=10, epochs=3)


# -- mlplab.validation ----------------------------------------------------------------------------
def test_integer_accepts_integers_in_range_and_names_the_range_otherwise():
    assert validation.integer(np.int64(3), "--epochs") == 3 and type(validation.integer(np.int64(3), "x")) is int
    assert validation.integer(4.0, "--epochs", whole_floats=True) == 4
    cases = [
        ({"low": 1}, 0, "--n must be a positive integer, got 0"),
        ({"low": 0}, -1, "--n must be a non-negative integer, got -1"),
        ({"low": 2}, 1, "--n must be an integer >= 2, got 1"),
        ({"low": 0, "high": 1999, "what": "toy"}, 2000, "--n must be an integer from 0 to 1,999 (toy), got 2000"),
        ({}, True, "--n must be a positive integer, got True"),
        ({}, np.bool_(True), "--n must be a positive integer, got "),
        ({}, 2.0, "--n must be a positive integer, got 2.0"),  # floats only with whole_floats
        ({}, "3", "--n must be a positive integer, got '3'"),
    ]
    for bounds, value, message in cases:
        with pytest.raises(ConfigError) as info:
            validation.integer(value, "--n", **bounds)
        assert str(info.value).startswith(message)


def test_number_accepts_finite_reals_in_range_and_names_the_range_otherwise():
    assert validation.number(np.float32(0.5), "--lr", above=0) == 0.5
    cases = [
        ({"above": 0}, 0, "--x must be a positive finite number, got 0"),
        ({"above": 0}, float("nan"), "--x must be a positive finite number, got nan"),
        ({"low": 0, "below": 1}, 1.0, "--x must be a number in [0, 1), got 1.0"),
        ({"low": 0}, -0.5, "--x must be a finite number >= 0, got -0.5"),
        ({}, float("inf"), "--x must be a finite number, got inf"),
        ({}, True, "--x must be a finite number, got True"),
    ]
    for bounds, value, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            validation.number(value, "--x", **bounds)


def test_choice_normalises_case_and_dashes_and_lists_the_choices():
    assert validation.choice(" Leaky-ReLU ", "--activation", ACTIVATIONS) == "leaky_relu"
    assert validation.choice("Fashion-MNIST", "--dataset", DATASETS, normalise=False) == "fashion-mnist"
    with pytest.raises(ConfigError, match=re.escape("--activation: unknown activation 'swish' (choose from elu, ")):
        validation.choice("swish", "--activation", ACTIVATIONS)
    with pytest.raises(ConfigError, match="--activation must be a name, got 3"):
        validation.choice(3, "--activation", ACTIVATIONS)


def test_library_checks_keep_their_own_error_kind_and_owner():
    from mlplab.nn import ELU, Linear
    from mlplab.optim import SGD

    for make, message in ((lambda: Linear(0, 3), "Linear: in_features must be a positive integer, got 0"),
                          (lambda: ELU(alpha=float("nan")), "ELU: alpha must be a finite number, got nan"),
                          (lambda: SGD([(np.ones(2), np.ones(2))], lr=0), "SGD: lr must be a positive finite number, got 0")):
        with pytest.raises(ValueError) as info:
            make()
        assert type(info.value) is ValueError and str(info.value) == message


def test_validation_is_a_leaf_and_config_stays_free_of_numpy():
    tree = ast.parse((REPO / "src" / "mlplab" / "validation.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert {name for name in imported if name.startswith("mlplab")} == {"mlplab.errors"}
    assert not {name for name in imported if not name.startswith("mlplab")} - {"__future__", "math", "numbers"}
    code = "import sys, mlplab.config; print('numpy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_registries_import_nothing_from_config():
    """config reads the registries (when validating); the modules that hold them never import
    config back, so no import cycle runs through config."""
    src = REPO / "src" / "mlplab"
    holders = [*sorted((src / "data").glob("*.py")), *sorted((src / "nn").glob("*.py")), src / "optim.py"]
    for path in holders:
        tree = ast.parse(path.read_text())
        modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        modules |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert "mlplab.config" not in modules, f"{path.relative_to(REPO)} imports mlplab.config"


@pytest.mark.parametrize(("name", "momentum"), [(name, m) for name in OPTIMIZERS for m in (0.0, 0.9)
                                                if m == 0 or "momentum" in OPTIMIZERS[name].options])
def test_the_disk_estimate_counts_the_state_arrays_each_optimizer_really_keeps(name, momentum):
    from mlplab.training.backends import make_optimizer
    from mlplab.training.listeners import _optimizer_copies

    config = TrainConfig(optimizer=name, momentum=momentum).validated()
    optimizer = make_optimizer(config, [(np.ones(3), np.full(3, 0.5))])
    optimizer.step()
    kept = sum(values[0] is not None for values in optimizer.state.values())
    assert _optimizer_copies(config) == kept
