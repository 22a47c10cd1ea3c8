"""TensorBoard and MLflow listeners (issue 18, part 3): what the libraries' own readers find in
the files equals history.csv and steps.csv, with no step twice after a resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import metadata as hparams_metadata  # noqa: E402

import mlplab  # noqa: E402
from mlplab.cli import main  # noqa: E402
from mlplab.config import TrainConfig  # noqa: E402
from mlplab.errors import ConfigError, TrainingInterrupted  # noqa: E402
from mlplab.training.run import read_csv  # noqa: E402
from mlplab.training.tracking import HISTORY_METRICS, TRACKING_OPTIONS  # noqa: E402

#: a few hundredths of a second per epoch: digits, 8 steps of 128 per epoch
TINY = {"dataset": "digits", "hidden_dims": [16], "epochs": 2, "batch_size": 128, "quiet": True, "report": False}
TINY_ARGS = ["--dataset", "digits", "--hidden-dims", "16", "--batch-size", "128", "-q"]


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    """One MLflow store (SQLite) for the module: creating its tables takes seconds."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        # MLflow keeps one store per URI, its artifact root the working directory at its creation
        patch.chdir(folder)
        client = MlflowClient(uri)
        client.search_experiments()  # creates the tables now
    return folder, uri, client


@pytest.fixture
def store(shared_store, monkeypatch, request):
    """The shared store, an experiment named after the test (so tests see only their own runs),
    and the store's folder as working directory (MLflow puts artifacts in ./mlruns)."""
    folder, uri, client = shared_store
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return uri, client, request.node.name


def hiding(*modules: str) -> str:
    """Python lines that make importing ``modules`` fail, as on a machine without them."""
    return (
        "import sys, importlib.abc\n"
        "class Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {modules!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
    )


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def tensorboard_hparams(folder: Path) -> dict:
    accumulator = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    accumulator.Reload()
    content = accumulator.PluginTagToContent(hparams_metadata.PLUGIN_NAME)[hparams_metadata.SESSION_START_INFO_TAG]
    info = hparams_metadata.parse_session_start_info_plugin_data(content)
    return {key: getattr(value, value.WhichOneof("kind")) for key, value in info.hparams.items()}


def expected(run_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], list[tuple[int, float]], float]:
    """The history.csv columns as (epoch, value) lists, steps.csv's (step, loss) and the test accuracy."""
    history = read_csv(run_dir / "history.csv")
    columns = {name: [(int(row["epoch"]), row[name]) for row in history if row[name] is not None] for name in HISTORY_METRICS}
    steps = [(int(row["step"]), row["loss"]) for row in read_csv(run_dir / "steps.csv")]
    summary = json.loads((run_dir / "summary.json").read_text())
    return columns, steps, summary["test_accuracy"]


def assert_tensorboard_matches(run_dir: Path, folder: Path | None = None) -> None:
    columns, steps, test_accuracy = expected(run_dir)
    scalars = tensorboard_scalars(folder or run_dir / "tensorboard")
    assert set(scalars) == {*HISTORY_METRICS, "step_loss", "test_accuracy"}
    f32 = np.float32
    for name, points in columns.items():
        assert [s for s, _ in scalars[name]] == [e for e, _ in points], name  # every epoch once, in order
        assert [f32(v) for _, v in scalars[name]] == [f32(v) for _, v in points], name
    assert [s for s, _ in scalars["step_loss"]] == [s for s, _ in steps]
    assert [f32(v) for _, v in scalars["step_loss"]] == [f32(v) for _, v in steps]
    assert f32(scalars["test_accuracy"][-1][1]) == f32(test_accuracy)
    assert scalars["test_accuracy"][-1][0] == columns["train_loss"][-1][0]


def mlflow_run(client, run_dir: Path):
    run_id = json.loads((run_dir / "mlflow.json").read_text())["run_id"]
    return client.get_run(run_id)


def assert_mlflow_matches(client, run_dir: Path) -> None:
    columns, steps, test_accuracy = expected(run_dir)
    run = mlflow_run(client, run_dir)
    run_id = run.info.run_id
    assert set(run.data.metrics) == {*HISTORY_METRICS, "step_loss", "test_accuracy"}
    for name, points in columns.items():
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
        assert logged == points, name  # exact: MLflow stores doubles
    assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, "step_loss")) == steps
    assert [m.value for m in client.get_metric_history(run_id, "test_accuracy")][-1] == test_accuracy
    assert run.info.status == "FINISHED"


# =============================================================================================
# both trackers on a whole run, each backend
# =============================================================================================
@pytest.mark.parametrize("backend", ["numpy", pytest.param("torch", marks=pytest.mark.torch)])
def test_event_files_and_mlflow_run_hold_the_history(tmp_path, store, backend):
    if backend == "torch":
        pytest.importorskip("torch")
    uri, client, experiment = store
    run_dir = tmp_path / "run"
    report = [] if backend == "numpy" else ["--no-report"]  # the figures once is enough
    code = main(["train", *TINY_ARGS, "--epochs", "3", "--backend", backend, "--lr", "0.2", "--out", str(run_dir),
                 "--tensorboard", "--mlflow", uri, "--mlflow-experiment", experiment, *report])
    assert code == 0
    assert_tensorboard_matches(run_dir)
    assert_mlflow_matches(client, run_dir)
    saved = TrainConfig.from_options(json.loads((run_dir / "config.json").read_text())["options"])

    hparams = tensorboard_hparams(run_dir / "tensorboard")
    assert hparams["lr"] == pytest.approx(0.2) and hparams["hidden_dims"] == "16" and hparams["backend"] == backend
    assert hparams["use_batch_norm"] is False and "early_stopping" not in hparams  # None is left out

    run = mlflow_run(client, run_dir)
    assert client.get_experiment(run.info.experiment_id).name == experiment
    every_option = {name for name in TrainConfig.field_names() if name not in TRACKING_OPTIONS}
    assert set(run.data.params) == every_option
    assert run.data.params["hidden_dims"] == "16" and run.data.params["epochs"] == "3"
    assert run.data.params["backend"] == backend and run.data.params["early_stopping"] == "none"
    assert float(run.data.params["lr"]) == saved.lr
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"best.npz", "summary.json", "history.csv"} <= artifacts
    if not report:
        assert {"report.md", "report.html", "curves.png", "confusion.png", "loss_steps.png"} <= artifacts
    local = Path(client.download_artifacts(run.info.run_id, "best.npz", str(tmp_path / "download")))
    assert local.read_bytes() == (run_dir / "best.npz").read_bytes()


@pytest.mark.slow
def test_the_tensorboard_server_serves_the_runs_and_their_hparams(tmp_path):
    """``tensorboard --logdir`` itself, over HTTP: two runs, their scalars and the hparams table."""
    import shutil
    import socket
    import time
    import urllib.request

    command = shutil.which("tensorboard")
    if command is None:
        pytest.skip("no tensorboard command on PATH")
    for name, lr in (("a", "0.1"), ("b", "0.3")):
        assert main(["train", *TINY_ARGS, "--epochs", "2", "--lr", lr, "--no-report", "--out", str(tmp_path / name),
                     "--tensorboard"]) == 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([command, "--logdir", str(tmp_path), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/data"

    def get(path, body=None):
        request = urllib.request.Request(base + path, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    try:
        runs, deadline = [], time.monotonic() + 90
        while len(runs) < 2 and time.monotonic() < deadline:
            time.sleep(1)
            try:
                runs = get("/runs")
            except OSError:
                continue
        assert sorted(runs) == ["a/tensorboard", "b/tensorboard"]
        served = get("/plugin/scalars/scalars?run=b/tensorboard&tag=val_accuracy")
        history = read_csv(tmp_path / "b" / "history.csv")
        assert [(step, np.float32(value)) for _, step, value in served] == \
            [(int(row["epoch"]), np.float32(row["val_accuracy"])) for row in history]
        experiment = get("/plugin/hparams/experiment", json.dumps({"experimentName": ""}).encode())
        lr = next(info for info in experiment["hparamInfos"] if info["name"] == "lr")
        assert lr["differs"] and (lr["domainInterval"]["minValue"], lr["domainInterval"]["maxValue"]) == (0.1, 0.3)
        metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
        assert {"test_accuracy", "val_accuracy", "train_loss"} <= metrics
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_numpy_backend_needs_no_torch_for_tensorboard(tmp_path):
    run_dir = tmp_path / "run"
    code = (
        hiding("torch") +
        "from mlplab.cli import main\n"
        f"code = main({['train', *TINY_ARGS, '--epochs', '2', '--no-report', '--out', str(run_dir), '--tensorboard']!r})\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorflow')]\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert_tensorboard_matches(run_dir)


# =============================================================================================
# resume: no point twice
# =============================================================================================
class StopAt:
    """Raises SIGINT's flag after ``step`` steps, as Ctrl-C would (the run saves and stops)."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, trainer, loss) -> None:
        if trainer.global_step == self.step:
            trainer._signal = signal.SIGINT


def assert_no_step_twice(run_dir: Path, client) -> None:
    for name, points in tensorboard_scalars(run_dir / "tensorboard").items():
        steps = [s for s, _ in points]
        assert len(steps) == len(set(steps)), name
    run_id = mlflow_run(client, run_dir).info.run_id
    for name in (*HISTORY_METRICS, "step_loss"):
        steps = [m.step for m in client.get_metric_history(run_id, name)]
        assert len(steps) == len(set(steps)), name


def test_an_interrupted_and_extended_run_logs_every_point_once(tmp_path, store):
    uri, client, experiment = store
    run_dir = tmp_path / "run"
    options = {**TINY, "epochs": 3, "out": str(run_dir), "tensorboard": True, "mlflow": uri, "mlflow_experiment": experiment}
    with pytest.raises(TrainingInterrupted):
        mlplab.train(listeners=[StopAt(12)], **options)  # in the middle of epoch 2
    first = mlflow_run(client, run_dir)
    assert first.info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(first.info.run_id, "train_loss")] == [1]

    mlplab.train(resume=run_dir)  # the trackers come back with the saved options
    mlplab.train(resume=run_dir, epochs=4)
    assert mlflow_run(client, run_dir).info.run_id == first.info.run_id  # one MLflow run throughout
    assert len(client.search_runs([first.info.experiment_id])) == 1
    assert_no_step_twice(run_dir, client)
    assert_tensorboard_matches(run_dir)
    assert_mlflow_matches(client, run_dir)
    assert len(read_csv(run_dir / "history.csv")) == 4
    changed = mlflow_run(client, run_dir)
    assert changed.data.params["epochs"] == "3" and changed.data.tags["resumed.epochs"] == "4"


def test_trackers_switched_on_at_resume_get_the_earlier_epochs_too(tmp_path, store):
    uri, client, experiment = store
    run_dir = tmp_path / "run"
    mlplab.train(**{**TINY, "out": str(run_dir)})
    mlplab.train(resume=run_dir, epochs=3, tensorboard=True, mlflow=uri, mlflow_experiment=experiment)
    assert_tensorboard_matches(run_dir)
    assert_mlflow_matches(client, run_dir)
    assert [m.step for m in client.get_metric_history(mlflow_run(client, run_dir).info.run_id, "val_accuracy")] == [1, 2, 3]


def test_an_overwritten_runs_tracking_files_are_not_taken_for_the_new_run(tmp_path, store):
    uri, client, experiment = store
    run_dir = tmp_path / "run"
    tracked = {"tensorboard": True, "mlflow": uri, "mlflow_experiment": experiment}
    mlplab.train(**{**TINY, "epochs": 3, "lr": 0.3, "out": str(run_dir), **tracked})
    first = mlflow_run(client, run_dir).info.run_id
    mlplab.train(**{**TINY, "out": str(run_dir), "overwrite": True})  # a new run, untracked
    mlplab.train(resume=run_dir, epochs=3, **tracked)
    assert mlflow_run(client, run_dir).info.run_id != first
    assert_tensorboard_matches(run_dir)
    assert_mlflow_matches(client, run_dir)


def test_events_written_past_the_checkpoint_are_not_written_again(tmp_path, store):
    """A run killed after its trackers logged steps its checkpoint does not hold: the resumed run
    skips those steps (they are the same numbers: training is deterministic)."""
    import shutil

    uri, client, experiment = store
    run_dir = tmp_path / "run"
    options = {**TINY, "epochs": 3, "out": str(run_dir), "tensorboard": True, "mlflow": uri, "mlflow_experiment": experiment}
    with pytest.raises(TrainingInterrupted):
        mlplab.train(listeners=[StopAt(8)], **options)  # stops at the end of epoch 1's last step
    saved = tmp_path / "saved"
    shutil.copytree(run_dir, saved)
    with pytest.raises(TrainingInterrupted):
        mlplab.train(resume=run_dir, listeners=[StopAt(20)])
    for name in ("last.npz", "steps.csv", "history.csv"):  # back to the first checkpoint: as if killed at step 20
        shutil.copy(saved / name, run_dir / name)
    mlplab.train(resume=run_dir)
    assert_no_step_twice(run_dir, client)
    assert_tensorboard_matches(run_dir)
    assert_mlflow_matches(client, run_dir)


# =============================================================================================
# sweeps and data parallelism
# =============================================================================================
def test_each_sweep_trial_is_an_mlflow_run_nested_under_the_sweeps_run(tmp_path, store):
    pytest.importorskip("optuna")
    from mlplab.sweep import run_sweep

    uri, client, experiment = store
    out = tmp_path / "sweep"
    result = run_sweep(grid={"lr": [0.05, 0.2]}, options={**{k: v for k, v in TINY.items() if k not in ("quiet", "report")},
                                                         "mlflow": uri, "tensorboard": True, "mlflow_experiment": experiment},
                       out=out, quiet=True)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_name == out.name and parents[0].info.status == "FINISHED"
    assert parents[0].data.metrics["best_val_accuracy"] == result.best["val_accuracy"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.params["lr"] for r in children) == ["0.05", "0.2"]
    for trial in sorted((out / "trials").iterdir()):
        assert_mlflow_matches(client, trial)
        assert_tensorboard_matches(trial)
    assert len(runs) == 3
    # rerunning the finished sweep (here with the trackers' options left out) adds no run
    run_sweep(grid={"lr": [0.05, 0.2]}, options={k: v for k, v in TINY.items() if k not in ("quiet", "report")},
              out=out, quiet=True)
    run_sweep(grid={"lr": [0.05, 0.2]}, options={**{k: v for k, v in TINY.items() if k not in ("quiet", "report")},
                                                 "mlflow": uri, "mlflow_experiment": experiment}, out=out, quiet=True)
    assert len(client.search_runs([client.get_experiment_by_name(experiment).experiment_id])) == 3


@pytest.mark.slow
@pytest.mark.torch
def test_only_rank_0_logs_a_data_parallel_run(tmp_path, store):
    pytest.importorskip("torch")
    uri, client, experiment = store
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "mlplab", "train", *TINY_ARGS, "--epochs", "2", "--backend", "torch", "--batch-size", "64",
         "--nproc", "2", "--no-report", "--out", str(run_dir), "--tensorboard", "--mlflow", uri, "--mlflow-experiment", experiment],
        capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert len(client.search_runs([client.get_experiment_by_name(experiment).experiment_id])) == 1
    assert_tensorboard_matches(run_dir)
    assert_mlflow_matches(client, run_dir)


# =============================================================================================
# options and mistakes: one line each
# =============================================================================================
@pytest.mark.parametrize("hidden, flag, package", [
    ("tensorboard", "--tensorboard", "mlplab[tensorboard]"),
    ("mlflow", "--mlflow", "mlplab[mlflow]"),
])
def test_a_missing_package_stops_the_flag_with_one_line(tmp_path, hidden, flag, package):
    code = (
        hiding(hidden) +
        "from mlplab.cli import main\n"
        f"sys.exit(main({['train', *TINY_ARGS, '--epochs', '1', '--out', str(tmp_path / 'run'), flag]!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and package in lines[0] and flag in lines[0], done.stderr
    assert not (tmp_path / "run" / "history.csv").exists()  # stopped before training


def test_a_sweep_without_mlflow_installed_stops_with_one_line(tmp_path):
    pytest.importorskip("optuna")
    argv = ["sweep", "--dataset", "digits", "--epochs", "1", "--grid", "lr=0.1,0.2", "--out", str(tmp_path / "s"), "-q", "--mlflow"]
    code = hiding("mlflow") + f"from mlplab.cli import main\nsys.exit(main({argv!r}))\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and "mlplab[mlflow]" in lines[0], done.stderr
    assert not list((tmp_path / "s").glob("trials/*"))


def test_a_tracking_store_mlflow_refuses_is_one_line(tmp_path, capsys):
    code = main(["train", *TINY_ARGS, "--epochs", "1", "--no-report", "--out", str(tmp_path / "run"), "--mlflow", "nosuch://x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("mlplab train: error: --mlflow: "), err


def test_the_default_tracking_uri_comes_from_the_environment(tmp_path, store, monkeypatch, capsys):
    uri, client, _ = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["train", *TINY_ARGS, "--epochs", "1", "--no-report", "--out", str(tmp_path / "run"), "--mlflow"]) == 0
    run = mlflow_run(client, tmp_path / "run")
    assert client.get_experiment(run.info.experiment_id).name == "mlplab"  # the default experiment
    assert "mlflow" not in capsys.readouterr().err.lower()  # MLflow's own start-up chatter stays quiet


def test_a_tensorboard_folder_of_another_run_is_refused_unless_overwritten(tmp_path, capsys):
    folder = tmp_path / "tb"
    args = ["train", *TINY_ARGS, "--epochs", "1", "--no-report", "--tensorboard", str(folder)]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds the event files of another run" in err[0]
    assert main([*args, "--out", str(tmp_path / "b"), "--overwrite"]) == 0
    assert_tensorboard_matches(tmp_path / "b", folder)


@pytest.mark.parametrize("options, message", [
    ({"tensorboard": ""}, "--tensorboard must be true, false or a folder"),
    ({"mlflow": 3}, "--mlflow must be true, false or a tracking URI"),
    ({"mlflow_experiment": " "}, "--mlflow-experiment must be a name"),
])
def test_tracking_options_are_validated(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_options(options).validated()


def test_tensorboard_without_a_folder_needs_a_run_folder():
    with pytest.raises(ConfigError, match="--tensorboard without a folder"):
        mlplab.train(**TINY, tensorboard=True)


def test_tracking_is_off_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mlplab.train(**{**TINY, "epochs": 1, "out": str(tmp_path / "run")})
    assert not (tmp_path / "run" / "tensorboard").exists() and not (tmp_path / "run" / "mlflow.json").exists()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
