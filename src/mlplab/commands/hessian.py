"""``mlplab hessian``: the loss Hessian of a run's best model — extreme eigenvalues, trace,
spectral density and whether the point looks like a minimum or a saddle."""

from __future__ import annotations

import sys
import time
from pathlib import Path

SPLITS = ("train", "validation", "test")
JSON_NAME = "hessian.json"
DENSITY_NAME = "hessian_density.png"
OBJECTIVE = "mean cross-entropy over the subset (no label smoothing, no weight decay), model in eval mode, float64"
#: the defaults of mlplab.hessian, repeated so that `mlplab --help` need not import NumPy
VERDICT_TOLERANCE = 1e-3
LANCZOS_TOLERANCE = 1e-4


def register(subparsers, parents) -> None:
    parser = subparsers.add_parser(
        "hessian",
        parents=parents,
        help="eigenvalues, trace and density of the loss Hessian of a run's best model",
        description="Load RUN_DIR/best.npz in float64, rebuild the run's data with its saved options and take a "
        "fixed subset of one split. On the mean cross-entropy over that subset, with respect to all parameters: "
        "the largest and smallest Hessian eigenvalues (thick-restart Lanczos on exact Hessian-vector products), "
        "the trace (Hutchinson), optionally the spectral density (stochastic Lanczos quadrature), the gradient "
        "norm and a verdict: 'minimum' if no computed eigenvalue is clearly negative, 'saddle' if the smallest "
        f"is. Writes RUN_DIR/{JSON_NAME} (and {DENSITY_NAME} with --density).",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `mlplab train`")
    parser.add_argument(
        "--split", choices=SPLITS, default="train", help="the split the loss is taken on (default train)"
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=5000,
        metavar="N",
        help="size of the subset: the first N of a seeded permutation of the split (default 5000)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the subset, the Lanczos start and the probes (default 0)"
    )
    parser.add_argument(
        "--top", type=int, default=10, metavar="K", help="largest eigenvalues to compute (default 10, at least 1)"
    )
    parser.add_argument(
        "--bottom", type=int, default=10, metavar="K", help="smallest eigenvalues to compute (default 10, at least 1)"
    )
    parser.add_argument(
        "--trace-samples",
        "--trace_samples",
        dest="trace_samples",
        type=int,
        default=50,
        metavar="N",
        help="Rademacher probes of Hutchinson's trace estimator (default 50; 0 skips the trace)",
    )
    parser.add_argument(
        "--density",
        action="store_true",
        help=f"also estimate the spectral density and plot it to RUN_DIR/{DENSITY_NAME}",
    )
    parser.add_argument(
        "--density-vectors",
        "--density_vectors",
        dest="density_vectors",
        type=int,
        default=4,
        metavar="N",
        help="random start vectors of the density estimate (default 4)",
    )
    parser.add_argument(
        "--density-steps",
        "--density_steps",
        dest="density_steps",
        type=int,
        default=60,
        metavar="N",
        help="Lanczos steps per start vector of the density estimate (default 60)",
    )
    parser.add_argument(
        "--tol",
        type=float,
        default=VERDICT_TOLERANCE,
        metavar="T",
        help=f"an eigenvalue is clearly negative below -T x max|eigenvalue| (default {VERDICT_TOLERANCE:g})",
    )
    parser.add_argument(
        "--lanczos-tol",
        "--lanczos_tol",
        dest="lanczos_tol",
        type=float,
        default=LANCZOS_TOLERANCE,
        metavar="T",
        help="a Ritz value has converged when its residual is below T x max|eigenvalue| "
        f"(default {LANCZOS_TOLERANCE:g})",
    )
    parser.add_argument(
        "--max-products",
        "--max_products",
        dest="max_products",
        type=int,
        default=500,
        metavar="N",
        help="Hessian-vector products Lanczos may spend before it stops unconverged (default 500)",
    )
    parser.add_argument(
        "--batch-size",
        "--batch_size",
        dest="batch_size",
        type=int,
        default=1000,
        metavar="N",
        help="samples per pass inside each Hessian-vector product (default 1000; bounds the memory)",
    )
    parser.add_argument(
        "--data-dir",
        "--data_dir",
        dest="data_dir",
        default=None,
        metavar="DIR",
        help="where the data set lies, if not where the run found it",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(run=run)


def check_options(
    *,
    seed: int,
    samples: int,
    top: int,
    bottom: int,
    trace_samples: int,
    density_vectors: int,
    density_steps: int,
    tol: float,
    lanczos_tol: float,
    max_products: int,
    batch_size: int,
) -> None:
    """Raise ConfigError for the first option out of range."""
    import math

    from mlplab.errors import ConfigError

    for flag, value, low in (
        ("--seed", seed, 0),
        ("--samples", samples, 1),
        ("--top", top, 1),
        ("--bottom", bottom, 1),
        ("--trace-samples", trace_samples, 0),
        ("--density-vectors", density_vectors, 1),
        ("--density-steps", density_steps, 2),
        ("--max-products", max_products, 1),
        ("--batch-size", batch_size, 1),
    ):
        if value < low:
            what = "a positive integer" if low == 1 else f"an integer >= {low}"
            raise ConfigError(f"{flag} must be {what}, got {value}")
    for flag, fraction in (("--tol", tol), ("--lanczos-tol", lanczos_tol)):
        if not (math.isfinite(fraction) and 0 < fraction < 1):
            raise ConfigError(f"{flag} must lie between 0 and 1, got {fraction:g}")


def _load(run_dir: Path, split: str, data_dir):
    from mlplab.config import TrainConfig
    from mlplab.errors import CheckpointError, ConfigError
    from mlplab.training.checkpoint import (
        build_numpy_model,
        checkpoint_path,
        load_checkpoint,
    )
    from mlplab.training.loop import load_data
    from mlplab.training.run import read_config

    if not run_dir.exists():
        raise CheckpointError(f"no run folder at {str(run_dir)!r}")
    if not run_dir.is_dir():
        raise CheckpointError(f"{str(run_dir)!r} is not a run folder")
    checkpoint = load_checkpoint(checkpoint_path(run_dir))
    # float64 whatever the run trained in: products and Lanczos need the precision
    model = build_numpy_model({**checkpoint.meta, "dtype": "float64"}, checkpoint.model)
    options = (
        read_config(run_dir).get("options") if (run_dir / "config.json").exists() else checkpoint.meta.get("config")
    )
    if not options:
        raise CheckpointError(f"run folder {str(run_dir)!r} records no training options")
    if data_dir is not None:
        options = {**options, "data_dir": str(data_dir)}
    data = load_data(TrainConfig.from_options(options).validated())
    dataset = getattr(data, split)
    if len(dataset) == 0:
        raise ConfigError(f"the run in {str(run_dir)!r} has no {split} split; choose another --split")
    if model.n_classes != data.num_classes or model.n_inputs != data.num_features:
        raise CheckpointError(
            f"best.npz in {str(run_dir)!r} expects {model.n_inputs} features and {model.n_classes} classes, "
            f"but the data has {data.num_features} and {data.num_classes}"
        )
    return model, checkpoint.meta, data, dataset


def _holding_run_lock(function):
    """Run ``function(run_dir, ...)`` holding the run folder's lock: hessian.json (and the
    density figure) are written into it, so no training may be writing it at the same time."""
    import functools

    @functools.wraps(function)
    def locked(run_dir, **options):
        from mlplab.training.lock import lock_run_dir

        with lock_run_dir(run_dir):
            return function(run_dir, **options)

    return locked


@_holding_run_lock
def analyse_run(
    run_dir,
    *,
    split: str = "train",
    samples: int = 5000,
    seed: int = 0,
    top: int = 10,
    bottom: int = 10,
    trace_samples: int = 50,
    density: bool = False,
    density_vectors: int = 4,
    density_steps: int = 60,
    tol: float | None = None,
    lanczos_tol: float | None = None,
    max_products: int = 500,
    batch_size: int = 1000,
    data_dir=None,
    progress=None,
) -> dict:
    """Analyse the Hessian of ``run_dir/best.npz`` and write ``hessian.json`` (and the density
    plot) into the run folder; returns what hessian.json holds. ``progress(text)`` is told each
    phase as it ends."""
    import numpy as np

    from mlplab import hessian as hs

    tol = VERDICT_TOLERANCE if tol is None else tol
    lanczos_tol = LANCZOS_TOLERANCE if lanczos_tol is None else lanczos_tol
    check_options(
        seed=seed,
        samples=samples,
        top=top,
        bottom=bottom,
        trace_samples=trace_samples,
        density_vectors=density_vectors,
        density_steps=density_steps,
        tol=tol,
        lanczos_tol=lanczos_tol,
        max_products=max_products,
        batch_size=batch_size,
    )
    say = progress or (lambda text: None)
    run_dir = Path(run_dir)
    began = time.perf_counter()
    model, meta, data, dataset = _load(run_dir, split, data_dir)
    seeds = np.random.SeedSequence(seed).spawn(4)
    x, y = _subset(dataset, samples, seeds[0])
    operator = hs.ModelHessian(model, x, y, batch_size=batch_size)
    timing = {"load_seconds": time.perf_counter() - began}
    gradient_norm = float(np.linalg.norm(operator.gradient))
    say(
        f"{len(y):,} {split} samples, {operator.dim:,} parameters: loss {operator.loss:.4f}, "
        f"gradient norm {gradient_norm:.4g} ({timing['load_seconds']:.1f} s)"
    )
    lanczos = _eigenvalues(operator, top, bottom, lanczos_tol, max_products, seeds[1], timing, say)
    trace = _trace(operator, trace_samples, seeds[2], timing, say) if trace_samples else None
    density_result = None
    if density:
        title = f"Hessian spectral density: {run_dir.name}, {len(y):,} {split} samples"
        density_result = _density(operator, run_dir, density_vectors, density_steps, seeds[3], title, timing, say)
    verdict = _verdict(lanczos, tol)
    timing["total_seconds"] = time.perf_counter() - began
    timing["products"] = operator.products
    timing["seconds_per_product"] = operator.seconds / max(operator.products, 1)
    result = {
        "run_dir": str(run_dir),
        "checkpoint": "best.npz",
        "epoch": meta.get("epoch"),
        "dataset": data.name,
        "split": split,
        "samples": len(y),
        "seed": seed,
        "parameters": operator.dim,
        "objective": OBJECTIVE,
        "method": operator.method,
        "loss": operator.loss,
        "gradient_norm": gradient_norm,
        "eigenvalues": _eigenvalue_record(lanczos),
        "trace": trace,
        "verdict": verdict,
        "density": density_result,
        "timing": timing,
        "mlplab_version": _version(),
    }
    _write_result(run_dir, result)
    return result


# -- the steps of analyse_run -----------------------------------------------------------------
def _version() -> str:
    from mlplab._version import __version__

    return __version__


def _subset(dataset, samples: int, seed):
    """The first ``samples`` of a seeded permutation of the split, in float64."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(dataset))[:samples]
    return dataset.x[order].astype(np.float64), dataset.y[order]


def _eigenvalues(operator, top, bottom, lanczos_tol, max_products, seed, timing: dict, say):
    from mlplab import hessian as hs

    phase = time.perf_counter()
    lanczos = hs.lanczos_extremes(
        operator, operator.dim, top=top, bottom=bottom, tol=lanczos_tol, max_products=max_products, seed=seed
    )
    timing["eigenvalue_seconds"] = time.perf_counter() - phase
    say(
        f"Lanczos: {lanczos.products} products, {lanczos.restarts} restarts, "
        f"{'converged' if lanczos.converged else 'NOT converged'} ({timing['eigenvalue_seconds']:.1f} s)"
    )
    return lanczos


def _eigenvalue_record(lanczos) -> dict:
    return {
        "top": lanczos.top.tolist(),
        "bottom": lanczos.bottom.tolist(),
        "top_residuals": lanczos.top_residuals.tolist(),
        "bottom_residuals": lanczos.bottom_residuals.tolist(),
        "algorithm": "thick-restart Lanczos with full reorthogonalisation",
        "converged": lanczos.converged,
        "products": lanczos.products,
        "restarts": lanczos.restarts,
        "basis_size": lanczos.basis_size,
        "tolerance": lanczos.tolerance,
    }


def _trace(operator, samples: int, seed, timing: dict, say) -> dict:
    from mlplab import hessian as hs

    phase = time.perf_counter()
    estimate = hs.hutchinson_trace(operator, operator.dim, samples, seed=seed)
    timing["trace_seconds"] = time.perf_counter() - phase
    say(f"trace: {estimate.estimate:.6g} ({timing['trace_seconds']:.1f} s)")
    return {
        "estimate": estimate.estimate,
        "standard_error": estimate.standard_error,
        "samples": estimate.samples,
        "estimator": "Hutchinson, Rademacher probes",
    }


def _density(operator, run_dir: Path, vectors: int, steps: int, seed, title: str, timing: dict, say) -> dict:
    from mlplab import hessian as hs
    from mlplab.errors import CheckpointError, StorageError
    from mlplab.plots import plot_density

    phase = time.perf_counter()
    sld = hs.spectral_density(operator, operator.dim, vectors=vectors, steps=steps, seed=seed)
    png = run_dir / DENSITY_NAME
    try:
        plot_density(sld, png, title=title)
    except StorageError:  # already one line naming the file and the cause
        raise
    except OSError as exc:
        raise CheckpointError(f"cannot write {str(png)!r}: {exc}") from None
    timing["density_seconds"] = time.perf_counter() - phase
    say(f"density: wrote {png} ({timing['density_seconds']:.1f} s)")
    return {
        "png": DENSITY_NAME,
        "vectors": vectors,
        "steps": int(sld.nodes.shape[1]),
        "nodes": sld.nodes.tolist(),
        "weights": sld.weights.tolist(),
    }


def _verdict(lanczos, tol: float) -> dict:
    import numpy as np

    from mlplab import hessian as hs

    verdict = hs.classify(np.concatenate([lanczos.top, lanczos.bottom]), tol)
    verdict["converged"] = lanczos.converged
    if not lanczos.converged and verdict["verdict"] == "minimum":
        verdict["reason"] += (
            "; Lanczos did not converge, so a negative eigenvalue may have been missed (raise --max-products)"
        )
    return verdict


def _write_result(run_dir: Path, result: dict) -> None:
    from mlplab.errors import CheckpointError, StorageError
    from mlplab.training.checkpoint import write_json_atomic

    try:
        write_json_atomic(run_dir / JSON_NAME, result)
    except StorageError:
        raise
    except OSError as exc:
        raise CheckpointError(f"cannot write {str(run_dir / JSON_NAME)!r}: {exc}") from None


def format_text(result: dict) -> str:
    """The human-readable form of :func:`analyse_run`'s result."""
    eig = result["eigenvalues"]
    origin = f" (best epoch {result['epoch']})" if result.get("epoch") is not None else ""
    lines = [
        (
            f"{result['run_dir']}{origin}: Hessian of the mean cross-entropy on {result['samples']:,} "
            f"{result['dataset']} {result['split']} samples, {result['parameters']:,} parameters"
        ),
        (
            f"loss {result['loss']:.6g}, gradient norm {result['gradient_norm']:.4g} "
            f"(products by {result['method']}, float64)"
        ),
        "",
        f"{'rank':>4}  {'largest':>12}  {'residual':>8}  {'smallest':>12}  {'residual':>8}",
    ]
    rows = max(len(eig["top"]), len(eig["bottom"]))
    for i in range(rows):
        cells = []
        for values, residuals in ((eig["top"], eig["top_residuals"]), (eig["bottom"], eig["bottom_residuals"])):
            cells.append(f"{values[i]:>12.6g}  {residuals[i]:>8.1e}" if i < len(values) else f"{'':>12}  {'':>8}")
        lines.append(f"{i + 1:>4}  " + "  ".join(cells))
    status = "converged" if eig["converged"] else "NOT converged"
    lines.append(
        f"Lanczos: {eig['products']} products, {eig['restarts']} restarts, {status} "
        f"(residual <= {eig['tolerance']:g} x max|eigenvalue|)"
    )
    if result["trace"]:
        trace = result["trace"]
        error = f" +- {trace['standard_error']:.3g}" if trace["standard_error"] is not None else ""
        lines.append(f"trace (Hutchinson, {trace['samples']} probes): {trace['estimate']:.6g}{error}")
    if result["density"]:
        lines.append(f"spectral density: {Path(result['run_dir']) / result['density']['png']}")
    verdict = result["verdict"]
    lines.append("")
    lines.append(f"verdict: {verdict['verdict']}: {verdict['reason']}")
    timing = result["timing"]
    lines.append(
        f"took {timing['total_seconds']:.1f} s ({timing['products']} Hessian-vector products, "
        f"{timing['seconds_per_product']:.3f} s each); wrote {Path(result['run_dir']) / JSON_NAME}"
    )
    return "\n".join(lines)


def run(args) -> int:
    import json

    def progress(text: str) -> None:
        print(f"mlplab hessian: {text}", file=sys.stderr, flush=True)

    result = analyse_run(
        args.run_dir,
        split=args.split,
        samples=args.samples,
        seed=args.seed,
        top=args.top,
        bottom=args.bottom,
        trace_samples=args.trace_samples,
        density=args.density,
        density_vectors=args.density_vectors,
        density_steps=args.density_steps,
        tol=args.tol,
        lanczos_tol=args.lanczos_tol,
        max_products=args.max_products,
        batch_size=args.batch_size,
        data_dir=args.data_dir,
        progress=None if args.quiet else progress,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_text(result))
    return 0
