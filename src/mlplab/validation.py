"""The checks every user-given number goes through, with one wording for each kind of mistake.

``name`` is how the caller names the value to the user, fully formed: ``"--batch-size"`` for a
command-line option, ``"Linear: in_features"`` for a constructor argument. The error raised is
:class:`~mlplab.errors.ConfigError` unless ``error`` says otherwise (the ``nn`` modules and the
optimisers raise a plain ``ValueError``, as NumPy and PyTorch do for a bad argument).

This module imports nothing of mlplab but :mod:`mlplab.errors`, so any layer may use it.
"""

from __future__ import annotations

import math
import numbers

from mlplab.errors import ConfigError


def _is_integer(value) -> bool:
    # bool is an Integral, and NumPy's bool_ is not one but says it is a number: neither counts.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def _is_finite_real(value) -> bool:
    return isinstance(value, numbers.Real) and not _is_bool(value) and math.isfinite(value)


def _is_bool(value) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"


def integer(
    value,
    name: str,
    *,
    low: int = 1,
    high: int | None = None,
    what: str = "",
    whole_floats: bool = False,
    error: type[Exception] = ConfigError,
) -> int:
    """``value`` as a Python int if it is an integer in [low, high] (NumPy integers included).

    ``whole_floats``: accept a float with no fractional part (a JSON or TOML file's ``3.0``).
    ``what``: a hint shown in parentheses after the range.
    """
    if whole_floats and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not _is_integer(value) or value < low or (high is not None and value > high):
        raise error(f"{name} must be {_integer_range(low, high, what)}, got {value!r}")
    return int(value)


def _integer_range(low: int, high: int | None, what: str) -> str:
    if high is not None:
        return f"an integer from {low:,} to {high:,}" + (f" ({what})" if what else "")
    if low == 1:
        return "a positive integer"
    if low == 0:
        return "a non-negative integer"
    return f"an integer >= {low}"


def number(
    value,
    name: str,
    *,
    low: float | None = None,
    above: float | None = None,
    below: float | None = None,
    error: type[Exception] = ConfigError,
) -> float:
    """``value`` as a float if it is a finite real number with low <= value, above < value and
    value < below (each bound only where given)."""
    ok = _is_finite_real(value)
    if ok and low is not None:
        ok = value >= low
    if ok and above is not None:
        ok = value > above
    if ok and below is not None:
        ok = value < below
    if not ok:
        raise error(f"{name} must be {_number_range(low, above, below)}, got {value!r}")
    return float(value)


def _number_range(low: float | None, above: float | None, below: float | None) -> str:
    if above == 0 and low is None and below is None:
        return "a positive finite number"
    if low is not None and below is not None:
        return f"a number in [{low:g}, {below:g})"
    if above is not None and below is not None:
        return f"a number in ({above:g}, {below:g})"
    if low is not None:
        return f"a finite number >= {low:g}"
    if above is not None:
        return f"a finite number > {above:g}"
    if below is not None:
        return f"a finite number < {below:g}"
    return "a finite number"


def choice(
    value, name: str, choices, *, what: str | None = None, normalise: bool = True, error: type[Exception] = ConfigError
) -> str:
    """``value`` as one of ``choices`` (any iterable of names: a registry's keys), compared
    case-insensitively and, with ``normalise``, with dashes read as underscores."""
    if not isinstance(value, str) or not value.strip():
        raise error(f"{name} must be a name, got {value!r}")
    key = value.strip().lower()
    if normalise:
        key = key.replace("-", "_")
    choices = tuple(choices)
    if key not in choices:
        raise error(f"{name}: unknown {what or name.lstrip('-')} {value!r} (choose from {', '.join(choices)})")
    return key
