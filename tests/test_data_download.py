"""mlplab.data.download and the download path of the loaders, served by http.server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import socket
import time
import warnings

import numpy as np
import pytest

from mlplab.data import DataWarning, cifar10, load_cifar10
from mlplab.data.download import DownloadError, download_file
from mlplab.errors import DataError


@pytest.fixture
def served(tmp_path, http_server):
    """(base URL, payload, md5) of a 3 MB file served from a temporary folder."""
    folder = tmp_path / "www"
    folder.mkdir()
    payload = np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    (folder / "blob.bin").write_bytes(payload)
    return http_server(folder), payload, hashlib.md5(payload).hexdigest()


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_download_with_progress_and_matching_checksum(served, tmp_path, capsys):
    url, payload, md5 = served
    dest = tmp_path / "out" / "blob.bin"
    assert download_file(f"{url}/blob.bin", dest, md5, progress=True) == dest
    assert dest.read_bytes() == payload
    assert leftovers(dest.parent) == ["blob.bin"]  # no temporary file left behind
    err = capsys.readouterr().err
    assert "blob.bin" in err and "100%" in err and "3.00M" in err


def test_checksum_mismatch_deletes_the_file_and_says_so(served, tmp_path):
    url, _, md5 = served
    dest = tmp_path / "out" / "blob.bin"
    with pytest.raises(DownloadError, match=r"MD5 is .*expected 0{32}.*deleted") as error:
        download_file(f"{url}/blob.bin", dest, "0" * 32, progress=False)
    assert md5 in str(error.value)
    assert leftovers(dest.parent) == []


def test_http_error(served, tmp_path):
    url, _, _ = served
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{url}/missing.bin", tmp_path / "out" / "x.bin", None, progress=False)
    assert leftovers(tmp_path / "out") == []


def test_unreachable_server(tmp_path):
    with pytest.raises(DownloadError, match="downloading http://127.0.0.1:.* failed"):
        download_file(f"http://127.0.0.1:{closed_port()}/x.bin", tmp_path / "x.bin", None, progress=False)
    assert leftovers(tmp_path) == []


def test_silent_server_times_out_quickly(tmp_path):
    with socket.socket() as sock:  # accepts connections (the backlog) but never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        started = time.monotonic()
        with pytest.raises(DownloadError, match="no answer within 0.5 s"):
            download_file(f"http://127.0.0.1:{sock.getsockname()[1]}/x", tmp_path / "x", None, timeout=0.5,
                          progress=False)
        assert time.monotonic() - started < 10


def test_default_timeout_is_bounded():
    from mlplab.data import download

    assert 5 <= download.TIMEOUT <= 60


# -- through load_cifar10 ----------------------------------------------------------------------------
@pytest.fixture
def cifar_server(synthetic_cifar, tmp_path, http_server, monkeypatch):
    """The synthetic archive served over HTTP, with MLPLAB_CIFAR10_URL pointing at it."""
    archive = synthetic_cifar.write_archive(tmp_path / "www")
    monkeypatch.setenv("MLPLAB_CIFAR10_URL", f"{http_server(archive.parent)}/{archive.name}")
    return archive


def test_load_downloads_when_missing(cifar_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cifar10, "OFFICIAL_MD5", hashlib.md5(cifar_server.read_bytes()).hexdigest())
    data_dir = tmp_path / "data"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # the "official" checksum matched
        splits = load_cifar10(data_dir, validation_size=50)
    assert leftovers(data_dir) == ["cifar-10-python.tar.gz"]
    assert (data_dir / "cifar-10-python.tar.gz").read_bytes() == cifar_server.read_bytes()
    assert splits.info["downloaded"] is True and splits.info["official_checksum"] is True
    assert len(splits.train) == 450 and len(splits.test) == 100
    assert "cifar-10-python.tar.gz" in capsys.readouterr().err  # the progress bar
    again = load_cifar10(data_dir, validation_size=50)  # now found locally
    assert again.info["downloaded"] is False and again.info["cache_hit"] is True


def test_load_refuses_a_download_with_the_wrong_checksum(cifar_server, tmp_path):
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match=r"MD5 is .*expected c58f30108f718f92721af3b95e74349a.*deleted") as error:
        load_cifar10(data_dir, validation_size=50, progress=False)
    assert str(data_dir) in str(error.value)
    assert leftovers(data_dir) == []


def test_offline_failure_names_the_folder_the_url_and_what_to_pass(synthetic_cifar, tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}/cifar-10-python.tar.gz"
    monkeypatch.setenv("MLPLAB_CIFAR10_URL", url)
    with pytest.raises(DataError) as error:
        load_cifar10(tmp_path / "data", validation_size=50, progress=False)
    message = str(error.value)
    assert str(tmp_path / "data") in message and url in message and "--data-dir" in message
    assert "\n" not in message


def test_unwritable_data_dir(synthetic_cifar, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MLPLAB_CIFAR10_URL", "http://127.0.0.1:9/never-used")
    with pytest.raises(DataError, match="cannot write"):
        load_cifar10(blocker / "data", validation_size=50, progress=False)
