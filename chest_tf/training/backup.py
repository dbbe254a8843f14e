"""The state a run resumes from (``RUN_DIR/backup/``), and stopping cleanly on SIGTERM / SIGINT.

``RunBackup`` replaces Keras' ``BackupAndRestore``, which writes its weights file in place (a crash
mid-write leaves a file h5py cannot open, and the run cannot resume) and resumes only at epoch
boundaries. Here each backup is a pair::

    backup/state-e0003-s000000.keras   the training model with its optimizer state (model.save; read
                                       back with model.load_weights)
    backup/state-e0003-s000000.json    the record: epochs done (3), steps done in the next epoch (0),
                                       the .keras file's size and SHA-256, and the seed generators'
                                       states (augmentation, mixup), which Keras does not save

The .keras format, not ``save_weights``' .weights.h5: Keras builds a .keras file's HDF5 part in
memory and Python writes the zip, so a full disk is a plain OSError; HDF5 writing a file itself
leaves the file open inside the library after ENOSPC, and the process then crashes (SIGSEGV) when
it exits.

The weights go to a temporary name, are flushed to disk and renamed; the record is written the same
way, after them. A record therefore always names complete weights, and a crash, a full disk or a
kill at any moment leaves the previous pair as it was. The two newest pairs are kept.

A backup is written at the end of every epoch, after the epoch's other files (history.csv row,
best.keras, timing.json), so a record at epoch *k* means all of them cover *k* epochs; with
``every_steps=N`` also every N steps within an epoch (for long epochs); and on SIGTERM or SIGINT
(``SignalCatcher``) at the step where the signal arrived, after which the run stops with
``errors.Interrupted`` (exit status 143 or 130 from the CLI) and loses nothing but that step.

Restoring takes the newest record whose weights have the recorded size and checksum and load; a
damaged one is named in a one-line warning and the one before it is used. When none is usable,
``BackupDamaged`` says what is lost and how to go on.

The run dir's lock (``chest_tf.locks``, taken by ``training.train``) guarantees one writer.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from chest_tf.errors import ChestTFError, Interrupted, error_line

BACKUP_DIR = "backup"
KEEP = 2  # backups kept: the newest and the one before it
_RECORD = re.compile(r"^state-e(\d{4,})-s(\d{6,})\.json$")
_SEED_STATE = "seed_generator_state"


class BackupDamaged(ChestTFError):
    """No backup of an interrupted run can be read."""


@dataclass(frozen=True)
class BackupState:
    """Where a restored run stands: ``epoch`` epochs done and ``step`` steps of the next one."""

    epoch: int
    step: int
    record: Path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def _seed_variables(model: keras.Model) -> list:
    return [v for v in model.variables if v.path.endswith(_SEED_STATE)]


class SignalCatcher:
    """``with SignalCatcher() as signals:`` -- SIGTERM and SIGINT only set ``signals.signum`` inside
    the block (the training loop stops at the next step, see ``RunBackup``). A second signal of
    the same kind acts at once (the previous handler is back after the first). Outside the main
    thread, where Python cannot take signals, it does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __enter__(self) -> SignalCatcher:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, handler)
        self._previous.clear()


def describe_state(epoch: int, step: int) -> str:
    """Where a backup stands, in words: "end of epoch 2", "epoch 3, step 17"."""
    return f"epoch {epoch + 1}, step {step}" if step else f"end of epoch {epoch}"


def interrupted(signum: int, backup_dir: Path, epoch: int, step: int, epochs: int, steps: int) -> Interrupted:
    """The error a run stopped by ``signum`` ends with, saying where it stopped."""
    name = signal.Signals(signum).name
    if step:
        where = f"in epoch {epoch + 1} of {epochs} (step {step} of {steps})"
    elif epoch < epochs:
        where = f"after epoch {epoch} of {epochs}"
    else:
        where = f"after the last epoch ({epochs}), before the final evaluation"
    return Interrupted(f"{name} {where}: state saved in {backup_dir}; run the same command to resume", signum)


class RunBackup(keras.callbacks.Callback):
    """Backs the training model up into ``backup_dir`` (see the module docstring). Put it last in
    the callback list, so an epoch's record is written after everything else of that epoch."""

    def __init__(self, backup_dir: str | os.PathLike, steps_per_epoch: int, epochs: int, *, every_steps: int = 0,
                 signals: SignalCatcher | None = None, keep: int = KEEP):
        super().__init__()
        if every_steps < 0:
            raise ValueError(f"every_steps must be >= 0, got {every_steps}")
        self.dir = Path(backup_dir)
        self.steps_per_epoch, self.epochs, self.every_steps = steps_per_epoch, epochs, every_steps
        self.signals, self.keep = signals, max(1, keep)
        self._epoch = 0
        self._offset_epoch, self._offset = -1, 0

    # ------------------------------------------------------------------ where fit starts
    def begin(self, epoch: int, step: int) -> None:
        """The next fit call starts ``step`` steps into ``epoch`` (a mid-epoch resume runs that
        epoch's remaining steps as a shorter fit of its own)."""
        self._epoch, self._offset_epoch, self._offset = epoch, epoch, step

    def _step_in_epoch(self, batch: int) -> int:
        return (self._offset if self._epoch == self._offset_epoch else 0) + batch + 1

    # ------------------------------------------------------------------ callbacks
    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        step = self._step_in_epoch(batch)
        if step >= self.steps_per_epoch:
            return  # the epoch's end writes this state, once the epoch's other files are written
        if self.signals is not None and self.signals.signum is not None:
            self.save(self._epoch, step)
            self._stop(self._epoch, step)
        if self.every_steps and step % self.every_steps == 0:
            self.save(self._epoch, step)

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(loss):  # a diverged epoch is not a state to resume from
            self.save(epoch + 1, 0)
        if self.signals is not None and self.signals.signum is not None:
            self._stop(epoch + 1, 0)

    def _stop(self, epoch: int, step: int) -> None:
        raise interrupted(self.signals.signum, self.dir, epoch, step, self.epochs, self.steps_per_epoch)

    # ------------------------------------------------------------------ writing
    def save(self, epoch: int, step: int) -> Path:
        """Write the backup for ``epoch`` epochs and ``step`` steps done; return its record."""
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"state-e{epoch:04d}-s{step:06d}"
        weights = self.dir / f"{name}.keras"
        token = f"{os.getpid()}.{secrets.token_hex(4)}"
        temp = self.dir / f".{name}.{token}.tmp.keras"
        try:
            self.model.save(str(temp))
            size, digest = temp.stat().st_size, _sha256(temp)
            _fsync(temp)
            os.replace(temp, weights)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        record = {"epoch": epoch, "step": step, "steps_per_epoch": self.steps_per_epoch, "weights": weights.name,
                  "bytes": size, "sha256": digest,
                  "seed_states": [np.asarray(keras.ops.convert_to_numpy(v)).tolist()
                                  for v in _seed_variables(self.model)]}
        path = self.dir / f"{name}.json"
        temp_record = self.dir / f".{name}.{token}.tmp.json"
        try:
            temp_record.write_text(json.dumps(record))
            _fsync(temp_record)
            os.replace(temp_record, path)
        except BaseException:
            with contextlib.suppress(OSError):
                temp_record.unlink()
            raise
        with contextlib.suppress(OSError):
            _fsync(self.dir)
        self._prune(keep_names={name})
        return path

    def records(self) -> list[tuple[int, int, Path]]:
        """(epoch, step, record path) of every backup, newest first."""
        if not self.dir.is_dir():
            return []
        found = []
        for path in self.dir.iterdir():
            match = _RECORD.match(path.name)
            if match:
                found.append((int(match[1]), int(match[2]), path))
        return sorted(found, key=lambda r: (r[0], r[1]), reverse=True)

    def _prune(self, keep_names: set[str] = frozenset()) -> None:
        """Keep the ``keep`` newest records; remove older ones, temporary files and weights no
        record names."""
        records = self.records()
        kept = {p.name[: -len(".json")] for _, _, p in records[: self.keep]} | set(keep_names)
        for path in self.dir.iterdir():
            stem = path.name.split(".")[0] if not path.name.startswith(".") else None
            if path.name.startswith(".state-") or (stem and stem.startswith("state-") and stem not in kept):
                with contextlib.suppress(OSError):
                    path.unlink()

    # ------------------------------------------------------------------ reading
    def restore(self, model: keras.Model) -> BackupState | None:
        """Load the newest usable backup into ``model`` (built and compiled; its optimizer is built
        here); None when there is none. Raises ``BackupDamaged`` when backups exist but none loads."""
        records = self.records()
        if not records:
            return None
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        problems, damaged = [], []
        for epoch, step, path in records:
            problem = self._load(model, path)
            if problem is None:
                if problems:
                    warnings.warn(f"backup {'; '.join(problems)}: resuming from the one before, "
                                  f"{path.name[:-len('.json')]} ({describe_state(epoch, step)})", stacklevel=2)
                for stem in damaged:  # unusable: never try them again
                    for leftover in self.dir.glob(f"{stem}.*"):
                        with contextlib.suppress(OSError):
                            leftover.unlink()
                self._prune()
                return BackupState(epoch, step, path)
            damaged.append(path.name[: -len(".json")])
            problems.append(f"{damaged[-1]} is unusable ({problem})")
        epoch, step, _ = records[0]
        done = f"{epoch} epoch{'s' if epoch != 1 else ''}" + (f" and {step} steps" if step else "")
        raise BackupDamaged(f"no usable backup in {self.dir} ({'; '.join(problems)}): the {done} trained so far "
                            f"cannot be resumed; start the run again with --overwrite")

    def _load(self, model: keras.Model, path: Path) -> str | None:
        """Load one backup; None when it worked, else why not."""
        try:
            record = json.loads(path.read_text())
            weights = self.dir / record["weights"]
            if not weights.is_file():
                return f"{weights.name} is missing"
            size = weights.stat().st_size
            if size != record["bytes"]:
                return f"{weights.name} has {size} bytes, {record['bytes']} were written"
            if _sha256(weights) != record["sha256"]:
                return f"{weights.name} changed since it was written (checksum differs)"
            model.load_weights(str(weights))
            seeds, saved = _seed_variables(model), record.get("seed_states", [])
            if len(saved) == len(seeds):
                for variable, value in zip(seeds, saved):
                    if tuple(variable.shape) == np.shape(value):
                        variable.assign(np.asarray(value, dtype=variable.dtype))
        except Exception as exc:  # noqa: BLE001 -- whatever stops it loading makes it unusable; say what
            return error_line(exc)
        return None

    def clear(self) -> None:
        """Remove the backups (the run finished)."""
        shutil.rmtree(self.dir, ignore_errors=True)
