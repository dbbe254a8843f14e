"""Read MedMNIST npz files as streams and check them against the catalogue.

An npz is a zip of ``.npy`` members. ``np.load`` would inflate a whole member (5.6 GB for
ChestMNIST at 224 px); here each member's header is read on its own and rows are streamed in
chunks, so a split is never held whole in memory. Checks read headers (and the small label arrays)
before any image is converted, so a broken file fails at once with a message naming the problem.
"""
from __future__ import annotations

import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from chest_tf.data.info import MULTI_LABEL, SPLITS, DatasetInfo
from chest_tf.errors import DataError


@dataclass(frozen=True)
class Member:
    """The header of one ``.npy`` member: its shape and dtype and where its data starts."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool


def _read_header(stream) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    return np.lib.format.read_array_header_2_0(stream)


def read_member_header(archive: zipfile.ZipFile, name: str) -> Member:
    with archive.open(name) as stream:
        shape, fortran_order, dtype = _read_header(stream)
    return Member(name, tuple(shape), np.dtype(dtype), fortran_order)


def open_npz(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path} is not a readable npz file ({exc}); download it again or check the path") from exc


def iter_rows(path: Path, key: str, chunk: int = 1024) -> Iterator[np.ndarray]:
    """Yield ``key``'s rows in chunks of up to ``chunk`` rows, reading the member as a stream."""
    with open_npz(path) as archive, archive.open(f"{key}.npy") as stream:
        shape, fortran_order, dtype = _read_header(stream)
        if fortran_order:
            raise DataError(f"{path}: {key} is stored in Fortran order; re-save it with np.savez")
        row_shape = tuple(shape[1:])
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        remaining = shape[0]
        while remaining:
            n = min(chunk, remaining)
            buffer = stream.read(n * row_bytes)
            if len(buffer) != n * row_bytes:
                raise DataError(f"{path}: {key} is truncated; download the file again")
            yield np.frombuffer(buffer, dtype=dtype).reshape((n, *row_shape))
            remaining -= n


def read_array(path: Path, key: str) -> np.ndarray:
    """A whole (small) member, e.g. the label arrays."""
    return np.concatenate(list(iter_rows(path, key, chunk=1 << 16)))


@dataclass(frozen=True)
class SplitLayout:
    split: str
    num_examples: int
    image_shape: tuple[int, ...]  # (H, W, C) as the model will see it


def expected_image_shape(info: DatasetInfo, size: int) -> tuple[int, int, int]:
    return (size, size, info.n_channels)


def _check_images(path: Path, member: Member, info: DatasetInfo, size: int) -> None:
    key = member.name[:-4]
    if member.dtype.kind == "f":
        sample = next(iter_rows(path, key, chunk=4096))
        what = "contain NaN" if np.isnan(sample).any() else f"are {member.dtype}"
        raise DataError(
            f"{path}: {key} {what}; MedMNIST images are uint8 in 0-255. "
            "Convert with np.clip(x, 0, 255).astype(np.uint8) after scaling"
        )
    if member.dtype != np.uint8:
        raise DataError(f"{path}: {key} has dtype {member.dtype}; expected uint8 images in 0-255")
    want = expected_image_shape(info, size)
    got = member.shape[1:]
    channels_ok = got == want or (info.n_channels == 1 and got == want[:2])
    if not channels_ok:
        shown = f"(N, {size}, {size})" if info.n_channels == 1 else f"(N, {size}, {size}, {info.n_channels})"
        raise DataError(
            f"{path}: {key} has shape {member.shape}, but {info.name} at {size} px expects {shown}; "
            "is this the right file for --size?"
        )


def _check_labels(path: Path, key: str, labels: np.ndarray, info: DatasetInfo) -> None:
    if labels.ndim != 2 or labels.shape[1] != info.label_width:
        raise DataError(
            f"{path}: {key} has shape {labels.shape}; {info.name} expects (N, {info.label_width}) "
            f"({info.task}, {info.num_labels} labels)"
        )
    if labels.dtype.kind == "f" and np.isnan(labels).any():
        raise DataError(f"{path}: {key} contains NaN; labels must be integers")
    high = 1 if info.task == MULTI_LABEL else info.num_labels - 1
    if labels.size and (labels.min() < 0 or labels.max() > high):
        raise DataError(f"{path}: {key} has values outside 0..{high} for a {info.task} task")


def inspect_npz(path: Path, info: DatasetInfo, size: int) -> dict[str, SplitLayout]:
    """Check the file against the catalogue and return each split's layout.

    Problems with keys, shapes, dtypes, label widths and empty splits raise ``DataError``; a split
    smaller or larger than the published size (a user's subset) only warns.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; download it with `python -m chest_tf.data download {info.name}`")
    layouts = {}
    with open_npz(path) as archive:
        present = {name[:-4] for name in archive.namelist() if name.endswith(".npy")}
        for split in SPLITS:
            for key in (f"{split}_images", f"{split}_labels"):
                if key not in present:
                    raise DataError(
                        f"{path} has no '{key}' array (found: {', '.join(sorted(present)) or 'none'}); "
                        "a MedMNIST file holds train/val/test _images and _labels"
                    )
            images = read_member_header(archive, f"{split}_images.npy")
            labels = read_member_header(archive, f"{split}_labels.npy")
            layouts[split] = (images, labels)
    for split, (images, labels) in layouts.items():
        n = images.shape[0] if images.shape else 0
        if n == 0:
            raise DataError(f"{path}: the {split} split is empty; every split needs at least one image")
        _check_images(path, images, info, size)
        label_array = read_array(path, f"{split}_labels")
        _check_labels(path, f"{split}_labels", label_array, info)
        if label_array.shape[0] != n:
            raise DataError(f"{path}: {split} has {n} images but {label_array.shape[0]} labels")
        published = info.split_sizes.get(split)
        if published is not None and n != published and not info.generated:
            warnings.warn(
                f"{path.name}: {split} has {n} images, the published {info.name} split has {published}",
                stacklevel=2,
            )
    return {
        split: SplitLayout(split, images.shape[0], expected_image_shape(info, size))
        for split, (images, _) in layouts.items()
    }
