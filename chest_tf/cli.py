"""Glue shared by the ``python -m chest_tf.X`` commands: one-line errors and quiet TensorFlow."""
from __future__ import annotations

import os
import sys
from typing import Callable

from chest_tf.errors import ChestTFError


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up chatter before it is imported (users can override)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


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
