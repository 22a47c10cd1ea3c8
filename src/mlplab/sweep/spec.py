"""The sweep's definition (the *spec*, stored in the study as an attribute) and its plan: which
slots a sweep of N trials runs and the parameters queued for each.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path

from mlplab import validation
from mlplab.config import TrainConfig, resolve_config
from mlplab.errors import ConfigError, MissingDependencyError
from mlplab.sweep._optuna import _optuna_quietly
from mlplab.sweep.space import (
    NOT_SWEPT,
    TRACKING_OPTIONS,
    Dimension,
    _flag,
    _format_value,
    _unique,
    grid_dimension,
    param_dimension,
    parse_grid,
    parse_params,
)

#: the study attribute holding the sweep's definition
SPEC_KEY = "mlplab_sweep"
SPEC_VERSION = 1
#: options that may change when a sweep is resumed or joined (where the data lies, which device)
MACHINE_OPTIONS = ("data_dir", "device")
DEFAULT_RANDOM_TRIALS = 20
DEFAULT_HEARTBEAT = 10


def grid_points(dimensions: list[Dimension]) -> list[dict]:
    """Every combination of the grid's values, the last dimension varying fastest."""
    names = [d.name for d in dimensions]
    return [dict(zip(names, combo)) for combo in itertools.product(*(d.values for d in dimensions))]


def _spec_identity(spec: dict) -> dict:
    """What makes two sweeps the same sweep (the budget, the machine and the output may differ)."""
    base = {k: v for k, v in spec["base"].items() if k not in MACHINE_OPTIONS + TRACKING_OPTIONS}
    return {"search": spec["search"], "dimensions": spec["dimensions"], "base": base, "seed": spec["seed"]}


def spec_digest(spec: dict) -> str:
    text = json.dumps(_spec_identity(spec), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def default_out(spec: dict, root: str = "runs") -> Path:
    """``runs/sweep-<dataset>-<swept options>-<digest>``: the same sweep always lands in the
    same folder, so rerunning the same command resumes it."""
    names = "-".join(_flag(d["name"]) for d in spec["dimensions"])
    return Path(root) / f"sweep-{spec['base']['dataset']}-{names}-{spec_digest(spec)}"


def slot_order(spec: dict) -> list[int]:
    """The slots a sweep of ``spec["trials"]`` trials runs, in queue order. Grid slots are grid
    point indices: the whole grid in order, or, for fewer trials, a seeded random subset (a
    larger budget later extends the same subset)."""
    if spec["search"] != "grid":
        return list(range(spec["trials"]))
    size = spec["grid_size"]
    if spec["trials"] >= size:
        return list(range(size))
    import numpy as np

    return [int(i) for i in np.random.default_rng(spec["seed"]).permutation(size)[: spec["trials"]]]


def planned_params(spec: dict, slot: int) -> dict:
    """The parameters queued for ``slot``: its grid point, its random draw, or none (TPE)."""
    dimensions = [Dimension.from_json(d) for d in spec["dimensions"]]
    if spec["search"] == "grid":
        sizes = [len(d.values) for d in dimensions]
        params, rest = {}, slot
        for dimension, size in zip(reversed(dimensions), reversed(sizes)):
            rest, index = divmod(rest, size)
            params[dimension.name] = dimension.values[index]
        return {d.name: params[d.name] for d in dimensions}
    if spec["search"] == "random":
        return _random_draws(spec, slot + 1)[slot]
    return {}


def _random_draws(spec: dict, count: int) -> list[dict]:
    """The first ``count`` configurations drawn by a RandomSampler seeded with the sweep's seed:
    the same for any number of workers, and a larger budget extends the same sequence."""
    with _optuna_quietly() as optuna:
        dimensions = [Dimension.from_json(d) for d in spec["dimensions"]]
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=spec["seed"]))
        distributions = {d.name: d.distribution() for d in dimensions}
        return [dict(study.ask(distributions).params) for _ in range(count)]


def make_spec(
    *,
    grid=None,
    params=None,
    sampler: str | None = None,
    trials: int | None = None,
    base_options: dict | None = None,
    preset: str | None = None,
    config_file=None,
    seed: int = 0,
    report: bool = False,
    heartbeat: int = DEFAULT_HEARTBEAT,
) -> dict:
    """Check a sweep's definition and return it as the dict stored in the study.

    ``grid``: ``{option: values}`` or ``--grid`` texts; ``params``: ``{option: spec}`` or
    ``--param`` texts (``sampler`` ``"tpe"`` (default) or ``"random"``); ``base_options``,
    ``preset``, ``config_file``: the training options every trial shares.
    """
    if bool(grid) == bool(params):
        raise ConfigError(
            "give the options to sweep: either --grid NAME=V1,V2 (a grid) or --param NAME=KIND:... "
            "(a random or TPE search), not both"
        )
    if grid:
        dimensions = (
            parse_grid(grid)
            if not isinstance(grid, dict)
            else _unique([grid_dimension(name, values) for name, values in grid.items()], "--grid")
        )
        if sampler not in (None, "grid"):
            raise ConfigError("--sampler applies to --param searches; a --grid runs every point")
        search = "grid"
    else:
        dimensions = (
            parse_params(params)
            if not isinstance(params, dict)
            else _unique([param_dimension(name, spec) for name, spec in params.items()], "--param")
        )
        search = sampler or "tpe"
        if search not in ("random", "tpe"):
            raise ConfigError(f"--sampler: unknown sampler {sampler!r} (choose from random, tpe)")
    base_options = dict(base_options or {})
    for key in list(base_options):
        if key.replace("-", "_") in NOT_SWEPT:
            base_options.pop(key)
    base = resolve_config(preset=preset, config_file=config_file, options=base_options)
    if base.validation_size == 0:
        raise ConfigError("a sweep chooses by validation accuracy: --validation-size must be above 0")
    if base.nproc != 1:
        raise ConfigError("--nproc: sweep trials run one process each; scale a sweep with --jobs instead")
    base_dict = {k: v for k, v in base.to_dict().items() if k not in NOT_SWEPT}
    grid_size = math.prod(len(d.values) for d in dimensions) if search == "grid" else None
    if trials is None:
        trials = grid_size if search == "grid" else DEFAULT_RANDOM_TRIALS
    trials = validation.integer(trials, "--trials")
    if grid_size is not None and trials > grid_size:
        raise ConfigError(f"--trials {trials}: the grid has only {grid_size} point{'s' * (grid_size != 1)}")
    if not isinstance(heartbeat, int) or isinstance(heartbeat, bool) or heartbeat < 1:
        raise ConfigError(f"--heartbeat must be a whole number of seconds above 0, got {heartbeat!r}")
    _check_configurations(base, dimensions, search)
    _check_torch_installed(base, dimensions)
    return {
        "version": SPEC_VERSION,
        "search": search,
        "dimensions": [d.to_json() for d in dimensions],
        "base": base_dict,
        "trials": trials,
        "grid_size": grid_size,
        "seed": int(seed),
        "report": bool(report),
        "heartbeat": heartbeat,
    }


def _check_torch_installed(base: TrainConfig, dimensions: list[Dimension]) -> None:
    """Without PyTorch every torch trial would fail one by one; say it once, before the study exists."""
    import importlib.util

    swept = any(d.name == "backend" and "torch" in map(str, d.values) for d in dimensions)
    if (base.backend == "torch" or swept) and importlib.util.find_spec("torch") is None:
        raise MissingDependencyError(
            "--backend torch needs PyTorch: pip install 'mlplab[torch]' (or pip install torch)"
        )


def _check_configurations(base: TrainConfig, dimensions: list[Dimension], search: str) -> None:
    """Every grid point (or every bound and choice of a search) must be a valid configuration,
    so a typo fails now rather than as a failed trial later."""

    def check(values: dict, where: str) -> None:
        try:
            base.updated({d.name: d.train_value(values[d.name]) for d in dimensions if d.name in values}).validated()
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    if search == "grid":
        for dimension in dimensions:
            for value in dimension.values:
                check({dimension.name: value}, f"--grid {dimension.flag}={_format_value(value, exact=True)}")
        for point in grid_points(dimensions):
            check(
                point,
                "--grid point " + " ".join(f"{_flag(k)}={_format_value(v, exact=True)}" for k, v in point.items()),
            )
        return
    for dimension in dimensions:
        candidates = dimension.values if dimension.categorical else (dimension.low, dimension.high)
        for value in candidates:
            check({dimension.name: value}, f"--param {dimension.describe()}")


def read_spec(study) -> dict:
    spec = study.user_attrs.get(SPEC_KEY)
    if not isinstance(spec, dict):
        raise ConfigError(f"the study {study.study_name!r} was not created by mlplab sweep")
    if spec.get("version") != SPEC_VERSION:
        raise ConfigError(
            f"the study {study.study_name!r} was written by another mlplab version (sweep format {spec.get('version')})"
        )
    return spec
