"""A plain ``pip install mlplab`` (no extra) runs the main job, and every command either works
or stops with one line naming what to install, whatever optional packages are missing.

Two ways to be without the optional packages:
- fast: each command runs in a subprocess whose imports cannot see them (a ``sitecustomize``
  on PYTHONPATH wraps every import finder; child processes inherit it), so ``import torch``
  fails exactly as if torch had never been installed, ``importlib.util.find_spec`` returns
  None and ``importlib.metadata`` finds no distribution;
- slow, the real thing: a wheel built from this checkout, installed with ``pip install
  --no-deps --no-index`` into a fresh venv that sees only numpy, matplotlib, tqdm and their
  own dependencies (linked from this environment: no network needed).
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

#: import names of every optional dependency (the extras and the test-only packages)
OPTIONAL = ("torch", "scipy", "sklearn", "optuna", "tensorboard", "tensorboardX", "mlflow",
            "psycopg2", "psycopg", "sqlalchemy")
ALL = ",".join(OPTIONAL)

SITECUSTOMIZE = r'''
"""Test harness (tests/test_plain_install.py): hide the packages named in MLPLAB_TEST_HIDE."""
import importlib.metadata
import os
import sys

_hidden = {name for name in os.environ.get("MLPLAB_TEST_HIDE", "").split(",") if name}
_already = sorted(name for name in sys.modules if name.partition(".")[0] in _hidden)
if _already:
    raise SystemExit(f"sitecustomize: cannot hide {_already}: imported before sitecustomize ran")
_owners = importlib.metadata.packages_distributions()
_hidden_dists = {dist.lower().replace("_", "-") for name in _hidden for dist in _owners.get(name, ())}


class _Hiding:
    """Wraps one import finder so that it never finds a hidden package or its distribution."""

    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _hidden:
            return None
        find = getattr(self._finder, "find_spec", None)
        return find(name, path, target) if find is not None else None

    def find_distributions(self, *args, **kwargs):
        find = getattr(self._finder, "find_distributions", None)
        for dist in (find(*args, **kwargs) if find is not None else ()):
            if (dist.metadata["Name"] or "").lower().replace("_", "-") not in _hidden_dists:
                yield dist

    def __getattr__(self, name):
        return getattr(self._finder, name)


sys.meta_path[:] = [_Hiding(finder) for finder in sys.meta_path]
'''


@pytest.fixture(scope="module")
def hiding_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hide")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return folder


def run_hidden(hiding_dir, hidden: str, *args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """``python -m mlplab ARGS`` (or ``python -c`` with ``args[0] == "-c"``) without ``hidden``."""
    env = dict(os.environ, MLPLAB_TEST_HIDE=hidden, PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(hiding_dir), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("MLPLAB_DEBUG", None)
    command = [sys.executable, *(args if args and args[0] == "-c" else ("-m", "mlplab", *args))]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def one_error_line(result, *patterns, code=1) -> str:
    """The command failed with exit ``code`` and exactly one stderr line matching every pattern."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code and len(lines) == 1, (result.returncode, result.stderr)
    for pattern in patterns:
        assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# -- the harness hides what it says it hides --------------------------------------------------------
def test_hidden_packages_are_gone_for_import_find_spec_and_metadata(hiding_dir):
    probe = ("import importlib.metadata, importlib.util, json, sys\n"
             "names = sys.argv[1].split(',')\n"
             "report = {}\n"
             "for name in names:\n"
             "    try:\n"
             "        __import__(name)\n"
             "        imported = True\n"
             "    except ModuleNotFoundError as exc:\n"
             "        imported = exc.name\n"
             "    report[name] = [imported, importlib.util.find_spec(name) is None]\n"
             "report['dists'] = sorted(d.metadata['Name'].lower() for d in importlib.metadata.distributions())\n"
             "import numpy, matplotlib, tqdm, mlplab\n"
             "print(json.dumps(report))\n")
    present = [name for name in ("torch", "scipy", "sklearn", "optuna") if installed(name)]
    if not present:
        pytest.skip("none of the optional packages is installed here: nothing to hide")
    result = run_hidden(hiding_dir, ALL, "-c", probe, ",".join(present))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for name in present:
        assert report[name] == [name, True], name  # ModuleNotFoundError naming it, and no spec
    assert "numpy" in report["dists"] and not {"torch", "scipy", "scikit-learn", "optuna"} & set(report["dists"])


# -- the main job -----------------------------------------------------------------------------------
RUN_FILES = {"best.npz", "last.npz", "config.json", "summary.json", "history.csv", "steps.csv", "report.md",
             "report.html", "curves.png", "confusion.png", "per_class.png", "loss_steps.png"}
TRAIN_ARGS = ("train", "--dataset", "digits", "--epochs", "3", "--hidden-dims", "32", "-q")


def history_without_times(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


@pytest.mark.slow
def test_digits_training_without_any_optional_package(hiding_dir, tmp_path):
    plain = run_hidden(hiding_dir, ALL, *TRAIN_ARGS, "--out", str(tmp_path / "plain"))
    assert plain.returncode == 0 and "Traceback" not in plain.stderr, plain.stderr
    assert RUN_FILES <= {p.name for p in (tmp_path / "plain").iterdir()}
    summary = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.5 and len(history_without_times(tmp_path / "plain")) == 3
    # The optional packages change nothing in the numbers: the same run with all of them visible.
    full = run_hidden(hiding_dir, "", *TRAIN_ARGS, "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    assert history_without_times(tmp_path / "plain") == history_without_times(tmp_path / "full")
    assert json.loads((tmp_path / "full" / "summary.json").read_text())["test_accuracy"] == summary["test_accuracy"]


@pytest.mark.parametrize("hidden", [ALL, "scipy"], ids=["without-all", "without-scipy"])
def test_gradcheck_checks_the_exact_gelu_without_scipy(hiding_dir, hidden):
    result = run_hidden(hiding_dir, hidden, "gradcheck")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    gelu_rows = [line for line in result.stdout.splitlines() if line.startswith("GELU(none)")]
    assert gelu_rows and all(line.split()[-1] == "pass" for line in gelu_rows), result.stdout
    assert re.search(r"\b0 failed\b", result.stdout)


@pytest.mark.parametrize("hidden", [ALL, "torch"], ids=["without-all", "without-torch"])
def test_torch_backend_without_torch_is_one_line(hiding_dir, tmp_path, hidden):
    result = run_hidden(hiding_dir, hidden, "train", "--dataset", "digits", "--backend", "torch", "--epochs", "1",
                        "--out", str(tmp_path / "run"))
    one_error_line(result, r"--backend torch needs PyTorch", r"pip install 'mlplab\[torch\]'")
    assert result.stdout == ""


# -- every other command, with everything optional missing ---------------------------------------------
@pytest.fixture(scope="module")
def numpy_run(tmp_path_factory):
    """A small finished NumPy run (trained in this process: the run folder is the same either way)."""
    import mlplab

    out = tmp_path_factory.mktemp("plain-run") / "run"
    mlplab.train(dataset="digits", hidden_dims=[16], epochs=2, out=str(out), quiet=True)
    return out


#: (arguments, what is hidden, exit code, patterns of the one error line or None for success);
#: RUN stands for a finished NumPy run folder, OUT for a fresh folder
COMMANDS = [
    (("evaluate", "RUN"), ALL, 0, None),
    (("report", "RUN"), ALL, 0, None),
    (("hessian", "RUN", "--top", "2", "--bottom", "2", "--trace-samples", "4", "--samples", "200", "-q"), ALL, 0, None),
    (("gradflow", "--depth", "3", "--width", "16", "--out", "OUT"), ALL, 0, None),
    (("presets",), ALL, 0, None),
    (("train", "--resume", "RUN", "--epochs", "3", "-q"), ALL, 0, None),
    (("compare", "--dataset", "digits", "--epochs", "1", "--out", "OUT"), ALL, 1, [r"PyTorch", r"mlplab\[torch\]"]),
    (("train", "--dataset", "digits", "--backend", "torch", "--nproc", "2", "--out", "OUT"), ALL, 1,
     [r"PyTorch", r"mlplab\[torch\]"]),
    (("sweep", "--dataset", "digits", "--grid", "lr=0.1", "--epochs", "1", "--out", "OUT"), ALL, 1,
     [r"Optuna", r"pip install 'mlplab\[sweep\]'"]),
    (("sweep", "--dataset", "digits", "--grid", "lr=0.1", "--epochs", "1", "--backend", "torch", "--out", "OUT"),
     "torch", 1, [r"PyTorch", r"mlplab\[torch\]"]),
    (("sweep", "--dataset", "digits", "--grid", "backend=numpy,torch", "--epochs", "1", "--out", "OUT"),
     "torch", 1, [r"PyTorch", r"mlplab\[torch\]"]),
    (("sweep", "--dataset", "digits", "--grid", "lr=0.1", "--epochs", "1", "--out", "OUT"), "sqlalchemy", 1,
     [r"sqlalchemy", r"pip install"]),
]


@pytest.mark.parametrize("args, hidden, code, patterns", COMMANDS,
                         ids=["evaluate", "report", "hessian", "gradflow", "presets", "resume", "compare", "nproc",
                              "sweep", "sweep-torch", "sweep-grid-backend", "sweep-no-sqlalchemy"])
def test_each_command_works_or_names_what_to_install(hiding_dir, numpy_run, tmp_path, args, hidden, code, patterns):
    if args[0] == "sweep" and hidden != ALL and not installed("optuna"):
        pytest.skip("needs Optuna installed, to be without only the other package")
    run_dir = tmp_path / "run"
    if "RUN" in args:
        shutil.copytree(numpy_run, run_dir)
    out = tmp_path / "out"
    argv = [str(run_dir) if a == "RUN" else str(out) if a == "OUT" else a for a in args]
    result = run_hidden(hiding_dir, hidden, *argv, cwd=tmp_path)
    if patterns is None:
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        return
    one_error_line(result, *patterns, code=code)
    if args[0] == "sweep":  # stopped before creating a study whose every trial would fail
        assert not (out / "study.db").exists()


@pytest.mark.parametrize("command", ["", "train", "evaluate", "report", "compare", "gradcheck", "presets",
                                     "hessian", "gradflow", "sweep"])
def test_help_of_every_command_without_optional_packages(hiding_dir, command):
    result = run_hidden(hiding_dir, ALL, *filter(None, [command, "--help"]))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "usage: mlplab" in result.stdout


def test_cli_turns_a_stray_import_error_into_one_line(hiding_dir):
    """The net under every command: a missing module no command names gets one line with the
    pip command (``--debug`` still shows the traceback)."""
    from mlplab.cli import missing_package_message

    exc = ModuleNotFoundError("No module named 'sklearn'", name="sklearn")
    assert missing_package_message(exc) == "No module named 'sklearn': pip install scikit-learn"
    exc = ImportError("cannot import name 'x' from 'mlplab.nn' (somewhere)", name="mlplab.nn")
    assert missing_package_message(exc) == "cannot import name 'x' from 'mlplab.nn' (somewhere)"
    # through main(): a command whose run raises ImportError
    code = ("import sys\n"
            "from mlplab import cli\n"
            "import mlplab.commands.presets as presets\n"
            "def broken(args):\n"
            "    import psycopg2\n"
            "presets.run = broken\n"
            "sys.exit(cli.main(sys.argv[1:]))\n")
    one_error_line(run_hidden(hiding_dir, ALL, "-c", code, "presets"),
                   r"^mlplab presets: error: No module named 'psycopg2': pip install psycopg2-binary$")
    debug = run_hidden(hiding_dir, ALL, "-c", code, "presets", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


# -- the real thing: a wheel in a fresh venv ------------------------------------------------------------
def _distribution_closure(names) -> list[importlib.metadata.Distribution]:
    """The distributions ``names`` need to run, recursively (no extras; markers of this Python)."""
    from packaging.requirements import Requirement

    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        dist = importlib.metadata.distribution(name)
        seen[key] = dist
        for text in dist.requires or ():
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(seen.values())


def _link_distributions(dists, site_packages: Path) -> None:
    """Make ``dists`` importable in another venv by linking their top-level files and folders."""
    for dist in dists:
        base = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith("..")}
        for top in tops - {"__pycache__"}:
            target = site_packages / top
            if (base / top).exists() and not target.exists():
                target.symlink_to(base / top)


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_the_main_job(tmp_path):
    """``pip install`` of the wheel, no extra, into a venv without any optional package: the
    bundled digits train, gradcheck passes, and --backend torch names the extra."""
    pytest.importorskip("packaging")
    if os.name == "nt":
        pytest.skip("the venv layout below is POSIX's")
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ and egg-info there
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    try:
        import setuptools

        isolation = [] if int(setuptools.__version__.split(".")[0]) >= 64 else None
    except ImportError:
        isolation = None
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(source)]
    if isolation is not None:  # build offline with this environment's setuptools
        build[4:4] = ["--no-build-isolation", "--no-index"]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("mlplab-*.whl"))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site_packages = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        check=True, capture_output=True, text=True).stdout.strip())
    _link_distributions(_distribution_closure(["numpy", "matplotlib", "tqdm"]), site_packages)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True, timeout=300)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    def mlplab(*args):
        return subprocess.run([str(venv / "bin" / "mlplab"), *args], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, check=False)

    probe = ("import mlplab, importlib.util as u; print(mlplab.__file__); "
             "print([n for n in ('torch', 'scipy', 'sklearn', 'optuna') if u.find_spec(n)])")
    where = subprocess.run([str(python), "-c", probe], env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    assert where[0].startswith(str(venv)) and where[1] == "[]", where  # the installed copy, nothing optional
    train = mlplab(*TRAIN_ARGS, "--out", "run")
    assert train.returncode == 0 and "Traceback" not in train.stderr, train.stderr
    assert RUN_FILES <= {p.name for p in (tmp_path / "run").iterdir()}
    check = mlplab("gradcheck")
    assert check.returncode == 0 and re.search(r"\b0 failed\b", check.stdout), check.stdout + check.stderr
    one_error_line(mlplab("train", "--dataset", "digits", "--backend", "torch", "--out", "torch-run"),
                   r"pip install 'mlplab\[torch\]'")


# -- the README tells a newcomer the plain install first ---------------------------------------------
def test_readme_main_job_installs_no_extra_and_its_extras_exist():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")

    readme = (REPO / "README.md").read_text()
    start = readme.index("Install and run the main job")
    command = re.search(r"```bash\n(.*?)```", readme[start:], re.DOTALL).group(1).strip()
    install = command.split("&&")[0].split()
    assert install[:2] == ["pip", "install"] and install[-1] == "." and "[" not in command, command
    table = readme[readme.index("### Extras"):]
    table = table[:table.index("\n## ")]
    named = set(re.findall(r"^\| `\[([a-z0-9_-]+)\]`", table, re.MULTILINE))
    declared = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    assert {"torch", "sweep"} <= named <= declared, (named, declared)
