"""The one definition of input normalisation, used by the pipeline, export and predict.

Images are stored as uint8 in [0, 255]. A model sees float32 ``(x / 255 - MEAN) / STD``, i.e. values
in [-1, 1], the convention of MedMNIST's own training code (``transforms.Normalize(mean=[.5],
std=[.5])``). Augmentation works on that range and maps back to it.
"""
import numpy as np

PIXEL_MEAN = 0.5
PIXEL_STD = 0.5
PIXEL_MIN = (0.0 - PIXEL_MEAN) / PIXEL_STD  # -1.0, the value of a black pixel
PIXEL_MAX = (1.0 - PIXEL_MEAN) / PIXEL_STD  # +1.0, the value of a white pixel


def normalize(images_uint8, ops=None):
    """Map uint8 images to the model's float32 range. ``ops`` is a module with ``cast`` (tf or
    keras.ops); without it, numpy is used."""
    images = np.asarray(images_uint8, np.float32) if ops is None else ops.cast(images_uint8, "float32")
    return (images / 255.0 - PIXEL_MEAN) / PIXEL_STD


def denormalize_to_unit(images):
    """Model range back to [0, 1] (for display and for photometric augmentation)."""
    return images * PIXEL_STD + PIXEL_MEAN
