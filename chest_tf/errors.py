"""User-facing errors. Every CLI catches ``ChestTFError`` and prints its message on one line, so a
wrong flag or a broken file never ends in a traceback from deep inside TensorFlow."""


import re

_TF_NOISE = re.compile(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\]")


def error_line(exc: BaseException, limit: int = 240) -> str:
    """The first line of ``exc``'s message, without TensorFlow's ``{{function_node ...}}`` and
    ``[Op:...]`` wrapping, cut to ``limit`` characters (for one-line errors)."""
    text = _TF_NOISE.sub("", str(exc)).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


class ChestTFError(Exception):
    """A problem the user can fix; the message says what was wrong and what to do."""


class DataError(ChestTFError):
    """A dataset file is missing, unreachable, corrupted or malformed."""


class ConfigError(ChestTFError, ValueError):
    """A setting or combination of settings is invalid (a ValueError too: a bad value is what it is)."""


class Interrupted(ChestTFError):
    """A run stopped on a signal (SIGTERM, SIGINT) after saving what it needs to resume; the CLI
    prints ``interrupted: ...`` and exits with 128 + the signal number (143 for SIGTERM, 130 for
    SIGINT), as a shell reports a process ended by that signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum
