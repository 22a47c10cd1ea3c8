"""mlplab.data.cifar10: small synthetic files in the official layout, and the real archive when present."""

from __future__ import annotations

import os
import shutil
import tarfile
import warnings

import numpy as np
import pytest

from mlplab.data import DataWarning, cifar10, load_cifar10
from mlplab.data import source as template
from mlplab.errors import ConfigError, DataError

N_TRAIN = 500  # 5 batches of 100 (the synthetic_cifar fixture)


def load(source, **options):
    """load_cifar10 without the expected non-official-checksum warning."""
    options.setdefault("validation_size", 50)
    options.setdefault("download", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return load_cifar10(source, **options)


def as_uint8(x: np.ndarray) -> np.ndarray:
    """Rows loaded with normalize=False (pixel / 255) back to the pixels."""
    return np.rint(x * 255).astype(np.uint8)


# -- layout, labels, splits ---------------------------------------------------------------------
def test_rows_keep_the_raw_layout_and_labels(synthetic_cifar, tmp_path):
    splits = load(synthetic_cifar.write_archive(tmp_path), normalize=False, validation_size=0)
    assert splits.name == "cifar10" and splits.image_shape == (3, 32, 32)
    assert splits.class_names == synthetic_cifar.CLASS_NAMES
    assert splits.num_classes == 10 and splits.num_features == 3072
    for part in (splits.train, splits.validation, splits.test):
        assert part.x.dtype == np.float32 and part.x.flags.c_contiguous and part.x.ndim == 2
        assert part.y.dtype == np.int64
    np.testing.assert_array_equal(as_uint8(splits.train.x), synthetic_cifar.train_x)
    np.testing.assert_array_equal(splits.train.y, synthetic_cifar.train_y)
    np.testing.assert_array_equal(as_uint8(splits.test.x), synthetic_cifar.test_x)
    np.testing.assert_array_equal(splits.test.y, synthetic_cifar.test_y)
    assert len(splits.validation) == 0 and splits.validation.x.shape == (0, 3072)


def test_channel_planes_are_red_green_blue(synthetic_cifar, tmp_path):
    image = np.concatenate([np.full(1024, 10), np.full(1024, 100), np.full(1024, 200)]).astype(np.uint8)
    synthetic_cifar.test_x[0] = image
    splits = load(synthetic_cifar.write_folder(tmp_path))
    first = splits.test.x[0].reshape(3, 32, 32)
    for channel, value in enumerate((10, 100, 200)):
        expected = (value / 255 - cifar10.MEAN[channel]) / cifar10.STD[channel]
        np.testing.assert_allclose(first[channel], expected, rtol=1e-5)


def test_split_is_a_seeded_permutation_of_the_training_images(synthetic_cifar, tmp_path):
    source = synthetic_cifar.write_archive(tmp_path)
    splits = load(source, normalize=False, validation_size=50, split_seed=7)
    order = np.random.default_rng(7).permutation(N_TRAIN)
    val_idx, train_idx = np.sort(order[:50]), np.sort(order[50:])
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (450, 50, 100)
    np.testing.assert_array_equal(as_uint8(splits.validation.x), synthetic_cifar.train_x[val_idx])
    np.testing.assert_array_equal(splits.validation.y, synthetic_cifar.train_y[val_idx])
    np.testing.assert_array_equal(as_uint8(splits.train.x), synthetic_cifar.train_x[train_idx])
    np.testing.assert_array_equal(splits.train.y, synthetic_cifar.train_y[train_idx])
    assert splits.info["split_seed"] == 7 and splits.info["validation_size"] == 50


def test_split_is_deterministic_and_depends_on_the_seed(synthetic_cifar, tmp_path):
    source = synthetic_cifar.write_archive(tmp_path)
    a, b = load(source, split_seed=3), load(source, split_seed=3)
    c = load(source, split_seed=4)
    np.testing.assert_array_equal(a.validation.x, b.validation.x)
    np.testing.assert_array_equal(a.train.y, b.train.y)
    assert not np.array_equal(a.validation.x, c.validation.x)


@pytest.mark.parametrize("size", [-1, 500, 50_000, 2.5, True, "10"])
def test_validation_size_outside_the_range_is_a_config_error(synthetic_cifar, tmp_path, size):
    # checked before anything is read: the folder does not even exist
    with pytest.raises(ConfigError, match="validation_size"):
        load_cifar10(tmp_path / "missing", validation_size=size, download=False)


def test_default_validation_size_range_is_0_to_49999(tmp_path):
    with pytest.raises(ConfigError, match="0 to 49,999"):
        load_cifar10(tmp_path, validation_size=50_000)


def test_bad_normalization_option_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="normalization"):
        load_cifar10(tmp_path, normalization="imagenet")


# -- normalisation ---------------------------------------------------------------------------------
def test_published_normalisation_is_the_default(synthetic_cifar, tmp_path):
    source = synthetic_cifar.write_archive(tmp_path)
    raw = load(source, normalize=False)
    normed = load(source)
    mean = np.repeat(np.asarray(cifar10.MEAN, np.float32), 1024)
    std = np.repeat(np.asarray(cifar10.STD, np.float32), 1024)
    for a, b in ((raw.train, normed.train), (raw.validation, normed.validation), (raw.test, normed.test)):
        np.testing.assert_allclose(b.x, (a.x - mean) / std, atol=2e-5)
    assert normed.info["normalization"] == "published"
    assert normed.info["mean"] == list(cifar10.MEAN) and normed.info["std"] == list(cifar10.STD)
    assert raw.info["normalization"] == "none"


def test_train_normalisation_uses_training_split_statistics(synthetic_cifar, tmp_path):
    source = synthetic_cifar.write_archive(tmp_path)
    splits = load(source, normalization="train")
    planes = splits.train.x.reshape(-1, 3, 1024).astype(np.float64)
    np.testing.assert_allclose(planes.mean(axis=(0, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(planes.std(axis=(0, 2)), 1, atol=1e-5)
    # the statistics come from the 450 training images only, and are applied to every split
    raw = load(source, normalize=False)
    train_planes = raw.train.x.reshape(-1, 3, 1024).astype(np.float64)
    np.testing.assert_allclose(splits.info["mean"], train_planes.mean(axis=(0, 2)), rtol=1e-6)
    np.testing.assert_allclose(splits.info["std"], train_planes.std(axis=(0, 2)), rtol=1e-6)
    mean = np.repeat(np.asarray(splits.info["mean"]), 1024)
    std = np.repeat(np.asarray(splits.info["std"]), 1024)
    np.testing.assert_allclose(splits.test.x, (raw.test.x - mean) / std, atol=2e-5)


# -- sources and the cache ---------------------------------------------------------------------------
def test_archive_and_folder_give_identical_arrays(synthetic_cifar, tmp_path):
    from_archive = load(synthetic_cifar.write_archive(tmp_path / "a").parent)
    from_folder = load(synthetic_cifar.write_folder(tmp_path / "f"))
    assert from_archive.info["source_kind"] == "archive" and from_folder.info["source_kind"] == "folder"
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(getattr(from_archive, split).x, getattr(from_folder, split).x)
        np.testing.assert_array_equal(getattr(from_archive, split).y, getattr(from_folder, split).y)
    # the folder can also be given directly
    direct = load(tmp_path / "f" / "cifar-10-batches-py")
    np.testing.assert_array_equal(direct.test.x, from_folder.test.x)


def test_read_only_archive_is_read_where_it_lies(synthetic_cifar, tmp_path):
    archive = synthetic_cifar.write_archive(tmp_path / "ro")
    archive.chmod(0o444)
    (tmp_path / "ro").chmod(0o555)
    try:
        splits = load(tmp_path / "ro")
        assert sorted(os.listdir(tmp_path / "ro")) == ["cifar-10-python.tar.gz"]
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert len(splits.test) == 100


def test_second_load_hits_the_cache_without_opening_the_archive(synthetic_cifar, tmp_path, monkeypatch):
    source = synthetic_cifar.write_archive(tmp_path)
    first = load(source)
    assert first.info["cache_hit"] is False
    assert first.info["cache"].startswith(os.environ["MLPLAB_CACHE"])

    def no_archive_reads(*args, **kwargs):
        raise AssertionError("the archive was decoded again")

    monkeypatch.setattr(tarfile, "open", no_archive_reads)
    second = load(source)
    assert second.info["cache_hit"] is True and second.info["cache"] == first.info["cache"]
    np.testing.assert_array_equal(first.train.x, second.train.x)
    np.testing.assert_array_equal(first.test.y, second.test.y)


def test_cache_key_follows_the_content(synthetic_cifar, tmp_path):
    source = synthetic_cifar.write_archive(tmp_path)
    first = load(source, normalize=False)
    synthetic_cifar.test_x[:5] = 7
    synthetic_cifar.write_archive(tmp_path)  # same path, new bytes
    second = load(source, normalize=False)
    assert second.info["cache_hit"] is False and second.info["cache"] != first.info["cache"]
    assert not os.path.exists(first.info["cache"])  # the stale entry is not kept
    np.testing.assert_array_equal(as_uint8(second.test.x[:5]), 7)
    # a copy elsewhere with the same bytes reuses the decoded entry
    shutil.copy(source, tmp_path / "copy.tar.gz")
    third = load(tmp_path / "copy.tar.gz", normalize=False)
    assert third.info["cache"] == second.info["cache"]


def test_damaged_cache_entry_is_rebuilt(synthetic_cifar, tmp_path):
    source = synthetic_cifar.write_archive(tmp_path)
    first = load(source)
    with open(os.path.join(first.info["cache"], "train_x.npy"), "r+b") as handle:
        handle.truncate(1000)
    again = load(source)
    np.testing.assert_array_equal(first.train.x, again.train.x)


# -- the prepared (float32) splits, memory-mapped -----------------------------------------------
@pytest.fixture
def prepared_cache(monkeypatch):
    monkeypatch.setenv("MLPLAB_PREPARED_CACHE", "1")  # conftest switches it off for other tests


def prepared_variants(info) -> list[str]:
    root = os.path.join(info["cache"], "prepared")
    return sorted(name for name in os.listdir(root) if not name.startswith(".")) if os.path.isdir(root) else []


@pytest.mark.parametrize("normalization", ["published", "train"])
def test_second_load_maps_the_prepared_splits(prepared_cache, synthetic_cifar, tmp_path, monkeypatch, normalization):
    source = synthetic_cifar.write_archive(tmp_path)
    first = load(source, normalization=normalization)
    assert first.info["prepared_cache_hit"] is False and len(prepared_variants(first.info)) == 1

    def no_conversion(*args, **kwargs):
        raise AssertionError("the uint8 rows were converted again")

    monkeypatch.setattr(template, "assemble", no_conversion)  # the shared template converts every data set
    second = load(source, normalization=normalization)
    assert second.info["prepared_cache_hit"] is True
    assert second.info["mean"] == first.info["mean"] and second.info["std"] == first.info["std"]
    for a, b in ((first.train, second.train), (first.validation, second.validation), (first.test, second.test)):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
        assert type(b.x) is np.ndarray and b.x.dtype == np.float32 and b.x.flags.c_contiguous


def test_prepared_splits_are_copy_on_write(prepared_cache, synthetic_cifar, tmp_path):
    source = synthetic_cifar.write_archive(tmp_path)
    original = load(source).train.x.copy()
    mapped = load(source)
    assert mapped.info["prepared_cache_hit"] is True and mapped.train.x.flags.writeable
    mapped.train.x *= 0  # in-place work (whitening does it) stays in this process
    assert not mapped.train.x.any()
    np.testing.assert_array_equal(load(source).train.x, original)


def test_each_split_variant_is_prepared_apart_and_two_are_kept(prepared_cache, synthetic_cifar, tmp_path):
    source = synthetic_cifar.write_archive(tmp_path)
    a = load(source, split_seed=1)
    b = load(source, split_seed=2)
    assert not np.array_equal(a.validation.y, b.validation.y)
    assert load(source, split_seed=1).info["prepared_cache_hit"] is True  # seed 1 is now the most recent
    c = load(source, split_seed=3)
    assert prepared_variants(c.info) == ["published-val50-seed1", "published-val50-seed3"]
    again = load(source, split_seed=2)  # evicted: converted anew, with the same result
    assert again.info["prepared_cache_hit"] is False
    np.testing.assert_array_equal(again.validation.x, b.validation.x)
    assert len(prepared_variants(again.info)) == 2


def test_damaged_prepared_split_is_converted_again(prepared_cache, synthetic_cifar, tmp_path):
    source = synthetic_cifar.write_archive(tmp_path)
    first = load(source)
    with open(os.path.join(first.info["cache"], "prepared", prepared_variants(first.info)[0], "val_x.npy"), "r+b") as handle:
        handle.truncate(500)
    again = load(source)
    assert again.info["prepared_cache_hit"] is False
    np.testing.assert_array_equal(first.validation.x, again.validation.x)
    assert load(source).info["prepared_cache_hit"] is True  # and saved afresh


def test_a_variant_saved_meanwhile_by_another_load_is_kept(prepared_cache, tmp_path):
    from mlplab.data import cache

    entry = tmp_path / "entry"
    entry.mkdir()
    shapes = {"train_x": (4, 3)}
    first, second = np.ones((4, 3), np.float32), np.zeros((4, 3), np.float32)
    assert cache.save_prepared(entry, "v", {"train_x": first}, {"mean": None})
    mapped, _ = cache.load_prepared(entry, "v", shapes)  # a run is using it
    assert cache.save_prepared(entry, "v", {"train_x": second}, {"mean": None})  # a concurrent load's copy
    np.testing.assert_array_equal(cache.load_prepared(entry, "v", shapes)[0]["train_x"], first)
    np.testing.assert_array_equal(mapped["train_x"], first)
    assert sorted(os.listdir(entry / "prepared")) == ["v"]  # the second copy is not left behind


def test_prepared_cache_can_be_switched_off(synthetic_cifar, tmp_path, monkeypatch):
    monkeypatch.setenv("MLPLAB_PREPARED_CACHE", "0")
    source = synthetic_cifar.write_archive(tmp_path)
    first = load(source)
    second = load(source)
    assert second.info["cache_hit"] is True and second.info["prepared_cache_hit"] is False
    assert prepared_variants(first.info) == []


def test_stale_partial_prepared_folders_are_removed(prepared_cache, synthetic_cifar, tmp_path):
    source = synthetic_cifar.write_archive(tmp_path)
    first = load(source)
    root = os.path.join(first.info["cache"], "prepared")
    stale, fresh = os.path.join(root, ".building-old"), os.path.join(root, ".building-new")
    os.mkdir(stale)
    os.mkdir(fresh)  # perhaps another load writing right now
    os.utime(stale, (0, 0))
    load(source, split_seed=5)
    assert not os.path.exists(stale) and os.path.exists(fresh)


def test_unwritable_cache_still_loads_with_a_warning(synthetic_cifar, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("MLPLAB_CACHE", str(blocker / "cache"))
    source = synthetic_cifar.write_archive(tmp_path / "data")
    with pytest.warns(DataWarning, match="cache"):
        splits = load_cifar10(source, validation_size=50, download=False)
    assert len(splits.train) == 450


def test_info_describes_the_source(synthetic_cifar, tmp_path):
    archive = synthetic_cifar.write_archive(tmp_path)
    splits = load(tmp_path)
    info = splits.info
    assert info["source"] == str(archive) and info["size_bytes"] == archive.stat().st_size
    assert info["md5"] == cifar10._md5_and_size(archive)[0]
    assert info["official_checksum"] is False and info["downloaded"] is False
    assert info["load_seconds"] >= 0


# -- checksums ------------------------------------------------------------------------------------------
def test_non_official_checksum_warns_in_one_line(synthetic_cifar, tmp_path):
    source = synthetic_cifar.write_archive(tmp_path)
    for _ in range(2):  # the cached load warns too
        with pytest.warns(DataWarning, match="not the official release") as record:
            load_cifar10(source, validation_size=50, download=False)
        message = str(record[0].message)
        assert "\n" not in message and str(source) in message


def test_official_checksum_loads_silently(synthetic_cifar, tmp_path, monkeypatch):
    source = synthetic_cifar.write_archive(tmp_path)
    monkeypatch.setattr(cifar10, "OFFICIAL_MD5", cifar10._md5_and_size(source)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        splits = load_cifar10(source, validation_size=50, download=False)
    assert splits.info["official_checksum"] is True


def test_official_folder_checksums_load_silently(synthetic_cifar, tmp_path, monkeypatch):
    import hashlib

    members = synthetic_cifar.members()
    monkeypatch.setattr(cifar10, "OFFICIAL_MEMBER_MD5", {n: hashlib.md5(p).hexdigest() for n, p in members.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        splits = load_cifar10(synthetic_cifar.write_folder(tmp_path), validation_size=50, download=False)
    assert splits.info["official_checksum"] is True


# -- errors: each says what is wrong and where ----------------------------------------------------------
def test_missing_data_offline_names_the_folder_and_what_to_pass(tmp_path):
    with pytest.raises(DataError) as error:
        load_cifar10(tmp_path, download=False)
    message = str(error.value)
    assert str(tmp_path) in message and "--data-dir" in message and "cifar-10-python.tar.gz" in message


def test_truncated_archive(synthetic_cifar, tmp_path):
    archive = synthetic_cifar.write_archive(tmp_path)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated") as error:
        load(tmp_path)
    assert str(archive) in str(error.value)


@pytest.mark.parametrize("where", [0.3, 0.7, -6])
def test_corrupted_archive(synthetic_cifar, tmp_path, where):
    archive = synthetic_cifar.write_archive(tmp_path)
    data = bytearray(archive.read_bytes())
    at = int(len(data) * where) if where > 0 else len(data) + where
    data[at:at + 4] = bytes(b ^ 0xFF for b in data[at:at + 4])
    archive.write_bytes(bytes(data))
    with pytest.raises(DataError) as error:
        load(tmp_path)
    assert str(archive) in str(error.value)


def test_not_a_gzip_file(synthetic_cifar, tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_text("<html>not found</html>")
    with pytest.raises(DataError, match="not a gzip"):
        load(tmp_path)


@pytest.mark.parametrize("writer", ["write_archive", "write_folder"])
def test_batch_of_the_wrong_shape(synthetic_cifar, tmp_path, writer):
    bad = synthetic_cifar.batch("data_batch_3", data=np.zeros((100, 3071), np.uint8))
    getattr(synthetic_cifar, writer)(tmp_path, replace={"data_batch_3": bad})
    with pytest.raises(DataError, match=r"data_batch_3.*\(100, 3071\).*expected \(100, 3072\) uint8"):
        load(tmp_path)


def test_batch_of_the_wrong_dtype(synthetic_cifar, tmp_path):
    bad = synthetic_cifar.batch("test_batch", data=np.zeros((100, 3072), np.float32))
    synthetic_cifar.write_archive(tmp_path, replace={"test_batch": bad})
    with pytest.raises(DataError, match="test_batch.*float32"):
        load(tmp_path)


@pytest.mark.parametrize("value", [10, -1])
def test_labels_outside_0_to_9(synthetic_cifar, tmp_path, value):
    labels = synthetic_cifar.train_y[100:200].copy()
    labels[17] = value
    bad = synthetic_cifar.batch("data_batch_2", labels=labels)
    synthetic_cifar.write_archive(tmp_path, replace={"data_batch_2": bad})
    with pytest.raises(DataError, match=rf"data_batch_2 has labels outside 0-9.*{value} at index 17"):
        load(tmp_path)


def test_wrong_number_of_labels(synthetic_cifar, tmp_path):
    bad = synthetic_cifar.batch("data_batch_1", labels=[1, 2, 3])
    synthetic_cifar.write_folder(tmp_path, replace={"data_batch_1": bad})
    with pytest.raises(DataError, match="data_batch_1 has 3 labels"):
        load(tmp_path)


@pytest.mark.parametrize("writer", ["write_archive", "write_folder"])
def test_missing_batch(synthetic_cifar, tmp_path, writer):
    getattr(synthetic_cifar, writer)(tmp_path, omit=("data_batch_5",))
    with pytest.raises(DataError, match="lacks data_batch_5"):
        load(tmp_path)


def test_batch_that_is_not_a_pickle(synthetic_cifar, tmp_path):
    synthetic_cifar.write_folder(tmp_path, replace={"data_batch_4": b"\x00garbage"})
    with pytest.raises(DataError, match="data_batch_4 is not a readable CIFAR-10 batch"):
        load(tmp_path)


def test_pickle_with_foreign_code_is_refused(synthetic_cifar, tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    import pickle

    synthetic_cifar.write_archive(tmp_path, replace={"data_batch_1": pickle.dumps({b"data": Exploit()}, protocol=2)})
    with pytest.raises(DataError, match="refusing to load"):
        load(tmp_path)


def test_data_dir_that_is_a_plain_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(DataError, match="is a file"):
        load_cifar10(path, download=False)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_folder(synthetic_cifar, tmp_path):
    synthetic_cifar.write_folder(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    folder.chmod(0)
    try:
        with pytest.raises(DataError, match="cannot read"):
            load(tmp_path)
    finally:
        folder.chmod(0o755)


def test_unreadable_batch_file(synthetic_cifar, tmp_path, monkeypatch):
    synthetic_cifar.write_folder(tmp_path)
    real_open = open

    def refusing_open(path, *args, **kwargs):
        if str(path).endswith("data_batch_2"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(cifar10, "open", refusing_open, raising=False)
    with pytest.raises(DataError, match=r"cannot read .*data_batch_2: Permission denied"):
        load(tmp_path)


# -- the real archive (../shared/data, or $MLPLAB_TEST_CIFAR_DIR) ----------------------------------------
@pytest.fixture(scope="module")
def real_cifar(real_cifar_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("real-cifar-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLPLAB_CACHE", str(cache))
        with pytest.warns(DataWarning, match="not the official release"):
            splits = load_cifar10(real_cifar_dir, download=False)
    yield splits


@pytest.mark.cifar
def test_real_archive_splits(real_cifar):
    assert (len(real_cifar.train), len(real_cifar.validation), len(real_cifar.test)) == (45_000, 5_000, 10_000)
    assert real_cifar.train.x.shape == (45_000, 3072) and real_cifar.train.x.dtype == np.float32
    assert real_cifar.class_names[0] == "airplane" and real_cifar.class_names[-1] == "truck"
    counts = np.bincount(real_cifar.train.y, minlength=10)
    assert len(counts) == 10 and np.all(np.abs(counts - 4500) <= 300), counts
    assert np.array_equal(np.bincount(real_cifar.test.y), np.full(10, 1000))
    assert real_cifar.info["official_checksum"] is False


@pytest.mark.cifar
def test_real_archive_normalised_statistics(real_cifar):
    planes = real_cifar.train.x.reshape(len(real_cifar.train), 3, 1024)
    for channel in range(3):
        total = squares = 0.0
        for start in range(0, len(planes), 5000):  # float64 in blocks: no 0.4 GB temporary
            block = planes[start:start + 5000, channel].astype(np.float64)
            total += block.sum()
            squares += np.square(block).sum()
        count = planes.shape[0] * planes.shape[2]
        mean = total / count
        std = np.sqrt(squares / count - mean**2)
        assert abs(mean) < 0.02, (channel, mean)
        assert abs(std - 1) < 0.03, (channel, std)
