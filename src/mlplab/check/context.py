"""What the probe process uses to call the learner's code and record what it finds.

Every call into the learner's code goes through :meth:`Probe.call`: it first writes which call
is running (so a call that never returns can be named after the time limit), and turns an
exception or ``sys.exit`` in their code into a :class:`LearnerError` whose message carries their
traceback, filtered to their own files. Results go to a JSON-lines file, one record per line,
flushed at once, so the parent keeps everything found before a crash.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import numpy as np

from mlplab.check.catalogue import MISTAKES


class LearnerError(Exception):
    """The learner's code raised, exited, or returned something that is not a usable array."""


class Row:
    """One line of the report: a named check of one module, accumulated over several shapes.

    The first failure is the one reported; a later failure replaces it only when it names a
    mistake and the first did not (the named one is the more useful evidence)."""

    def __init__(self, probe: Probe, module: str, name: str):
        self.probe, self.module, self.name = probe, module, name
        self.passed = True
        self.evidence = ""
        self.diagnosis: dict | None = None
        self.kind = "numbers"
        self.written = False

    def fail(self, evidence: str, mistake: str | None = None, kind: str = "numbers") -> None:
        if not self.passed and (self.diagnosis is not None or mistake is None):
            return
        self.passed = False
        self.evidence = evidence
        self.kind = kind
        self.diagnosis = None
        if mistake is not None:
            m = MISTAKES[mistake]
            message = f'{evidence}. Right: {m.formula}. Derived in docs/backprop.md, section "{m.section}".'
            self.diagnosis = {"id": mistake, "message": message}

    def error(self, exc: LearnerError) -> None:
        self.fail(str(exc), kind="error")

    def done(self, evidence: str = "") -> None:
        """Write the row (once); ``evidence`` describes a pass."""
        if self.written:
            return
        self.written = True
        if not self.passed:
            self.probe.failed_modules.add(self.module)
        self.probe.write(
            {
                "type": "check",
                "module": self.module,
                "name": self.name,
                "passed": self.passed,
                "evidence": self.evidence if not self.passed else evidence,
                "kind": self.kind,
                "diagnosis": self.diagnosis,
            }
        )


class Probe:
    def __init__(self, folder: Path, out_path: Path, seed: int):
        self.folder = Path(folder).resolve()
        self.out = open(out_path, "a", encoding="utf-8")  # open for the probe's whole life, closed by close()
        self.seed = seed
        self.seed_sequence = np.random.SeedSequence(seed)
        self.failed_modules: set[str] = set()

    # -- records ---------------------------------------------------------------------------
    def write(self, record: dict) -> None:
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()

    def row(self, module: str, name: str) -> Row:
        return Row(self, module, name)

    def note(self, module: str, text: str) -> None:
        self.write({"type": "note", "module": module, "text": text})

    def rng(self) -> np.random.Generator:
        """A fresh generator, the next in a sequence fixed by --seed."""
        return np.random.default_rng(self.seed_sequence.spawn(1)[0])

    # -- calling the learner ---------------------------------------------------------------
    def call(self, what: str, fn, *args, **kwargs):
        self.write({"type": "progress", "call": what})
        try:
            return fn(*args, **kwargs)
        except SystemExit as exc:
            raise LearnerError(f"{what} called sys.exit({exc.code!r}){self.their_traceback(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - anything their code raises is a finding
            message = f"{what} raised {type(exc).__name__}: {exc}".rstrip()
            raise LearnerError(message + self.their_traceback(exc)) from None

    def their_traceback(self, exc: BaseException) -> str:
        """The frames of ``exc``'s traceback that lie in the learner's folder, as text ('' if none)."""
        lines = []
        for frame in traceback.extract_tb(exc.__traceback__):
            try:
                path = Path(frame.filename).resolve()
            except OSError:
                continue
            if self.folder in path.parents:
                lines.append(f"  {path.relative_to(self.folder)}, line {frame.lineno}, in {frame.name}")
                if frame.line:
                    lines.append(f"    {frame.line.strip()}")
        if isinstance(exc, SyntaxError) and exc.filename:
            lines.append(f"  {Path(exc.filename).name}, line {exc.lineno}")
            if exc.text:
                lines.append(f"    {exc.text.strip()}")
        return ("\n" + "\n".join(lines)) if lines else ""

    def array(self, what: str, value, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """``value`` if it is a float64 NumPy array (of ``shape`` when given), else LearnerError."""
        if value is None:
            raise LearnerError(f"{what} returned None, not an array")
        if not isinstance(value, np.ndarray):
            raise LearnerError(f"{what} returned a {type(value).__name__}, not a NumPy array")
        if value.dtype != np.float64:
            raise LearnerError(
                f"{what} is a {value.dtype} array, not float64 (the checks feed float64 arrays "
                f"and compare to 1e-7: keep the input's dtype)"
            )
        if shape is not None and value.shape != tuple(shape):
            raise LearnerError(f"{what} has shape {value.shape}, expected {tuple(shape)}")
        return value

    def scalar(self, what: str, value) -> float:
        """A loss value: a Python or NumPy number, or an array of one element."""
        if value is None:
            raise LearnerError(f"{what} returned None, not a number")
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise LearnerError(f"{what} returned a {type(value).__name__}, not a number") from None
        if array.size != 1:
            raise LearnerError(f"{what} returned {array.size} values (shape {array.shape}), not one number")
        return float(array.reshape(-1)[0])

    def close(self) -> None:
        self.out.close()


def tagged(tag: str, exc: LearnerError) -> str:
    """The error's text, prefixed with the shape ``tag`` unless it already names it."""
    text = str(exc)
    return text if tag in text else f"{tag}: {text}"
