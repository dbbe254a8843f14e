"""The tf.data pipeline: TFRecord shards -> decoded images -> (cache) -> shuffle -> batch -> prefetch.

``load_dataset(dataset, size, ...)`` finds or fetches the npz (or generates the phantom set),
prepares the records once, and returns a ``DatasetHandle``; ``handle.batches(split, ...)`` gives
``(images, labels)`` batches:

- images: float32 ``(B, H, W, C)``, normalised as ``normalization.normalize`` says ([-1, 1]);
- labels: float32 ``(B, L)``: one column per finding (multi-label), one column (binary), or
  one-hot over the classes (multi-class), matching the model's logits and a from_logits loss.

Images stay uint8 until after batching: the in-memory cache (used at 28 and 64 px, where a whole
split is small) holds bytes, not floats, and normalisation runs once per batch. A cached training
split is read into two uint8 tensors once, and its batches are a seeded full shuffle of indices,
gathered one batch at a time (no per-image tf.data stages, which cost ~4% of a training step on
2 cores); larger sizes stream from the records through a bounded shuffle buffer. Training batches
are shuffled with a seed; val and test batches are never shuffled and always in file order, so
predictions line up with ``handle.labels(split)``.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from chest_tf.data import builder as builder_lib
from chest_tf.data import download, npz, phantom
from chest_tf.data.info import MULTI_CLASS, ORDINAL, SPLITS, DatasetInfo, get_info
from chest_tf.data.normalization import normalize
from chest_tf.errors import ConfigError, DataError
from chest_tf.locks import FileLock

CACHE_MAX_SIZE = 64  # cache decoded splits in memory up to this image size (px)
SHUFFLE_BUFFER_BYTES = 256 << 20  # uncached sizes: shuffle buffer of about this many image bytes


def records_dir_for(data_dir: Path, records_dir: str | os.PathLike | None) -> Path:
    return Path(records_dir).expanduser() if records_dir else data_dir / "tfrecords"


def locate_npz(
    info: DatasetInfo, size: int, data_dir: Path, *, npz_path: str | os.PathLike | None = None, allow_download: bool = True
) -> Path:
    """The npz to read: an explicit ``npz_path``; the phantom set (generated on first use); or
    the file in ``data_dir`` (downloaded and verified when missing)."""
    if npz_path is not None:
        path = Path(npz_path).expanduser()
        if not path.is_file():
            raise DataError(f"{path} does not exist")
        return path
    target = download.npz_path(info, size, data_dir)
    if info.generated:
        if not target.exists():
            with _producing(target):  # two first runs: one generates, the other waits and reuses it
                if not target.exists():
                    print(f"generating the phantom set at {size} px into {target}")
                    phantom.write_phantom(target, size=size)
        return target
    if not target.exists() and not allow_download:
        raise DataError(f"{target} is missing; run `python -m chest_tf.data download {info.name} --size {size}`")
    if target.exists():
        return download.fetch(info, size, data_dir)
    with _producing(target):  # one download into NAME.npz.part at a time
        return download.fetch(info, size, data_dir)


@contextlib.contextmanager
def _producing(target: Path):
    """Hold the lock (``.NAME.npz.lock`` beside ``target``) of the process that writes ``target``."""
    def waiting(holder):
        who = holder.describe() if holder else "another process"
        print(f"waiting for {who}, which is writing {target}", file=sys.stderr, flush=True)

    lock = FileLock(target.with_name(f".{target.name}.lock"), str(target))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire(wait=True, on_wait=waiting)
    except OSError as exc:
        raise DataError(f"cannot write {target} ({exc.strerror}); pass a writable --data-dir") from None
    try:
        yield
    finally:
        lock.release()


def _label_transform(info: DatasetInfo):
    """uint8 label rows -> float32 targets for the model's logits."""
    if info.task in (MULTI_CLASS, ORDINAL):
        depth = info.num_labels
        return lambda labels: tf.one_hot(tf.cast(labels[:, 0], tf.int32), depth, dtype=tf.float32)
    return lambda labels: tf.cast(labels, tf.float32)


@dataclass
class DatasetHandle:
    """A prepared (set, size): where it came from, and batches of each split."""

    info: DatasetInfo
    size: int
    npz_path: Path
    builder: builder_lib.ChestTfMedmnist
    _in_memory: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return npz.expected_image_shape(self.info, self.size)

    def num_examples(self, split: str) -> int:
        return self.builder.info.splits[split].num_examples

    @cached_property
    def _labels(self) -> dict[str, np.ndarray]:
        return {split: npz.read_array(self.npz_path, f"{split}_labels") for split in SPLITS}

    def labels(self, split: str) -> np.ndarray:
        """The split's labels as stored in the npz, (N, label_width) uint8, in file order: the
        y_true for the metrics module."""
        return self._labels[split]

    def positive_counts(self, split: str = "train") -> tuple[np.ndarray, int]:
        """Positives per output column and the number of examples (for loss weighting).

        Multi-label: per finding; binary: the positive class; multi-class: per class."""
        labels = self.labels(split)
        if self.info.task in (MULTI_CLASS, ORDINAL):
            counts = np.bincount(labels[:, 0], minlength=self.info.num_labels)
        else:
            counts = labels.astype(np.int64).sum(axis=0)
        return counts, len(labels)

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        training: bool = False,
        seed: int | None = None,
        deterministic: bool = True,
        cache: bool | None = None,
        drop_remainder: bool = False,
        repeat: bool = False,
    ) -> tf.data.Dataset:
        """``(images, labels)`` batches of ``split`` (see the module docstring).

        ``training`` shuffles (seeded by ``seed``) and reshuffles every epoch; otherwise the order
        is the file's. ``deterministic=False`` lets parallel stages reorder for speed (training
        only; evaluation order is always kept). ``cache`` defaults to True at <= 64 px.
        """
        if split not in SPLITS:
            raise ConfigError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
        n = self.num_examples(split)
        if batch_size < 1:
            raise ConfigError(f"batch size must be positive, got {batch_size}")
        if drop_remainder and batch_size > n:
            raise ConfigError(
                f"batch size {batch_size} is larger than the {split} split ({n} images); use --batch-size {n} or less"
            )
        cache = self.size <= CACHE_MAX_SIZE if cache is None else cache
        ordered = deterministic or not training
        to_targets = _label_transform(self.info)
        if cache and training:
            return self._shuffled_from_memory(split, batch_size, seed, ordered, drop_remainder, repeat, to_targets)
        read_config = tfds_read_config(seed, ordered, shuffle_files=training and not cache)
        ds = self.builder.as_dataset(split=split, shuffle_files=training and not cache, read_config=read_config)
        ds = ds.map(lambda ex: (ex["image"], ex["label"]), num_parallel_calls=tf.data.AUTOTUNE, deterministic=ordered)
        if cache:
            ds = ds.cache()
        if repeat:
            ds = ds.repeat()
        if training:
            ds = ds.shuffle(self._shuffle_buffer(n), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE, deterministic=ordered)
        ds = ds.map(
            lambda images, labels: (normalize(images, ops=tf), to_targets(labels)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=ordered,
        )
        return self._finish(ds, repeat)

    def _shuffled_from_memory(self, split, batch_size, seed, ordered, drop_remainder, repeat, to_targets):
        """Training batches of a cached split: the split's uint8 arrays held in memory, and a
        shuffled stream of their indices, batched and gathered (one gather per batch). The same
        full shuffle as caching the decoded records and shuffling them, without moving each image
        through tf.data's per-element stages: ~4% of a ViT-Tiny step at 28 px on 2 cores."""
        images, labels = self._arrays(split)
        ds = tf.data.Dataset.range(images.shape[0])
        if repeat:
            ds = ds.repeat()
        ds = ds.shuffle(images.shape[0], seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        ds = ds.map(
            lambda index: (normalize(tf.gather(images, index), ops=tf), to_targets(tf.gather(labels, index))),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=ordered,
        )
        return self._finish(ds, repeat)

    def _arrays(self, split: str) -> tuple[tf.Tensor, tf.Tensor]:
        """The split's images as read from its records and its labels (``labels``, the same rows),
        in file order, as uint8 tensors (kept for the handle's life: a cached split is read once)."""
        if split not in self._in_memory:
            labels = self.labels(split)
            images = np.empty((len(labels), *self.image_shape), np.uint8)
            start = 0
            records = self.builder.as_dataset(split=split, shuffle_files=False,
                                              read_config=tfds_read_config(None, True, shuffle_files=False))
            for batch in records.map(lambda ex: ex["image"], num_parallel_calls=tf.data.AUTOTUNE).batch(4096):
                images[start:start + len(batch)] = batch.numpy()
                start += len(batch)
            if start != len(labels):
                raise DataError(f"the {split} records hold {start} images where the npz has {len(labels)}; "
                                f"delete {self.builder.data_dir} and run again to prepare them afresh")
            with tf.device("/CPU:0"):  # host memory, like tf.data's cache (not a GPU's)
                self._in_memory[split] = (tf.constant(images), tf.constant(labels))
        return self._in_memory[split]

    @staticmethod
    def _finish(ds: tf.data.Dataset, repeat: bool) -> tf.data.Dataset:
        ds = ds.prefetch(tf.data.AUTOTUNE)
        if repeat:
            # A repeated (training) iterator lives for the whole fit. Its tf.data autotuning
            # thread sleeps up to 60 s between optimisations and, in TF 2.21, is sometimes not
            # woken when the iterator is destroyed, so fit() hung 25-55 s after its last step in
            # some runs (4 of 19 measured). Without autotuning that thread does not exist; AUTOTUNE
            # parallelism then means one call per core and prefetch buffers still grow on demand.
            options = tf.data.Options()
            options.autotune.enabled = False
            ds = ds.with_options(options)
        return ds

    def _shuffle_buffer(self, n: int) -> int:
        image_bytes = int(np.prod(self.image_shape))
        return int(min(n, max(1024, SHUFFLE_BUFFER_BYTES // image_bytes)))


def tfds_read_config(seed: int | None, ordered: bool, shuffle_files: bool):
    """Evaluation reads shards one after another (file order); training may interleave and
    shuffle them, which TFDS guards against for datasets written in order unless told."""
    options = tf.data.Options()
    options.deterministic = ordered
    if shuffle_files:
        return tfds.ReadConfig(shuffle_seed=seed, options=options, add_tfds_id=False, enable_ordering_guard=False)
    return tfds.ReadConfig(shuffle_seed=seed, options=options, add_tfds_id=False, interleave_cycle_length=1)


def load_dataset(
    dataset: str,
    size: int,
    *,
    data_dir: str | os.PathLike | None = None,
    records_dir: str | os.PathLike | None = None,
    npz_path: str | os.PathLike | None = None,
    allow_download: bool = True,
    force: bool = False,
    verbose: bool = True,
) -> DatasetHandle:
    """Find or fetch the npz, prepare its records once, and return a handle for batches."""
    info = get_info(dataset)
    info.check_size(size)
    root = download.resolve_data_dir(data_dir)
    path = locate_npz(info, size, root, npz_path=npz_path, allow_download=allow_download)
    records = records_dir_for(root, records_dir)
    fix = " ".join(["python -m chest_tf.data prepare", info.name, "--size", str(size),
                    *(["--data-dir", str(data_dir)] if data_dir else []),
                    *(["--records-dir", str(records_dir)] if records_dir else []),
                    *(["--npz", str(npz_path)] if npz_path else []), "--force"])
    built = builder_lib.prepare(info.name, size, path, records, force=force, verbose=verbose, fix=fix)
    return DatasetHandle(info=info, size=size, npz_path=path, builder=built)
