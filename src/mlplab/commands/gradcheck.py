"""``mlplab gradcheck``: every module and small MLPs against central finite differences."""

from __future__ import annotations

from mlplab.gradcheck import DEFAULT_TOLERANCE, NOISE_LEVEL


def register(subparsers, parents) -> None:
    parser = subparsers.add_parser(
        "gradcheck",
        parents=parents,
        help="check every backward pass against finite differences",
        description="Check every module's input and parameter gradients, and small MLPs with each option, "
        "against central finite differences in float64. Exits 1 if any check fails.",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs and weights (default 0)")
    parser.add_argument(
        "--tol",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"largest relative error that passes (default {DEFAULT_TOLERANCE:g})",
    )
    parser.add_argument(
        "--array-library",
        "--array_library",
        dest="array_library",
        default="numpy",
        metavar="NAME",
        help="run the checks on numpy (default), torch, cupy or array-api-strict arrays",
    )
    parser.add_argument(
        "--device", default="auto", metavar="NAME", help="auto (default), cpu or cuda: where those arrays live"
    )
    parser.set_defaults(run=run)


def run(args) -> int:
    from mlplab.gradcheck import run_all

    if not args.tol > 0:
        from mlplab.errors import ConfigError

        raise ConfigError(f"--tol must be positive, got {args.tol}")
    from mlplab import validation
    from mlplab.config import DEVICES
    from mlplab.xp import LIBRARIES

    library = validation.choice(
        str(args.array_library).replace("_", "-"),
        "--array-library",
        tuple(LIBRARIES),
        what="array library",
        normalise=False,
    )
    device = validation.choice(args.device, "--device", DEVICES)
    results = run_all(seed=args.seed, tol=args.tol, array_library=library, device=device)
    width_m = max(len(r.module) for r in results)
    width_q = max(len(r.quantity) for r in results)
    print(f"{'module':<{width_m}}  {'quantity':<{width_q}}  {'max rel. error':>14}  result")
    noise = False
    for r in results:
        verdict = "FAIL"
        if r.passed:
            verdict = "pass" if r.max_relative_error <= r.tolerance else "pass*"
            noise = noise or verdict == "pass*"
        print(f"{r.module:<{width_m}}  {r.quantity:<{width_q}}  {r.max_relative_error:>14.2e}  {verdict}")
    failed = sum(not r.passed for r in results)
    if noise:
        print(
            f"\n* zero in exact arithmetic (a bias followed by batch normalisation): both gradients are rounding "
            f"noise below {2 * NOISE_LEVEL:g} and differ by at most {NOISE_LEVEL:g}, so the relative error means nothing"
        )
    on = "" if library == "numpy" else f", on {library} arrays"
    print(
        f"\n{len(results) - failed} passed, {failed} failed (tolerance {args.tol:g}, float64 central differences{on})"
    )
    return 1 if failed else 0
