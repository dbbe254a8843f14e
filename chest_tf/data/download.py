"""Fetch MedMNIST npz files into the data dir: progress, resume, MD5 check, atomic rename.

Where files live (``data_dir``): ``--data-dir`` if given, else ``$CHEST_TF_DATA_DIR``, else
``~/.cache/chest_tf``. A file is downloaded to ``NAME.npz.part`` (resumed with an HTTP Range
request if a previous attempt was cut), checked against the published MD5 and only then renamed to
``NAME.npz``; so a file under its final name is either verified or the user's own. A verified file
gets a ``NAME.npz.verified`` stamp (size, mtime, MD5) and is never fetched or hashed again.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
import warnings
from pathlib import Path

from chest_tf.console import Progress
from chest_tf.data.info import DatasetInfo
from chest_tf.errors import DataError
from chest_tf.files import write_json_atomic

DATA_DIR_ENV = "CHEST_TF_DATA_DIR"
CHUNK_BYTES = 1 << 20


def default_data_dir() -> Path:
    """``$CHEST_TF_DATA_DIR`` or ``~/.cache/chest_tf``."""
    return Path(os.environ.get(DATA_DIR_ENV) or Path.home() / ".cache" / "chest_tf").expanduser()


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    return Path(data_dir).expanduser() if data_dir else default_data_dir()


def npz_path(info: DatasetInfo, size: int, data_dir: str | os.PathLike | None = None) -> Path:
    """Where the npz for (set, size) is expected."""
    return resolve_data_dir(data_dir) / info.filename(size)


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _file_identity(path: Path) -> dict:
    stat = path.stat()
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _has_valid_stamp(path: Path, md5: str) -> bool:
    try:
        stamp = json.loads(_stamp_path(path).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("md5") == md5 and stamp.get("identity") == _file_identity(path)


def _write_stamp(path: Path, md5: str) -> None:
    stamp = {"md5": md5, "identity": _file_identity(path)}
    try:
        write_json_atomic(_stamp_path(path), stamp)
    except OSError:
        pass  # a read-only data dir (e.g. a shared mount): we simply hash again next time


def check_existing(path: Path, expected_md5: str | None) -> bool:
    """For a file already at ``path``: True if it is the published file. A user's own file with
    another MD5 (a subset, a re-export) is used as it is, with a warning."""
    if expected_md5 is None:
        warnings.warn(f"{path}: no published MD5 for this file; using it unchecked", stacklevel=2)
        return False
    if _has_valid_stamp(path, expected_md5):
        return True
    actual = file_md5(path)
    if actual == expected_md5:
        _write_stamp(path, expected_md5)
        return True
    warnings.warn(
        f"{path} is not the published MedMNIST file (MD5 {actual}, expected {expected_md5}); "
        "using it as it is",
        stacklevel=2,
    )
    return False


def _offline_message(info: DatasetInfo, size: int, url: str, target: Path, reason: object) -> str:
    return (
        f"could not download {info.name} ({size} px) from {url} ({reason}). "
        f"Put the file at {target} yourself, or run offline with --dataset phantom"
    )


def _open_range(url: str, start: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": "chest_tf"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (URLs come from info.py or the user)


def _stream_to_part(url: str, part: Path, label: str, timeout: float, progress: bool) -> None:
    """Append the rest of ``url`` to ``part``; restart from zero if the server ignores Range."""
    start = part.stat().st_size if part.exists() else 0
    with _open_range(url, start, timeout) as response:
        resumed = start > 0 and response.status == 206
        if not resumed:
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        with (
            Progress(total, f"downloading {label}", unit="B", unit_scale=True, initial=start, enabled=progress) as bar,
            open(part, "ab" if resumed else "wb") as out,
        ):
            for block in iter(lambda: response.read(CHUNK_BYTES), b""):
                out.write(block)
                bar.update(len(block))
    if total is not None and part.stat().st_size != total:
        raise DataError(f"download of {url} ended early; run the same command again to resume")


def fetch(
    info: DatasetInfo,
    size: int,
    data_dir: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    md5: str | None = None,
    timeout: float = 60.0,
    progress: bool | None = None,
) -> Path:
    """Make sure the npz for (set, size) is in ``data_dir`` and return its path.

    A file already there is used (checked against the published MD5 when there is one). Otherwise
    it is downloaded (``url`` overrides the catalogue's, e.g. a mirror or a test server), resumed if
    a ``.part`` is left from an earlier try, verified, and renamed into place atomically.
    """
    target = npz_path(info, size, data_dir)
    expected = md5 if md5 is not None else info.md5.get(size)
    if target.exists():
        check_existing(target, expected)
        return target
    if info.generated:
        raise DataError(f"{info.name} is generated, not downloaded: run `python -m chest_tf.data phantom`")
    url = url or info.url(size)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create data dir {target.parent} ({exc}); pass a writable --data-dir") from exc
    part = target.with_name(target.name + ".part")
    if progress is None:
        progress = sys.stderr.isatty()
    try:
        _stream_to_part(url, part, f"{info.name} {size}px", timeout, progress)
    except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, cuts
        reason = getattr(exc, "reason", exc)
        if isinstance(exc, urllib.error.HTTPError) and exc.code == 416:
            reason = "the server refused to resume; delete the .part file and retry"
        raise DataError(_offline_message(info, size, url, target, reason)) from exc
    if expected is not None:
        actual = file_md5(part)
        if actual != expected:
            part.unlink(missing_ok=True)
            raise DataError(
                f"downloaded {info.name} ({size} px) is corrupted (MD5 {actual}, expected {expected}); "
                "the bad file was removed, run the command again"
            )
    os.replace(part, target)  # atomic on one filesystem: no half file under the final name
    if expected is not None:
        _write_stamp(target, expected)
    return target
