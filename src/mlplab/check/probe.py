"""The probe process: ``python -m mlplab.check.probe FOLDER RESULTS [--seed N] [--train]``.

It imports the learner's modules.py (and mlp_numpy.py when present) from FOLDER, runs every
check and appends one JSON record per line to RESULTS. It runs apart from ``mlplab check`` so
that nothing the learner's code does (an endless loop, a crash, ``sys.exit``) can take mlplab
down; the parent enforces the time limit. Records: {"type": "progress", "call"} before each call
into the learner's code, "check" (one report row), "note", "train", and "done" at the end.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from pathlib import Path

import numpy as np

from mlplab.check import (
    check_activations,
    check_linear,
    check_loss,
    check_mlp,
    check_train,
)
from mlplab.check.context import LearnerError, Probe

CLASSES = ("LinearModule", "ELUModule", "SoftMaxModule", "CrossEntropyModule")


def load(probe: Probe, name: str):
    row = probe.row("import", f"import {name}.py")
    try:
        module = probe.call(f"import of {name}.py", importlib.import_module, name)
    except LearnerError as exc:
        row.error(exc)
        row.done()
        return None
    row.done()
    return module


def guarded(probe: Probe, module: str, run, *args):
    """Run one module's checks; anything their objects do that the checks did not foresee (a
    missing method, a list where an array belongs) ends that module's checks with one failed row."""
    try:
        return run(probe, *args)
    except Exception as exc:  # noqa: BLE001 - reported as a finding, the other modules still run
        row = probe.row(module, "usable through the course API")
        row.fail(f"checking stopped: {type(exc).__name__}: {exc}{probe.their_traceback(exc)}", kind="error")
        row.done()
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlplab.check.probe")
    parser.add_argument("folder")
    parser.add_argument("results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", action="store_true")
    args = parser.parse_args(argv)
    folder = Path(args.folder).resolve()
    # Their overflow warnings are findings the checks report; as printed text they are noise.
    warnings.simplefilter("ignore")
    np.seterr(all="ignore")
    sys.path.insert(0, str(folder))
    np.random.seed(args.seed)  # their initialisation draws from the global generator: same seed, same report
    probe = Probe(folder, Path(args.results), args.seed)
    modules = load(probe, "modules")
    if modules is not None:
        classes = {}
        for name in CLASSES:
            cls = getattr(modules, name, None)
            if cls is None:
                row = probe.row(name, "defined in modules.py")
                row.fail(f"modules.py defines no {name}", kind="error")
                row.done()
            else:
                classes[name] = cls
        checks = {
            "LinearModule": check_linear.check,
            "ELUModule": check_activations.check_elu,
            "SoftMaxModule": check_activations.check_softmax,
        }
        for name, run in checks.items():
            if name in classes:
                guarded(probe, name, run, classes[name])
        labels_as = None
        if "CrossEntropyModule" in classes:
            labels_as = guarded(probe, "CrossEntropyModule", check_loss.check, classes["CrossEntropyModule"])
        if labels_as is None:
            labels_as = check_loss.Labels(False)
        if (folder / "mlp_numpy.py").is_file():
            mlp_module = load(probe, "mlp_numpy")
            mlp_cls = getattr(mlp_module, "MLP", None) if mlp_module is not None else None
            if mlp_module is not None and mlp_cls is None:
                row = probe.row("MLP", "defined in mlp_numpy.py")
                row.fail("mlp_numpy.py defines no MLP", kind="error")
                row.done()
            elif mlp_cls is not None and len(classes) < len(CLASSES):
                probe.note("MLP", "not checked: modules.py lacks " + ", ".join(sorted(set(CLASSES) - set(classes))))
            elif mlp_cls is not None:
                layers = {k: v for k, v in classes.items() if k != "CrossEntropyModule"}
                guarded(probe, "MLP", check_mlp.check, mlp_cls, layers)
                if args.train:
                    guarded(
                        probe, "training", check_train.check, mlp_cls, layers, classes["CrossEntropyModule"], labels_as
                    )
        else:
            probe.note("MLP", "no mlp_numpy.py in the folder: the MLP is not checked")
    probe.write({"type": "done"})
    probe.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
