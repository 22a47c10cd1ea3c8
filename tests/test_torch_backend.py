"""The torch backend in the training loop: `mlplab train --backend torch`, checkpoints either
backend reads, devices, resume."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from mlplab.cli import main  # noqa: E402
from mlplab.config import TrainConfig  # noqa: E402
from mlplab.errors import ConfigError  # noqa: E402
from mlplab.torch import from_numpy  # noqa: E402
from mlplab.torch.backend import TorchBackend, resolve_device  # noqa: E402
from mlplab.training.checkpoint import load_checkpoint, load_model  # noqa: E402
from mlplab.training.loop import train  # noqa: E402


def synthetic_splits(n_train=240, n_val=60, n_test=60, features=12, classes=3, seed=0):
    """Gaussian blobs, one per class: learnable in a few epochs."""
    from mlplab.data import Dataset, DatasetSplits

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, features)) * 2

    def split(n):
        y = rng.integers(0, classes, n).astype(np.int64)
        return Dataset((centres[y] + rng.standard_normal((n, features))).astype(np.float32), y)

    return DatasetSplits(split(n_train), split(n_val), split(n_test), [f"c{i}" for i in range(classes)], "blobs")


QUICK = dict(hidden_dims=[16, 16], batch_size=32, epochs=2, quiet=True, report=False, device="cpu")


def test_mlplab_train_backend_torch_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--dataset", "digits", "--backend", "torch", "--device", "cpu", "--epochs", "2",
                 "--hidden-dims", "32", "--batch-size", "64", "--out", str(out), "-q", "--no-report"])
    assert code == 0, capsys.readouterr().err
    for name in ("config.json", "steps.csv", "history.csv", "best.npz", "last.npz", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "torch" and summary["epochs_run"] == 2
    assert summary["test_accuracy"] > 0.5  # digits learn fast
    assert json.loads((out / "config.json").read_text())["options"]["backend"] == "torch"
    assert load_checkpoint(out / "best.npz").meta["backend"] == "torch"


def test_torch_best_npz_is_evaluated_by_the_numpy_model(tmp_path):
    data = synthetic_splits()
    result = train(TrainConfig.from_options({**QUICK, "backend": "torch", "use_batch_norm": True, "out": str(tmp_path / "t")}), data=data)
    numpy_model, meta = load_model(tmp_path / "t")
    assert meta["backend"] == "torch" and meta["model_config"] == result.backend.model_config()
    x = data.test.x
    np.testing.assert_allclose(numpy_model.predict_logits(x), result.backend.predict_logits(x), rtol=1e-4, atol=1e-5)
    assert np.array_equal(numpy_model.predict(x), result.backend.predict_logits(x).argmax(axis=1))
    np.testing.assert_allclose(result.backend.numpy_model().predict_logits(x), result.backend.predict_logits(x), rtol=1e-4, atol=1e-5)


def test_numpy_best_npz_is_evaluated_by_the_torch_model(tmp_path):
    data = synthetic_splits(seed=1)
    result = train(TrainConfig.from_options({**QUICK, "backend": "numpy", "residual": True, "out": str(tmp_path / "n")}), data=data)
    numpy_model, _ = load_model(tmp_path / "n")
    torch_model = from_numpy(numpy_model)
    with torch.inference_mode():
        logits = torch_model(torch.from_numpy(data.test.x)).numpy()
    np.testing.assert_allclose(logits, result.backend.predict_logits(data.test.x), rtol=1e-5, atol=1e-5)


def test_same_seed_same_data_gives_matching_runs_on_both_backends():
    data = synthetic_splits(seed=2)
    config = TrainConfig.from_options({**QUICK, "dtype": "float64"})
    results = {b: train(config.updated({"backend": b}), data=data) for b in ("numpy", "torch")}
    numpy_history, torch_history = results["numpy"].history, results["torch"].history
    for numpy_row, torch_row in zip(numpy_history, torch_history):
        assert torch_row["train_loss"] == pytest.approx(numpy_row["train_loss"], rel=1e-10)
        assert torch_row["val_accuracy"] == numpy_row["val_accuracy"]
    assert results["torch"].test_accuracy == results["numpy"].test_accuracy


def test_resume_continues_a_torch_run_exactly(tmp_path):
    data = synthetic_splits(seed=3)
    options = {**QUICK, "backend": "torch", "dropout": 0.2, "optimizer": "adam", "lr": 1e-2}
    straight = train(TrainConfig.from_options({**options, "epochs": 4, "out": str(tmp_path / "a")}), data=data)
    train(TrainConfig.from_options({**options, "epochs": 2, "out": str(tmp_path / "b")}), data=data)
    resumed = train(resume=tmp_path / "b", epochs=4, data=data)
    assert resumed.history == [{**row, "seconds": r["seconds"]} for row, r in zip(straight.history, resumed.history)]
    assert (tmp_path / "a" / "steps.csv").read_text() == (tmp_path / "b" / "steps.csv").read_text()
    final_a, final_b = straight.backend.state_dict(), resumed.backend.state_dict()
    assert all(np.array_equal(final_a[k], final_b[k]) for k in final_a)


def test_predict_logits_takes_read_only_and_strided_arrays_without_warnings():
    backend = TorchBackend(TrainConfig(hidden_dims=[8], device="cpu").validated(), 6, 3, np.random.SeedSequence(0))
    x = np.random.default_rng(0).standard_normal((10, 12)).astype(np.float32)
    read_only = np.ascontiguousarray(x[:, :6])
    read_only.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        strided = backend.predict_logits(x[:, ::2])
        np.testing.assert_array_equal(backend.predict_logits(read_only), backend.predict_logits(x[:, :6].copy()))
    assert strided.shape == (10, 3) and strided.dtype == np.float32
    assert backend.predict_logits(x[:0, :6]).shape == (0, 3)


def test_backend_reports_errors_like_the_numpy_backend():
    backend = TorchBackend(TrainConfig(hidden_dims=[8], device="cpu").validated(), 6, 3, np.random.SeedSequence(0))
    state = backend.state_dict()
    with pytest.raises(KeyError, match="missing keys"):
        backend.load_state_dict({k: v for k, v in state.items() if k != "layers.0.bias"})
    with pytest.raises(ValueError, match="shape"):
        backend.load_state_dict({**state, "layers.0.bias": np.zeros(9, np.float32)})
    with pytest.raises(ValueError, match="saved by 'Adam'"):
        backend.load_optimizer_state({"type": "Adam", "step": 1, "hyper": {}, "state": {}})
    assert json.loads(json.dumps(backend.rng_state())) == backend.rng_state()


def test_device_resolution(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="--device cuda: CUDA is not available"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"


def test_cli_device_cuda_without_cuda_is_a_one_line_usage_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["train", "--dataset", "digits", "--backend", "torch", "--device", "cuda", "--epochs", "1",
                 "--out", str(tmp_path / "r"), "-q", "--no-report"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "CUDA is not available" in err[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_backend_matches_cpu():  # pragma: no cover - no GPU in CI
    config = TrainConfig(hidden_dims=[16], dtype="float64", device="cuda").validated()
    gpu = TorchBackend(config, 6, 3, np.random.SeedSequence(0))
    cpu = TorchBackend(config.updated({"device": "cpu"}), 6, 3, np.random.SeedSequence(0))
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.standard_normal((8, 6)).astype(np.float32), rng.integers(0, 3, 8)
        assert gpu.train_step(x, y, 0.1).loss == pytest.approx(cpu.train_step(x, y, 0.1).loss, rel=1e-10)
    assert gpu.device == "cuda"
