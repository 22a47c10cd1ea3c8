"""The search space: one :class:`Dimension` per swept option, parsed from ``--grid`` and
``--param`` texts (or dicts) and checked against the training options' types.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from mlplab.config import TrainConfig, parse_widths
from mlplab.errors import ConfigError
from mlplab.sweep._optuna import _optuna

#: options a sweep sets itself for every trial, so they cannot be swept or given as the base
NOT_SWEPT = ("out", "overwrite", "quiet", "report", "track_gradients", "nproc")
#: where the trials' numbers go (TensorBoard, MLflow): shared by every trial, never swept, free
#: to change when the sweep is rerun
TRACKING_OPTIONS = ("tensorboard", "mlflow", "mlflow_experiment")


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _option_name(name: str, where: str) -> str:
    key = str(name).strip().replace("-", "_")
    fields = TrainConfig.field_names()
    if key not in fields or key in NOT_SWEPT + TRACKING_OPTIONS:
        known = ", ".join(_flag(f) for f in fields if f not in NOT_SWEPT + TRACKING_OPTIONS)
        raise ConfigError(f"{where}: {name!r} is not a training option that can be swept (choose from {known})")
    return key


def _option_type(name: str) -> str:
    """'widths', 'bool', 'int', 'float' or 'str', from the TrainConfig field's annotation."""
    if name == "hidden_dims":
        return "widths"
    annotation = next(f.type for f in dataclasses.fields(TrainConfig) if f.name == name)
    annotation = str(annotation)
    for kind in ("bool", "int", "float"):
        if annotation.split(" | ")[0] == kind:
            return kind
    return "str"


def _optional(name: str) -> bool:
    annotation = next(f.type for f in dataclasses.fields(TrainConfig) if f.name == name)
    return "None" in str(annotation)


def _widths_text(widths) -> str:
    return "x".join(str(int(w)) for w in widths) or "none"


def parse_value(name: str, value, where: str = "--grid"):
    """One value of option ``name`` as Optuna stores it: a str, int, float, bool or None.
    Text is parsed by the option's type; hidden widths become ``"512x256"`` (``"none"``: no
    hidden layer). Values that are already Python values are checked the same way."""
    kind = _option_type(name)
    text = value.strip() if isinstance(value, str) else None
    flag = f"{where} {_flag(name)}={value}"
    if text == "":
        raise ConfigError(f"{where} {_flag(name)}: an empty value (values are separated by commas)")
    if text is not None and text.lower() == "none" and _optional(name):
        return None
    if kind == "widths":
        if text is not None:
            try:
                return _widths_text(parse_widths(text))
            except ConfigError:
                raise ConfigError(f"{flag}: hidden widths are written 512x256 (or none for no hidden layer)") from None
        if isinstance(value, (list, tuple)):
            return _widths_text(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{flag}: hidden widths are written 512x256")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        words = {
            "true": True,
            "yes": True,
            "on": True,
            "1": True,
            "false": False,
            "no": False,
            "off": False,
            "0": False,
        }
        if text is not None and text.lower() in words:
            return words[text.lower()]
        raise ConfigError(f"{flag}: expected true or false")
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            return int(text) if text is not None else int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{flag}: expected an integer") from None
    if kind == "float":
        try:
            number = float(text) if text is not None else float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{flag}: expected a number") from None
        if not math.isfinite(number):
            raise ConfigError(f"{flag}: expected a finite number")
        return number
    if text is None:
        raise ConfigError(f"{flag}: expected a name")
    return text


@dataclass(frozen=True)
class Dimension:
    """One swept option. ``kind``: ``grid`` or ``choice`` (``values``), ``float``, ``log`` or
    ``int`` (``low``..``high``, optional ``step``). Values are kept as Optuna stores them."""

    name: str
    kind: str
    values: tuple = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None

    @property
    def flag(self) -> str:
        return _flag(self.name)

    @property
    def categorical(self) -> bool:
        return self.kind in ("grid", "choice")

    def distribution(self):
        distributions = _optuna().distributions
        if self.categorical:
            return distributions.CategoricalDistribution(list(self.values))
        if _option_type(self.name) in ("int", "widths"):
            return distributions.IntDistribution(
                int(self.low), int(self.high), log=self.kind == "log", step=int(self.step or 1)
            )
        return distributions.FloatDistribution(self.low, self.high, log=self.kind == "log", step=self.step)

    def suggest(self, trial):
        """The trial's value (its queued value when the slot fixed one, else the sampler's)."""
        if self.categorical:
            return trial.suggest_categorical(self.name, list(self.values))
        if _option_type(self.name) in ("int", "widths"):
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), log=self.kind == "log", step=int(self.step or 1)
            )
        return trial.suggest_float(self.name, self.low, self.high, log=self.kind == "log", step=self.step)

    def train_value(self, value):
        """The value as a training option (hidden widths as a list)."""
        if self.name == "hidden_dims":
            return parse_widths(value) if isinstance(value, str) else [int(value)]
        return value

    def describe(self) -> str:
        if self.categorical:
            return f"{self.flag}={','.join(_format_value(v, exact=True) for v in self.values)}"
        step = f":{self.step:g}" if self.step else ""
        return f"{self.flag}={self.kind}:{self.low:g}:{self.high:g}{step}"

    def to_json(self) -> dict:
        return {key: (list(value) if key == "values" else value) for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> Dimension:
        return cls(**{**data, "values": tuple(data.get("values", ()))})


def _split_assignment(text: str, where: str) -> tuple[str, str]:
    name, sep, rest = str(text).partition("=")
    if not sep or not name.strip() or not rest.strip():
        example = "lr=0.01,0.1" if where == "--grid" else "lr=log:1e-3:1e-1"
        raise ConfigError(f"{where} {text!r}: write NAME=VALUES, e.g. {where} {example}")
    return name.strip(), rest.strip()


def grid_dimension(name: str, values, where: str = "--grid") -> Dimension:
    """A grid over ``values`` (a list, or text ``"0.01,0.1"``) of option ``name``."""
    key = _option_name(name, where)
    if isinstance(values, str):
        values = values.split(",")
    parsed = [parse_value(key, v, where) for v in values]
    if not parsed:
        raise ConfigError(f"{where} {_flag(key)}: give at least one value")
    seen = set()
    for value in parsed:
        if (type(value), value) in seen:
            raise ConfigError(f"{where} {_flag(key)}: the value {_format_value(value, exact=True)} is given twice")
        seen.add((type(value), value))
    return Dimension(key, "grid", tuple(parsed))


def param_dimension(name: str, spec, where: str = "--param") -> Dimension:
    """A random/TPE dimension: ``log:LOW:HIGH``, ``float:LOW:HIGH[:STEP]``, ``int:LOW:HIGH[:STEP]``
    or ``choice:V1,V2,...`` (or a list, meaning a choice)."""
    key = _option_name(name, where)
    if isinstance(spec, (list, tuple)):
        dimension = grid_dimension(key, list(spec), where)
        return Dimension(key, "choice", dimension.values)
    kind, sep, rest = str(spec).strip().partition(":")
    kind = kind.strip().lower()
    usage = f"{where} {_flag(key)}={spec}"
    if kind == "choice":
        if not rest.strip():
            raise ConfigError(f"{usage}: write choice:V1,V2,...")
        return Dimension(key, "choice", grid_dimension(key, rest, where).values)
    if kind not in ("log", "float", "int") or not sep:
        raise ConfigError(
            f"{usage}: write log:LOW:HIGH, float:LOW:HIGH[:STEP], int:LOW:HIGH[:STEP] or choice:V1,V2,..."
        )
    option_type = _option_type(key)
    integer = option_type in ("int", "widths")
    if option_type not in ("int", "widths", "float"):
        raise ConfigError(f"{usage}: --{_flag(key)} is not a number; use choice:V1,V2,...")
    if kind == "float" and integer:
        raise ConfigError(f"{usage}: --{_flag(key)} is an integer; use int:LOW:HIGH or log:LOW:HIGH")
    if kind == "int" and not integer:
        raise ConfigError(f"{usage}: --{_flag(key)} is not an integer; use float:LOW:HIGH or log:LOW:HIGH")
    parts = rest.split(":")
    if len(parts) not in (2, 3) or (kind == "log" and len(parts) != 2):
        raise ConfigError(f"{usage}: write {kind}:LOW:HIGH" + ("" if kind == "log" else f" or {kind}:LOW:HIGH:STEP"))
    try:
        numbers = [int(p) if integer else float(p) for p in parts]
    except ValueError:
        raise ConfigError(
            f"{usage}: LOW, HIGH{'' if kind == 'log' else ' and STEP'} must be {'integers' if integer else 'numbers'}"
        ) from None
    if not all(math.isfinite(n) for n in numbers):
        raise ConfigError(f"{usage}: the bounds must be finite")
    low, high = numbers[0], numbers[1]
    step = numbers[2] if len(numbers) == 3 else None
    if not low < high:
        raise ConfigError(f"{usage}: LOW must be below HIGH")
    if kind == "log" and low <= 0:
        raise ConfigError(f"{usage}: a log range needs LOW above 0")
    if step is not None and step <= 0:
        raise ConfigError(f"{usage}: STEP must be above 0")
    return Dimension(key, kind, (), low, high, step)


def parse_grid(texts) -> list[Dimension]:
    """``["lr=0.01,0.1", "hidden-dims=256,512x256"]`` (the ``--grid`` flags) -> dimensions."""
    return _unique([grid_dimension(*_split_assignment(text, "--grid")) for text in texts], "--grid")


def parse_params(texts) -> list[Dimension]:
    """``["lr=log:1e-3:1e-1", "hidden-dims=choice:256,512x256"]`` (``--param``) -> dimensions."""
    return _unique([param_dimension(*_split_assignment(text, "--param")) for text in texts], "--param")


def _unique(dimensions: list[Dimension], where: str) -> list[Dimension]:
    seen = set()
    for dimension in dimensions:
        if dimension.name in seen:
            raise ConfigError(f"{where}: {dimension.flag} is given twice")
        seen.add(dimension.name)
    return dimensions


def _format_value(value, *, exact: bool = False) -> str:
    """A value as written on the command line; floats to 4 significant digits unless ``exact``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if exact else f"{value:.4g}"
    return "none" if value is None else str(value)
