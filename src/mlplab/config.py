"""The training options as one validated dataclass, config files (TOML/JSON) and presets.

Precedence, lowest first: the dataclass defaults (the reference setup), a ``--preset``, a
``--config`` file, then options given explicitly (command-line flags or keyword arguments).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import numbers
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from mlplab import validation
from mlplab.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

BACKENDS = ("numpy", "torch")
DTYPES = ("float32", "float64")
DEVICES = ("auto", "cpu", "cuda")

#: where the names of each registered concept live (one registry each; imported when first asked
#: for, so that reading this module stays free of NumPy)
REGISTRIES = {
    "ACTIVATIONS": ("mlplab.nn.activations", "ACTIVATIONS"),
    "OPTIMIZERS": ("mlplab.optim", "OPTIMIZERS"),
    "SCHEDULES": ("mlplab.optim", "SCHEDULES"),
    "DATASETS": ("mlplab.data.registry", "DATASETS"),
    "NORMALIZATIONS": ("mlplab.data.core", "NORMALIZATIONS"),
    "WHITENINGS": ("mlplab.data.whitening", "WHITENINGS"),
}


def registry_names(concept: str) -> tuple[str, ...]:
    """The registered names of ``concept`` (a key of :data:`REGISTRIES`), in the registry's order."""
    module, attribute = REGISTRIES[concept]
    return tuple(getattr(importlib.import_module(module), attribute))


def __getattr__(name: str):
    # ``config.ACTIVATIONS`` and the like, for code written when the names were listed here
    if name in REGISTRIES:
        return registry_names(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: options that fix the model's architecture: a resumed run may not change them
MODEL_OPTIONS = ("hidden_dims", "activation", "use_batch_norm", "dropout", "residual", "dataset", "dtype", "backend")


@dataclass
class TrainConfig:
    """Every option of ``mlplab train``; the defaults are the reference setup."""

    # data
    dataset: str = "cifar10"
    data_dir: str | None = None
    validation_size: int | None = None  # None: the data set's own (5,000 for CIFAR-10 and MNIST)
    split_seed: int = 42
    normalization: str = "published"
    whitening: str = "none"
    zca_epsilon: float = 0.1
    pca_components: int = 768  # with whitening "pca": the principal directions kept
    augment: bool = False
    augment_padding: int = 4  # with augment: random crops of up to this many pixels (0: flips only)
    # model
    hidden_dims: list[int] = field(default_factory=lambda: [128])
    activation: str = "elu"
    use_batch_norm: bool = False
    dropout: float = 0.0
    residual: bool = False
    # optimisation
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    step_epochs: int | None = None
    gamma: float = 0.1
    label_smoothing: float = 0.0
    mixup: float = 0.0  # α of mixup's λ ~ Beta(α, α); 0: off
    batch_size: int = 128
    epochs: int = 10
    early_stopping: int | None = None
    seed: int = 42
    # evaluation
    tta_flip: bool = False
    # execution
    backend: str = "numpy"
    device: str = "auto"
    array_library: str = "numpy"  # the arrays the hand-derived backend computes on (mlplab.xp.LIBRARIES)
    dtype: str = "float32"
    nproc: int = 1
    # output
    out: str | None = None
    overwrite: bool = False
    quiet: bool = False
    report: bool = True
    track_gradients: int | None = None
    # tracking (mlplab.training.tracking): False off, True the default place, or a folder / URI
    tensorboard: bool | str = False
    mlflow: bool | str = False
    mlflow_experiment: str = "mlplab"

    # -- construction ------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_options(cls, options: dict, *, source: str = "option") -> TrainConfig:
        """A config from a dict of options (unknown keys are refused, naming them)."""
        return cls().updated(options, source=source)

    def updated(self, options: dict, *, source: str = "option") -> TrainConfig:
        """A copy with ``options`` applied (keys may use dashes or underscores)."""
        known = set(self.field_names())
        values = dataclasses.asdict(self)
        for key, value in options.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise ConfigError(f"unknown {source} {key!r}; known options: {', '.join(sorted(known))}")
            values[name] = value
        return TrainConfig(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def short_name(self) -> str:
        """A short description for run-folder names, e.g. ``cifar10-numpy-h128-sgd-lr0.1``."""
        widths = "x".join(str(w) for w in self.hidden_dims) or "linear"
        return f"{self.dataset}-{self.backend}-h{widths}-{self.optimizer}-lr{self.lr:g}"

    # -- validation --------------------------------------------------------------------
    def validated(self) -> TrainConfig:
        """A normalised copy, or ConfigError naming the first bad option (as ``--option``)."""
        c = dataclasses.replace(
            self, hidden_dims=list(self.hidden_dims) if _is_sequence(self.hidden_dims) else self.hidden_dims
        )
        c.dataset = _choice(c.dataset, "dataset", registry_names("DATASETS"))
        c.activation = _choice(c.activation, "activation", registry_names("ACTIVATIONS"))
        c.optimizer = _choice(c.optimizer, "optimizer", registry_names("OPTIMIZERS"))
        c.schedule = _choice(c.schedule, "schedule", registry_names("SCHEDULES"))
        c.backend = _choice(c.backend, "backend", BACKENDS)
        c.device = _choice(c.device, "device", DEVICES)
        c.array_library = _array_library(c.array_library, c.backend, c.device)
        c.dtype = _choice(c.dtype, "dtype", DTYPES)
        c.normalization = _choice(c.normalization, "normalization", registry_names("NORMALIZATIONS"))
        c.whitening = _choice(c.whitening, "whitening", registry_names("WHITENINGS"))
        c.zca_epsilon = _number(c.zca_epsilon, "zca_epsilon", positive=True)
        c.pca_components = _integer(c.pca_components, "pca_components", low=1)
        c.hidden_dims = _widths(c.hidden_dims)
        c.lr = _number(c.lr, "lr", positive=True)
        c.momentum = _number(c.momentum, "momentum", low=0.0)
        c.weight_decay = _number(c.weight_decay, "weight_decay", low=0.0)
        c.warmup_epochs = _number(c.warmup_epochs, "warmup_epochs", low=0.0)
        c.min_lr = _number(c.min_lr, "min_lr", low=0.0)
        c.gamma = _number(c.gamma, "gamma", positive=True)
        c.dropout = _number(c.dropout, "dropout", low=0.0, below=1.0)
        c.label_smoothing = _number(c.label_smoothing, "label_smoothing", low=0.0, below=1.0)
        c.mixup = _number(c.mixup, "mixup", low=0.0)
        c.batch_size = _integer(c.batch_size, "batch_size", low=1)
        c.epochs = _integer(c.epochs, "epochs", low=1)
        c.seed = _integer(c.seed, "seed", low=0)
        c.split_seed = _integer(c.split_seed, "split_seed", low=0)
        if c.validation_size is not None:
            c.validation_size = _integer(c.validation_size, "validation_size", low=0)
        c.nproc = _integer(c.nproc, "nproc", low=1)
        c.augment_padding = _integer(c.augment_padding, "augment_padding", low=0)
        if c.step_epochs is not None:
            c.step_epochs = _integer(c.step_epochs, "step_epochs", low=1)
        if c.early_stopping is not None:
            c.early_stopping = _integer(c.early_stopping, "early_stopping", low=1)
        if c.track_gradients is not None:
            c.track_gradients = _integer(c.track_gradients, "track_gradients", low=1)
        for name in ("augment", "use_batch_norm", "residual", "nesterov", "tta_flip", "overwrite", "quiet", "report"):
            value = getattr(c, name)
            if not isinstance(value, bool):
                raise ConfigError(f"--{_flag(name)} must be true or false, got {value!r}")
        c.tensorboard = _switch_or_text(c.tensorboard, "tensorboard", "a folder")
        c.mlflow = _switch_or_text(c.mlflow, "mlflow", "a tracking URI")
        if not isinstance(c.mlflow_experiment, str) or not c.mlflow_experiment.strip():
            raise ConfigError(f"--mlflow-experiment must be a name, got {c.mlflow_experiment!r}")
        takes = _optimizers_taking()
        if c.nesterov and (c.optimizer not in takes["nesterov"] or c.momentum <= 0):
            raise ConfigError(f"--nesterov needs --optimizer {' or '.join(takes['nesterov'])} and a --momentum above 0")
        if c.momentum and c.optimizer not in takes["momentum"]:
            raise ConfigError(
                f"--momentum applies to --optimizer {' or '.join(takes['momentum'])} only (got --optimizer {c.optimizer}); Adam's betas play that role"
            )
        if c.warmup_epochs > c.epochs:
            raise ConfigError(f"--warmup-epochs {c.warmup_epochs:g} is longer than --epochs {c.epochs}")
        if c.track_gradients is not None and c.array_library != "numpy":
            raise ConfigError(
                f"--track-gradients measures on NumPy arrays; it is not available with --array-library {c.array_library}"
            )
        if c.nproc > 1 and c.backend != "torch":
            raise ConfigError("--nproc needs --backend torch (data parallelism runs on torch.distributed)")
        if c.nproc > 1 and c.batch_size % c.nproc:
            raise ConfigError(
                f"--batch-size {c.batch_size} must be divisible by the {c.nproc} processes (each takes an equal share of every batch)"
            )
        if c.validation_size == 0 and c.early_stopping is not None:
            raise ConfigError("--early-stopping needs a validation split (--validation-size above 0)")
        if c.data_dir is not None:
            c.data_dir = str(c.data_dir)
        if c.out is not None:
            c.out = str(c.out)
        return c


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _is_sequence(value) -> bool:
    return isinstance(value, (list, tuple))


def _choice(value, name: str, choices) -> str:
    what = "data set" if name == "dataset" else name.replace("_", " ")
    # data set names keep their dashes (fashion-mnist); other names read a dash as an underscore
    return validation.choice(value, f"--{_flag(name)}", choices, what=what, normalise=name != "dataset")


def _array_library(value, backend: str, device: str) -> str:
    """``--array-library``: a name of :data:`mlplab.xp.LIBRARIES`, for the hand-derived backend only."""
    from mlplab.xp import LIBRARIES  # here, not at the top: reading this module stays free of NumPy

    if isinstance(value, str):
        value = value.replace("_", "-")  # array_api_strict, as the module is named
    name = validation.choice(value, "--array-library", tuple(LIBRARIES), what="array library", normalise=False)
    if name != "numpy" and backend != "numpy":
        raise ConfigError(
            f"--array-library {name} runs the hand-derived modules (--backend numpy); "
            f"--backend {backend} is the autograd twin and takes --device alone"
        )
    # (--device cuda with NumPy arrays stays accepted and means the CPU, as before this option:
    # `mlplab compare --device cuda` gives one device to both backends)
    if device == "cuda" and name == "array-api-strict":
        raise ConfigError("--device cuda: array-api-strict computes on the CPU; use --array-library torch or cupy")
    if device == "cpu" and name == "cupy":
        raise ConfigError("--device cpu: CuPy arrays live on a GPU; use --array-library numpy or torch for the CPU")
    return name


def _optimizers_taking() -> dict[str, tuple[str, ...]]:
    """For each optimiser option, the registered optimisers that take it."""
    from mlplab.optim import OPTIMIZERS

    return {
        option: tuple(name for name, cls in OPTIMIZERS.items() if option in cls.options)
        for option in ("momentum", "nesterov")
    }


def _number(value, name: str, *, positive: bool = False, low: float | None = None, below: float | None = None) -> float:
    return validation.number(value, f"--{_flag(name)}", low=low, above=0 if positive else None, below=below)


def _switch_or_text(value, name: str, what: str) -> bool | str:
    """An option that is off (False), on at its default place (True) or given one (a string)."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"--{_flag(name)} must be true, false or {what}, got {value!r}")
    return value


def _integer(value, name: str, *, low: int) -> int:
    return validation.integer(value, f"--{_flag(name)}", low=low, whole_floats=True)


def _widths(value) -> list[int]:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, str):
        value = parse_widths(value)
    if not _is_sequence(value):
        raise ConfigError(f"--hidden-dims must be a list of positive integers, got {value!r}")
    return [_integer(w, "hidden_dims", low=1) for w in value]


def parse_widths(text: str) -> list[int]:
    """``"512x256"``, ``"512,256"`` or ``"512 256"`` -> [512, 256]; ``""`` or ``"none"`` -> []."""
    cleaned = text.strip().lower()
    if cleaned in ("", "none", "[]"):
        return []
    parts = cleaned.replace("x", " ").replace(",", " ").split()
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ConfigError(
            f"--hidden-dims: {text!r} is not a list of integers (write e.g. 512 256 or 512x256)"
        ) from None


# -- files and presets ---------------------------------------------------------------------
def load_config_file(path) -> dict:
    """The options in a TOML or JSON file (by extension; TOML otherwise), as a dict."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"--config: no such file {str(path)!r}") from None
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {str(path)!r}: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text.decode("utf-8"))
        else:
            data = tomllib.loads(text.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"--config: {str(path)!r} is not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {str(path)!r} must hold a table of options")
    data.pop("description", None)
    data = dict(data.get("train", data))
    return data


def preset_names() -> list[str]:
    files = resources.files("mlplab.presets")
    return sorted(p.name[: -len(".toml")] for p in files.iterdir() if p.name.endswith(".toml"))


def preset_text(name: str) -> str:
    if name not in preset_names():
        raise ConfigError(f"--preset: unknown preset {name!r} (choose from {', '.join(preset_names())})")
    return resources.files("mlplab.presets").joinpath(f"{name}.toml").read_text(encoding="utf-8")


def load_preset(name: str) -> dict:
    """The options of a shipped preset (see ``mlplab presets``)."""
    data = tomllib.loads(preset_text(name))
    data.pop("description", None)
    return dict(data.get("train", data))


def preset_description(name: str) -> str:
    data = tomllib.loads(preset_text(name))
    return str(data.get("description", "")).strip()


def resolve_config(*, preset: str | None = None, config_file=None, options: dict | None = None) -> TrainConfig:
    """Defaults <- preset <- config file <- explicit options, validated."""
    config = TrainConfig()
    if preset:
        config = config.updated(load_preset(preset), source=f"option in preset {preset!r}")
    if config_file:
        config = config.updated(load_config_file(config_file), source=f"option in {str(config_file)!r}")
    if options:
        config = config.updated(options)
    return config.validated()
