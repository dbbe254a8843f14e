"""User-facing errors. Every CLI catches ``ChestTFError`` and prints its message on one line, so a
wrong flag or a broken file never ends in a traceback from deep inside TensorFlow."""


class ChestTFError(Exception):
    """A problem the user can fix; the message says what was wrong and what to do."""


class DataError(ChestTFError):
    """A dataset file is missing, unreachable, corrupted or malformed."""


class ConfigError(ChestTFError, ValueError):
    """A setting or combination of settings is invalid (a ValueError too: a bad value is what it is)."""
