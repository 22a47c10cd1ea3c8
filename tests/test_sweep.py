"""Sweeps on Optuna: grids, random and TPE searches, parallel workers, resuming (issue 9)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

optuna = pytest.importorskip("optuna")

from mlplab import sweep as sweeping  # noqa: E402
from mlplab.cli import main  # noqa: E402
from mlplab.errors import ConfigError, TrainingInterrupted  # noqa: E402

#: tiny trials: a few hundredths of a second each on digits
BASE = ["--dataset", "digits", "--hidden-dims", "8", "--epochs", "2"]
BASE_OPTIONS = {"dataset": "digits", "hidden_dims": [8], "epochs": 2}
GRID = ["--grid", "lr=0.05,0.2", "--grid", "hidden-dims=8,16x8"]


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def load(out: Path):
    return optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'study.db'}")


def slot_trials(out: Path):
    """The trials that ran a configuration (not queue bookkeeping), by number."""
    return sorted((t for t in load(out).get_trials() if "slot" in t.user_attrs and t.state.is_finished()
                   and "error" not in t.user_attrs and t.state.name == "COMPLETE"), key=lambda t: t.number)


@pytest.fixture(autouse=True)
def _no_shared_storage(monkeypatch):
    """Sweeps here use the SQLite study in their folder, whatever the environment says."""
    monkeypatch.delenv(sweeping.STORAGE_VARIABLE, raising=False)


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory):
    """The 4-point grid run once by two worker processes (shared by the tests below)."""
    out = tmp_path_factory.mktemp("sweep") / "grid"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLPLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.delenv(sweeping.STORAGE_VARIABLE, raising=False)
        code = main(["sweep", *BASE, *GRID, "--out", str(out), "--jobs", "2", "-q"])
    assert code == 0
    return out


# -- the grid ---------------------------------------------------------------------------------
def test_grid_with_two_jobs_runs_every_point_once(grid_sweep):
    rows = read_rows(grid_sweep / "results.csv")
    points = sorted((row["lr"], row["hidden-dims"]) for row in rows)
    assert points == [("0.05", "16x8"), ("0.05", "8"), ("0.2", "16x8"), ("0.2", "8")]
    trials = slot_trials(grid_sweep)
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.user_attrs["pid"] for t in trials}) >= 1  # ran in worker processes, not here
    assert os.getpid() not in {t.user_attrs["pid"] for t in trials}
    # one run folder per trial, each a finished run
    folders = sorted((grid_sweep / "trials").iterdir())
    assert len(folders) == 4 and all((f / "summary.json").exists() for f in folders)
    assert {row["run_dir"] for row in rows} == {f"trials/{f.name}" for f in folders}


def test_results_are_sorted_by_validation_accuracy_and_the_figure_is_written(grid_sweep):
    rows = read_rows(grid_sweep / "results.csv")
    assert list(rows[0]) == ["trial", "lr", "hidden-dims", "val_accuracy", "test_accuracy", "best_epoch", "seconds",
                             "run_dir", "state", "error"]
    accuracies = [float(row["val_accuracy"]) for row in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    for row in rows:  # each row is its run folder's outcome
        summary = json.loads((grid_sweep / row["run_dir"] / "summary.json").read_text())
        assert summary["best_val_accuracy"] == pytest.approx(float(row["val_accuracy"]))
        assert summary["test_accuracy"] == pytest.approx(float(row["test_accuracy"]))
    assert (grid_sweep / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((grid_sweep / "sweep.json").read_text())
    assert result["best"]["trial"] == int(rows[0]["trial"])
    assert result["best"]["test_accuracy"] == pytest.approx(float(rows[0]["test_accuracy"]))
    assert result["trials"]["complete"] == 4 and result["trials"]["planned"] == 4


def test_rerunning_the_same_command_runs_nothing_again(grid_sweep, capsys):
    before = sorted(p.name for p in (grid_sweep / "trials").iterdir())
    numbers = [t.number for t in load(grid_sweep).get_trials()]
    assert main(["sweep", *BASE, *GRID, "--out", str(grid_sweep), "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 finished, 0 to run" in out and "nothing to run" in out
    assert "best (by validation accuracy): trial" in out
    assert sorted(p.name for p in (grid_sweep / "trials").iterdir()) == before
    assert [t.number for t in load(grid_sweep).get_trials()] == numbers


def test_a_different_sweep_in_the_same_folder_is_refused(grid_sweep, capsys):
    code = main(["sweep", *BASE, "--grid", "lr=0.05,0.3", "--grid", "hidden-dims=8,16x8", "--out", str(grid_sweep)])
    err = capsys.readouterr().err
    assert code == 2 and "different options" in err and "dimensions" in err


def test_the_default_folder_is_the_same_for_the_same_sweep():
    a = sweeping.make_spec(grid=["lr=0.05,0.2"], base_options=BASE_OPTIONS)
    b = sweeping.make_spec(grid=["lr=0.05,0.2"], base_options=dict(BASE_OPTIONS, data_dir="elsewhere"), trials=1)
    c = sweeping.make_spec(grid=["lr=0.05,0.3"], base_options=BASE_OPTIONS)
    assert sweeping.default_out(a) == sweeping.default_out(b) != sweeping.default_out(c)
    assert sweeping.default_out(a).name.startswith("sweep-digits-lr-")


# -- workers sharing one study ----------------------------------------------------------------
def test_two_worker_processes_split_one_sqlite_study(tmp_path, capsys):
    out = tmp_path / "shared"
    grid = ["--grid", "lr=0.02,0.05,0.2", "--grid", "hidden-dims=8,16x8"]
    assert main(["sweep", *BASE, *grid, "--out", str(out), "--jobs", "0"]) == 0
    assert "start them with: mlplab sweep --worker --out" in capsys.readouterr().out
    worker = [sys.executable, "-m", "mlplab", "sweep", "--worker", "--out", str(out), "--worker-trials", "3", "-q"]
    processes = [subprocess.Popen(worker, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
    trials = slot_trials(out)
    assert sorted(t.user_attrs["slot"] for t in trials) == list(range(6))  # none missing, none twice
    by_worker = {}
    for t in trials:
        by_worker.setdefault(t.user_attrs["pid"], []).append(t.number)
    assert sorted(len(numbers) for numbers in by_worker.values()) == [3, 3]
    assert {p.pid for p in processes} == set(by_worker)
    # the sweep's own command then only writes the results
    assert main(["sweep", *BASE, *grid, "--out", str(out), "-q"]) == 0
    assert len(read_rows(out / "results.csv")) == 6


def test_storage_passwords_are_never_printed():
    assert sweeping.redact("postgresql://ann:s3cret@db.lab:5432/sweeps") == "postgresql://ann:***@db.lab:5432/sweeps"
    assert "s3cret" not in sweeping.join_command("postgresql://ann:s3cret@db.lab/sweeps", "lr", "runs/lr")


def test_a_worker_needs_an_existing_sweep_and_no_options_of_its_own(tmp_path, capsys):
    assert main(["sweep", "--worker", "--storage", f"sqlite:///{tmp_path / 'none.db'}", "--study-name", "x"]) == 2
    assert "no sweep named 'x'" in capsys.readouterr().err
    assert main(["sweep", "--worker", "--out", str(tmp_path), "--lr", "0.1", "--grid", "lr=1"]) == 2
    assert "drop --lr, --grid" in capsys.readouterr().err


# -- random and TPE searches ------------------------------------------------------------------
def test_random_search_runs_its_budget_and_a_larger_one_extends_it(tmp_path, capsys):
    out = tmp_path / "random"
    argv = ["sweep", *BASE, "--param", "lr=log:0.01:0.5", "--param", "hidden-dims=choice:8,16x8", "--param", "dropout=float:0:0.3",
            "--sampler", "random", "--out", str(out), "-q"]
    assert main([*argv, "--trials", "3"]) == 0
    first = {t.number: t.params for t in slot_trials(out)}
    assert len(first) == 3
    for params in first.values():
        assert 0.01 <= params["lr"] <= 0.5 and params["hidden_dims"] in ("8", "16x8") and 0 <= params["dropout"] <= 0.3
    assert main([*argv, "--trials", "4"]) == 0
    after = {t.number: t.params for t in slot_trials(out)}
    assert len(after) == 4 and {n: after[n] for n in first} == first
    # the configurations are the seed's draws, whichever worker ran them and whenever
    spec = json.loads(json.dumps(load(out).user_attrs[sweeping.SPEC_KEY]))
    draws = sweeping._random_draws(spec, 4)
    assert sorted(map(str, after.values())) == sorted(map(str, draws))
    assert sweeping._random_draws(dict(spec, seed=1), 4) != draws
    rows = read_rows(out / "results.csv")
    assert [float(r["val_accuracy"]) for r in rows] == sorted((float(r["val_accuracy"]) for r in rows), reverse=True)


def test_tpe_search_with_a_budget(tmp_path):
    result = sweeping.run_sweep(params={"lr": "log:0.01:0.5", "batch_size": "int:32:128:32"}, trials=3, options=BASE_OPTIONS,
                                out=tmp_path / "tpe", quiet=True)
    assert len(result.rows) == 3 and all(r["state"] == "COMPLETE" for r in result.rows)
    assert all(r["batch-size"] in (32, 64, 96, 128) for r in result.rows)
    assert (tmp_path / "tpe" / "sweep.png").exists()


# -- choosing the best ------------------------------------------------------------------------
def fake_train(scores: dict, calls: list | None = None, interrupt_at=()):
    """A stand-in for mlplab.train: validation accuracy by lr, test accuracy in reverse order;
    the first trial at each lr in ``interrupt_at`` is stopped as by SIGINT."""
    interrupt_at = set(interrupt_at)

    def train(config, data=None):
        if calls is not None:
            calls.append(config.lr)
        if config.lr in interrupt_at:
            interrupt_at.discard(config.lr)
            raise TrainingInterrupted("stopped by SIGINT", 130)
        val = scores[config.lr]
        return SimpleNamespace(best_val_accuracy=val, test_accuracy=1.0 - val, best_epoch=1)
    return train


def test_the_best_trial_is_chosen_by_validation_accuracy_never_test(tmp_path):
    scores = {0.01: 0.70, 0.1: 0.90, 0.3: 0.80}
    result = sweeping.run_sweep(grid={"lr": [0.01, 0.1, 0.3]}, options=BASE_OPTIONS, out=tmp_path / "s", quiet=True,
                                train=fake_train(scores))
    assert result.best["lr"] == 0.1 and result.best["val_accuracy"] == 0.90
    assert result.best["test_accuracy"] == pytest.approx(0.10)  # the worst test accuracy: reported, not chosen by
    assert [r["lr"] for r in result.rows] == [0.1, 0.3, 0.01]
    summary = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert summary["best"]["params"] == {"lr": 0.1} and "never used to choose" in summary["selection"]


def test_a_diverging_trial_fails_without_stopping_the_sweep(tmp_path, capsys):
    out = tmp_path / "diverge"
    assert main(["sweep", *BASE, "--grid", "lr=0.2,1e30", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = read_rows(out / "results.csv")
    assert [(r["lr"], r["state"]) for r in rows] == [("0.2", "COMPLETE"), ("1e+30", "FAIL")]
    assert "diverged" in rows[1]["error"] and rows[1]["val_accuracy"] == ""
    assert "trial 1 failed: training diverged" in printed
    # a failure is a result: resuming does not run it again
    assert main(["sweep", *BASE, "--grid", "lr=0.2,1e30", "--out", str(out), "-q"]) == 0
    assert len(load(out).get_trials()) == 2


def test_a_relative_out_names_each_run_folder_once(tmp_path, monkeypatch, capsys):
    """Trials record their run folder under --out as given; results.csv and the printed best run
    folder are relative to the sweep's folder, not to the working directory (not rel/rel/trials)."""
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", *BASE, "--grid", "lr=0.1", "--out", "rel"]) == 0
    printed = capsys.readouterr().out
    folders = list((tmp_path / "rel" / "trials").iterdir())
    assert len(folders) == 1 and (folders[0] / "summary.json").exists()
    assert [row["run_dir"] for row in read_rows(tmp_path / "rel" / "results.csv")] == [f"trials/{folders[0].name}"]
    shown = [line.split("run folder: ", 1)[1] for line in printed.splitlines() if "run folder: " in line]
    assert shown == [str(Path("rel") / "trials" / folders[0].name)]
    assert (tmp_path / shown[0] / "summary.json").exists()


# -- stopping and resuming --------------------------------------------------------------------
def test_an_interrupted_trial_is_queued_again_and_only_it_reruns(tmp_path):
    out = tmp_path / "stop"
    scores = {0.01: 0.7, 0.1: 0.9, 0.3: 0.8}
    calls: list = []
    with pytest.raises(TrainingInterrupted, match="queued again") as info:
        sweeping.run_sweep(grid={"lr": [0.01, 0.1, 0.3]}, options=BASE_OPTIONS, out=out, quiet=True,
                           train=fake_train(scores, calls, interrupt_at=[0.1]))
    assert info.value.exit_code == 130
    assert calls == [0.01, 0.1]
    assert len(read_rows(out / "results.csv")) == 1  # what finished is written even so
    calls.clear()
    result = sweeping.run_sweep(grid={"lr": [0.01, 0.1, 0.3]}, options=BASE_OPTIONS, out=out, quiet=True,
                                train=fake_train(scores, calls))
    assert sorted(calls) == [0.1, 0.3]  # 0.01 finished before: not run again
    assert [r["lr"] for r in result.rows] == [0.1, 0.3, 0.01]
    retried = [t for t in load(out).get_trials() if "retry_of" in t.user_attrs]
    assert len(retried) == 1 and retried[0].params == {"lr": 0.1}


class StopAfterFirstEpoch:
    """A listener that stops training as SIGINT would, at the first step of epoch 2."""

    def on_epoch_end(self, trainer, row):
        if trainer.epoch == 1:
            trainer._signal = signal.SIGINT


def test_a_stopped_trial_continues_from_its_checkpoint(tmp_path):
    import mlplab

    out = tmp_path / "continue"
    calls = []

    def train(config=None, *, data=None, resume=None, **options):
        calls.append(resume)
        if len(calls) == 1:
            return mlplab.train(config, data=data, listeners=[StopAfterFirstEpoch()])
        return mlplab.train(config, data=data, resume=resume, **options)

    options = dict(BASE_OPTIONS, epochs=3)
    with pytest.raises(TrainingInterrupted):
        sweeping.run_sweep(grid={"lr": [0.2]}, options=options, out=out, quiet=True, train=train)
    stopped = out / "trials" / "trial-000-lr0.2"
    assert (stopped / "last.npz").exists() and not (stopped / "summary.json").exists()
    result = sweeping.run_sweep(grid={"lr": [0.2]}, options=options, out=out, quiet=True, train=train)
    assert calls == [None, str(stopped)]
    assert result.rows[0]["run_dir"] == "trials/trial-000-lr0.2" and result.rows[0]["trial"] == 1
    assert json.loads((stopped / "summary.json").read_text())["epochs_run"] == 3


def test_a_trial_whose_worker_died_runs_again_after_its_heartbeat_stops(tmp_path):
    out = tmp_path / "dead"
    scores = {0.01: 0.7, 0.1: 0.9}
    sweeping.run_sweep(grid={"lr": [0.01, 0.1]}, options=BASE_OPTIONS, out=out, jobs=0, heartbeat=1, quiet=True)
    # A worker takes the first trial, sends one heartbeat and dies (nothing more is ever sent).
    storage = sweeping.open_storage(sweeping.default_storage(out), heartbeat=1)
    dead = optuna.load_study(study_name=out.name, storage=storage)
    with pytest.warns(UserWarning, match="Heartbeat"):
        trial = dead.ask()
    trial.set_user_attr("host", "lost-machine")
    storage.record_heartbeat(trial._trial_id)
    calls: list = []
    result = sweeping.run_sweep(grid={"lr": [0.01, 0.1]}, options=BASE_OPTIONS, out=out, heartbeat=1, quiet=True,
                                train=fake_train(scores, calls))
    assert sorted(calls) == [0.01, 0.1]
    assert len(result.rows) == 2 and {r["state"] for r in result.rows} == {"COMPLETE"}
    states = {t.number: t.state.name for t in load(out).get_trials()}
    assert states[trial.number] == "FAIL"


# -- usage mistakes ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--grid", "lr"], "write NAME=VALUES"),
    (["--grid", "lr=0.1,abc"], "lr=abc: expected a number"),
    (["--grid", "lr=0.1,,0.2"], "empty value"),
    (["--grid", "nope=1,2"], "'nope' is not a training option"),
    (["--grid", "lr=-1"], "--lr must be a positive"),
    (["--grid", "lr=0.1,0.1"], "given twice"),
    (["--grid", "hidden-dims=8,a"], "hidden widths are written 512x256"),
    (["--grid", "lr=0.1", "--grid", "lr=0.2"], "lr is given twice"),
    (["--grid", "lr=0.1", "--param", "dropout=float:0:0.5"], "not both"),
    ([], "give the options to sweep"),
    (["--grid", "lr=0.1,0.2", "--trials", "3"], "the grid has only 2 points"),
    (["--grid", "lr=0.1", "--sampler", "random"], "--sampler applies to --param"),
    (["--param", "lr=log:0:1"], "LOW above 0"),
    (["--param", "lr=uniform:0:1"], "write log:LOW:HIGH"),
    (["--param", "dropout=float:0.5:0.1"], "LOW must be below HIGH"),
    (["--param", "batch-size=float:16:64"], "is an integer"),
    (["--param", "activation=log:1:2"], "not a number"),
    (["--grid", "momentum=0.9", "--optimizer", "adam"], "--grid momentum=0.9"),
    (["--grid", "lr=0.1", "--validation-size", "0"], "validation accuracy"),
])
def test_usage_mistakes_exit_2_with_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    code = main(["sweep", "--dataset", "digits", *argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_grid_values_are_parsed_by_the_option_type():
    lr, widths, flag, stop = sweeping.parse_grid(["lr=0.01, 1e-1", "hidden-dims=512x256,none,64", "use-batch-norm=true,off",
                                                   "early-stopping=none,3"])
    assert lr.values == (0.01, 0.1)
    assert widths.values == ("512x256", "none", "64") and widths.train_value("512x256") == [512, 256]
    assert flag.values == (True, False)
    assert stop.values == (None, 3)
    with pytest.raises(ConfigError, match="not a training option that can be swept"):
        sweeping.parse_grid(["out=a,b"])
