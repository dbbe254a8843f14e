"""Atomic file writes: the one way chest_tf replaces a file that someone may be reading.

Everything goes to a uniquely named temporary file in the same folder (so the final rename stays on
one filesystem and is atomic), and is renamed over the target only once complete. A crash, a full
disk or Ctrl-C mid-write leaves the previous file as it was, never a half-written one.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it replaces ``path``, on an error it
    is removed. The temporary name keeps ``path``'s suffix (Keras checks ``.keras``)."""
    path = Path(path)
    temp = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield temp
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as temp:
        temp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, payload: Any, *, dumps=None, **json_args) -> Path:
    """``payload`` as JSON (indent 2 unless given; ``dumps`` replaces ``json.dumps``), atomically."""
    text = dumps(payload) if dumps is not None else json.dumps(payload, **{"indent": 2, **json_args})
    return write_text_atomic(path, text + "\n")


def write_problem(exc: BaseException) -> str | None:
    """"no space left on the device", "read-only filesystem" or "permission denied" when ``exc``
    (raised while writing) is one of those, else None: the words for a one-line error.

    Python and Keras raise OSError with an errno; h5py raises OSError with the errno only in its
    text; TensorFlow's file writers raise their own errors with the system's words in the text."""
    text = str(exc)
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text or "errno = 28" in text \
            or "Disk quota exceeded" in text:
        return "no space left on the device"
    if code == errno.EROFS or "Read-only file system" in text or "errno = 30" in text:
        return "read-only filesystem"
    if code in (errno.EACCES, errno.EPERM) or "Permission denied" in text or "errno = 13" in text:
        return "permission denied"
    return None
