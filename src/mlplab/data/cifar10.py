"""CIFAR-10 from the official "python version": the archive or its extracted folder.

The archive is read where it lies (the data folder may be read-only) and decoded once into the
cache (:mod:`mlplab.data.cache`) as uint8 ``.npy`` files; every load then converts those to
normalised float32 in chunks, so a cached load takes a fraction of a second and no load ever
holds more than one float32 copy of the data.

Files whose checksum differs from the official release are used only if their structure is
valid (five training batches and a test batch of ``IMAGES_PER_BATCH`` x 3072 uint8, labels
0-9), with a one-line :class:`~mlplab.data.DataWarning`. Batches are unpickled with an allow-list
of the few NumPy constructors an array needs, so a tampered file cannot run code.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlplab.data import cache
from mlplab.data.core import DatasetSplits, warn
from mlplab.data.download import DownloadError, download_file
from mlplab.data.safe_pickle import unpickle_arrays
from mlplab.data.source import DataSource, Decoded, load
from mlplab.errors import DataError

#: where the official archive is downloaded from; ``$MLPLAB_CIFAR10_URL`` overrides it
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
OFFICIAL_MEMBER_MD5 = {
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_NAME = "batches.meta"
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_SHAPE = (3, 32, 32)
FEATURES = 3 * 32 * 32
#: rows per batch file (the tests shrink it to write small files in the official layout)
IMAGES_PER_BATCH = 10_000
#: the published per-channel statistics of the training set, in units of pixel / 255
MEAN = (0.491, 0.482, 0.447)
STD = (0.247, 0.243, 0.262)
#: no batch file is this large; a bigger tar member is refused rather than read into memory
MAX_MEMBER_BYTES = 256 << 20
CACHE_FORMAT = 1


@dataclass
class Source:
    kind: str  # "archive" or "folder"
    path: Path
    stamp: list


def load_cifar10(
    data_dir=None,
    validation_size: int = 5000,
    split_seed: int = 42,
    download: bool = True,
    normalize: bool = True,
    normalization: str = "published",
    progress: bool = True,
) -> DatasetSplits:
    """CIFAR-10 as train / validation / test splits.

    ``x``: float32 (N, 3072) in the raw CIFAR row layout (R plane, then G, then B, each 32x32 row
    major); ``y``: int64 (N,). ``data_dir`` (default ``$MLPLAB_DATA``, else ``./data``) holds
    ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz`` (or is either itself); when neither
    is there and ``download`` is true, the official archive is downloaded into it. Validation is
    the first ``validation_size`` images of ``default_rng(split_seed).permutation(50000)``, train
    the rest; both keep the original order. ``normalization``: 'published' (MEAN, STD) or
    'train' (statistics of the training split); ``normalize=False`` gives pixel / 255.
    """
    return load(CIFAR10, data_dir, validation_size, split_seed, download, normalize, normalization, progress)


def _validation_room() -> tuple[int, str]:
    n_train = len(TRAIN_BATCHES) * IMAGES_PER_BATCH  # read at call time: the tests shrink the batches
    return n_train, f"CIFAR-10 has {n_train:,} training images and at least one must stay for training"


def _find(root: Path, download: bool, progress: bool) -> tuple[Source, bool]:
    """(the source, whether it was downloaded just now)."""
    source = locate(root)
    if source is not None:
        return source, False
    if not download:
        raise DataError(
            f"CIFAR-10 not found in {os.path.abspath(root)} (looked for {FOLDER_NAME}/ and {ARCHIVE_NAME}); "
            f"pass --data-dir (or set MLPLAB_DATA) to the folder that holds one of them, "
            f"or allow downloading it (download=True)"
        )
    return _download(root, progress), True


def _decode(found: tuple[Source, bool], rebuild: bool) -> Decoded:
    """The batches decoded into (or found in) the cache, as uint8 ``.npy`` files the template reads."""
    source, downloaded = found
    (entry, meta), hit, scratch = _cache_entry(source, rebuild=rebuild)
    official = _is_official(source.kind, meta)
    warning = None
    if not official:
        what = (
            "its MD5 differs from the published one"
            if source.kind == "archive"
            else "its files' MD5s differ from the published ones"
        )
        warning = (
            f"CIFAR-10 at {source.path} is not the official release ({what}); "
            f"its structure is valid ({meta['num_train']:,} training and {meta['num_test']:,} test images, "
            f"labels 0-9), so it is used as is"
        )
    info = {
        "source": os.path.abspath(source.path),
        "source_kind": source.kind,
        "size_bytes": meta["size_bytes"],
        "md5": meta["md5"],
        "official_checksum": official,
        "downloaded": downloaded,
        "cache": None if scratch is not None else str(entry),
        "cache_hit": hit,
    }
    return Decoded(
        train_x=entry / "train_x.npy",
        train_y=entry / "train_y.npy",
        test_x=entry / "test_x.npy",
        test_y=entry / "test_y.npy",
        n_train=int(meta["num_train"]),
        n_test=int(meta["num_test"]),
        class_names=list(meta["class_names"]),
        info=info,
        warning=warning,
        entry=entry,
        cache_hit=hit,
        save_prepared=scratch is None,
        cleanup=None if scratch is None else lambda: cache.discard(scratch),
    )


# -- where the data is -------------------------------------------------------------------------
def locate(root: Path) -> Source | None:
    """The CIFAR-10 source in (or at) ``root``: the extracted folder first, then the archive."""
    try:
        if root.is_file():
            if root.name.endswith((".tar.gz", ".tgz")):
                return Source("archive", root, _stamp(root))
            raise DataError(f"{root} is a file, not a folder or a {ARCHIVE_NAME} archive")
        if not root.exists():
            return None
        if not root.is_dir():
            raise DataError(f"{root} is not a folder")
        if not os.access(root, os.R_OK | os.X_OK):
            raise DataError(f"cannot read the data folder {root}: permission denied")
        for folder in (root / FOLDER_NAME, root):
            if (folder / TRAIN_BATCHES[0]).exists() or (folder / TEST_BATCH).exists():
                if not os.access(folder, os.R_OK | os.X_OK):
                    raise DataError(f"cannot read the CIFAR-10 folder {folder}: permission denied")
                return Source("folder", folder, _folder_stamp(folder))
        archive = root / ARCHIVE_NAME
        if archive.is_file():
            return Source("archive", archive, _stamp(archive))
        if (root / FOLDER_NAME).is_dir():  # present but without batches: report what it lacks
            return Source("folder", root / FOLDER_NAME, _folder_stamp(root / FOLDER_NAME))
    except OSError as exc:
        raise DataError(f"cannot read the data folder {root}: {exc.strerror or exc}") from None
    return None


def _stamp(path: Path) -> list:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _folder_stamp(folder: Path) -> list:
    stamp = []
    for name in (META_NAME, *TRAIN_BATCHES, TEST_BATCH):
        try:
            stamp.append([name, *_stamp(folder / name)])
        except FileNotFoundError:
            pass
    return stamp


def _download(root: Path, progress: bool) -> Source:
    url = os.environ.get("MLPLAB_CIFAR10_URL") or URL
    dest = root / ARCHIVE_NAME
    try:
        download_file(url, dest, OFFICIAL_MD5, progress=progress, description=ARCHIVE_NAME)
    except DownloadError as exc:
        raise DataError(
            f"CIFAR-10 not found in {os.path.abspath(root)} (looked for {FOLDER_NAME}/ and {ARCHIVE_NAME}) "
            f"and {exc}; put {ARCHIVE_NAME} there, or pass --data-dir (or set MLPLAB_DATA) "
            f"to a folder that holds it"
        ) from None
    return Source("archive", dest, _stamp(dest))


# -- decoding into the cache -------------------------------------------------------------------
def _cache_entry(source: Source, rebuild: bool = False):
    """((entry folder, meta), cache hit?, scratch folder to delete afterwards or None)."""
    try:
        folder = cache.dataset_folder("cifar10")
        found = None if rebuild else cache.lookup(folder, str(source.path.resolve()), source.stamp)
        if found is not None and found[1].get("format") == CACHE_FORMAT:
            return found, True, None
        building = cache.new_entry(folder)
    except OSError as exc:
        scratch = Path(tempfile.mkdtemp(prefix="mlplab-cifar10-"))
        warn(
            f"cannot write the cache folder {cache.cache_root()} ({exc.strerror or exc}); decoding CIFAR-10 "
            f"without a cache, so every load is slow: set MLPLAB_CACHE to a writable folder"
        )
        key, meta = _decode_into(source, scratch)
        cache._write_json(scratch / cache.META, meta)
        return (scratch, meta), False, scratch
    try:
        key, meta = _decode_into(source, building)
    except BaseException:
        cache.discard(building)
        raise
    existing = cache.entry_at(folder / key)
    if existing is not None and not rebuild and existing[1].get("format") == CACHE_FORMAT:
        cache.discard(building)  # the same bytes were decoded before from another path
        path = existing[0]
    else:
        path = cache.commit(building, folder, key, meta)
    cache.remember(folder, str(source.path.resolve()), source.stamp, key)
    return (path, meta), False, None


class _Decoder:
    """Validates batch files one by one and writes them into a cache entry."""

    def __init__(self, where: Path, entry: Path):
        self.where = where
        self.n_train = len(TRAIN_BATCHES) * IMAGES_PER_BATCH
        self.train_file, self.train_offset = cache.open_npy_writer(
            entry / "train_x.npy", (self.n_train, FEATURES), np.uint8
        )
        self.test_file, self.test_offset = cache.open_npy_writer(
            entry / "test_x.npy", (IMAGES_PER_BATCH, FEATURES), np.uint8
        )
        self.train_y = np.empty(self.n_train, np.int64)
        self.test_y = np.empty(IMAGES_PER_BATCH, np.int64)
        self.seen: set[str] = set()
        self.class_names = list(CLASS_NAMES)
        self.member_md5: dict[str, str] = {}

    def add(self, name: str, payload: bytes, hash_member: bool = False) -> None:
        if hash_member:
            self.member_md5[name] = hashlib.md5(payload, usedforsecurity=False).hexdigest()
        if name == META_NAME:
            self.class_names = _class_names(payload) or self.class_names
            return
        data, labels = _parse_batch(payload, f"{self.where}: {name}")
        if name == TEST_BATCH:
            handle, offset, out = self.test_file, self.test_offset, self.test_y
        else:
            i = TRAIN_BATCHES.index(name)
            handle, offset = self.train_file, self.train_offset + i * IMAGES_PER_BATCH * FEATURES
            out = self.train_y[i * IMAGES_PER_BATCH : (i + 1) * IMAGES_PER_BATCH]
        handle.seek(offset)
        handle.write(data.data.cast("B"))
        out[...] = labels
        self.seen.add(name)

    def finish(self, entry: Path) -> None:
        missing = [name for name in (*TRAIN_BATCHES, TEST_BATCH) if name not in self.seen]
        if missing:
            raise DataError(
                f"{self.where} lacks {', '.join(missing)}: not a complete CIFAR-10 python version "
                f"(an incomplete download or extraction?)"
            )
        self.close()
        np.save(entry / "train_y.npy", self.train_y)
        np.save(entry / "test_y.npy", self.test_y)

    def close(self) -> None:
        self.train_file.close()
        self.test_file.close()


def _is_official(kind: str, meta: dict) -> bool:
    if kind == "archive":
        return meta.get("md5") == OFFICIAL_MD5
    members = meta.get("member_md5") or {}
    return all(members.get(name) == value for name, value in OFFICIAL_MEMBER_MD5.items())


def _decode_into(source: Source, entry: Path) -> tuple[str, dict]:
    decoder = _Decoder(source.path, entry)
    try:
        if source.kind == "archive":
            md5, size = _read_archive(source.path, decoder)
            key = f"{md5}-{size}"
        else:
            size = _read_folder(source.path, decoder)
            members = sorted(decoder.member_md5.items())
            md5 = hashlib.md5(repr(members).encode(), usedforsecurity=False).hexdigest()
            key = f"folder-{md5}-{size}"
        decoder.finish(entry)
    finally:
        decoder.close()
    meta = {
        "format": CACHE_FORMAT,
        "dataset": "cifar10",
        "class_names": decoder.class_names,
        "num_train": decoder.n_train,
        "num_test": IMAGES_PER_BATCH,
        "md5": md5,
        "size_bytes": size,
        "source": os.path.abspath(source.path),
        "member_md5": decoder.member_md5,
    }
    return key, meta


def _read_archive(path: Path, decoder: _Decoder) -> tuple[str, int]:
    wanted = {META_NAME, *TRAIN_BATCHES, TEST_BATCH}
    problem = f"{path} is truncated or corrupted"
    advice = "delete it and download it again"
    # The MD5 (cache key and official check) is computed in a second thread while this one
    # decompresses: hashlib and zlib both release the GIL, so the hash costs no wall time.
    with ThreadPoolExecutor(1) as pool:
        checksum = pool.submit(_md5_and_size, path)
        try:
            _decode_archive(path, decoder, wanted)
        except DataError:
            raise
        except EOFError:
            raise DataError(f"{problem} (it ends early); {advice}") from None
        except (gzip.BadGzipFile, zlib.error, tarfile.TarError) as exc:
            if isinstance(exc, gzip.BadGzipFile) and "Not a gzipped file" in str(exc):
                raise DataError(f"{path} is not a gzip-compressed tar archive ({ARCHIVE_NAME} expected)") from None
            raise DataError(f"{problem} ({exc}); {advice}") from None
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            return checksum.result()
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def _md5_and_size(path: Path) -> tuple[str, int]:
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _decode_archive(path: Path, decoder: _Decoder, wanted: set[str]) -> None:
    with open(path, "rb") as raw:
        # gzip.GzipFile checks the CRC at the end of the stream (tarfile's own "r:gz" stream
        # mode does not); "r:" reads members with large sequential reads.
        with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
            with tarfile.open(fileobj=unzipped, mode="r:") as tar:
                for member in tar:
                    name = member.name.rsplit("/", 1)[-1]
                    if name not in wanted or not member.isfile():
                        continue
                    if member.size > MAX_MEMBER_BYTES:
                        raise DataError(
                            f"{path}: {member.name} is {member.size:,} bytes, too large for a CIFAR-10 batch"
                        )
                    payload = tar.extractfile(member)
                    if payload is None:  # tarfile gives no reader for links and devices
                        raise DataError(f"{path}: {member.name} cannot be read")
                    decoder.add(name, payload.read())
            while unzipped.read(1 << 20):  # to the end, so that the CRC is checked
                pass


def _read_folder(folder: Path, decoder: _Decoder) -> int:
    size = 0
    for name in (META_NAME, *TRAIN_BATCHES, TEST_BATCH):
        path = folder / name
        try:
            with open(path, "rb") as handle:
                payload = handle.read(MAX_MEMBER_BYTES + 1)
        except FileNotFoundError:
            if name == META_NAME:
                continue
            raise DataError(
                f"{folder} lacks {name}: not a complete CIFAR-10 python version "
                f"(expected {', '.join(TRAIN_BATCHES)} and {TEST_BATCH})"
            ) from None
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
        if len(payload) > MAX_MEMBER_BYTES:
            raise DataError(f"{path} is too large for a CIFAR-10 batch")
        size += len(payload)
        decoder.add(name, payload, hash_member=True)
    return size


# -- one batch file ----------------------------------------------------------------------------
def _parse_batch(payload: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    batch = unpickle_arrays(payload, where, "CIFAR-10 batch")
    data, labels = batch.get("data"), batch.get("labels")
    if data is None or labels is None:
        raise DataError(f"{where} is not a CIFAR-10 batch (no 'data' and 'labels')")
    expected = (IMAGES_PER_BATCH, FEATURES)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != expected:
        got = f"{data.shape} {data.dtype}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{where} has data of shape {got}; expected {expected} uint8")
    try:
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iu":
            raise TypeError(labels.dtype)
        labels = labels.astype(np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{where} has labels that are not integers") from None
    if labels.shape != (IMAGES_PER_BATCH,):
        raise DataError(f"{where} has {labels.size} labels; expected {IMAGES_PER_BATCH}")
    bad = np.flatnonzero((labels < 0) | (labels > 9))
    if bad.size:
        raise DataError(f"{where} has labels outside 0-9 ({bad.size} of them, e.g. {labels[bad[0]]} at index {bad[0]})")
    return np.ascontiguousarray(data), labels


def _class_names(payload: bytes) -> list[str] | None:
    try:
        raw = unpickle_arrays(payload, META_NAME, "CIFAR-10 batch").get("label_names")
        if raw is None:
            return None
        names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in raw]
    except (DataError, TypeError, AttributeError, UnicodeDecodeError):
        return None
    return names if len(names) == 10 else None


CIFAR10 = DataSource(
    name="cifar10",
    title="CIFAR-10",
    class_names=tuple(CLASS_NAMES),
    image_shape=IMAGE_SHAPE,
    pixel_max=255,
    mean=MEAN,
    std=STD,
    default_validation_size=5000,
    validation_room=_validation_room,
    locate=_find,
    decode=_decode,
)
