"""Glue shared by the ``python -m chest_tf.X`` commands: one-line errors and quiet TensorFlow."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable

from chest_tf.errors import ChestTFError

_VERBOSE_ENV = "CHEST_TF_VERBOSE_TF"


@contextlib.contextmanager
def _native_stderr_silenced():
    """Point file descriptor 2 at /dev/null for the duration (C++ logging bypasses Python)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (e.g. captured by a test runner)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_tensorflow() -> None:
    """Import TensorFlow without its start-up chatter, before a command imports it.

    TF_CPP_MIN_LOG_LEVEL=3 hides later C++ logs, but TensorFlow prints several lines through
    absl before that setting is read (oneDNN notices, "could not find cuda drivers", cuInit
    errors on machines without a GPU), so the import and the first device query run with the
    process's native stderr pointed at /dev/null. Python errors still raise normally. Set
    CHEST_TF_VERBOSE_TF=1 (or TF_CPP_MIN_LOG_LEVEL yourself) to see everything.
    """
    if os.environ.get(_VERBOSE_ENV) or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if "tensorflow" in sys.modules:
        return
    with _native_stderr_silenced():
        import tensorflow as tf  # noqa: PLC0415

        tf.config.list_physical_devices("GPU")


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command's ``main``; a ``ChestTFError`` becomes ``error: ...`` and exit status 2."""
    try:
        return int(main(argv) or 0)
    except ChestTFError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
