"""chest_tf.locks: a lock held by another process is refused with its PID and host, waited for, or
taken over once its holder is dead; a filesystem without flock is a one-line error."""
from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chest_tf import locks
from chest_tf.locks import FileLock, LockBusy, LockUnsupported

REPO = Path(__file__).resolve().parents[1]
HOLD = """
import sys
from chest_tf.locks import FileLock
lock = FileLock(sys.argv[1], "the thing")
lock.acquire()
print("locked", flush=True)
sys.stdin.readline()  # hold until the test closes stdin
lock.release()
"""


def _holder_process(path: Path) -> subprocess.Popen:
    """Another process holding the lock at ``path`` until its stdin is closed."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], cwd=REPO, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_a_lock_held_elsewhere_is_refused_naming_pid_and_host(tmp_path):
    path = tmp_path / "x.lock"
    child = _holder_process(path)
    try:
        holder = locks.holder(path)
        assert holder is not None and holder.pid == child.pid and holder.host == socket.gethostname()
        started = time.monotonic()
        with pytest.raises(LockBusy) as caught:
            FileLock(path, "run dir runs/x").acquire()
        assert time.monotonic() - started < 2  # at once
        message = str(caught.value)
        assert message.startswith(f"run dir runs/x is in use by PID {child.pid} on {socket.gethostname()} since ")
        assert "\n" not in message and str(path) in message
    finally:
        child.stdin.close()
        assert child.wait(30) == 0
    assert locks.holder(path) is None  # released cleanly
    lock = FileLock(path, "run dir runs/x")
    assert lock.acquire() is None  # a clean release leaves no stale record
    lock.release()


def test_the_lock_of_a_killed_holder_is_taken_over(tmp_path):
    path = tmp_path / "x.lock"
    child = _holder_process(path)
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    assert locks.holder(path) is None  # the kernel dropped the lock with the process
    lock = FileLock(path, "the thing")
    stale = lock.acquire()
    try:
        assert stale is not None and stale.pid == child.pid  # its record: reported as taken over
        assert f'"pid": {os.getpid()}' in path.read_text()  # and replaced by ours
    finally:
        lock.release()
    assert path.read_text() == ""


def test_waiting_for_the_holder(tmp_path):
    path = tmp_path / "x.lock"
    child = _holder_process(path)
    heard = []

    def release_soon():
        time.sleep(0.5)
        child.stdin.close()

    threading.Thread(target=release_soon, daemon=True).start()
    lock = FileLock(path, "the thing")
    lock.acquire(wait=True, on_wait=heard.append)
    try:
        assert [h.pid for h in heard] == [child.pid]  # told once, who it waited for
        assert child.wait(30) == 0
    finally:
        lock.release()


def test_reentrant_in_one_process_and_exclusive_across_processes(tmp_path):
    path = tmp_path / "x.lock"
    outer, inner = FileLock(path, "a"), FileLock(path, "a")
    outer.acquire()
    inner.acquire()  # the same process: counts up
    assert locks.holder(path) is None  # not "held by someone else" from here
    inner.release()
    probe = subprocess.run([sys.executable, "-c", "import sys; from chest_tf.locks import holder; "
                            "h = holder(sys.argv[1]); print(h.pid if h else None)", str(path)],
                           cwd=REPO, capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == str(os.getpid())  # still held after the inner release
    outer.release()
    probe = subprocess.run([sys.executable, "-c", "import sys; from chest_tf.locks import holder; "
                            "print(holder(sys.argv[1]))", str(path)], cwd=REPO, capture_output=True, text=True,
                           check=True)
    assert probe.stdout.strip() == "None"


def test_a_filesystem_without_flock_is_one_line_and_can_be_turned_off(tmp_path, monkeypatch):
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(locks.fcntl, "flock", no_flock)
    with pytest.raises(LockUnsupported) as caught:
        FileLock(tmp_path / "x.lock", "the thing").acquire()
    message = str(caught.value)
    assert str(tmp_path / "x.lock") in message and "CHEST_TF_LOCKS=off" in message and "\n" not in message
    monkeypatch.setenv("CHEST_TF_LOCKS", "off")
    monkeypatch.setattr(locks, "_warned_disabled", False)
    lock = FileLock(tmp_path / "y.lock", "the thing")
    with pytest.warns(UserWarning, match="CHEST_TF_LOCKS=off: nothing is locked"):
        lock.acquire()
    assert lock.held and not (tmp_path / "y.lock").exists()
    lock.release()
