"""Reading real image files into uint8 arrays: PNG, JPEG and (with pydicom) DICOM.

Every file chest_tf reads outside a dataset goes through here (``python -m chest_tf.predict`` and
the explain CLI), so a PNG looks the same to every command. No TensorFlow: numpy and Pillow only,
pydicom imported lazily.

``read_image(path) -> np.ndarray`` uint8, ``(H, W, 1)`` for grayscale or ``(H, W, 3)`` for colour,
at the file's own size (resizing to the model belongs to the model's serving function, see
``chest_tf.export``). The rules:

- 8-bit grayscale (``L``), RGB and palette images are kept as they are; 1-bit images become 0/255.
- An alpha channel (``LA``, ``RGBA``, palette with transparency) is composited over black:
  ``value * alpha / 255``, rounded. A transparent pixel is no signal, and black is the X-ray
  background.
- 16-bit (and 32-bit integer / float) grayscale is scaled linearly from the image's own minimum
  and maximum to 0..255 and rounded: many 16-bit X-ray PNGs hold 10 or 12 significant bits, which
  a fixed ``/ 257`` would leave nearly black. A constant image becomes all 0. (Pillow itself reads
  16-bit RGB PNGs as 8 bits per channel; those come out as Pillow gives them.)
- JPEG EXIF orientation is applied, so the image is read the way viewers show it.
- DICOM: modality rescale ``RescaleSlope * x + RescaleIntercept``, then the stored VOI window
  (first ``WindowCenter``/``WindowWidth``, with ``VOILUTFunction`` LINEAR, LINEAR_EXACT or
  SIGMOID as in PS3.3 C.11.2.1.2) or, without one, the image's own min..max like 16-bit PNGs;
  MONOCHROME1 is inverted so that bone is bright as in MONOCHROME2. Needs ``pip install
  'chest_tf[dicom]'``.

Guards: an empty file, a file no decoder recognises, a truncated or corrupt file, a format other
than PNG/JPEG/DICOM, and a header announcing more than ``max_pixels`` pixels (a decompression
bomb: checked on the header, before any pixel is decoded; Pillow's own guard also refuses more
than 2 x ``PIL.Image.MAX_IMAGE_PIXELS``, ~179 MP, whatever ``max_pixels`` says) each raise
``ImageReadError`` with a one-line message that names the file.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from chest_tf.errors import DataError

PIL_EXTENSIONS = (".png", ".jpg", ".jpeg")
DICOM_EXTENSIONS = (".dcm", ".dicom")
IMAGE_EXTENSIONS = PIL_EXTENSIONS + DICOM_EXTENSIONS
# 64 Mi pixels (8192 x 8192): above any radiograph (a 43 x 43 cm detector at 100 um is ~18 MP),
# and a 1-channel uint8 decode of it is 64 MiB.
DEFAULT_MAX_PIXELS = 64 * 2**20
_PIL_FORMATS = {"PNG", "JPEG", "MPO"}  # MPO: the multi-picture JPEG some cameras write
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


class ImageReadError(DataError):
    """A file could not be read as an image; the message starts with the file's path."""


def find_images(paths: Iterable[str | os.PathLike], extensions: Sequence[str] = IMAGE_EXTENSIONS,
                skipped: list[Path] | None = None) -> list[Path]:
    """Files named directly are kept whatever their name (reading decides); folders are walked
    recursively, sorted, keeping files with an image extension (case-insensitive) and skipping
    hidden files and folders. A path that does not exist is kept, so reading reports it. Files
    left out of a folder for their extension are appended to ``skipped`` when given."""
    found: list[Path] = []
    wanted = tuple(e.lower() for e in extensions)
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            found.append(path)
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                if name.lower().endswith(wanted):
                    found.append(Path(root) / name)
                elif skipped is not None:
                    skipped.append(Path(root) / name)
    return found


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The file as uint8 ``(H, W, 1)`` or ``(H, W, 3)`` (see the module docstring for the rules)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not path.is_file():
        raise ImageReadError(f"{path}: not a file")
    if size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    if path.suffix.lower() in DICOM_EXTENSIONS or _has_dicom_preamble(path):
        return read_dicom(path, max_pixels)
    return _read_pil(path, max_pixels)


def _has_dicom_preamble(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _read_pil(path: Path, max_pixels: int) -> np.ndarray:

    try:
        with warnings.catch_warnings():
            # Our own limit (below) governs; Pillow's warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:  # reads the header only
                if im.format not in _PIL_FORMATS:
                    raise ImageReadError(f"{path}: unsupported image format {im.format} (PNG, JPEG or DICOM)")
                _check_dimensions(path, im.width, im.height, max_pixels)
                im.load()
                if im.format in ("JPEG", "MPO"):
                    im = ImageOps.exif_transpose(im)
                return _pil_to_array(im)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own guard (2 x Image.MAX_IMAGE_PIXELS)
        detail = str(exc).split(",")[0]
        raise ImageReadError(f"{path}: image size exceeds the limit of Pillow's decompression bomb guard ({detail})") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not a PNG, JPEG or DICOM image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated data as OSError("image file is truncated ...") and broken
        # chunks as SyntaxError / ValueError.
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageReadError(f"{path}: truncated or corrupt image ({detail})") from None


def _check_dimensions(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise ImageReadError(f"{path}: image has no pixels ({width} x {height})")
    if width * height > max_pixels:
        raise ImageReadError(
            f"{path}: {width} x {height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
            "(a decompression bomb guard; raise it with --max-pixels)"
        )


def _pil_to_array(im) -> np.ndarray:
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES:
        return scale_to_uint8(np.asarray(im))[..., None]
    if mode == "1":
        im = im.convert("L")
    elif mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("PA", "La"):
        im = im.convert("LA" if mode == "La" else "RGBA")
    elif mode in ("RGBa",):
        im = im.convert("RGBA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")  # CMYK, YCbCr, RGBX, ...
    array = np.asarray(im)
    if array.ndim == 2:
        return array[..., None]
    if array.shape[-1] in (2, 4):  # LA, RGBA: composite over black
        return composite_over_black(array)
    return np.ascontiguousarray(array)


def composite_over_black(array: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W, C + 1)`` with alpha last -> ``(H, W, C)``: ``round(value * alpha / 255)``."""
    values = array[..., :-1].astype(np.uint32)
    alpha = array[..., -1:].astype(np.uint32)
    return ((values * alpha + 127) // 255).astype(np.uint8)


def scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Any numeric array -> uint8, linearly from its own min..max to 0..255, rounded (constant -> 0).
    NaN counts as the minimum."""
    x = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(x)
    if not finite.any():
        return np.zeros(x.shape, dtype=np.uint8)
    lo, hi = float(x[finite].min()), float(x[finite].max())
    if hi <= lo:
        return np.zeros(x.shape, dtype=np.uint8)
    x = np.where(finite, x, lo)
    return np.clip(np.rint((x - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# DICOM
# ----------------------------------------------------------------------------------------------
def read_dicom(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A single-frame DICOM image as uint8 ``(H, W, 1)`` (monochrome) or ``(H, W, 3)`` (RGB)."""
    path = Path(path)
    try:
        import pydicom  # noqa: PLC0415
    except ImportError:
        raise ImageReadError(
            f"{path}: reading DICOM needs pydicom; install it with pip install 'chest_tf[dicom]'"
        ) from None
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        rows, cols = int(header.get("Rows", 0)), int(header.get("Columns", 0))
        frames = int(header.get("NumberOfFrames", 1) or 1)
        if "Rows" not in header:
            raise ImageReadError(f"{path}: DICOM file holds no image (no Rows/Columns)")
        _check_dimensions(path, cols, rows * frames, max_pixels)
        if frames > 1:
            raise ImageReadError(f"{path}: multi-frame DICOM ({frames} frames) is not supported")
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for broken files
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageReadError(f"{path}: cannot read DICOM ({detail})") from None
    try:
        return dicom_to_uint8(dataset, pixels)
    except ValueError as exc:
        raise ImageReadError(f"{path}: {exc}") from None


def _first(value) -> float | None:
    """A DICOM numeric attribute that may be multi-valued -> its first value (None if absent)."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        if len(value) == 0:
            return None
        value = value[0]
    return float(value)


def dicom_to_uint8(dataset, pixels: np.ndarray) -> np.ndarray:
    """Stored DICOM pixels -> uint8 display values (``dataset`` needs only attribute access, so any
    object with the DICOM keywords works; see the module docstring for the rules)."""
    photometric = str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2")).upper()
    pixels = np.asarray(pixels)
    if photometric == "RGB":
        if pixels.ndim != 3 or pixels.shape[-1] != 3:
            raise ValueError(f"RGB DICOM with pixel array of shape {pixels.shape}")
        return pixels.astype(np.uint8) if pixels.dtype == np.uint8 else scale_to_uint8(pixels)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"unsupported PhotometricInterpretation {photometric} (MONOCHROME1/2 or RGB)")
    if pixels.ndim != 2:
        raise ValueError(f"monochrome DICOM with pixel array of shape {pixels.shape}")
    slope = _first(getattr(dataset, "RescaleSlope", None))
    intercept = _first(getattr(dataset, "RescaleIntercept", None))
    x = pixels.astype(np.float64) * (1.0 if slope is None else slope) + (0.0 if intercept is None else intercept)
    center = _first(getattr(dataset, "WindowCenter", None))
    width = _first(getattr(dataset, "WindowWidth", None))
    function = str(getattr(dataset, "VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if center is not None and width is not None and width > 0:
        out = voi_window(x, center, width, function)
    else:
        out = scale_to_uint8(x)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return out[..., None]


def voi_window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM VOI LUT functions (PS3.3 C.11.2.1.2) onto 0..255, rounded to uint8."""
    x = np.asarray(x, dtype=np.float64)
    if function == "LINEAR_EXACT":
        y = (x - center) / width + 0.5
    elif function == "SIGMOID":
        y = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "LINEAR":
        if width < 1:
            raise ValueError(f"WindowWidth {width:g} < 1 is invalid for the LINEAR VOI function")
        if width == 1:  # the standard's step function: (x - (c - 0.5)) / 0 is undefined
            y = (x > center - 0.5).astype(np.float64)
        else:
            y = (x - (center - 0.5)) / (width - 1) + 0.5
    else:
        raise ValueError(f"unsupported VOILUTFunction {function} (LINEAR, LINEAR_EXACT or SIGMOID)")
    return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)
