"""--array-library: the hand-derived backend on torch, array-api-strict and CuPy arrays.

A run on another library draws every random number from the same NumPy generators, so in
float64 it must follow the NumPy run's trajectory to rounding (1e-10 relative); checkpoints are
NumPy whatever the library, so a run resumes on another one. The checks that need the modules
themselves to run on those arrays (the array-API rewrite of nn/, models.py and optim.py) are
the parity, resume, run-folder and gradcheck tests; the option, placement and batch tests need
only the training side.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from mlplab.cli import main
from mlplab.config import TrainConfig
from mlplab.data import batches
from mlplab.errors import ConfigError, MissingDependencyError
from mlplab.training import arrays
from mlplab.training.arrays import DeviceBatches, fits_on_device, placement
from mlplab.training.backends import NumpyBackend
from mlplab.training.checkpoint import load_checkpoint
from mlplab.xp import to_numpy

torch = pytest.importorskip("torch")
pytest.importorskip("array_api_strict")
pytest.importorskip("array_api_compat")

OTHER_LIBRARIES = ("torch", "array-api-strict")
RTOL = 1e-10
TINY = ["--dataset", "digits", "--hidden-dims", "16", "--epochs", "1", "-q", "--no-report"]


def _cuda() -> bool:
    return bool(torch.cuda.is_available())


def _cupy_gpu() -> bool:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - not installed, or no driver: no GPU for CuPy either way
        return False


def _one_line_error(capsys, code: int, expected: int) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == expected and len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


# -- the option ----------------------------------------------------------------------------
def test_the_option_is_validated():
    assert TrainConfig().validated().array_library == "numpy"
    assert TrainConfig(array_library="array_api_strict").validated().array_library == "array-api-strict"
    assert TrainConfig(array_library="Torch").validated().array_library == "torch"
    with pytest.raises(ConfigError, match="unknown array library 'jax'"):
        TrainConfig(array_library="jax").validated()
    with pytest.raises(ConfigError, match="--backend torch is the autograd twin"):
        TrainConfig(array_library="torch", backend="torch").validated()
    with pytest.raises(ConfigError, match="array-api-strict computes on the CPU"):
        TrainConfig(array_library="array-api-strict", device="cuda").validated()
    with pytest.raises(ConfigError, match="CuPy arrays live on a GPU"):
        TrainConfig(array_library="cupy", device="cpu").validated()
    with pytest.raises(ConfigError, match="--track-gradients"):
        TrainConfig(array_library="torch", track_gradients=5).validated()
    # the twin keeps its --device, and NumPy arrays keep accepting the device given to both (compare)
    assert TrainConfig(backend="torch", device="cpu").validated().array_library == "numpy"
    assert TrainConfig(device="cuda").validated().array_library == "numpy"


def test_cli_usage_errors_are_one_line(capsys):
    code = main(["train", *TINY, "--array-library", "jax"])
    assert "unknown array library" in _one_line_error(capsys, code, 2)
    code = main(["train", *TINY, "--array-library", "torch", "--backend", "torch"])
    assert "autograd twin" in _one_line_error(capsys, code, 2)
    code = main(["gradcheck", "--array-library", "jax"])
    assert "unknown array library" in _one_line_error(capsys, code, 2)


@pytest.mark.parametrize("hidden", ["array_api_strict", "array_api_compat"])
def test_a_missing_library_is_one_line_naming_what_to_install(monkeypatch, capsys, tmp_path, hidden):
    monkeypatch.setitem(sys.modules, hidden, None)  # import array_api_strict -> ImportError
    code = main(["train", *TINY, "--array-library", "array-api-strict", "--out", str(tmp_path / "run")])
    line = _one_line_error(capsys, code, 1)
    assert "pip install" in line and "mlplab[array-api]" in line
    with pytest.raises(MissingDependencyError):
        placement("array-api-strict")


@pytest.mark.skipif("cupy" in sys.modules or _cupy_gpu(), reason="CuPy is installed")
def test_cupy_missing_names_the_package(capsys):
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed")
    except ImportError:
        pass
    code = main(["train", *TINY, "--array-library", "cupy"])
    assert "cupy-cuda12x" in _one_line_error(capsys, code, 1)


def test_cuda_without_a_gpu_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["train", *TINY, "--array-library", "torch", "--device", "cuda"])
    assert "CUDA is not available" in _one_line_error(capsys, code, 2)
    assert placement("torch", "auto").name == "cpu"
    assert placement("numpy", "cuda").name == "cpu"  # NumPy arrays: the CPU whatever --device says


# -- data on the device ----------------------------------------------------------------------
def test_fits_on_device():
    cifar = 45_000 * 3072 * 4 + 45_000 * 8
    assert fits_on_device(cifar, None)  # a CPU device: the arrays are host memory already
    assert not fits_on_device(cifar, 1 << 30)
    assert fits_on_device(cifar, 16 << 30)


@pytest.mark.parametrize("library", OTHER_LIBRARIES)
@pytest.mark.parametrize("mode", ["resident", "per-batch", "augment"])
def test_device_batches_are_the_host_batches(monkeypatch, library, mode):
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((53, 7)).astype(np.float32), rng.integers(0, 4, 53)
    augment = None
    if mode == "augment":
        def augment(xb):
            return xb[:, ::-1].copy()
    if mode == "per-batch":  # the estimate says the split is too large for the device
        monkeypatch.setattr(arrays, "free_device_bytes", lambda where: 100)
        monkeypatch.setattr(arrays, "fits_on_device", lambda nbytes, free, share=0.5: nbytes <= share * free)
    host_rng, device_rng = np.random.default_rng(9), np.random.default_rng(9)
    where = placement(library, "cpu")
    gather = DeviceBatches(where)
    for start in (0, 2):
        # (copies: both sources may reuse one buffer per pass, as the loop consumes each batch at once)
        expected = [(xb.copy(), yb.copy()) for xb, yb in
                    batches(x, y, 8, shuffle=True, rng=host_rng, drop_last=True, augment=augment, start=start)]
        got = []
        for xg, yg in gather(x, y, 8, shuffle=True, rng=device_rng, drop_last=True, augment=augment, start=start):
            assert type(xg).__module__.split(".")[0] == where.library.replace("-", "_")
            got.append((to_numpy(xg).copy(), to_numpy(yg).copy()))
        assert len(got) == len(expected) == 6 - start
        for (xe, ye), (xg, yg) in zip(expected, got):
            np.testing.assert_array_equal(xg, xe)
            np.testing.assert_array_equal(yg, ye)
    # the shuffling generator advanced exactly as on the host (a resumed run depends on it)
    assert host_rng.bit_generator.state == device_rng.bit_generator.state
    assert gather.resident is (mode == "resident")


def test_the_environment_forces_batches_off_the_device(monkeypatch):
    monkeypatch.setenv(arrays.DEVICE_DATA_ENV, "0")
    gather = DeviceBatches(placement("torch", "cpu"))
    x, y = np.zeros((10, 3), np.float32), np.zeros(10, np.int64)
    assert len(list(gather(x, y, 5))) == 2 and gather.resident is False


# -- training on another library (these need the array-API modules) -------------------------
@pytest.mark.parametrize("library", OTHER_LIBRARIES)
def test_evaluation_splits_go_to_the_device_once_when_they_fit(monkeypatch, library):
    """Evaluated twice, a split that fits is copied once and sliced there; forced off the
    device, it goes over chunk by chunk; both give NumPy's logits."""
    config = _config(library)
    x = np.random.default_rng(3).standard_normal((37, 20)).astype(np.float32)
    expected = NumpyBackend(_config("numpy"), 20, 5, np.random.SeedSequence(7)).predict_logits(x, batch_size=10)
    monkeypatch.setenv(arrays.DEVICE_DATA_ENV, "1")
    resident = NumpyBackend(config, 20, 5, np.random.SeedSequence(7))
    first = resident.predict_logits(x, batch_size=10)
    copy = resident._eval_copies[id(x)][1]
    assert copy is not None and resident.predict_logits(x, batch_size=10) is not first
    assert resident._eval_copies[id(x)][1] is copy  # made once, reused
    monkeypatch.setenv(arrays.DEVICE_DATA_ENV, "0")
    chunked = NumpyBackend(config, 20, 5, np.random.SeedSequence(7))
    second = chunked.predict_logits(x, batch_size=10)
    assert chunked._eval_copies[id(x)][1] is None
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(first, second)


STEPS, BATCH = 30, 16
CASES = {
    "sgd-nesterov-batch-norm-dropout": {"lr": 0.05, "momentum": 0.9, "nesterov": True, "use_batch_norm": True,
                                        "dropout": 0.2},
    "adamw-residual-smoothing": {"optimizer": "adamw", "lr": 1e-2, "weight_decay": 0.1, "residual": True,
                                 "label_smoothing": 0.1, "activation": "gelu"},
}


def _config(library: str, **options) -> TrainConfig:
    return TrainConfig.from_options({"dtype": "float64", "hidden_dims": [24, 24], "device": "cpu",
                                     "array_library": library, **options}).validated()


def _thirty_steps(library: str, options: dict):
    """30 steps through the backend and the loop's batch source: losses, final state, optimiser state, logits."""
    return _thirty_steps_on(NumpyBackend(_config(library, **options), 20, 5, np.random.SeedSequence(7)))


def _thirty_steps_on(backend):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((200, 20)).astype(np.float32), rng.integers(0, 5, 200)
    source = backend.batches or batches  # what the training loop gathers with
    shuffle, losses = np.random.default_rng(1), []
    while len(losses) < STEPS:
        for xb, yb in source(x, y, BATCH, shuffle=True, rng=shuffle, drop_last=True):
            losses.append(backend.train_step(xb, yb, backend.config.lr).loss)
            if len(losses) == STEPS:
                break
    logits = backend.predict_logits(x[:37], batch_size=10)
    return np.array(losses), backend.state_dict(), backend.optimizer_state(), logits


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("library", OTHER_LIBRARIES)
def test_thirty_steps_match_numpy(library, case):
    losses, state, optim, logits = _thirty_steps("numpy", CASES[case])
    other_losses, other_state, other_optim, other_logits = _thirty_steps(library, CASES[case])
    np.testing.assert_allclose(other_losses, losses, rtol=RTOL)
    assert state.keys() == other_state.keys() and optim["state"].keys() == other_optim["state"].keys()
    for key, value in state.items():
        assert type(other_state[key]) is np.ndarray  # checkpoints are NumPy whatever the library
        np.testing.assert_allclose(other_state[key], value, rtol=RTOL, atol=1e-12, err_msg=key)
    for key, value in optim["state"].items():
        assert type(other_optim["state"][key]) is np.ndarray
        np.testing.assert_allclose(other_optim["state"][key], value, rtol=RTOL, atol=1e-12, err_msg=key)
    assert type(other_logits) is np.ndarray and other_logits.dtype == np.float64
    np.testing.assert_allclose(other_logits, logits, rtol=RTOL, atol=1e-12)


def _run(out, **options):
    from mlplab import train

    return train(dataset="digits", hidden_dims=[16], dtype="float64", momentum=0.9, quiet=True, report=False,
                 out=str(out), **options)


def _final_weights(run_dir) -> dict:
    return load_checkpoint(run_dir / "last.npz").model


def test_run_folder_records_library_and_device_and_checkpoints_are_numpy(tmp_path, capsys):
    result = _run(tmp_path / "t", epochs=1, array_library="torch")
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert summary["array_library"] == "torch" and summary["device"] == "cpu"
    assert config["options"]["array_library"] == "torch"
    assert config["execution"] == {"backend": "numpy", "array_library": "torch", "device": "cpu"}
    for name in ("last.npz", "best.npz"):
        checkpoint = load_checkpoint(tmp_path / "t" / name)
        assert checkpoint.model and all(type(v) is np.ndarray for v in checkpoint.model.values())
    assert all(type(v) is np.ndarray for v in load_checkpoint(tmp_path / "t" / "last.npz").optimizer.values())
    assert type(result.backend.predict_logits(np.zeros((2, 64)))) is np.ndarray
    twin = result.backend.numpy_model()
    assert all(type(p) is np.ndarray for _, p, _ in twin.named_parameters())
    # the tools read it as any NumPy run
    assert main(["evaluate", str(tmp_path / "t")]) == 0


def test_numpy_run_records_its_library(tmp_path):
    _run(tmp_path / "n", epochs=1)
    summary = json.loads((tmp_path / "n" / "summary.json").read_text())
    assert (summary["array_library"], summary["device"]) == ("numpy", "cpu")


@pytest.mark.parametrize("first,second", [("numpy", "torch"), ("torch", "numpy")])
def test_resume_on_another_library_follows_the_same_trajectory(tmp_path, first, second):
    _run(tmp_path / "whole", epochs=2, array_library=first)
    _run(tmp_path / "split", epochs=1, array_library=first)
    from mlplab import train

    train(resume=str(tmp_path / "split"), epochs=2, array_library=second, quiet=True, report=False)
    whole, split = _final_weights(tmp_path / "whole"), _final_weights(tmp_path / "split")
    assert whole.keys() == split.keys()
    for key in whole:
        np.testing.assert_allclose(split[key], whole[key], rtol=RTOL, atol=1e-12, err_msg=key)
    a = json.loads((tmp_path / "whole" / "summary.json").read_text())
    b = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert b["array_library"] == second
    np.testing.assert_allclose(b["test_loss"], a["test_loss"], rtol=RTOL)


def test_compare_puts_the_hand_derived_modules_on_torch_beside_the_twin(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--dataset", "digits", "--epochs", "1", "--hidden-dims", "16", "--device", "cpu",
                 "--array-library", "torch", "--out", str(out), "-q", "--no-report"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "numpy" / "summary.json").read_text())["array_library"] == "torch"
    assert json.loads((out / "torch" / "summary.json").read_text())["array_library"] == "numpy"


@pytest.mark.parametrize("library", OTHER_LIBRARIES)
def test_gradcheck_runs_on_the_library(capsys, library):
    code = main(["gradcheck", "--array-library", library, "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"on {library} arrays" in out and " 0 failed" in out


# -- GPUs (skipped without one) -------------------------------------------------------------
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device")
def test_torch_cuda_matches_numpy():  # pragma: no cover - no GPU in CI
    case = CASES["sgd-nesterov-batch-norm-dropout"]
    losses, state, _, _ = _thirty_steps("numpy", case)
    backend = NumpyBackend(_config("torch", device="cuda", **case), 20, 5, np.random.SeedSequence(7))
    assert backend.device.startswith("cuda")
    other_losses, other_state, _, _ = _thirty_steps_on(backend)
    np.testing.assert_allclose(other_losses, losses, rtol=1e-9)
    for key, value in state.items():
        np.testing.assert_allclose(other_state[key], value, rtol=1e-9, atol=1e-11, err_msg=key)


@pytest.mark.skipif(not _cupy_gpu(), reason="needs CuPy and a CUDA device")
def test_cupy_matches_numpy():  # pragma: no cover - no GPU in CI
    case = CASES["sgd-nesterov-batch-norm-dropout"]
    losses, state, _, _ = _thirty_steps("numpy", case)
    other_losses, other_state, _, _ = _thirty_steps("cupy", {**case, "device": "cuda"})
    np.testing.assert_allclose(other_losses, losses, rtol=1e-9)
    for key, value in state.items():
        np.testing.assert_allclose(other_state[key], value, rtol=1e-9, atol=1e-11, err_msg=key)

