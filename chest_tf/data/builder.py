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
stamp: the npz they came from (path, size, mtime, SHA-256) and the size and SHA-256 of every file
TFDS wrote. Each ``prepare`` (so each training, evaluation and ``load_dataset``) checks the records
against it before anything reads them, so a truncated or changed shard, or an npz changed after
preparation, is a one-line ``DataError`` naming the file and the fix (``prepare --force``), never a
DataLossError in the middle of an epoch. Checking reads every shard once (SHA-256, about 1.1 GB/s
on one core of the machine the README's numbers come from).

Preparing is safe to start twice and to kill. The first process takes the lock
``<set>_<size>/.prepare.lock`` (``chest_tf.locks``); a second one waits for it ("waiting for PID
... on HOST"), then finds the records ready. The shards are written into a temporary folder beside
them and moved into place only once complete and stamped; records without a stamp (a preparation
killed at its very end) are rebuilt; temporary folders that killed preparations left are removed.
``force`` (or records from another npz) builds the new records beside the old ones, which stay in
use until the new ones are complete; a failure (a full disk) leaves the old ones as they were.

What preparing shows: one line saying where the records go, then one bar per split, counting
images as they are handed to TFDS's writer (``preparing phantom_28 train: 100%|...| 4000/4000
images``). TFDS's own bars, its "Downloading and preparing dataset ..." lines and its logging are
off unless CHEST_TF_VERBOSE_TF=1 (``console.quiet_tfds`` and the two ``_log_download_*`` overrides).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core import shuffle as tfds_shuffle

from chest_tf import console
from chest_tf.data import npz
from chest_tf.data.info import CATALOGUE, SIZES, SPLITS, DatasetInfo, get_info
from chest_tf.errors import DataError, error_line
from chest_tf.files import write_json_atomic, write_problem
from chest_tf.locks import Holder, hold

BUILDER_NAME = "chest_tf_medmnist"
SHUFFLER_MEMORY_BYTES = 64 << 20
_KEY_SPACE = 2**128  # TFDS hashes keys to 128 bits; with shuffling off it uses our ints directly
STAMP = "source.json"
STAMP_FORMAT = 2  # 2: file sizes and checksums (records stamped before are rebuilt once)
PREPARE_LOCK = ".prepare.lock"
_BUILDING_PREFIX = ".building-"  # temporary records roots, beside the versions


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


def _sha256(path: Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def _source_identity(npz_path: Path) -> dict:
    stat = npz_path.stat()
    return {"npz": str(npz_path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _stamp(version_dir: Path, npz_path: Path) -> dict:
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(version_dir.iterdir()) if p.is_file() and p.name != STAMP}
    return {"format": STAMP_FORMAT, **_source_identity(npz_path), "sha256": _sha256(npz_path), "files": files}


def check_records(version_dir: Path, npz_path: Path, fix: str) -> str | None:
    """None when the records in ``version_dir`` are complete, unchanged and come from ``npz_path``
    as it is now; otherwise why they must be (re)built: "missing", "unstamped" (a preparation that
    did not finish), "older format", "other source". Raises ``DataError`` (naming the file and
    ``fix``) when the records or the npz changed since they were prepared."""
    if not version_dir.is_dir():
        return "missing"
    try:
        stamp = json.loads((version_dir / STAMP).read_text())
    except (OSError, ValueError):
        return "unstamped"
    if not isinstance(stamp, dict) or stamp.get("format") != STAMP_FORMAT:
        return "older format"
    identity = _source_identity(npz_path)
    if stamp.get("npz") != identity["npz"]:
        return "other source"
    if (stamp.get("bytes"), stamp.get("mtime_ns")) != (identity["bytes"], identity["mtime_ns"]):
        if identity["bytes"] != stamp.get("bytes") or _sha256(npz_path) != stamp.get("sha256"):
            raise DataError(f"{npz_path} changed after its records in {version_dir} were prepared (labels are read "
                            f"from it too); if the change is meant, rebuild them: {fix}")
        with contextlib.suppress(OSError):  # the same bytes, touched or copied: remember the new time
            write_json_atomic(version_dir / STAMP, {**stamp, **identity})
    for name, expected in stamp.get("files", {}).items():
        path = version_dir / name
        if not path.is_file():
            problem = "is missing"
        elif path.stat().st_size != expected["bytes"]:
            problem = f"has {path.stat().st_size} bytes, {expected['bytes']} were written (truncated or overwritten)"
        elif _sha256(path) != expected["sha256"]:
            problem = "changed since it was written (checksum differs: damaged)"
        else:
            continue
        raise DataError(f"{path} {problem}; the records must be rebuilt: {fix}")
    return None


def _remove_leftovers(config_dir: Path) -> None:
    """Temporary folders of preparations that were killed (ours and TFDS's ``incomplete.*``)."""
    if not config_dir.is_dir():
        return
    for path in config_dir.iterdir():
        if path.is_dir() and (path.name.startswith(_BUILDING_PREFIX) or path.name.startswith(".replaced-")
                              or path.name.startswith("incomplete.")):
            shutil.rmtree(path, ignore_errors=True)


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


def records_dir_of(records_dir: str | Path, dataset: str, size: int) -> Path:
    """Where ``prepare`` puts the records of (dataset, size): <records_dir>/chest_tf_medmnist/<name>/<version>."""
    return Path(records_dir) / BUILDER_NAME / config_name(dataset, size) / str(ChestTfMedmnist.VERSION)


def prepare(
    dataset: str,
    size: int,
    npz_path: str | Path,
    records_dir: str | Path,
    *,
    force: bool = False,
    verbose: bool = True,
    fix: str | None = None,
) -> ChestTfMedmnist:
    """Write (once) the TFRecord shards for ``npz_path`` under ``records_dir``; return the builder.

    Already-prepared records are checked (``check_records``) and reused; records from another npz,
    unstamped or older ones are rebuilt, and ``force`` rebuilds. A changed npz or a damaged shard
    raises ``DataError`` naming the file and ``fix`` (the command that rebuilds; a generic one by
    default). The npz is checked first, so a broken file fails before anything is written. See
    the module docstring for the lock, the temporary folder and what a failure leaves.
    """
    npz_path = Path(npz_path)
    info = get_info(dataset)
    info.check_size(size)
    version_dir = records_dir_of(records_dir, dataset, size)
    fix = fix or f"python -m chest_tf.data prepare {info.name} --size {size} --records-dir {records_dir} --force"
    damaged = None
    if not force:
        try:
            if check_records(version_dir, npz_path, fix) is None:  # reading needs no lock
                return make_builder(dataset, size, npz_path, records_dir)
        except DataError as exc:  # checked again under the lock: a rebuild may have swapped files meanwhile
            damaged = exc
    if damaged is None:
        npz.inspect_npz(npz_path, info, size)  # fail early, before anything is written
    config_dir = version_dir.parent
    try:
        config_dir.mkdir(parents=True, exist_ok=True)
        lock = hold(config_dir / PREPARE_LOCK, f"records {config_dir.name}", wait=True,
                    on_wait=lambda holder: _print_waiting(holder, config_dir))
        with lock:
            return _prepare_locked(dataset, size, npz_path, Path(records_dir), version_dir, force=force,
                                   verbose=verbose, fix=fix)
    except (OSError, RuntimeError, tf.errors.OpError) as exc:  # TFDS writes through TF, and wraps its errors
        if damaged is not None and isinstance(exc, OSError):
            raise damaged from None  # a read-only data dir: say what is wrong with the records
        problem = write_problem(exc)
        if problem is None:
            raise
        kept = "the records there before are unchanged; " if version_dir.exists() else ""
        fix_it = "free some space" if problem.startswith("no space") else "pass a writable --data-dir or --records-dir"
        raise DataError(f"{problem} while writing records under {records_dir} ({error_line(exc)}); {kept}{fix_it} "
                        "and run it again") from None


def _print_waiting(holder: Holder | None, config_dir: Path) -> None:
    who = holder.describe() if holder else "another process"
    print(f"waiting for {who}, which is preparing the records in {config_dir}", file=sys.stderr, flush=True)


def _prepare_locked(dataset, size, npz_path, records_dir, version_dir, *, force, verbose, fix):
    reason = check_records(version_dir, npz_path, fix) if not force else "--force"
    if reason is None:  # another process prepared them while this one waited
        return make_builder(dataset, size, npz_path, records_dir)
    layouts = npz.inspect_npz(npz_path, get_info(dataset), size)
    config_dir = version_dir.parent
    _remove_leftovers(config_dir)
    if verbose:
        if version_dir.exists():
            why = {"--force": "--force", "other source": f"they came from another file than {npz_path}",
                   "unstamped": "a previous preparation did not finish",
                   "older format": "they were stamped by an older chest_tf"}.get(reason, reason)
            print(f"rebuilding records in {version_dir} ({why})", file=sys.stderr)
        print(f"preparing {config_name(dataset, size)} records from {npz_path} into {version_dir}", file=sys.stderr)
    # Built under a temporary records root beside the versions, stamped, then swapped in.
    building = config_dir / f"{_BUILDING_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
    try:
        builder = make_builder(dataset, size, npz_path, building, layouts, progress=verbose)
        config = tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)
        with console.quiet_tfds(), _bounded_shuffler_memory():
            builder.download_and_prepare(download_config=config)
        built = Path(builder.data_dir)
        write_json_atomic(built / STAMP, _stamp(built, npz_path))
        aside = config_dir / f".replaced-{secrets.token_hex(3)}"
        if version_dir.exists():
            os.replace(version_dir, aside)
        try:
            os.replace(built, version_dir)
        except OSError:
            if aside.exists():
                os.replace(aside, version_dir)
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    shutil.rmtree(aside, ignore_errors=True)
    return make_builder(dataset, size, npz_path, records_dir)
