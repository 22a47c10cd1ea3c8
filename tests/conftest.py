"""Shared pytest fixtures. Each group below belongs to one part of mlplab; append new groups."""

from __future__ import annotations

import functools
import io
import os
import pickle
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


# =============================================================================================
# data (tests/test_data_*.py)
# =============================================================================================
@pytest.fixture(autouse=True)
def _isolated_mlplab_cache(tmp_path_factory, monkeypatch):
    """Every test gets an empty $MLPLAB_CACHE, so no test reads or writes ~/.cache/mlplab.

    The prepared float32 splits are off (a test loading the real CIFAR-10 would write 0.7 GB
    into its fresh cache for nothing); the tests of that cache switch it on."""
    monkeypatch.setenv("MLPLAB_CACHE", str(tmp_path_factory.mktemp("mlplab-cache")))
    monkeypatch.setenv("MLPLAB_PREPARED_CACHE", "0")


class SyntheticCifar:
    """A small CIFAR-10 in the official python-version layout, written by the tests.

    Five training batches and a test batch of ``per_batch`` random uint8 images each, pickled as
    Python 2 wrote them (protocol 2, bytes keys, the array referring to numpy.core.multiarray).
    ``train_x``/``train_y``/``test_x``/``test_y`` hold what was written, in file order.
    """

    TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
    CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    def __init__(self, per_batch: int = 100, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.per_batch = per_batch
        self.train_x = rng.integers(0, 256, (5 * per_batch, 3072), dtype=np.uint8)
        self.train_y = rng.permutation(np.arange(5 * per_batch) % 10).astype(np.int64)
        self.test_x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        self.test_y = rng.permutation(np.arange(per_batch) % 10).astype(np.int64)

    @staticmethod
    def pickled(value) -> bytes:
        # Python 3 names numpy._core; the official files (NumPy 1.x, Python 2) say numpy.core.
        return pickle.dumps(value, protocol=2).replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")

    def batch(self, name: str, data=None, labels=None) -> dict:
        if name == "test_batch":
            x, y = self.test_x, self.test_y
        else:
            i = self.TRAIN.index(name)
            x = self.train_x[i * self.per_batch:(i + 1) * self.per_batch]
            y = self.train_y[i * self.per_batch:(i + 1) * self.per_batch]
        return {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in (y if labels is None else labels)],
            b"data": x if data is None else data,
            b"filenames": [f"{name}_{j}.png".encode() for j in range(len(x))],
        }

    def members(self, replace: dict | None = None, omit=()) -> dict[str, bytes]:
        """name -> file bytes; ``replace`` maps a name to a dict (pickled) or raw bytes."""
        replace = replace or {}
        files = {"batches.meta": self.pickled({b"label_names": [n.encode() for n in self.CLASS_NAMES],
                                               b"num_cases_per_batch": self.per_batch, b"num_vis": 3072})}
        for name in (*self.TRAIN, "test_batch"):
            files[name] = self.pickled(self.batch(name))
        for name, value in replace.items():
            files[name] = value if isinstance(value, bytes) else self.pickled(value)
        return {name: payload for name, payload in files.items() if name not in omit}

    def write_folder(self, root: Path, replace: dict | None = None, omit=()) -> Path:
        """Write ``root/cifar-10-batches-py/`` and return ``root``."""
        folder = Path(root) / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        for name, payload in self.members(replace, omit).items():
            (folder / name).write_bytes(payload)
        return Path(root)

    def write_archive(self, root: Path, replace: dict | None = None, omit=(),
                      name: str = "cifar-10-python.tar.gz") -> Path:
        """Write ``root/<name>`` (a gzipped tar of cifar-10-batches-py/) and return its path."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        path = root / name
        with tarfile.open(path, "w:gz", compresslevel=0) as tar:  # random pixels do not compress
            folder = tarfile.TarInfo("cifar-10-batches-py")
            folder.type = tarfile.DIRTYPE
            folder.mode = 0o755
            tar.addfile(folder)
            for member, payload in self.members(replace, omit).items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{member}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        return path


@pytest.fixture
def synthetic_cifar(monkeypatch) -> SyntheticCifar:
    """A SyntheticCifar of 100 images per batch, with the loader told to expect that size."""
    from mlplab.data import cifar10

    monkeypatch.setattr(cifar10, "IMAGES_PER_BATCH", 100)
    for variable in ("MLPLAB_CIFAR10_URL", "MLPLAB_MNIST_URL", "MLPLAB_FASHION_MNIST_URL", "MLPLAB_DATA"):
        monkeypatch.delenv(variable, raising=False)
    return SyntheticCifar(per_batch=100)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@pytest.fixture
def http_server():
    """``serve(folder) -> base URL``: an http.server on 127.0.0.1 serving ``folder``."""
    servers = []

    def serve(folder) -> str:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def real_cifar_dir() -> Path:
    """The folder holding the real cifar-10-python.tar.gz: $MLPLAB_TEST_CIFAR_DIR, else the
    repository's ../shared/data; the test is skipped when the archive is not there."""
    folder = Path(os.environ.get("MLPLAB_TEST_CIFAR_DIR") or REPO_ROOT.parent / "shared" / "data")
    if not (folder / "cifar-10-python.tar.gz").is_file():
        pytest.skip(f"the real CIFAR-10 archive is not in {folder} (set MLPLAB_TEST_CIFAR_DIR)")
    return folder
