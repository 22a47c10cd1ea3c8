"""``mlplab check``: learners' implementations written here, each with one known mistake (two ways
per mistake), must be diagnosed with exactly that mistake's id; correct ones pass with none.

Every folder needs its own probe process, which is most of this file's time, so the catalogue
cases run together in a thread pool once per session (see ``outcomes``)."""

from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mlplab.check.catalogue import MISTAKES, MODULE_SECTIONS, UNRECOGNISED
from mlplab.check.report import as_text, diagnoses
from mlplab.check.runner import run_probe
from mlplab.cli import main

REPO = Path(__file__).resolve().parent.parent

# A learner's correct modules.py, written independently of mlplab.nn (course style: (1, out)
# bias, the cache in attributes, np.where for ELU, a clip in the loss).
MODULES = '''\
import numpy as np


class LinearModule(object):
    def __init__(self, in_features, out_features, input_layer=False):
        std = np.sqrt((1.0 if input_layer else 2.0) / in_features)
        self.params = {"weight": np.random.normal(0.0, std, size=(out_features, in_features)),
                       "bias": np.zeros((1, out_features))}
        self.grads = {"weight": np.zeros((out_features, in_features)), "bias": np.zeros((1, out_features))}
        self.x = None

    def forward(self, x):
        self.x = x
        out = x @ self.params["weight"].T + self.params["bias"]
        return out

    def backward(self, dout):
        self.grads["weight"] = dout.T @ self.x
        self.grads["bias"] = np.sum(dout, axis=0, keepdims=True)
        dx = dout @ self.params["weight"]
        return dx

    def clear_cache(self):
        self.x = None


class ELUModule(object):
    def __init__(self, alpha=1.0):
        self.alpha = alpha
        self.x = None

    def forward(self, x):
        self.x = x
        out = np.where(x > 0, x, self.alpha * (np.exp(np.minimum(x, 0)) - 1))
        return out

    def backward(self, dout):
        x = self.x
        dx = dout * np.where(x > 0, 1.0, self.alpha * np.exp(np.minimum(x, 0)))
        return dx

    def clear_cache(self):
        self.x = None


class SoftMaxModule(object):
    def forward(self, x):
        z = x - np.max(x, axis=1, keepdims=True)
        e = np.exp(z)
        out = e / np.sum(e, axis=1, keepdims=True)
        self.out = out
        return out

    def backward(self, dout):
        y = self.out
        dx = y * (dout - np.sum(dout * y, axis=1, keepdims=True))
        return dx

    def clear_cache(self):
        self.out = None


class CrossEntropyModule(object):
    def forward(self, x, y):
        S = x.shape[0]
        p = np.clip(x[np.arange(S), y], 1e-10, None)
        out = -np.mean(np.log(p))
        return out

    def backward(self, x, y):
        S = x.shape[0]
        dx = np.zeros_like(x)
        dx[np.arange(S), y] = -1.0 / (S * np.clip(x[np.arange(S), y], 1e-10, None))
        return dx
'''

MLP = '''\
from modules import *


class MLP(object):
    def __init__(self, n_inputs, n_hidden, n_classes):
        self.layers = []
        width = n_inputs
        for i, h in enumerate(n_hidden):
            self.layers.append(LinearModule(width, h, input_layer=(i == 0)))
            self.layers.append(ELUModule())
            width = h
        self.layers.append(LinearModule(width, n_classes, input_layer=len(n_hidden) == 0))
        self.layers.append(SoftMaxModule())

    def forward(self, x):
        out = x
        for layer in self.layers:
            out = layer.forward(out)
        return out

    def backward(self, dout):
        for layer in reversed(self.layers):
            dout = layer.backward(dout)

    def clear_cache(self):
        for layer in self.layers:
            layer.clear_cache()
'''

# id -> two learners with that mistake: (file, old text, new text) edits of MODULES / MLP.
# A fourth element n replaces only the first n occurrences.
MUTATIONS = {
    "linear-weight-grad-transposed": {
        "x-transpose-times-dout": [("modules", 'self.grads["weight"] = dout.T @ self.x', 'self.grads["weight"] = self.x.T @ dout')],
        "values-reshaped": [("modules", 'self.grads["weight"] = dout.T @ self.x',
                             'self.grads["weight"] = (self.x.T @ dout).reshape(dout.shape[1], self.x.shape[1])')],
    },
    "linear-weight-grad-scale": {
        "divided-by-batch": [("modules", 'self.grads["weight"] = dout.T @ self.x', 'self.grads["weight"] = dout.T @ self.x / self.x.shape[0]')],
        "mean-of-outer-products": [("modules", 'self.grads["weight"] = dout.T @ self.x',
                                    'self.grads["weight"] = np.mean(dout[:, :, None] * self.x[:, None, :], axis=0)')],
    },
    "linear-bias-grad": {
        "mean": [("modules", "np.sum(dout, axis=0, keepdims=True)", "np.mean(dout, axis=0, keepdims=True)")],
        "wrong-axis": [("modules", "np.sum(dout, axis=0, keepdims=True)", "np.sum(dout, axis=1)")],
    },
    "linear-input-grad": {
        "times-w-transposed": [("modules", 'dx = dout @ self.params["weight"]', 'dx = dout @ self.params["weight"].T')],
        "divided-by-batch": [("modules", 'dx = dout @ self.params["weight"]', 'dx = dout @ self.params["weight"] / dout.shape[0]')],
    },
    "linear-init": {
        "flag-ignored": [("modules", "std = np.sqrt((1.0 if input_layer else 2.0) / in_features)", "std = np.sqrt(2.0 / in_features)")],
        "random-bias": [("modules", '"bias": np.zeros((1, out_features))}', '"bias": np.random.normal(0.0, 0.1, size=(1, out_features))}', 1)],
    },
    "elu-backward": {
        "h-instead-of-h-plus-alpha": [("modules", "self.alpha * np.exp(np.minimum(x, 0)))", "self.alpha * (np.exp(np.minimum(x, 0)) - 1))", 1)],
        "alpha-forgotten": [("modules", "dx = dout * np.where(x > 0, 1.0, self.alpha * np.exp(np.minimum(x, 0)))",
                             "dx = dout * np.where(x > 0, 1.0, np.exp(np.minimum(x, 0)))")],
    },
    "softmax-overflow": {
        "no-shift": [("modules", "z = x - np.max(x, axis=1, keepdims=True)", "z = x")],
        "global-max": [("modules", "z = x - np.max(x, axis=1, keepdims=True)", "z = x - np.max(x)")],
    },
    "softmax-backward-diagonal": {
        "s-times-one-minus-s": [("modules", "dx = y * (dout - np.sum(dout * y, axis=1, keepdims=True))", "dx = dout * y * (1 - y)")],
        "s-minus-s-squared": [("modules", "dx = y * (dout - np.sum(dout * y, axis=1, keepdims=True))", "dx = dout * (y - y ** 2)")],
    },
    "cross-entropy-not-mean": {
        "sum": [("modules", "out = -np.mean(np.log(p))", "out = -np.sum(np.log(p))")],
        "loop": [("modules", "out = -np.mean(np.log(p))", "out = 0.0\n        for value in p:\n            out -= np.log(value)")],
    },
    "cross-entropy-grad-scale": {
        "no-one-over-s": [("modules", "-1.0 / (S * np.clip(", "-1.0 / (np.clip(")],
        "one-over-s-twice": [("modules", "-1.0 / (S * np.clip(", "-1.0 / (S * S * np.clip(")],
    },
    "cross-entropy-log-zero": {
        "no-clip": [("modules", "np.clip(x[np.arange(S), y], 1e-10, None)", "x[np.arange(S), y]")],
        "one-hot-sum": [("modules", "p = np.clip(x[np.arange(S), y], 1e-10, None)\n        out = -np.mean(np.log(p))",
                         "t = np.eye(x.shape[1])[y]\n        out = -np.sum(t * np.log(x)) / S"),
                        ("modules", "dx = np.zeros_like(x)\n        dx[np.arange(S), y] = -1.0 / (S * np.clip(x[np.arange(S), y], 1e-10, None))",
                         "dx = -np.eye(x.shape[1])[y] / (S * x)")],
    },
    "stale-cache": {
        "linear-keeps-first-input": [("modules", "self.x = x\n        out = x @", "if self.x is None:\n            self.x = x\n        out = x @")],
        "softmax-keeps-first-output": [("modules", "self.out = out", 'if getattr(self, "out", None) is None:\n            self.out = out')],
    },
    "mlp-structure": {
        "elu-before-softmax": [("mlp", "self.layers.append(SoftMaxModule())", "self.layers.append(ELUModule())\n        self.layers.append(SoftMaxModule())")],
        "input-layer-flag": [("mlp", "input_layer=(i == 0)", "input_layer=False")],
    },
}

# Correct learners in the assignment's other editions.
EDITIONS = {
    "correct": [],
    "elu-without-alpha": [("modules", "def __init__(self, alpha=1.0):\n        self.alpha = alpha", "def __init__(self):\n        self.alpha = 1.0")],
    "elu-alpha-required": [("modules", "def __init__(self, alpha=1.0):", "def __init__(self, alpha):"),
                           ("mlp", "ELUModule()", "ELUModule(1.0)")],
    "one-hot-labels": [
        ("modules", "p = np.clip(x[np.arange(S), y], 1e-10, None)\n        out = -np.mean(np.log(p))",
         "out = -np.sum(y * np.log(np.clip(x, 1e-10, None))) / S"),
        ("modules", "dx = np.zeros_like(x)\n        dx[np.arange(S), y] = -1.0 / (S * np.clip(x[np.arange(S), y], 1e-10, None))",
         "dx = -y / (S * np.clip(x, 1e-10, None))"),
    ],
}

# mlplab's own modules under the course names, with the course MLP built from them.
OWN_MODULES = "from mlplab.nn import LinearModule, ELUModule, SoftMaxModule, CrossEntropyModule  # noqa: F401\n"

HOSTILE = {
    "import-error": [("modules", "import numpy as np\n", "import numpy as np\nimport a_package_that_does_not_exist\n")],
    "sys-exit": [("modules", "import numpy as np\n", "import sys\nimport numpy as np\nsys.exit(3)\n")],
    "hard-exit-in-forward": [("modules", "        self.out = out\n", "        import os\n        os._exit(3)\n")],
    "forward-returns-none": [("modules", "        self.out = out\n        return out", "        self.out = out\n        return None")],
    "float32-output": [("modules", "out = x @ self.params[\"weight\"].T + self.params[\"bias\"]\n        return out",
                        "out = x @ self.params[\"weight\"].T + self.params[\"bias\"]\n        return out.astype(np.float32)")],
}


def sources(edits) -> dict[str, str]:
    files = {"modules": MODULES, "mlp": MLP}
    for edit in edits:
        name, old, new, *count = edit
        assert old in files[name], f"edit does not apply: {old!r}"
        files[name] = files[name].replace(old, new, *count)
    return files


def write_learner(folder: Path, edits=(), modules: str | None = None) -> Path:
    files = sources(edits)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "modules.py").write_text(modules if modules is not None else files["modules"])
    (folder / "mlp_numpy.py").write_text(files["mlp"])
    return folder


CASES = {f"{mistake}/{way}": edits for mistake, ways in MUTATIONS.items() for way, edits in ways.items()}
CASES.update({f"edition/{name}": edits for name, edits in EDITIONS.items()})


@pytest.fixture(scope="session")
def outcomes(tmp_path_factory):
    """name -> Outcome of every catalogue case and edition, checked four at a time."""
    root = tmp_path_factory.mktemp("learners")
    folders = {name: write_learner(root / name.replace("/", "__"), edits) for name, edits in CASES.items()}
    folders["own-modules"] = write_learner(root / "own-modules", modules=OWN_MODULES)
    # The course's own test compares the loss's gradient with its own forward only: a sum in both passes it.
    folders["sum-in-both"] = write_learner(root / "sum-in-both", MUTATIONS["cross-entropy-not-mean"]["sum"]
                                           + MUTATIONS["cross-entropy-grad-scale"]["no-one-over-s"])
    folders["two-mistakes"] = write_learner(root / "two-mistakes", MUTATIONS["linear-bias-grad"]["mean"]
                                            + MUTATIONS["softmax-overflow"]["global-max"])
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run_probe, folder, 0, False, 120) for name, folder in folders.items()}
        return {name: future.result() for name, future in futures.items()}


def test_every_mistake_has_two_learners_and_a_real_docs_section():
    assert set(MUTATIONS) == set(MISTAKES)
    assert all(len(ways) >= 2 for ways in MUTATIONS.values())
    headings = {line[3:].strip() for line in (REPO / "docs" / "backprop.md").read_text().splitlines()
                if line.startswith("## ")}
    for mistake in MISTAKES.values():
        assert mistake.section in headings, mistake.id
    assert set(MODULE_SECTIONS.values()) <= headings


@pytest.mark.parametrize("case", [name for name in CASES if not name.startswith("edition/")])
def test_each_mistake_is_named_and_nothing_else(outcomes, case):
    outcome = outcomes[case]
    mistake = case.split("/")[0]
    assert outcome.stopped is None, outcome.stopped
    assert not outcome.passed
    found = diagnoses(outcome)
    assert [d["id"] for d in found] == [mistake], as_text(outcome)
    message = found[0]["message"]
    assert f'section "{MISTAKES[mistake].section}"' in message and "Right: " in message
    # The report shows evidence and the right formula, never the right code.
    shown = {line.strip() for line in as_text(outcome).splitlines()}
    for edit in CASES[case]:
        for line in edit[1].splitlines():
            assert line.strip() not in shown


@pytest.mark.parametrize("case", ["edition/correct", "edition/elu-without-alpha", "edition/elu-alpha-required",
                                  "edition/one-hot-labels", "own-modules"])
def test_correct_learners_pass_every_check(outcomes, case):
    outcome = outcomes[case]
    assert outcome.passed, as_text(outcome)
    assert diagnoses(outcome) == []
    modules = {c["module"] for c in outcome.checks}
    assert {"LinearModule", "ELUModule", "SoftMaxModule", "CrossEntropyModule", "MLP"} <= modules
    assert len(outcome.checks) >= 30


def test_editions_are_checked_the_way_they_are_written(outcomes):
    def notes(name):
        return " ".join(n["text"] for n in outcomes[name].notes)

    assert "ELUModule() (α = 1)" in notes("edition/elu-without-alpha")
    assert "α = 1 and 0.5" in notes("edition/elu-alpha-required")
    assert "one-hot" in notes("edition/one-hot-labels")
    assert "integer" in notes("edition/correct")


def test_evidence_names_the_numbers(outcomes):
    by_id = {}
    for name, outcome in outcomes.items():
        for d in diagnoses(outcome):
            by_id.setdefault(name, d["message"])
    assert "÷ 64 (= S, the batch size): a mean where a sum belongs" in by_id["linear-bias-grad/mean"]
    assert "equals the expected dWᵀ" in by_id["linear-weight-grad-transposed/x-transpose-times-dout"]
    assert "dY ⊙ h(x), without the + α" in by_id["elu-backward/h-instead-of-h-plus-alpha"]
    assert "× 64 (= S, the batch size)" in by_id["cross-entropy-not-mean/sum"]
    assert "applied twice" in by_id["cross-entropy-grad-scale/one-over-s-twice"]
    assert "Linear(12 → 5) → ELU → Softmax" in by_id["mlp-structure/elu-before-softmax"]


def test_two_mistakes_are_both_named(outcomes):
    found = diagnoses(outcomes["two-mistakes"])
    assert [(d["id"], d["module"]) for d in found] == [("linear-bias-grad", "LinearModule"),
                                                        ("softmax-overflow", "SoftMaxModule")]


def test_a_loss_summed_consistently_in_both_passes_is_caught(outcomes):
    outcome = outcomes["sum-in-both"]
    assert [d["id"] for d in diagnoses(outcome)] == ["cross-entropy-not-mean", "cross-entropy-grad-scale"]
    central = next(c for c in outcome.checks if c["module"] == "CrossEntropyModule" and "central" in c["name"])
    assert central["passed"]  # the gradient does match the (summed) loss it comes with


def test_docs_show_each_mistake_as_mlplab_check_reports_it(outcomes):
    """docs/check.md's worked examples are real output: each is the first learner of its mistake."""
    docs = (REPO / "docs" / "check.md").read_text()
    for mistake, ways in MUTATIONS.items():
        assert f"### `{mistake}`" in docs
        found = diagnoses(outcomes[f"{mistake}/{next(iter(ways))}"])
        assert f"[{mistake}] {found[0]['module']}: {found[0]['message']}" in docs, mistake


def test_an_unknown_mistake_is_unrecognised_with_its_numbers(tmp_path):
    folder = write_learner(tmp_path / "odd", [("modules", "dx = dout * np.where(x > 0, 1.0,", "dx = 0.9 * dout * np.where(x > 0, 1.1,")])
    outcome = run_probe(folder, timeout=120)
    found = diagnoses(outcome)
    assert [d["id"] for d in found] == [UNRECOGNISED]
    assert found[0]["module"] == "ELUModule" and "relative error" in found[0]["message"]
    assert 'section "Element-wise activations"' in found[0]["message"]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["check", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_table_json_and_exit_codes(tmp_path, capsys):
    good = write_learner(tmp_path / "good")
    code, out, _ = run_cli(capsys, good)
    assert code == 0
    assert "LinearModule" in out and "dW = dYᵀ X" in out and "FAIL" not in out
    bad = write_learner(tmp_path / "bad", MUTATIONS["linear-bias-grad"]["mean"])
    code, out, _ = run_cli(capsys, bad, "--json", "--seed", 3)
    assert code == 1
    report = json.loads(out)
    assert report["seed"] == 3 and report["passed"] is False
    assert [set(d) for d in report["diagnoses"]] == [{"id", "module", "message"}]
    assert report["diagnoses"][0]["id"] == "linear-bias-grad" and report["diagnoses"][0]["module"] == "LinearModule"
    assert all({"name", "module", "passed"} <= set(c) for c in report["checks"])
    assert any(not c["passed"] and c["name"].startswith("db") for c in report["checks"])


def test_usage_errors_exit_2(tmp_path, capsys):
    code, _, err = run_cli(capsys, tmp_path / "missing")
    assert code == 2 and "no such folder" in err
    code, _, err = run_cli(capsys, tmp_path)
    assert code == 2 and "no modules.py" in err
    (tmp_path / "notes.txt").write_text("")
    code, _, err = run_cli(capsys, tmp_path / "notes.txt")
    assert code == 2 and "is a file" in err
    (tmp_path / "modules.py").write_text(MODULES)
    code, _, err = run_cli(capsys, tmp_path, "--train")
    assert code == 2 and "mlp_numpy.py" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("case, expected", [
    ("import-error", "ModuleNotFoundError: No module named 'a_package_that_does_not_exist'"),
    ("sys-exit", "import of modules.py called sys.exit(3)"),
    ("hard-exit-in-forward", "ended early (exit status 3), during SoftMaxModule.forward"),
    ("forward-returns-none", "SoftMaxModule.forward returned None, not an array"),
    ("float32-output", "LinearModule.forward is a float32 array, not float64"),
])
def test_hostile_learner_code_is_reported_cleanly(tmp_path, capsys, case, expected):
    folder = write_learner(tmp_path / case, HOSTILE[case])
    code, out, err = run_cli(capsys, folder)
    assert code == 1
    assert expected in out
    assert err == ""
    if case == "import-error":  # their traceback, their files only
        assert "modules.py, line 2, in <module>" in out and "importlib" not in out


@pytest.mark.slow  # waits out the time limit
def test_an_endless_loop_is_stopped_and_nothing_is_left_running(tmp_path, capsys):
    folder = write_learner(tmp_path / "loop", [
        ("modules", "import numpy as np\n",
         ("import os, subprocess, sys\nimport numpy as np\n"
          "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
          "open(os.path.join(os.path.dirname(__file__), 'pids'), 'w').write(f'{os.getpid()} {child.pid}')\n")),
        ("modules", "        self.x = x\n        out = x @", "        while True:\n            pass\n        out = x @"),
    ])
    started = time.monotonic()
    code, out, _ = run_cli(capsys, folder, "--timeout", 6)
    assert code == 1
    assert "stopped after the time limit of 6 s, during LinearModule.forward" in out
    assert time.monotonic() - started < 60
    for pid in map(int, (folder / "pids").read_text().split()):
        assert not running(pid)


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for a parent that does not reap is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


@pytest.mark.slow
def test_train_compares_losses_step_by_step(tmp_path, capsys):
    good = write_learner(tmp_path / "good")
    code, out, _ = run_cli(capsys, good, "--train")
    assert code == 0
    assert re.search(r"^\s+20\s+\d\.\d{8}\s+\d\.\d{8}", out, re.MULTILINE) and "agree at every step" in out
    bad = write_learner(tmp_path / "bad", MUTATIONS["cross-entropy-grad-scale"]["no-one-over-s"])
    code, out, _ = run_cli(capsys, bad, "--train", "--json")
    assert code == 1
    train = json.loads(out)["train"]
    assert len(train["mlplab"]) == len(train["yours"]) == 20
    assert train["mlplab"][0] == pytest.approx(train["yours"][0], rel=1e-12)  # same initial weights
    assert train["parted_at"] == 2
