"""Run the probe in its own process with a time limit, and read back what it found.

The probe runs as ``python -m mlplab.check.probe`` in a new session (its own process group), so
on a timeout the whole group is killed: the learner's code, and anything it started, stops with
it. The results file is read whatever happened; the last "progress" record names the call that
never returned or that took the process down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlplab

DEFAULT_TIMEOUT = 60.0


@dataclass
class Outcome:
    """Everything the probe reported, and how its process ended."""

    folder: Path
    seed: int
    checks: list[dict] = field(default_factory=list)
    notes: list[dict] = field(default_factory=list)
    train: dict | None = None
    #: None when the probe finished; else one line saying how it stopped (timeout, exit status)
    stopped: str | None = None
    output_tail: str = ""

    @property
    def passed(self) -> bool:
        return self.stopped is None and all(c["passed"] for c in self.checks)


def run_probe(folder: Path, seed: int = 0, train: bool = False, timeout: float = DEFAULT_TIMEOUT) -> Outcome:
    """Check the learner's ``folder`` in a child process allowed ``timeout`` seconds."""
    folder = Path(folder).resolve()
    outcome = Outcome(folder, seed)
    src = str(Path(mlplab.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    # One thread each: the arrays are tiny, and parallel checks must not oversubscribe the CPUs.
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[variable] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ left in the learner's folder
    with tempfile.TemporaryDirectory(prefix="mlplab-check-") as tmp:
        results, log = Path(tmp) / "results.jsonl", Path(tmp) / "output.txt"
        results.touch()
        command = [sys.executable, "-m", "mlplab.check.probe", str(folder), str(results), "--seed", str(seed)]
        if train:
            command.append("--train")
        with open(log, "wb") as output:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=tmp,
                env=env,
                start_new_session=True,
            )
            try:
                code = process.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                code, timed_out = None, True
            except BaseException:  # Ctrl-C in mlplab: the learner's code must not outlive it
                _kill_group(process)
                raise
            finally:
                _kill_group(process)  # also whatever their code started and left behind
        records, done, last_call = _read(results)
        outcome.output_tail = _tail(log)
    for record in records:
        kind = record.get("type")
        if kind == "check":
            outcome.checks.append(record)
        elif kind == "note":
            outcome.notes.append(record)
        elif kind == "train":
            outcome.train = record
    if timed_out:
        outcome.stopped = f"stopped after the time limit of {timeout:g} s" + (
            f", during {last_call}" if last_call else ""
        )
    elif not done:
        how = f"exit status {code}" if code is not None and code >= 0 else f"signal {-code}" if code else "no result"
        outcome.stopped = f"the checking process ended early ({how})" + (f", during {last_call}" if last_call else "")
    return outcome


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the probe's process group, and wait (up to 2 s) until none of it is still running."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signal.SIGKILL)
        else:  # pragma: no cover - Windows has no process groups to kill; the probe itself at least
            process.kill()
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
    deadline = time.monotonic() + 2.0
    while _group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _group_alive(group: int) -> bool:
    """Whether a process of ``group`` still runs (zombies do not count); False where /proc is absent."""
    proc = Path("/proc")
    if not proc.is_dir():
        return False
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(group) and fields[0] not in ("Z", "X"):
            return True
    return False


def _read(path: Path) -> tuple[list[dict], bool, str | None]:
    records, done, last_call = [], False, None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
        if not isinstance(record, dict):
            continue
        if record.get("type") == "progress":
            last_call = record.get("call")
        elif record.get("type") == "done":
            done = True
        else:
            records.append(record)
    return records, done, last_call


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])
