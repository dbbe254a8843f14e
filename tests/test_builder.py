"""The TFDS builder and the tf.data pipeline, on small generated npz files and the real
PneumoniaMNIST file."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from chest_tf.data import builder, npz
from chest_tf.data.info import get_info
from chest_tf.data.pipeline import load_dataset
from chest_tf.errors import ConfigError, DataError

CHEST = get_info("chestmnist")


def write_npz(path: Path, counts=(40, 12, 16), size=28, width=14, rng_seed=0, **overrides) -> Path:
    """A tiny MedMNIST-format file; ``overrides`` replace arrays (None drops the key)."""
    rng = np.random.default_rng(rng_seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, width), dtype=np.uint8)
    for key, value in overrides.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    np.savez_compressed(path, **arrays)
    return path


@pytest.fixture()
def tiny_npz(tmp_path):
    return write_npz(tmp_path / "chestmnist.npz")


def _collect(handle, split):
    images, labels = [], []
    for x, y in handle.batches(split, 7):
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def test_records_come_back_bit_identical_and_in_order(tiny_npz, tmp_path):
    with pytest.warns(UserWarning, match="published chestmnist split"):
        built = builder.prepare("chestmnist", 28, tiny_npz, tmp_path / "records", verbose=False)
    source = np.load(tiny_npz)
    for split in ("train", "val", "test"):
        rows = list(built.as_dataset(split=split).as_numpy_iterator())
        images = np.stack([row["image"] for row in rows])
        assert images.dtype == np.uint8 and images.shape[1:] == (28, 28, 1)
        np.testing.assert_array_equal(images[..., 0], source[f"{split}_images"])
        np.testing.assert_array_equal(np.stack([row["label"] for row in rows]), source[f"{split}_labels"])
        assert [row["index"] for row in rows] == list(range(len(rows)))


@pytest.mark.filterwarnings("ignore:.*published chestmnist split")
def test_prepared_once_and_a_changed_file_needs_force(tiny_npz, tmp_path, capsys):
    records = tmp_path / "records"
    first = builder.prepare("chestmnist", 28, tiny_npz, records, verbose=False)
    shard = next(Path(first.data_dir).glob("*train.tfrecord*"))
    stamp_before = shard.stat().st_mtime_ns
    builder.prepare("chestmnist", 28, tiny_npz, records, verbose=False)
    assert shard.stat().st_mtime_ns == stamp_before  # reused, not rewritten
    os.utime(tiny_npz)  # the same bytes, a new time (a copy, a touch): still the same records
    builder.prepare("chestmnist", 28, tiny_npz, records, verbose=False)
    assert shard.stat().st_mtime_ns == stamp_before
    write_npz(tiny_npz, counts=(30, 12, 16), rng_seed=1)  # other bytes after preparation: refused
    with pytest.raises(DataError, match=r"chestmnist.npz changed after its records .* were prepared .*--force$"):
        builder.prepare("chestmnist", 28, tiny_npz, records, verbose=False)
    again = builder.prepare("chestmnist", 28, tiny_npz, records, force=True, verbose=True)
    assert again.info.splits["train"].num_examples == 30
    assert "rebuilding records" in capsys.readouterr().err
    # the old records were swapped out and removed; no temporary folder is left
    config_dir = records / "chest_tf_medmnist" / "chestmnist_28"
    assert sorted(p.name for p in config_dir.iterdir()) == [".prepare.lock", "1.0.0"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"val_labels": None}, "no 'val_labels' array"),
        ({"train_labels": np.zeros((40, 3), np.uint8)}, r"expects \(N, 14\)"),
        ({"train_images": np.zeros((40, 32, 32), np.uint8)}, r"expects \(N, 28, 28\)"),
        ({"test_images": np.full((16, 28, 28), 0.5, np.float32)}, "are float32"),
        ({"test_images": np.full((16, 28, 28), np.nan, np.float32)}, "contain NaN"),
        ({"val_images": np.zeros((0, 28, 28), np.uint8), "val_labels": np.zeros((0, 14), np.uint8)}, "split is empty"),
        ({"train_labels": np.full((40, 14), 2, np.uint8)}, "outside 0..1"),
        ({"train_labels": np.zeros((39, 14), np.uint8)}, "40 images but 39 labels"),
    ],
    ids=["missing-key", "label-width", "image-shape", "float-images", "nan-images", "empty-split", "label-values", "count-mismatch"],
)
def test_broken_files_get_clear_errors(tmp_path, overrides, message):
    path = write_npz(tmp_path / "broken.npz", **overrides)
    with pytest.raises(DataError, match=message) as excinfo:
        builder.prepare("chestmnist", 28, path, tmp_path / "records", verbose=False)
    assert "\n" not in str(excinfo.value)
    assert not (tmp_path / "records").exists()  # failed before anything was written


def test_not_an_npz(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="not a readable npz"):
        npz.inspect_npz(bad, CHEST, 28)


def test_streamed_rows_match_np_load(tmp_path):
    path = write_npz(tmp_path / "x.npz", counts=(1000, 3, 3))
    chunks = list(npz.iter_rows(path, "train_images", chunk=300))
    assert [len(c) for c in chunks] == [300, 300, 300, 100]
    np.testing.assert_array_equal(np.concatenate(chunks), np.load(path)["train_images"])


def test_pipeline_shapes_dtypes_and_seeded_shuffle(tiny_npz, tmp_path):
    with pytest.warns(UserWarning):
        handle = load_dataset("chestmnist", 28, data_dir=tmp_path, npz_path=tiny_npz, verbose=False)
    x, y = next(iter(handle.batches("train", 8, training=True, seed=3)))
    assert x.shape == (8, 28, 28, 1) and x.dtype.name == "float32"
    assert y.shape == (8, 14) and y.dtype.name == "float32"
    assert float(x.numpy().min()) >= -1.0 and float(x.numpy().max()) <= 1.0

    def order(seed):
        ds = handle.batches("train", 40, training=True, seed=seed)
        return [next(iter(ds))[0].numpy() for _ in range(1)][0]

    np.testing.assert_array_equal(order(5), order(5))
    assert not np.array_equal(order(5), order(6))
    # Evaluation splits keep the file order, so predictions line up with handle.labels().
    images, labels = _collect(handle, "test")
    source = np.load(tiny_npz)
    np.testing.assert_allclose(images[..., 0], source["test_images"] / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(labels, source["test_labels"])
    np.testing.assert_array_equal(handle.labels("test"), source["test_labels"])
    counts, n = handle.positive_counts("train")
    np.testing.assert_array_equal(counts, source["train_labels"].sum(0))
    assert n == 40
    with pytest.raises(ConfigError, match="larger than the train split"):
        handle.batches("train", 41, training=True, drop_remainder=True)


def test_training_batches_reshuffle_every_epoch(tiny_npz, tmp_path):
    with pytest.warns(UserWarning):
        handle = load_dataset("chestmnist", 28, data_dir=tmp_path, npz_path=tiny_npz, verbose=False)
    ds = handle.batches("train", 40, training=True, seed=1)
    first, second = (next(iter(ds))[1].numpy() for _ in range(2))
    assert not np.array_equal(first, second)
    assert np.array_equal(np.sort(first, axis=0), np.sort(second, axis=0))


def test_cached_training_batches_are_a_full_shuffle_keeping_each_image_with_its_labels(tiny_npz, tmp_path):
    """A cached split trains from memory (indices shuffled, batches gathered): one epoch is every
    (image, labels) pair of the file exactly once, in a seeded order, like the streamed path."""
    with pytest.warns(UserWarning):
        handle = load_dataset("chestmnist", 28, data_dir=tmp_path, npz_path=tiny_npz, verbose=False)
    source = np.load(tiny_npz)

    def epoch(**kwargs):
        pairs = []
        for images, labels in handle.batches("train", 16, training=True, seed=2, **kwargs):
            pixels = np.round((images.numpy() + 1.0) * 127.5).astype(np.uint8)
            pairs += [(p.tobytes(), l.astype(np.uint8).tobytes()) for p, l in zip(pixels, labels.numpy())]
        return pairs

    expected = [(p[..., None].tobytes(), l.tobytes()) for p, l in zip(source["train_images"], source["train_labels"])]
    from_memory = epoch()
    assert len(from_memory) == 40 and sorted(from_memory) == sorted(expected)
    assert from_memory != expected  # shuffled
    assert from_memory == epoch()  # seeded
    assert sorted(epoch(cache=False)) == sorted(expected)  # the streamed path has the same content


def test_repeated_training_batches_run_without_the_autotune_thread(tiny_npz, tmp_path):
    """fit()'s long-lived iterator: no tf.data autotuning thread (TF 2.21 sometimes left it
    asleep for up to 60 s when the iterator was destroyed at the end of fit)."""
    with pytest.warns(UserWarning):
        handle = load_dataset("chestmnist", 28, data_dir=tmp_path, npz_path=tiny_npz, verbose=False)
    repeated = handle.batches("train", 40, training=True, seed=1, drop_remainder=True, repeat=True)
    assert repeated.options().autotune.enabled is False
    assert handle.batches("val", 40).options().autotune.enabled is not False  # short-lived: autotuned
    images, labels = next(iter(repeated))
    assert images.shape[0] == labels.shape[0] == 40


def test_real_pneumoniamnist(pneumonia_npz, tmp_path):
    with pytest.warns(UserWarning, match="published pneumoniamnist split has 4708"):
        handle = load_dataset("pneumoniamnist", 28, data_dir=tmp_path, npz_path=pneumonia_npz, verbose=False)
    assert {s: handle.num_examples(s) for s in ("train", "val", "test")} == {"train": 3882, "val": 524, "test": 624}
    images, labels = _collect(handle, "val")
    source = np.load(pneumonia_npz)
    np.testing.assert_array_equal(np.round((images[..., 0] + 1) * 127.5).astype(np.uint8), source["val_images"])
    np.testing.assert_array_equal(labels, source["val_labels"])
    assert labels.shape == (524, 1)
    counts, n = handle.positive_counts()
    assert (int(counts[0]), n) == (3494, 3882)


def test_cli_offline_download_is_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "chest_tf.data", "download", "chestmnist", "--data-dir", str(tmp_path),
         "--url", "http://127.0.0.1:9/chestmnist.npz"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: could not download chestmnist") and done.stderr.count("\n") == 1


def test_uncached_multi_shard_reads(tmp_path):
    """Large sizes are not cached: training shuffles shard files, evaluation keeps file order."""
    from chest_tf.data import builder as builder_lib

    path = write_npz(tmp_path / "chestmnist.npz", counts=(300, 40, 40))
    config = __import__("tensorflow_datasets").download.DownloadConfig(num_shards=4)
    with pytest.warns(UserWarning):
        built = builder_lib.make_builder(
            "chestmnist", 28, path, tmp_path / "records", npz.inspect_npz(path, CHEST, 28)
        )
    built.download_and_prepare(download_config=config)
    assert len(list(Path(built.data_dir).glob("*train.tfrecord*"))) > 1
    from chest_tf.data.pipeline import DatasetHandle

    handle = DatasetHandle(info=CHEST, size=28, npz_path=path, builder=built)
    labels = np.concatenate([y.numpy() for _, y in handle.batches("train", 50, training=True, seed=0, cache=False)])
    assert labels.shape == (300, 14)
    source = np.load(path)["train_labels"]
    assert not np.array_equal(labels, source)  # shuffled ...
    assert np.array_equal(np.sort(labels, axis=0), np.sort(source, axis=0))  # ... but all there
    ordered = np.concatenate([y.numpy() for _, y in handle.batches("train", 50, cache=False)])
    np.testing.assert_array_equal(ordered, source)
