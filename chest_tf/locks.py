"""Advisory file locks: two processes never train one run dir, prepare one dataset, or rewrite one
sweep's leaderboard at the same time, on one machine or on several machines sharing a filesystem.

A lock is ``flock(2)`` (``fcntl.flock``, exclusive) on a small file that stays in place (it is never
deleted, so every process locks the same inode). The holder writes who it is into the file -- PID,
host, start time, command -- so a process that finds the lock taken can say who has it
(``LockBusy``: one line). A lock belongs to an open file: the kernel drops it when its holder exits,
however it exits (SIGKILL, a crash, a power cut on another NFS client once the server's lease runs
out, about 90 s for NFSv4), so a lock left by a dead process is simply free; its record, still in
the file, is reported as taken over (``FileLock.acquire`` returns it).

Where the locks hold across machines:

- local disks (ext4, xfs, btrfs, tmpfs): always (one machine);
- NFS v3 (with lockd) and v4: yes -- Linux clients send flock() to the server as a whole-file
  byte-range lock, which the server arbitrates between hosts; not with the mount options
  ``local_lock=flock``/``local_lock=all`` or ``nolock``, which keep locks on each client;
- CephFS, IBM Storage Scale (GPFS), BeeGFS (with global file locks): yes;
- Lustre: only when mounted with ``-o flock``; with ``-o localflock`` each node sees only its own
  locks (not safe across machines); with neither, flock fails and chest_tf says so.

When the filesystem refuses flock (ENOLCK, ENOSYS, EOPNOTSUPP) acquiring raises
``LockUnsupported`` naming the path; ``CHEST_TF_LOCKS=off`` runs without locks (a one-line warning;
then keep to one process per run dir and per dataset).

Locks are re-entrant within a process: taking a lock this process already holds counts up, and
the file is unlocked when the last holder releases it.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from chest_tf.errors import ChestTFError

LOCKS_ENV = "CHEST_TF_LOCKS"  # "off": run without locks where the filesystem has none
RUN_LOCK = ".chest_tf.lock"  # the lock file in a run dir (training.train holds it while it trains)
_BUSY_ERRNOS = {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}
_UNSUPPORTED_ERRNOS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}
_RETRIES, _RETRY_SECONDS = 5, 0.05  # before calling a lock busy (0.25 s: "at once" for a person)

_held: dict[str, list[int]] = {}  # real path of a lock file -> [fd, holds] in this process
_held_guard = threading.Lock()
_warned_disabled = False


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a lock, from its file."""

    pid: int | None = None
    host: str | None = None
    since: str | None = None
    command: str | None = None

    def describe(self) -> str:
        who = f"PID {self.pid if self.pid is not None else '?'} on {self.host or 'an unknown host'}"
        return f"{who} since {self.since}" if self.since else who

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        try:
            record = json.loads(text)
        except ValueError:
            return None
        if not isinstance(record, dict):
            return None
        pid = record.get("pid")
        return cls(pid=pid if isinstance(pid, int) else None, host=record.get("host"), since=record.get("since"),
                   command=record.get("command"))


class LockBusy(ChestTFError):
    """Another process holds the lock."""

    def __init__(self, what: str, path: Path, holder: Holder | None):
        self.what, self.path, self.holder = what, path, holder
        who = holder.describe() if holder else "another process (it has not written its name yet)"
        super().__init__(f"{what} is in use by {who} (lock {path}); wait for it to finish or stop it "
                         "(a lock whose process has died is taken over by the next run)")


class LockUnsupported(ChestTFError):
    """The filesystem does not support flock."""


def _me() -> dict:
    command = " ".join([Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]])
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": command[:300]}


def _read_holder(fd: int) -> Holder | None:
    try:
        data = os.pread(fd, 4096, 0)
    except OSError:
        return None
    return Holder.parse(data.decode("utf-8", "replace")) if data.strip() else None


def _flock(fd: int, path: Path, blocking: bool) -> bool:
    """True when locked; False when another process holds it (non-blocking only)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if not blocking and exc.errno in _BUSY_ERRNOS:
            return False
        if exc.errno in _UNSUPPORTED_ERRNOS:
            raise LockUnsupported(
                f"the filesystem holding {path} does not support file locks ({exc.strerror}), so chest_tf cannot keep "
                f"two processes apart there: use a filesystem with flock (local disk, NFS, CephFS, GPFS; Lustre with "
                f"-o flock) or set {LOCKS_ENV}=off and run one process per run dir and dataset"
            ) from None
        raise
    return True


def locks_disabled() -> bool:
    return os.environ.get(LOCKS_ENV, "").strip().lower() in ("off", "0", "no", "false")


class FileLock:
    """An exclusive lock on ``path`` (created if missing; never deleted). ``what`` names the thing it
    guards in messages ("run dir runs/x", "records phantom_28")."""

    def __init__(self, path: str | os.PathLike, what: str):
        self.path = Path(path)
        self.what = what
        self._key: str | None = None

    @property
    def held(self) -> bool:
        return self._key is not None

    def acquire(self, *, wait: bool = False, on_wait: Callable[[Holder | None], None] | None = None) -> Holder | None:
        """Take the lock. Busy: raise ``LockBusy``, or with ``wait`` call ``on_wait(holder)`` once and
        block until it is free. Returns the record a dead holder left in the file (a stale lock taken
        over), else None. OSError (e.g. a read-only folder) propagates for the caller to word."""
        if self._key is not None:
            raise RuntimeError(f"{self.path} is already held by this FileLock")
        key = os.path.realpath(self.path)
        with _held_guard:
            if key in _held:
                _held[key][1] += 1
                self._key = key
                return None
        if locks_disabled():
            _warn_disabled_once()
            self._key = ""
            return None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            locked = _flock(fd, self.path, blocking=False)
            for _ in range(_RETRIES):  # a moment's look by ``holder()`` also blocks; a holder keeps it
                if locked:
                    break
                time.sleep(_RETRY_SECONDS)
                locked = _flock(fd, self.path, blocking=False)
            if not locked:
                holder = _read_holder(fd)  # the holder writes its record right after locking
                if not wait:
                    raise LockBusy(self.what, self.path, holder)
                if on_wait is not None:
                    on_wait(holder)
                _flock(fd, self.path, blocking=True)
            stale = _read_holder(fd)  # a clean release empties the file: a record left here is a dead holder's
            record = json.dumps(_me()).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        with _held_guard:
            _held[key] = [fd, 1]
        self._key = key
        return stale

    def release(self) -> None:
        key, self._key = self._key, None
        if not key:  # not held, or held with locks off
            return
        with _held_guard:
            entry = _held[key]
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _held[key]
        fd = entry[0]
        try:
            with contextlib.suppress(OSError):  # e.g. the folder was deleted under us
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def holder(path: str | os.PathLike) -> Holder | None:
    """Who holds the lock at ``path``, if another process does (None when it is free, when the file
    does not exist, or when this process holds it). Opens the file read-only; creates nothing."""
    path = Path(path)
    with _held_guard:
        if os.path.realpath(path) in _held:
            return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in _BUSY_ERRNOS:
                return _read_holder(fd) or Holder()
            return None  # no flock here: nobody can be seen holding it
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextlib.contextmanager
def hold(path: str | os.PathLike, what: str, *, wait: bool = False,
         on_wait: Callable[[Holder | None], None] | None = None, on_stale: Callable[[Holder], None] | None = None
         ) -> Iterator[FileLock]:
    """``with hold(path, what):`` -- the lock for the block (see ``FileLock.acquire``); ``on_stale``
    hears about a dead holder's lock being taken over. With ``CHEST_TF_LOCKS=off`` nothing is locked."""
    lock = FileLock(path, what)
    stale = lock.acquire(wait=wait, on_wait=on_wait)
    try:
        if stale is not None and on_stale is not None:
            on_stale(stale)
        yield lock
    finally:
        lock.release()


def _warn_disabled_once() -> None:
    global _warned_disabled
    if not _warned_disabled:
        _warned_disabled = True
        warnings.warn(f"{LOCKS_ENV}=off: nothing is locked; two processes on one run dir or dataset will damage it",
                      stacklevel=3)
