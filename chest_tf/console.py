"""What a ``python -m chest_tf.X`` command shows on the terminal: one-line errors, one-line
warnings, TensorFlow kept quiet, our own progress bars.

Importing this module changes nothing. A command's entry point (``chest_tf/X.py`` or
``chest_tf/X/__main__.py``) calls ``launch("chest_tf.cli.X")``, which sets the terminal up
(``quiet_tensorflow``, ``calm_warnings``) *before* the command and the library it stands on are
imported, then runs the command's ``main`` through ``run_cli``. Set ``CHEST_TF_VERBOSE_TF=1`` to
see everything TensorFlow, TFDS and absl print.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Callable

from tqdm import tqdm

from chest_tf.errors import ChestTFError, Interrupted

VERBOSE_ENV = "CHEST_TF_VERBOSE_TF"


def verbose_tf() -> bool:
    return bool(os.environ.get(VERBOSE_ENV))


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
    """Import TensorFlow without its start-up chatter.

    TF_CPP_MIN_LOG_LEVEL=3 hides later C++ logs, but TensorFlow prints several lines through
    absl before that setting is read (oneDNN notices, "could not find cuda drivers", cuInit
    errors on machines without a GPU), so the import and the first device query run with the
    process's native stderr pointed at /dev/null. Python errors still raise normally. TFDS and
    absl's Python loggers are turned down to errors. A TF_CPP_MIN_LOG_LEVEL the user set is kept
    for later logs; only CHEST_TF_VERBOSE_TF=1 shows everything.
    """
    if verbose_tf():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("absl", "tensorflow", "tensorflow_datasets", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "tensorflow" in sys.modules:
        return
    with _native_stderr_silenced():
        import tensorflow as tf  # noqa: PLC0415 (the point: import it with stderr silenced)

        tf.config.list_physical_devices("GPU")


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warning: <message>`` on stderr; no source line under it, no file path before it."""
    text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
    print(f"warning: {text}", file=file or sys.stderr)


def calm_warnings() -> None:
    """Warnings print as one clean line; third-party deprecation chatter is hidden unless verbose."""
    warnings.showwarning = _one_line_warning
    if not verbose_tf():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command's ``main``; a ``ChestTFError`` becomes ``error: ...`` and exit status 2, an
    ``Interrupted`` run ``interrupted: ...`` and 128 + its signal number."""
    try:
        return int(main(argv) or 0)
    except Interrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return exc.exit_status
    except ChestTFError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def launch(command: str, argv: list[str] | None = None) -> int:
    """Set the terminal up, import the command module ``command`` (e.g. ``chest_tf.cli.train``)
    and run its ``main``; returns the exit status."""
    quiet_tensorflow()
    calm_warnings()
    return run_cli(importlib.import_module(command).main, argv)


# --------------------------------------------------------------------------------------------
# Progress bars and quiet TFDS
# --------------------------------------------------------------------------------------------

_BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{unit} [{elapsed}<{remaining}, {rate_fmt}]"
_COUNT_FORMAT = "{desc}: {n_fmt}{unit} [{elapsed}, {rate_fmt}]"  # total unknown


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _terminal_width(stream) -> int:
    """Columns of the terminal ``stream`` is on; 0 when it reports none (a pty with no size)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def _takes_unicode(stream) -> bool:
    return str(getattr(stream, "encoding", "") or "").lower().replace("-", "").startswith("utf")


class Progress:
    """One progress bar in chest_tf's style, e.g.
    ``preparing phantom_28 train: 100%|██████████| 4000/4000 images [00:01<00:00, 3025.68 images/s]``.

    On a terminal it is a live tqdm bar on stderr. Elsewhere (a log file, a pipe, a test's
    captured stderr) nothing is drawn while it runs and the finished bar is written once, as one
    line, on ``close``. ``enabled=False`` shows nothing. ``unit_scale`` suits byte counts
    (``unit="B"``: ``12.3M/38.1MB``).
    """

    def __init__(
        self,
        total: int | None,
        description: str,
        *,
        unit: str = "images",
        initial: int = 0,
        unit_scale: bool = False,
        enabled: bool = True,
        file=None,
    ):

        self._file = file if file is not None else sys.stderr
        self._enabled = enabled
        self._live = enabled and _is_terminal(self._file)
        self._closed = False
        width = _terminal_width(self._file) if self._live else 0
        spaced_unit = unit if unit_scale else f" {unit}"  # "4000/4000 images", but "38.1M/38.1MB"
        self._bar = tqdm(
            total=total,
            initial=initial,
            desc=description,
            unit=spaced_unit,
            unit_scale=unit_scale,
            unit_divisor=1024 if unit_scale else 1000,
            bar_format=_BAR_FORMAT if total else _COUNT_FORMAT,
            ascii=not _takes_unicode(self._file),
            file=self._file if self._live else io.StringIO(),  # off-terminal: drawn once, on close
            disable=not enabled,
            dynamic_ncols=self._live and width > 0,  # follows a resized window
            # a pty that reports no size (0 x 0) would make tqdm draw nothing at all
            ncols=None if width > 0 or not self._live else 100,
            nrows=None if width > 0 or not self._live else 50,
            mininterval=0.2,
            leave=True,
        )

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._bar.close()
        if self._enabled and not self._live:
            print(str(self._bar), file=self._file, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def progress(iterable, total: int | None, description: str, *, unit: str = "images", enabled: bool = True):
    """Yield ``iterable``'s items while one ``Progress`` bar counts them (see ``Progress``).

    The bar is finished when the iterable is exhausted (or the generator closed)."""
    if not enabled:
        yield from iterable
        return
    with Progress(total, description, unit=unit) as bar:
        for item in iterable:
            yield item
            bar.update(1)


_TFDS_LOGGERS = ("tensorflow_datasets", "absl")


@contextlib.contextmanager
def quiet_tfds():
    """Within the block TFDS draws none of its own progress bars ("Generating splits...",
    "Shuffling .../incomplete.XXXX...") and its Python loggers (``tensorflow_datasets``, and
    ``absl``, which TFDS logs through) pass errors only; both are restored after. The
    "Downloading and preparing dataset ..." lines TFDS prints to stdout are not logging: the
    builder turns those off itself (``chest_tf.data.builder``). Does nothing with
    CHEST_TF_VERBOSE_TF=1. TFDS is imported here, not when this module is.
    """
    if verbose_tf():
        yield
        return
    from tensorflow_datasets.core.utils import tqdm_utils  # noqa: PLC0415

    bars_were_on = getattr(tqdm_utils, "_active", True)  # TFDS has a setter but no getter
    loggers = [logging.getLogger(name) for name in _TFDS_LOGGERS]
    levels = [logger.level for logger in loggers]
    tqdm_utils.display_progress_bar(False)
    for logger in loggers:
        if logger.getEffectiveLevel() < logging.ERROR:
            logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        tqdm_utils.display_progress_bar(bars_were_on)
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
