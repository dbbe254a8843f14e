"""Whole splits and files: ``generate`` / ``generate_split`` (any variant, in any chunks),
``write_phantom`` (a MedMNIST-format npz with its boxes and, for version 2, masks files beside
it, written atomically) and ``read_masks``."""
from __future__ import annotations

import contextlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chest_tf.data.info import SIZES
from chest_tf.data.phantom.labels import LOCATION_KINDS, PHANTOM_LABELS
from chest_tf.data.phantom.variants import PhantomData, get_variant, variant_for_path
from chest_tf.data.phantom.version1 import _generate_v1
from chest_tf.data.phantom.version2 import _generate_v2
from chest_tf.files import atomic_path

# --- masks on disk --------------------------------------------------------------------------

def masks_path(npz_path) -> Path:
    """Where the masks of a version-2 phantom npz live: ``<stem>_masks.npz`` beside it."""
    path = Path(npz_path)
    return path.with_name(path.stem + "_masks.npz")


def _pack(masks: np.ndarray) -> np.ndarray:
    return np.packbits(masks.reshape(len(masks), masks.shape[-2] * masks.shape[-1]), axis=1)


@dataclass
class FindingMasks:
    """The masks of one split of a version-2 phantom file (``read_masks``)."""

    size: int
    drawn: np.ndarray               # (N, 14) uint8: findings drawn in each image
    index: np.ndarray               # (M, 2) int32: (image, finding) of each mask
    bits: np.ndarray                # (M, size*size/8) packed
    distractor_bits: np.ndarray     # (N, ...) packed
    marker: np.ndarray              # (N,) bool: the shortcut marker is on the image
    marker_bits: np.ndarray         # (N, ...) packed
    lung_bits: np.ndarray           # (N, ...) packed: the lung fields
    kinds: tuple[str, ...]          # LOCATION_KINDS per finding
    variant: dict

    def _unpack(self, bits: np.ndarray) -> np.ndarray:
        n = self.size * self.size
        return np.unpackbits(bits, axis=1, count=n).astype(bool).reshape(len(bits), self.size, self.size)

    def masks(self, rows=None) -> np.ndarray:
        """(M', H, W) bool masks of ``rows`` of ``index`` (all by default)."""
        return self._unpack(self.bits if rows is None else self.bits[np.asarray(rows)])

    def row_of(self) -> np.ndarray:
        """(N, 14) int: the row of ``index`` for each (image, finding), -1 where not drawn."""
        rows = np.full(self.drawn.shape, -1, np.int64)
        rows[self.index[:, 0], self.index[:, 1]] = np.arange(len(self.index))
        return rows

    def distractors(self, images=None) -> np.ndarray:
        return self._unpack(self.distractor_bits if images is None else self.distractor_bits[np.asarray(images)])

    def marker_masks(self, images=None) -> np.ndarray:
        return self._unpack(self.marker_bits if images is None else self.marker_bits[np.asarray(images)])

    def lungs(self, images=None) -> np.ndarray:
        return self._unpack(self.lung_bits if images is None else self.lung_bits[np.asarray(images)])


def read_masks(npz_path, split: str) -> FindingMasks:
    """The masks of ``split`` from the ``_masks.npz`` beside a version-2 phantom npz."""
    path = masks_path(npz_path)
    if not path.is_file():
        raise FileNotFoundError(f"no masks file {path} beside {npz_path} (only version-2 phantom sets have masks)")
    with np.load(path) as data:
        if f"{split}_mask_index" not in data:
            raise KeyError(f"{path} has no '{split}' split")
        return FindingMasks(
            size=int(data["size"]), drawn=data[f"{split}_drawn"], index=data[f"{split}_mask_index"],
            bits=data[f"{split}_mask_bits"], distractor_bits=data[f"{split}_distractor_bits"],
            marker=data[f"{split}_marker"].astype(bool), marker_bits=data[f"{split}_marker_bits"],
            lung_bits=data[f"{split}_lung_bits"],
            kinds=tuple(str(k) for k in data["location_kinds"]), variant=json.loads(str(data["variant"])))


# ============================================================================================
# Generating and writing whole splits
# ============================================================================================

def _check_size(size: int) -> int:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES} (the MedMNIST sizes), got {size!r}")
    return int(size)


def generate(size: int, n: int, seed: int, split: str = "train", start: int = 0,
             variant="phantom") -> PhantomData:
    """Images ``start .. start+n-1`` of a split of ``variant`` (a name in ``VARIANTS`` or a
    ``PhantomVariant``), with labels, boxes and (version 2) masks: a ``PhantomData``. Image i
    depends only on (seed, split, i, size, variant), never on ``n`` or ``start``."""
    size = _check_size(size)
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be non-negative, got n={n}, start={start}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    variant = get_variant(variant)
    if variant.version == 1:
        return _generate_v1(size, n, seed, split, start)
    return _generate_v2(size, n, seed, split, start, variant)


def generate_split(size: int, n: int, seed: int, split: str = "train", start: int = 0, variant="phantom"):
    """Images ``start .. start+n-1`` of a split.

    Returns (images uint8 (n, size, size), labels uint8 (n, 14), boxes float32 (n, 14, 4)); boxes
    are (x0, y0, x1, y1) in pixels of the output image (x to the right, y down, x1/y1 exclusive),
    NaN where the finding is absent (version 2: where it is not drawn). Image i depends only on
    (seed, split, i, size), never on ``n`` or ``start``, so a split can be generated in any
    chunks. ``variant``: ``"phantom"`` (version 1, the default) or another name in ``VARIANTS``;
    ``generate`` also returns version 2's masks.
    """
    data = generate(size, n, seed, split, start, variant)
    return data.images, data.labels, data.boxes


def boxes_path(npz_path) -> Path:
    """Where the boxes of a phantom npz live: ``<stem>_boxes.npz`` beside it."""
    path = Path(npz_path)
    return path.with_name(path.stem + "_boxes.npz")


def _write_npy_header(stream, shape, dtype) -> None:
    np.lib.format.write_array_header_1_0(stream, {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
        "shape": tuple(int(s) for s in shape)})


def _write_member(archive: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with archive.open(name + ".npy", "w", force_zip64=True) as stream:
        _write_npy_header(stream, array.shape, array.dtype)
        stream.write(np.ascontiguousarray(array).tobytes())


def write_phantom(path, size: int = 28, counts: dict | None = None, seed: int = 0,
                  chunk: int = 1024, variant=None) -> Path:
    """Write a phantom ChestMNIST npz (MedMNIST format) and its boxes file; return the npz path.

    Keys ``{split}_images`` (uint8 (N, size, size)) and ``{split}_labels`` (uint8 (N, 14)) for
    each split of ``counts`` (default: the variant's, ``DEFAULT_COUNTS`` for most); the boxes go
    to ``<stem>_boxes.npz`` as ``{split}_boxes`` (float32 (N, 14, 4), NaN where a finding is
    absent) with ``label_names``. ``variant`` (default: the one the file is named after,
    ``variant_for_path``: ``phantom2_hard_64.npz`` is ``phantom2_hard``, any other name version 1):
    a version-2 set also gets ``<stem>_masks.npz`` (``read_masks``). Images are generated
    ``chunk`` at a time and streamed into the archive (ZIP_STORED, zip64), so a large 224 px split
    never sits whole in memory. All files go to temporaries in the same folder and are renamed
    into place (masks and boxes first), so a reader never sees a partial file.
    """
    size = _check_size(size)
    path = Path(path)
    variant = variant_for_path(path) if variant is None else get_variant(variant)
    counts = dict(variant.default_counts if counts is None else counts)
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    if any(int(n) < 0 for n in counts.values()):
        raise ValueError(f"counts must be non-negative, got {counts}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # The npz is renamed into place after its boxes and masks files (inner blocks first), so a
    # reader that finds the npz finds the others too.
    with contextlib.ExitStack() as stack:
        npz_temp = stack.enter_context(atomic_path(path))
        boxes_temp = stack.enter_context(atomic_path(boxes_path(path)))
        masks_temp = stack.enter_context(atomic_path(masks_path(path))) if variant.version == 2 else None
        all_labels, all_boxes, all_masks = {}, {}, {}
        with zipfile.ZipFile(npz_temp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for split, n in counts.items():
                n = int(n)
                labels = np.zeros((n, len(PHANTOM_LABELS)), np.uint8)
                boxes = np.zeros((n, len(PHANTOM_LABELS), 4), np.float32)
                parts = []
                with archive.open(f"{split}_images.npy", "w", force_zip64=True) as stream:
                    _write_npy_header(stream, (n, size, size), np.uint8)
                    for lo in range(0, n, chunk):
                        hi = min(n, lo + chunk)
                        data = generate(size, hi - lo, seed, split, lo, variant)
                        labels[lo:hi], boxes[lo:hi] = data.labels, data.boxes
                        stream.write(data.images.tobytes())
                        if variant.version == 2:
                            parts.append((lo, data))
                all_labels[split], all_boxes[split] = labels, boxes
                if variant.version == 2:
                    parts = parts or [(0, generate(size, 0, seed, split, 0, variant))]
                    all_masks.update(_mask_members(split, parts))
            for split, labels in all_labels.items():
                _write_member(archive, f"{split}_labels", labels)
        if variant.version == 2:
            with open(masks_temp, "wb") as stream:
                np.savez(stream, size=np.int32(size), label_names=np.array(PHANTOM_LABELS),
                         location_kinds=np.array([LOCATION_KINDS[name] for name in PHANTOM_LABELS]),
                         variant=np.array(json.dumps(variant.describe())), **all_masks)
        with open(boxes_temp, "wb") as stream:  # a file object: savez would append ".npz" to a name
            np.savez(stream, label_names=np.array(PHANTOM_LABELS),
                     **{f"{split}_boxes": b for split, b in all_boxes.items()})
    if variant.version == 1:
        masks_path(path).unlink(missing_ok=True)  # a stale one from a version-2 file of this name
    return path


def _mask_members(split: str, parts: list[tuple[int, PhantomData]]) -> dict[str, np.ndarray]:
    """The masks file's arrays for one split from its generated chunks (masks bit-packed)."""
    return {
        f"{split}_drawn": np.concatenate([d.drawn for _, d in parts]),
        f"{split}_mask_index": np.concatenate([d.mask_index + np.array([lo, 0], np.int32) for lo, d in parts]),
        f"{split}_mask_bits": np.concatenate([_pack(d.masks) for _, d in parts]),
        f"{split}_distractor_bits": np.concatenate([_pack(d.distractors) for _, d in parts]),
        f"{split}_marker": np.concatenate([d.marker for _, d in parts]).astype(np.uint8),
        f"{split}_marker_bits": np.concatenate([_pack(d.marker_masks) for _, d in parts]),
        f"{split}_lung_bits": np.concatenate([_pack(d.lungs) for _, d in parts]),
    }
