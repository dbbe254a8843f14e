"""A tensorflow-datasets builder that turns a MedMNIST npz into TFRecord shards, streamed.

One builder config per (set, size), e.g. ``chestmnist_224``. The npz is read member by member in
chunks (``npz.iter_rows``), so preparing a split never holds it whole in memory, and examples are
written in file order (``disable_shuffling``) so a split reads back exactly as the npz holds it;
the pipeline shuffles at read time.

TFDS's writer buffers up to 1 GB of serialized examples in memory before spilling to disk, and,
with shuffling disabled, puts small integer keys all into one spill bucket that is read back whole.
Two measures keep memory bounded: the buffer limit is lowered while we prepare, and each example's
key is its index scaled across TFDS's 128-bit key space (order-preserving), so the spill spreads
over all buckets and only one bucket (about 1/1000 of the split) is in memory at a time.

Records live in ``<records_dir>/chest_tf_medmnist/<set>_<size>/<version>/`` with a ``source.json``
naming the npz they came from; if that file changes, the records are rebuilt.

What preparing shows: one line saying where the records go, then one bar per split, counting
images as they are handed to TFDS's writer (``preparing phantom_28 train: 100%|...| 4000/4000
images``). TFDS's own bars, its "Downloading and preparing dataset ..." lines and its logging are
off unless CHEST_TF_VERBOSE_TF=1 (``console.quiet_tfds`` and the two ``_log_download_*`` overrides).
"""
from __future__ import annotations

import contextlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import shuffle as tfds_shuffle

from chest_tf import console
from chest_tf.data import npz
from chest_tf.data.info import CATALOGUE, SIZES, SPLITS, DatasetInfo, get_info
from chest_tf.errors import DataError
from chest_tf.files import write_json_atomic

BUILDER_NAME = "chest_tf_medmnist"
SHUFFLER_MEMORY_BYTES = 64 << 20
_KEY_SPACE = 2**128  # TFDS hashes keys to 128 bits; with shuffling off it uses our ints directly


class MedMNISTConfig(tfds.core.BuilderConfig):
    """One (set, size) pair."""

    def __init__(self, info: DatasetInfo, size: int):
        super().__init__(name=f"{info.name}_{size}", description=f"{info.name} at {size}x{size} px")
        self.info = info
        self.size = size


def config_name(dataset: str, size: int) -> str:
    return f"{get_info(dataset).name}_{size}"


class ChestTfMedmnist(tfds.core.GeneratorBasedBuilder):
    """MedMNIST 2D sets (and the phantom set) as TFRecord shards, from a local npz file."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: images, labels and the row index in the source npz."}
    BUILDER_CONFIGS = [MedMNISTConfig(info, size) for info in CATALOGUE.values() for size in SIZES]

    def __init__(
        self, *, npz_path: str | Path | None = None, layouts: dict | None = None, progress: bool = False, **kwargs
    ):
        self._npz_path = Path(npz_path) if npz_path is not None else None
        self._layouts = layouts  # from npz.inspect_npz, when the caller already checked the file
        self._progress = progress  # one bar per split (console.progress) while preparing
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        info, size = self.builder_config.info, self.builder_config.size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, info.n_channels), dtype=np.uint8),
                    "label": tfds.features.Tensor(shape=(info.label_width,), dtype=np.uint8),
                    "index": tfds.features.Scalar(dtype=np.int64, doc="row in the source npz"),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # keep the npz order; tf.data shuffles at read time
            homepage="https://medmnist.com/",
            citation=(
                "Yang et al., MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D "
                "biomedical image classification, Scientific Data, 2023."
            ),
            description=f"{info.name} ({info.task}; labels: {', '.join(info.labels)}). Licence {info.license}.",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the npz is fetched (and verified) by chest_tf.data.download
        if self._npz_path is None:
            raise DataError("the builder needs npz_path= to prepare records")
        layouts = self._layouts or npz.inspect_npz(self._npz_path, self.builder_config.info, self.builder_config.size)
        return {
            split: console.progress(
                self._generate_examples(split, layouts[split].num_examples),
                layouts[split].num_examples,
                f"preparing {self.builder_config.name} {split}",
                enabled=self._progress,
            )
            for split in SPLITS
        }

    def _generate_examples(self, split: str, num_examples: int):
        image_shape = npz.expected_image_shape(self.builder_config.info, self.builder_config.size)
        stride = _KEY_SPACE // (num_examples + 1)
        labels = npz.read_array(self._npz_path, f"{split}_labels").astype(np.uint8)
        index = 0
        for chunk in npz.iter_rows(self._npz_path, f"{split}_images"):
            for image in chunk.reshape((-1, *image_shape)):
                yield index * stride, {"image": image, "label": labels[index], "index": index}
                index += 1

    # TFDS prints these two lines to stdout with print(), not logging; ours are the progress bars.
    def _log_download_bytes(self) -> None:
        if console.verbose_tf():
            super()._log_download_bytes()

    def _log_download_done(self) -> None:
        if console.verbose_tf():
            super()._log_download_done()


@contextlib.contextmanager
def _bounded_shuffler_memory(limit_bytes: int = SHUFFLER_MEMORY_BYTES):
    """Lower TFDS's in-memory buffer while preparing (see the module docstring)."""
    previous = tfds_shuffle.MAX_MEM_BUFFER_SIZE
    tfds_shuffle.MAX_MEM_BUFFER_SIZE = limit_bytes
    try:
        yield
    finally:
        tfds_shuffle.MAX_MEM_BUFFER_SIZE = previous


def _source_identity(npz_path: Path) -> dict:
    stat = npz_path.stat()
    return {"npz": str(npz_path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def make_builder(
    dataset: str,
    size: int,
    npz_path: str | Path,
    records_dir: str | Path,
    layouts: dict | None = None,
    *,
    progress: bool = False,
) -> ChestTfMedmnist:
    info = get_info(dataset)
    info.check_size(size)
    return ChestTfMedmnist(
        npz_path=npz_path,
        layouts=layouts,
        progress=progress,
        data_dir=str(records_dir),
        config=config_name(dataset, size),
    )


def prepare(
    dataset: str,
    size: int,
    npz_path: str | Path,
    records_dir: str | Path,
    *,
    force: bool = False,
    verbose: bool = True,
) -> ChestTfMedmnist:
    """Write (once) the TFRecord shards for ``npz_path`` under ``records_dir``; return the builder.

    Already-prepared records are reused unless the npz changed since (then they are rebuilt) or
    ``force`` is set. The npz is checked first, so a broken file fails before anything is written.
    """
    npz_path = Path(npz_path)
    builder = make_builder(dataset, size, npz_path, records_dir)
    version_dir = Path(builder.data_dir)
    stamp = version_dir / "source.json"
    identity = _source_identity(npz_path)
    if version_dir.exists():
        try:
            current = json.loads(stamp.read_text()) == identity
        except (OSError, ValueError):
            current = False
        if current and not force:
            return builder
        if verbose:
            reason = "--force" if force else f"{npz_path} changed since they were written"
            print(f"rebuilding records in {version_dir} ({reason})", file=sys.stderr)
        shutil.rmtree(version_dir)
    layouts = npz.inspect_npz(npz_path, get_info(dataset), size)  # fail early, before TFDS makes folders
    builder = make_builder(dataset, size, npz_path, records_dir, layouts, progress=verbose)
    if verbose:
        print(f"preparing {config_name(dataset, size)} records from {npz_path} into {version_dir}", file=sys.stderr)
    config = tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)
    try:
        with console.quiet_tfds(), _bounded_shuffler_memory():
            builder.download_and_prepare(download_config=config)
    except PermissionError as exc:
        raise DataError(f"cannot write records under {records_dir} ({exc}); pass a writable --data-dir") from exc
    write_json_atomic(stamp, identity)
    return builder
