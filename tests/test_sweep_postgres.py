"""Sweeps on a real PostgreSQL server started by the test run (issue 18, part 2): every URL
spelling, worker processes sharing one study, a killed worker's trial run again, and the
driver and connection problems a user meets, each as one line."""

from __future__ import annotations

import csv
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

import pg_server

from mlplab import sweep as sweeping
from mlplab.cli import main

#: tiny trials on digits
BASE = ["--dataset", "digits", "--hidden-dims", "8", "--epochs", "2"]
DRIVERS = ("psycopg", "psycopg2")
#: set (as .ci/run does) where a PostgreSQL server must start: a failure is then an error, not a skip
REQUIRE_VARIABLE = "MLPLAB_TEST_REQUIRE_POSTGRES"


def installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server of its own for this test session (stopped at the end, pass or fail)."""
    try:
        server = pg_server.start()
    except pg_server.Unavailable as exc:
        if os.environ.get(REQUIRE_VARIABLE):
            pytest.fail(f"no PostgreSQL server could be started: {exc}")
        pytest.skip(f"no PostgreSQL server could be started: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _no_storage_variable(monkeypatch):
    monkeypatch.delenv(sweeping.STORAGE_VARIABLE, raising=False)


def hide(monkeypatch, *modules: str) -> None:
    """Make ``import module`` fail in this process, as if the package were not installed."""
    for module in modules:
        for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, module, None)


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def assert_one_line_error(code: int, output: str, *, password: str, contains: str) -> str:
    line = output.strip()
    assert code == 1, output
    assert len(line.splitlines()) == 1 and line.startswith("mlplab sweep: error: "), output
    assert "Traceback" not in output and password not in output
    assert contains in line, line
    return line


def load_trials(url: str, name: str):
    storage = sweeping.open_storage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    finally:
        storage.engine.dispose()


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def worker(name: str, out: Path, url: str, *extra: str) -> subprocess.Popen:
    """``mlplab sweep --worker`` in a process of its own; the password travels in the environment."""
    env = dict(os.environ, **{sweeping.STORAGE_VARIABLE: url})
    command = [sys.executable, "-m", "mlplab", "sweep", "--worker", "--study-name", name, "--out", str(out), "-q", *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, timeout: float = 180) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"worker {process.pid} did not finish: {output}")
    assert process.returncode == 0, output
    return output


# -- the driver ---------------------------------------------------------------------------------
@pytest.mark.parametrize("spelling, hidden, package", [
    ("postgresql", ("psycopg", "psycopg2"), "pip install 'mlplab[postgres]'"),
    ("postgres", ("psycopg", "psycopg2"), "pip install 'mlplab[postgres]'"),
    ("postgresql+psycopg", ("psycopg",), "pip install 'mlplab[postgres]'"),
    ("postgresql+psycopg2", ("psycopg2",), "pip install psycopg2-binary"),
])
def test_a_missing_driver_is_one_line_naming_the_package(tmp_path, capsys, monkeypatch, spelling, hidden, package):
    hide(monkeypatch, *hidden)
    url = f"{spelling}://sweeper:NEVER-SHOWN@127.0.0.1:9/sweeps"
    code, output = run_cli(["sweep", *BASE, "--grid", "lr=0.1", "--storage", url, "--study-name", "s",
                            "--out", str(tmp_path / "out")], capsys)
    line = assert_one_line_error(code, output, password="NEVER-SHOWN", contains=package)
    assert "sweeper:***@127.0.0.1" in line


def test_a_driver_sqlalchemy_does_not_know_is_one_line(tmp_path, capsys):
    url = "postgresql+psycopg7://sweeper:NEVER-SHOWN@127.0.0.1:9/sweeps"
    code, output = run_cli(["sweep", *BASE, "--grid", "lr=0.1", "--storage", url, "--out", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, output, password="NEVER-SHOWN", contains="knows no database driver 'postgresql+psycopg7'")


def test_a_bare_url_uses_whichever_driver_is_installed(monkeypatch):
    if not installed("psycopg2"):
        pytest.skip("psycopg2 is not installed")
    hide(monkeypatch, "psycopg")
    assert sweeping.engine_url("postgresql://a:b@h/d") == "postgresql+psycopg2://a:b@h/d"
    assert sweeping.engine_url("postgresql+psycopg2://a:b@h/d") == "postgresql+psycopg2://a:b@h/d"
    assert sweeping.engine_url("sqlite:///x.db") == "sqlite:///x.db"


# -- connection problems ------------------------------------------------------------------------
def connection_error(tmp_path, capsys, url: str, password: str, contains: str) -> str:
    code, output = run_cli(["sweep", *BASE, "--grid", "lr=0.1", "--storage", url, "--study-name", "s",
                            "--out", str(tmp_path / "out")], capsys)
    return assert_one_line_error(code, output, password=password, contains=contains)


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_refused_connection_is_one_line(tmp_path, capsys, driver):
    if not installed(driver):
        pytest.skip(f"{driver} is not installed")
    port = pg_server._free_port()  # nothing listens there
    connection_error(tmp_path, capsys, f"postgresql+{driver}://sweeper:NEVER-SHOWN@127.0.0.1:{port}/sweeps", "NEVER-SHOWN",
                     "Connection refused")


@pytest.mark.parametrize("driver", DRIVERS)
def test_wrong_credentials_are_one_line_without_the_password(tmp_path, capsys, postgres, driver):
    if not installed(driver):
        pytest.skip(f"{driver} is not installed")
    wrong = "wrong-" + postgres.password
    line = connection_error(tmp_path, capsys, postgres.url(driver, password=wrong), wrong,
                            'password authentication failed for user "sweeper"')
    assert postgres.password not in line


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_database_that_does_not_exist_is_one_line(tmp_path, capsys, postgres, driver):
    if not installed(driver):
        pytest.skip(f"{driver} is not installed")
    connection_error(tmp_path, capsys, postgres.url(driver, database="nosuchdb"), postgres.password,
                     'database "nosuchdb" does not exist')


# -- sweeps on the server -----------------------------------------------------------------------
@pytest.mark.parametrize("spelling, hidden", [
    (None, ()),  # postgresql://, as in the README
    ("psycopg", ()),
    ("psycopg2", ()),
    (None, ("psycopg",)),  # postgresql:// where only psycopg2 is installed
])
def test_every_url_spelling_runs_a_sweep(tmp_path, capsys, monkeypatch, postgres, spelling, hidden):
    needed = [spelling] if spelling else [d for d in DRIVERS if d not in hidden][:1]
    if not all(installed(d) for d in needed):
        pytest.skip(f"{needed[0]} is not installed")
    hide(monkeypatch, *hidden)
    name = f"spelling-{spelling or 'bare'}-{'-'.join(hidden) or 'all'}"
    url = postgres.url(spelling)
    monkeypatch.setenv(sweeping.STORAGE_VARIABLE, url)  # the README's way: no password on the command line
    code, output = run_cli(["sweep", *BASE, "--grid", "lr=0.1,0.2", "--study-name", name, "--out", str(tmp_path / "out")],
                           capsys)
    assert code == 0, output
    assert postgres.password not in output
    rows = read_rows(tmp_path / "out" / "results.csv")
    assert sorted(float(r["lr"]) for r in rows) == [0.1, 0.2] and {r["state"] for r in rows} == {"COMPLETE"}
    assert len([t for t in load_trials(url, name) if t.state.name == "COMPLETE"]) == 2


def grid_params(trials) -> list[tuple]:
    return [(t.params["lr"], t.params["hidden_dims"]) for t in trials]


def test_two_worker_processes_split_a_grid_and_run_every_point_once(tmp_path, capsys, monkeypatch, postgres):
    lrs, widths = (0.05, 0.1, 0.2, 0.3), ("8", "16", "8x8")
    name, out, url = "split", tmp_path / "split", postgres.url()
    monkeypatch.setenv(sweeping.STORAGE_VARIABLE, url)
    grid = ["--grid", "lr=" + ",".join(map(str, lrs)), "--grid", "hidden-dims=" + ",".join(widths)]
    code, output = run_cli(["sweep", *BASE, *grid, "--study-name", name, "--out", str(out), "--jobs", "0"], capsys)
    assert code == 0, output
    # Each worker may run at most 8 of the 12 points, so neither can take the whole grid.
    workers = [worker(name, out, url, "--worker-trials", "8") for _ in range(2)]
    for process in workers:
        finish(process)
    trials = load_trials(url, name)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(grid_params(complete)) == sorted(itertools.product(lrs, widths))  # each point exactly once
    assert {t.state.name for t in trials if t not in complete} <= {"PRUNED"}  # at most a surplus take
    per_worker = [sum(1 for t in complete if t.user_attrs["pid"] == process.pid) for process in workers]
    assert sum(per_worker) == 12 and all(4 <= n <= 8 for n in per_worker), per_worker
    # The creating command, run again, trains nothing and writes every result.
    code, output = run_cli(["sweep", *BASE, *grid, "--study-name", name, "--out", str(out), "--jobs", "0"], capsys)
    assert code == 0 and "12 finished, 0 to run" in output
    assert len(read_rows(out / "results.csv")) == 12


def running_trial_of(url: str, name: str, pid: int):
    for trial in load_trials(url, name):
        if trial.state.name == "RUNNING" and trial.user_attrs.get("pid") == pid and "run_dir" in trial.user_attrs:
            return trial
    return None


@pytest.mark.slow
def test_a_killed_workers_trial_is_run_again_by_another_worker(tmp_path, capsys, monkeypatch, postgres):
    name, out, url = "killed", tmp_path / "killed", postgres.url()
    monkeypatch.setenv(sweeping.STORAGE_VARIABLE, url)
    # Long enough trials (50 epochs of a small net: a second or two) that the worker is caught in one.
    base = ["--dataset", "digits", "--hidden-dims", "32", "--epochs", "50", "--batch-size", "64"]
    grid = ["--grid", "lr=0.05,0.1"]
    code, output = run_cli(["sweep", *base, *grid, "--study-name", name, "--out", str(out), "--jobs", "0",
                            "--heartbeat", "2"], capsys)
    assert code == 0, output
    doomed = worker(name, out, url)
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and doomed.poll() is None and time.monotonic() < deadline:
        trial = running_trial_of(url, name, doomed.pid)
        if trial is None:
            time.sleep(0.05)
            continue
        # Freeze the worker, then make sure the trial it was seen in is still unfinished.
        os.kill(doomed.pid, signal.SIGSTOP)
        time.sleep(0.2)
        if running_trial_of(url, name, doomed.pid) is not None:
            victim = trial
        else:
            os.kill(doomed.pid, signal.SIGCONT)
    assert victim is not None, "the worker was never caught in the middle of a trial"
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait()
    assert doomed.returncode == -signal.SIGKILL
    survivor = worker(name, out, url)
    finish(survivor)
    trials = load_trials(url, name)
    states = {t.number: t.state.name for t in trials}
    assert states[victim.number] == "FAIL"  # failed for its stale heartbeat
    reruns = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(reruns) == 1 and reruns[0].state.name == "COMPLETE"
    assert reruns[0].params == victim.params and reruns[0].user_attrs["pid"] == survivor.pid
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(t.params["lr"] for t in complete) == [0.05, 0.1]


# -- the README's recipe ------------------------------------------------------------------------
def test_the_readme_recipe_installs_a_driver_and_its_commands_parse(monkeypatch):
    from mlplab.cli import build_parser

    repo = Path(__file__).resolve().parent.parent
    readme = (repo / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme[readme.index("### Sweeps on several machines"):], re.DOTALL).group(1)
    lines = [line.split("  #")[0].strip() for line in block.strip().splitlines()]
    extra = re.fullmatch(r'pip install "mlplab\[(\w+)\]"', lines[0]).group(1)
    pyproject = (repo / "pyproject.toml").read_text()
    requirements = re.search(rf"^{extra} = \[(.*)\]$", pyproject, re.MULTILINE).group(1)
    assert "optuna" in requirements and re.search(r'"psycopg(2-binary)?[\[>"]', requirements)
    url = re.fullmatch(rf"export {sweeping.STORAGE_VARIABLE}=(\S+)", lines[1]).group(1)
    assert url.startswith("postgresql://") and sweeping.engine_url(url).startswith("postgresql+psycopg")
    parser = build_parser()
    for line in lines[2:]:
        args = parser.parse_args(line.split()[1:])
        assert args.command == "sweep" and args.study_name == "lr"
