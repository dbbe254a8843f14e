"""Fault injection: collisions, preemption, damaged files, a full disk, missing permissions, load.

    python pipelines/faults.py                  # the CI cases (tests/test_faults.py runs the same)
    python pipelines/faults.py --all            # plus the slow ones (export on a full disk, load, tune)
    python pipelines/faults.py --only training data   # some cases (names below)
    python pipelines/faults.py --keep           # keep the work folder (printed) to look at

Every case does the real thing -- starts the commands as a user would, sends the signals, truncates
and flips bytes, fills a small tmpfs, drops privileges -- then checks what the user sees (exit
status, one-line error) and what is left on disk (backups, best.keras, shards, leaderboard), and
prints one table row per fault: fault | expected | observed | data lost | survived.

Cases (``--only`` names):

    training     two `train` on one run dir; SIGTERM mid-epoch; resume at that step; a SIGKILLed
                 holder's stale lock; a bit-flipped newest backup and a half-written one; final
                 epoch count and learning-rate schedule equal to an uninterrupted run's
    data         a truncated shard, a bit-flipped shard, an npz changed after preparation
    prepare      two `data prepare` at once; SIGKILL of the one preparing
    diskfull     a full disk while checkpointing (training) and while preparing (tmpfs; root only)
    permissions  read-only run dir and data dir, as an unprivileged user (setpriv when root)
    sweep        two `sweep` processes on one --out: each run trained once, one leaderboard
  slow (--all):
    export       a full disk during `export --overwrite` (the previous export stays)
    load         `predict` over 500 and 5,000 PNG files (peak RSS, files/s); two `predict` at once;
                 `evaluate` on a 20,000-image 224 px test split against a 2,000-image one (peak RSS)
    tune         keras-tuner's distributed mode: a chief and two workers on 127.0.0.1

Times are for 2 shared CPU cores. Root is needed for tmpfs (the disk-full cases skip with the reason
otherwise); the permission cases run as ``nobody`` through setpriv when root, as the user otherwise.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from chest_tf.console import quiet_tensorflow  # noqa: E402

quiet_tensorflow()  # before anything imports TensorFlow

from PIL import Image  # noqa: E402

from chest_tf.cli.data import main as data_main  # noqa: E402
from chest_tf.cli.train import main as train_main  # noqa: E402
from chest_tf.config import RunConfig  # noqa: E402
from chest_tf.console import run_cli  # noqa: E402
from chest_tf.data.builder import check_records, records_dir_of  # noqa: E402
from chest_tf.data.download import npz_path  # noqa: E402
from chest_tf.data.info import get_info  # noqa: E402
from chest_tf.data.pipeline import load_dataset  # noqa: E402
from chest_tf.errors import DataError  # noqa: E402
from chest_tf.locks import RUN_LOCK  # noqa: E402
from chest_tf.locks import holder as lock_holder  # noqa: E402
from chest_tf.runs import load_keras_model  # noqa: E402
from chest_tf.training.backup import RunBackup  # noqa: E402
from chest_tf.training.optimizer import learning_rate_schedule  # noqa: E402

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
STEPS = 32  # training steps per epoch in these cases: 512 images, batch 16
TRAIN_FLAGS = ["--dataset", "phantom", "--arch", "resnet18", "--model-arg", "width=8", "--batch-size", "16",
               "--explain-every", "0"]
NOBODY = 65534
GNU_TIME, RSS_MARK = "/usr/bin/time", "peak_rss_kb="


@dataclass
class Row:
    fault: str
    expected: str
    observed: str
    lost: bool
    ok: bool


class CaseSkipped(Exception):
    """A case that cannot run here (the reason is shown in the table)."""


# ----------------------------------------------------------------------------------------------
# helpers


def make_data(data_dir: Path, counts=(512, 128, 128), size: int = 28, seed: int = 0) -> Path:
    """``data_dir/phantom.npz`` in MedMNIST format (14 findings), where ``--dataset phantom`` looks:
    noise with one bright row per positive finding, so a tiny model learns it in an epoch."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts):
        labels = (rng.random((n, 14)) < 0.2).astype(np.uint8)
        images = rng.integers(0, 60, (n, size, size), dtype=np.uint8)
        for k in range(14):
            images[labels[:, k] == 1, (2 * k * size) // 28, :] += 150
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    data_dir.mkdir(parents=True, exist_ok=True)
    np.savez(npz_path(get_info("phantom"), size, data_dir), **arrays)  # phantom.npz, phantom_224.npz, ...
    return data_dir


class Proc:
    """A command started in the background, its output in files (no pipe to fill up)."""

    def __init__(self, args: list[str], work: Path, name: str, prefix: list[str] | None = None,
                 measure: bool = False):
        self.name = name
        self.out_path, self.err_path = work / f"{name}.out", work / f"{name}.err"
        self._out, self._err = open(self.out_path, "w"), open(self.err_path, "w")
        # Peak RSS through GNU time, not this process's wait4 rusage: that counts the pages of the
        # (large) parent the child was forked from (`python -c pass` spawned by an 800 MB process
        # reports 827 MB), which made a 1.1 GB evaluate read 1.9 GB.
        self.measured = measure and Path(GNU_TIME).exists()
        timer = [GNU_TIME, "-f", f"{RSS_MARK}%M"] if self.measured else []
        self.popen = subprocess.Popen([*timer, *(prefix or []), *args], cwd=REPO, env=ENV, stdout=self._out,
                                      stderr=self._err, text=True)
        self.pid = self.popen.pid
        self.rusage = None

    def poll(self):
        return self.popen.poll()

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.popen.returncode is None:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            if pid:
                self.rusage = usage
                self.popen.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                self.popen.kill()
                self.popen.wait()
                raise TimeoutError(f"{self.name} did not end within {timeout:.0f} s")
            time.sleep(0.05)
        self._out.close()
        self._err.close()
        rc = self.popen.returncode
        return 128 - rc if rc < 0 else rc  # killed by a signal: report it as a shell does

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    @property
    def peak_rss_mb(self) -> float:
        """The command's peak RSS (MB), from GNU time (``measure=True``)."""
        found = re.findall(rf"^{RSS_MARK}(\d+)$", self.stderr, re.M) if self.measured else []
        return int(found[-1]) / 1024 if found else float("nan")


def module(name: str, *args) -> list[str]:
    return [sys.executable, "-m", name, *map(str, args)]


def train_cmd(data: Path, run_dir: Path, *extra) -> list[str]:
    return module("chest_tf.train", *TRAIN_FLAGS, "--data-dir", data, "--run-dir", run_dir, *extra)


def wait_for(condition: Callable[[], bool], timeout: float, what: str, proc: Proc | None = None,
             poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.name} ended (exit {proc.poll()}) before {what}: "
                               f"{last_line(proc.stderr) or last_line(proc.stdout)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout:.0f} s")
        time.sleep(poll)


def last_line(text: str) -> str:
    lines = [line for line in re.split(r"[\r\n]+", text) if line.strip()]
    return lines[-1].strip() if lines else ""


def one_line_error(proc: Proc) -> tuple[str, bool]:
    """The command's last stderr line, and whether that is all it said wrong (no traceback)."""
    err = proc.stderr
    line = last_line(err)
    return line, "Traceback" not in err and line.startswith(("error:", "interrupted:"))


def in_process(main, argv: list[str]) -> tuple[int, str, str]:
    """Run a command's ``main`` in this process (as its entry point would); (status, stdout, stderr)."""

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = run_cli(main, argv)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def history_epochs(run_dir: Path) -> list[int]:
    with open(run_dir / "history.csv", newline="") as stream:
        return [int(row["epoch"]) for row in csv.DictReader(stream)]


def backups(run_dir: Path) -> list[tuple[int, int, Path]]:

    return RunBackup(run_dir / "backup", STEPS, 1).records()


def backup_usable(run_dir: Path) -> bool:
    """The newest backup's weights have the recorded size and checksum."""

    found = backups(run_dir)
    if not found:
        return False
    record = json.loads(found[0][2].read_text())
    weights = run_dir / "backup" / record["weights"]
    return weights.is_file() and hashlib.sha256(weights.read_bytes()).hexdigest() == record["sha256"]


def keras_loads(path: Path) -> bool:

    try:
        load_keras_model(path)
    except Exception:  # noqa: BLE001 -- any failure means "does not load"
        return False
    return True


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    index = len(data) // 2 if offset is None else offset
    data[index] ^= 0x5A
    path.write_bytes(bytes(data))


@contextlib.contextmanager
def tmpfs(where: Path, megabytes: int):
    """A ``megabytes`` tmpfs mounted at ``where`` (root only), unmounted after."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        raise CaseSkipped("a small tmpfs needs root (mount -t tmpfs)")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(where)],
                            capture_output=True, text=True)
    if result.returncode:
        raise CaseSkipped(f"cannot mount a tmpfs here: {last_line(result.stderr)}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(where: Path, leave_bytes: int) -> Path:
    """Fill the filesystem at ``where`` until ``leave_bytes`` are free."""
    filler = where / "filler"
    free = shutil.disk_usage(where).free
    with open(filler, "wb") as stream:
        remaining = max(0, free - leave_bytes)
        chunk = b"\0" * (1 << 20)
        while remaining > 0:
            remaining -= stream.write(chunk[: min(len(chunk), remaining)])
    return filler


def unprivileged_prefix() -> list[str]:
    """Run a command as ``nobody`` when root (reading everywhere, writing only where anyone may:
    setpriv keeps CAP_DAC_READ_SEARCH so the interpreter under /root stays readable); as the user
    otherwise, who is unprivileged already."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        raise CaseSkipped("running as root and setpriv (util-linux) is missing, so no unprivileged user can be used")
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=+dac_read_search",
            "--ambient-caps=+dac_read_search"]


# ----------------------------------------------------------------------------------------------
# training: collisions, SIGTERM, stale lock, damaged backups


def case_training(work: Path) -> list[Row]:


    data, run = make_data(work / "data"), work / "run"
    # augmentation and mixup on: their random streams are part of the state that resumes
    flags = ["--epochs", "3", "--backup-every-steps", "4", "--no-eval", "--augment", "light", "--mixup", "0.2"]
    command = train_cmd(data, run, *flags)
    rows = []

    first = Proc(command, work, "train1")
    wait_for(lambda: (run / "config.json").exists() and lock_holder(run / RUN_LOCK) is not None, 300,
             "lock and config.json", first)
    started = time.monotonic()
    second = Proc(command, work, "train2")
    code = second.wait(180)
    took = time.monotonic() - started
    line, clean = one_line_error(second)
    host = socket.gethostname()
    rows.append(Row(
        "2nd `train` on a run dir in use", "refused at once; one line naming the holder's PID and host",
        f"exit {code} {took:.0f} s after start (interpreter and TF start-up included): {line}",
        lost=first.poll() is not None,
        ok=code == 2 and clean and f"PID {first.pid} on {host}" in line and first.poll() is None))

    # SIGTERM inside epoch 2 (after its step-4 backup).
    wait_for(lambda: (run / "backup" / "state-e0001-s000004.json").exists(), 300, "epoch 2 step-4 backup", first)
    first.signal(signal.SIGTERM)
    code = first.wait(120)
    line, clean = one_line_error(first)
    newest = backups(run)[0] if backups(run) else (0, 0, Path("none"))
    leftovers = [p.name for p in (run / "backup").iterdir() if ".tmp" in p.name]
    match = re.search(r"in epoch 2 of 3 \(step (\d+) of \d+\)", line)
    stopped_at = int(match[1]) if match else -1
    rows.append(Row(
        "SIGTERM mid-epoch (preemption)", "state saved at that step; exit 143, `interrupted: ...`",
        f"exit {code}: {line}; newest backup e{newest[0]} s{newest[1]}, temporary files left: {len(leftovers)}",
        lost=not backup_usable(run) or (newest[0], newest[1]) != (1, stopped_at),
        ok=code == 143 and clean and stopped_at > 4 and (newest[0], newest[1]) == (1, stopped_at) and not leftovers
        and keras_loads(run / "best.keras")))

    # The same command resumes at that step; SIGKILL it at its next backup.
    third = Proc(command, work, "train3")
    expected = f"resuming from state-e0001-s{stopped_at:06d}: epoch 2, step {stopped_at + 1} of {STEPS}"
    wait_for(lambda: bool(backups(run)) and (backups(run)[0][0], backups(run)[0][1]) > (1, stopped_at), 300,
             "a backup after the resume point", third)
    third.signal(signal.SIGKILL)
    third.wait(60)
    rows.append(Row(
        "rerun after SIGTERM", "resumes at the step where it stopped (nothing but that step lost)",
        f"printed: {next((x for x in third.stdout.splitlines() if x.startswith('resuming from')), 'nothing')}",
        lost=expected not in third.stdout, ok=expected in third.stdout))

    # Damage: the newest backup bit-flipped, a half-written one beside it (a crash mid-write).
    found = backups(run)
    newest_record = json.loads(found[0][2].read_text())
    flip_byte(run / "backup" / newest_record["weights"])
    (run / "backup" / f".state-e0009-s000000.{third.pid}.0badc0de.tmp.keras").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    previous = found[1]

    fourth = Proc(command, work, "train4")
    code = fourth.wait(600)
    err = fourth.stderr
    took_over = f"taking over from PID {third.pid} on {host}" in err
    rows.append(Row(
        "stale lock (holder SIGKILLed)", "taken over by the next run, with a note",
        f"{last_line(next((x for x in err.splitlines() if 'taking over' in x), 'no note'))}",
        lost=False, ok=took_over))
    fallback = f"resuming from the one before, {previous[2].name[:-5]}" in err and "checksum differs" in err
    rows.append(Row(
        "bit-flipped newest backup + half-written one", "detected; resumes from the previous good backup",
        last_line(next((x for x in err.splitlines() if "unusable" in x), "no warning")),
        lost=not fallback, ok=fallback and code == 0))

    config = json.loads((run / "config.json").read_text())
    schedule = learning_rate_schedule(RunConfig.from_dict(config["config"]), config["steps_per_epoch"])
    with open(run / "history.csv", newline="") as stream:
        lrs = [float(row["learning_rate"]) for row in csv.DictReader(stream)]
    expected_lrs = [float(schedule((epoch + 1) * config["steps_per_epoch"])) if callable(schedule) else schedule
                    for epoch in range(3)]
    same_lr = len(lrs) == 3 and np.allclose(lrs, expected_lrs, rtol=1e-5, atol=1e-9)
    epochs = history_epochs(run) if (run / "history.csv").exists() else []
    finished = (run / "finished.json").exists() and not (run / "backup").exists()
    rows.append(Row(
        "resumed run, end to end", "same final epochs (3) and per-epoch learning rate as an uninterrupted run",
        f"exit {code}; history epochs {epochs}; learning rates {'match' if same_lr else 'differ'} "
        f"({', '.join(f'{x:.3g}' for x in lrs)}); finished.json {'written' if finished else 'missing'}",
        lost=epochs != [0, 1, 2], ok=code == 0 and epochs == [0, 1, 2] and same_lr and finished
        and keras_loads(run / "best.keras")))
    code, _, err = in_process(train_main, [*TRAIN_FLAGS, "--data-dir", str(data), "--run-dir", str(run), *flags])
    line = last_line(err)
    rows.append(Row("the same command on the finished run", "refused: a finished run changes only with --overwrite",
                    f"exit {code}: {line}", lost=not (run / "finished.json").exists(),
                    ok=code == 2 and "already holds a finished run" in line))
    return rows


# ----------------------------------------------------------------------------------------------
# data: damaged shards, changed npz


def case_data(work: Path) -> list[Row]:

    data, run = make_data(work / "data"), work / "run"
    code, _, err = in_process(data_main, ["prepare", "phantom", "--data-dir", str(data)])
    assert code == 0, err
    version = records_dir_of(data / "tfrecords", "phantom", 28)
    shard = next(version.glob("*train.tfrecord*"))
    original = shard.read_bytes()
    args = [*TRAIN_FLAGS, "--data-dir", str(data), "--run-dir", str(run), "--epochs", "1", "--no-eval"]
    rows = []

    def attempt(fault: str, damage: Callable[[], None], expect: str, restore: Callable[[], None]) -> None:
        damage()
        code, _, err = in_process(train_main, args)
        line = last_line(err)
        trained = (run / "history.csv").exists()
        ok = (code == 2 and "Traceback" not in err and line.startswith("error:") and expect in line
              and "--force" in line and not trained)
        rows.append(Row(fault, "detected before training: one line naming the file and `prepare --force`",
                        f"exit {code}: {line}", lost=trained, ok=ok))
        restore()

    def restore_shard():
        shard.write_bytes(original)

    attempt("truncated TFRecord shard", lambda: shard.write_bytes(original[: len(original) // 2]),
            f"{shard} has {len(original) // 2} bytes", restore_shard)
    attempt("bit-flipped TFRecord shard", lambda: flip_byte(shard), f"{shard} changed since it was written",
            restore_shard)
    source = data / "phantom.npz"
    saved = source.read_bytes()

    def change_npz():
        arrays = dict(np.load(source))
        arrays["val_labels"][0, 0] ^= 1
        np.savez(source, **arrays)

    attempt("npz changed after preparation", change_npz, f"{source} changed after its records", lambda: None)
    code, _, err = in_process(data_main, ["prepare", "phantom", "--data-dir", str(data), "--force"])
    try:
        fixed = code == 0 and check_records(version, source, "fix") is None
    except DataError:
        fixed = False
    rows.append(Row("... then `prepare --force`", "records rebuilt from the changed npz and accepted",
                    f"exit {code}; records {'check out' if fixed else 'still refused'}", lost=False, ok=fixed))
    source.write_bytes(saved)
    return rows


# ----------------------------------------------------------------------------------------------
# prepare: two at once, and SIGKILL of the one preparing


def case_prepare(work: Path) -> list[Row]:

    counts = (8000, 500, 500)
    data = make_data(work / "data", counts=counts)
    command = module("chest_tf.data", "prepare", "phantom", "--data-dir", data)
    config_dir = data / "tfrecords" / "chest_tf_medmnist" / "phantom_28"
    builder = Proc(command, work, "prepare1")
    wait_for(lambda: config_dir.is_dir() and any(p.name.startswith(".building-") for p in config_dir.iterdir()),
             300, "shards being written", builder, poll=0.01)
    builder.signal(signal.SIGSTOP)  # frozen mid-build, holding the lock: the next one must wait
    partial = not (config_dir / "1.0.0").exists()
    waiter = Proc(command, work, "prepare2")
    try:
        wait_for(lambda: "waiting for PID" in waiter.stderr, 300, "the second process waiting", waiter)
    finally:
        builder.signal(signal.SIGKILL)  # killed mid-build
        builder.wait(60)
    named = f"waiting for PID {builder.pid} on {socket.gethostname()}" in waiter.stderr
    code = waiter.wait(600)
    version = records_dir_of(data / "tfrecords", "phantom", 28)
    leftovers = [p.name for p in config_dir.iterdir() if p.name.startswith((".building-", ".replaced-", "incomplete."))]
    try:
        good = check_records(version, data / "phantom.npz", "fix") is None
        handle = load_dataset("phantom", 28, data_dir=data, verbose=False)
        found = [handle.num_examples(s) for s in ("train", "val", "test")]
    except Exception as exc:  # noqa: BLE001
        good, found = False, str(exc)
    return [
        Row("two `data prepare` on one dataset", "one prepares, the other waits (naming it), shards never mixed",
            last_line(next((x for x in waiter.stderr.splitlines() if "waiting for" in x), "")), lost=False, ok=named),
        Row("SIGKILL during `prepare`", "partial shards never used; the next process rebuilds them",
            f"killed mid-build ({'no' if partial else 'a'} finished version dir then); the waiting one: exit {code}, "
            f"records {'check out' if good else 'refused'}, counts {found}, leftovers {leftovers or 'none'}",
            lost=not good, ok=partial and code == 0 and good and found == list(counts) and not leftovers),
    ]


# ----------------------------------------------------------------------------------------------
# disk full


def case_diskfull(work: Path) -> list[Row]:

    data = make_data(work / "data")
    rows = []
    with tmpfs(work / "small", 32) as disk:
        run = disk / "run"
        command = train_cmd(data, run, "--epochs", 3, "--no-eval")
        proc = Proc(command, work, "train_full")
        wait_for(lambda: (run / "backup" / "state-e0001-s000000.json").exists(), 300, "the first backup", proc)
        filler = fill(disk, leave_bytes=1 << 20)  # room for a history row, not for best.keras or a backup
        code = proc.wait(300)
        line, clean = one_line_error(proc)
        temp = [p.name for p in run.rglob("*") if ".tmp" in p.name]
        best_ok, backup_ok = keras_loads(run / "best.keras"), backup_usable(run)
        rows.append(Row(
            "disk full while checkpointing", "one-line error; best.keras and the last backup intact",
            f"exit {code}: {line[:220]}{'...' if len(line) > 220 else ''}; best.keras "
            f"{'loads' if best_ok else 'BROKEN'}, backup {'intact' if backup_ok else 'BROKEN'}, temp files {len(temp)}",
            lost=not (best_ok and backup_ok),
            ok=code == 2 and clean and "no space left on the device" in line and best_ok and backup_ok and not temp))
        filler.unlink()
        again = Proc(command, work, "train_full_again")
        code = again.wait(600)
        epochs = history_epochs(run) if (run / "history.csv").exists() else []
        rows.append(Row("... space freed, same command", "resumes and finishes all epochs",
                        f"exit {code}; history epochs {epochs}", lost=epochs != [0, 1, 2],
                        ok=code == 0 and epochs == [0, 1, 2]))

        records = disk / "records"
        code, _, err = in_process(data_main, ["prepare", "phantom", "--data-dir", str(data), "--records-dir",
                                              str(records)])
        shutil.rmtree(run)
        filler = fill(disk, leave_bytes=300 << 10)
        code, _, err = in_process(data_main, ["prepare", "phantom", "--data-dir", str(data), "--records-dir",
                                              str(records), "--force"])
        version = records_dir_of(records, "phantom", 28)
        try:
            intact = check_records(version, data / "phantom.npz", "fix") is None
        except Exception:  # noqa: BLE001
            intact = False
        line = last_line(err)
        rows.append(Row("disk full during `prepare --force`", "one-line error; the previous shards intact",
                        f"exit {code}: {line[:220]}{'...' if len(line) > 220 else ''}; previous records "
                        f"{'check out' if intact else 'BROKEN'}", lost=not intact,
                        ok=code == 2 and "Traceback" not in err and "no space left" in line and intact))
        filler.unlink()
    return rows


# ----------------------------------------------------------------------------------------------
# permissions, as an unprivileged user

_PERMISSION_DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys
    from chest_tf.console import quiet_tensorflow, run_cli
    quiet_tensorflow()
    from chest_tf.cli.train import main
    results = []
    for argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = run_cli(main, argv)
        results.append({"code": code, "stderr": err.getvalue()})
    print(json.dumps(results))
""")


def case_permissions(work: Path) -> list[Row]:

    prefix = unprivileged_prefix()
    base = Path(tempfile.mkdtemp(prefix="chest_tf_perm_"))  # outside the work dir: readable path for nobody
    try:
        base.chmod(0o755)
        readonly_data = make_data(base / "ro_data")  # prepared below, then read-only
        code, _, err = in_process(data_main, ["prepare", "phantom", "--data-dir", str(readonly_data)])
        assert code == 0, err
        bare_data = make_data(base / "ro_bare")  # never prepared, read-only
        parent = base / "ro_runs"
        parent.mkdir()
        stopped = base / "ro_runs" / "interrupted"
        stopped.mkdir()
        (stopped / "config.json").write_text("{}")
        writable = base / "rw_runs"
        writable.mkdir()
        for path in (readonly_data, bare_data, parent, stopped):
            for item in [path, *path.rglob("*")]:
                item.chmod(0o555 if item.is_dir() else 0o444)
        writable.chmod(0o777)
        common = [*TRAIN_FLAGS, "--epochs", "1", "--steps-per-epoch", "2", "--no-eval"]
        cases = [
            ("run dir in a folder the user cannot write", [*common, "--data-dir", str(readonly_data),
                                                           "--run-dir", str(parent / "new")], "is not writable"),
            ("read-only run dir holding an interrupted run", [*common, "--data-dir", str(readonly_data),
                                                             "--run-dir", str(stopped)], "is not writable"),
            ("read-only data dir, records not prepared", [*common, "--data-dir", str(bare_data),
                                                          "--run-dir", str(writable / "a")],
             "permission denied while writing records"),
        ]
        argvs = [argv for _, argv, _ in cases] + [[*common, "--data-dir", str(readonly_data),
                                                   "--run-dir", str(writable / "b")]]
        who = f"uid {NOBODY} via setpriv" if prefix else f"uid {os.geteuid()}"
        result = subprocess.run([*prefix, sys.executable, "-c", _PERMISSION_DRIVER, json.dumps(argvs)], cwd=REPO,
                                env=ENV, capture_output=True, text=True, timeout=600)
        if result.returncode:
            raise RuntimeError(f"the driver failed as {who}: {last_line(result.stderr)}")
        outcomes = json.loads(last_line(result.stdout))
        rows = []
        for (fault, _, expect), outcome in zip(cases, outcomes):
            line = last_line(outcome["stderr"])
            rows.append(Row(f"{fault} ({who})", "one-line error", f"exit {outcome['code']}: {line}", lost=False,
                            ok=outcome["code"] == 2 and "Traceback" not in outcome["stderr"] and expect in line))
        last = outcomes[-1]
        trained = (writable / "b" / "finished.json").exists()
        rows.append(Row(f"read-only data dir, records prepared ({who})", "trains (reading needs no write access)",
                        f"exit {last['code']}; finished.json {'written' if trained else 'missing'}"
                        + ("" if last["code"] == 0 else f": {last_line(last['stderr'])}"),
                        lost=False, ok=last["code"] == 0 and trained))
        return rows
    finally:
        for item in [base, *base.rglob("*")]:
            with contextlib.suppress(OSError):
                item.chmod(0o755 if item.is_dir() else 0o644)
        shutil.rmtree(base, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# a sweep run by two processes


def case_sweep(work: Path) -> list[Row]:
    data = make_data(work / "data", counts=(256, 128, 128))
    toml = work / "tiny.toml"
    runs = ["a", "b"]
    toml.write_text(textwrap.dedent(f"""
        [sweep]
        name = "tiny"
        seeds = [0]
        [data]
        dataset = "phantom"
        size = 28
        data_dir = {json.dumps(str(data))}
        [model]
        arch = "vit_tiny"
        overrides = {{ depth = 1, dim = 32, heads = 2 }}
        [train]
        epochs = 1
        batch_size = 64
        steps_per_epoch = 2
        explain_every = 0
    """) + "".join(f'\n[[runs]]\nname = "{name}"\ntrain = {{ lr = {0.001 * (i + 1)} }}\n'
                   for i, name in enumerate(runs)))
    out = work / "sweep"
    command = module("chest_tf.sweep", toml, "--out", out, "--verbose", "0")
    procs = [Proc(command, work, "sweep1"), Proc(command, work, "sweep2")]
    codes = [p.wait(900) for p in procs]
    outputs = [p.stdout for p in procs]
    trained = {name: sum(out_text.count(f"running {name}_s0 ->") + out_text.count(f"resuming {name}_s0 ->")
                         for out_text in outputs) for name in runs}
    skipped_busy = sum(o.count("is training it") for o in outputs)
    epochs_ok = all(history_epochs(out / "runs" / f"{name}_s0") == [0] for name in runs)
    finished = all((out / "runs" / f"{name}_s0" / "finished.json").exists() for name in runs)
    board = out / "leaderboard.csv"
    with contextlib.suppress(FileNotFoundError), open(board, newline="") as stream:
        ranked = sorted(row["run"] for row in csv.DictReader(stream))
    if not board.exists():
        ranked = []
    writers = sum("leaderboard:" in o for o in outputs)
    share = [sum(o.count(f"running {name}_s0 ->") for name in runs) for o in outputs]
    return [Row(
        "`sweep` by 2 processes on one --out",
        "each run trained exactly once; the last to finish writes the leaderboard",
        f"exits {codes}; trainings per run {trained} (split {share[0]}+{share[1]}, {skipped_busy} skipped as busy); "
        f"leaderboard rows {ranked}, written by {writers} process(es)",
        lost=not finished,
        ok=codes == [0, 0] and all(n == 1 for n in trained.values()) and epochs_ok and finished
        and ranked == [f"{n}_s0" for n in runs] and writers >= 1)]


# ----------------------------------------------------------------------------------------------
# slow: export on a full disk, load, distributed tuning


def _finished_run(work: Path, size: int = 28, counts=(512, 128, 128), evaluate: bool = True) -> tuple[Path, Path]:
    """A one-epoch run (4 steps) of the tiny model on generated data; evaluated, unless not asked."""
    data = work / f"data_{size}_{counts[2]}"
    if not npz_path(get_info("phantom"), size, data).exists():
        make_data(data, counts=counts, size=size)
    run = work / f"run_{size}_{counts[2]}"
    if not (run / "finished.json").exists():
        extra = [] if evaluate else ["--no-eval"]
        if size > 64:  # width 8 at 224 px crashes TensorFlow's oneDNN CPU kernels (SIGABRT/SIGSEGV); 16 does not
            extra += ["--model-arg", "width=16"]
        proc = Proc(train_cmd(data, run, "--epochs", 1, "--steps-per-epoch", 4, "--size", size, *extra), work,
                    f"train_{size}_{counts[2]}")
        code = proc.wait(1800)
        if code:
            raise RuntimeError(f"training for the case failed (exit {code}): {last_line(proc.stderr)}")
    return data, run


def case_export(work: Path) -> list[Row]:
    _, run = _finished_run(work)
    with tmpfs(work / "small_export", 48) as disk:
        out = disk / "export"
        first = Proc(module("chest_tf.export", run, "--out", out), work, "export1")
        code = first.wait(900)
        if code:
            raise RuntimeError(f"the first export failed: {last_line(first.stderr)}")
        before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        filler = fill(disk, leave_bytes=1 << 20)
        second = Proc(module("chest_tf.export", run, "--out", out, "--overwrite"), work, "export2")
        code = second.wait(900)
        line, clean = one_line_error(second)
        after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        leftovers = [p.name for p in disk.iterdir() if p.name not in ("export", "filler")]
        filler.unlink()
    intact = before == after
    return [Row("disk full during `export --overwrite`", "one-line error; the previous export intact",
                f"exit {code}: {line[:200]}; previous export {'intact' if intact else 'CHANGED'}; "
                f"left beside it: {leftovers or 'nothing'}",
                lost=not intact, ok=code == 2 and clean and "space" in line and intact and not leftovers)]


def _write_pngs(folder: Path, count: int, size: int = 64) -> None:

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (16, size, size), dtype=np.uint8)
    for i in range(count):
        Image.fromarray(base[i % 16] ^ np.uint8(i % 251)).save(folder / f"img_{i:05d}.png")


def case_load(work: Path) -> list[Row]:
    _, run = _finished_run(work)
    export = work / "export"
    if not export.exists():
        proc = Proc(module("chest_tf.export", run, "--out", export), work, "export_load")
        if proc.wait(900):
            raise RuntimeError(f"export failed: {last_line(proc.stderr)}")
    rows, peaks, rates = [], {}, {}
    for count in (500, 5000):
        folder = work / f"png_{count}"
        if not folder.exists():
            _write_pngs(folder, count)
        proc = Proc(module("chest_tf.predict", export, folder, "--format", "csv"), work, f"predict_{count}",
                    measure=True)
        started = time.monotonic()
        code = proc.wait(1800)
        seconds = time.monotonic() - started
        lines = proc.stdout.count("\n") - 1
        peaks[count], rates[count] = proc.peak_rss_mb, count / seconds
        if code or lines < count:
            raise RuntimeError(f"predict over {count} files: exit {code}, {lines} rows: {last_line(proc.stderr)}")
    growth = peaks[5000] / peaks[500] - 1
    rows.append(Row("`predict` over 5,000 vs 500 PNG files", "peak RSS within 20%",
                    f"peak RSS {peaks[500]:.0f} MB (500) vs {peaks[5000]:.0f} MB (5,000): {growth:+.1%}; "
                    f"{rates[500]:.0f} and {rates[5000]:.0f} files/s (process start included)",
                    lost=False, ok=abs(growth) <= 0.20))
    both = [Proc(module("chest_tf.predict", export, work / "png_500", "--format", "csv"), work, f"predict_pair{i}")
            for i in (1, 2)]
    codes = [p.wait(900) for p in both]
    same = both[0].stdout == both[1].stdout and both[0].stdout.count("\n") > 500
    rows.append(Row("two `predict` on one export at once", "both succeed with identical output",
                    f"exits {codes}; outputs {'identical' if same else 'DIFFER'}", lost=False,
                    ok=codes == [0, 0] and same))
    # evaluate: 20,000 test images at 224 px against 2,000
    evals = {}
    for n_test in (2000, 20000):
        data, run224 = _finished_run(work, size=224, counts=(64, 64, n_test), evaluate=False)
        proc = Proc(module("chest_tf.evaluate", run224, "--out", work / f"eval_{n_test}", "--bootstrap", 0),
                    work, f"evaluate_{n_test}", measure=True)
        started = time.monotonic()
        code = proc.wait(3600)
        if code:
            raise RuntimeError(f"evaluate on {n_test}: {last_line(proc.stderr)}")
        evals[n_test] = (proc.peak_rss_mb, n_test / (time.monotonic() - started))
    growth = evals[20000][0] / evals[2000][0] - 1
    raw = 20000 * 224 * 224 / 2**20
    rows.append(Row("`evaluate` on a 20,000-image 224 px split", "memory bounded: peak RSS within 20% of 2,000's",
                    f"peak RSS {evals[2000][0]:.0f} MB (2,000) vs {evals[20000][0]:.0f} MB (20,000; the split is "
                    f"{raw:.0f} MB as uint8): {growth:+.1%}; {evals[20000][1]:.0f} images/s",
                    lost=False, ok=evals[20000][0] <= 1.2 * evals[2000][0]))
    return rows


def case_tune(work: Path) -> list[Row]:
    data = make_data(work / "data", counts=(256, 128, 128))
    out = work / "tune"
    port = _free_port()
    args = ["--arch", "vit_tiny", "--dataset", "phantom", "--data-dir", str(data), "--trials", "4", "--oracle",
            "random", "--out", str(out), "--model-arg", "depth=1", "--model-arg", "dim=32", "--model-arg", "heads=2",
            "--epochs", "1", "--batch-size", "64", "--steps-per-epoch", "2", "--verbose", "0", "--explain-every", "0"]
    procs = [Proc(module("chest_tf.tune", *args, "--tuner-id", role, "--oracle-address", f"127.0.0.1:{port}"),
                  work, f"tune_{role}") for role in ("chief", "worker0", "worker1")]
    codes = [p.wait(1800) for p in procs]
    trial_dirs = sorted(p.name for p in (out / "trials").iterdir()) if (out / "trials").exists() else []
    workers = [len(re.findall(r"^running trial_\S+ ->", p.stdout, re.M)) for p in procs[1:]]
    done = all((out / "trials" / t / "finished.json").exists() for t in trial_dirs)
    return [Row("`tune` distributed: chief + 2 workers on 127.0.0.1",
                "4 trials, each trained once, shared by both workers",
                f"exits {codes}; trials {trial_dirs}; per worker {workers}; all finished: {done}; "
                f"{'best.toml written' if (out / 'best.toml').exists() else 'no best.toml'}",
                lost=not done, ok=codes == [0, 0, 0] and len(trial_dirs) == 4 and done and all(workers)
                and (out / "best.toml").exists())]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


CASES: dict[str, tuple[Callable[[Path], list[Row]], bool]] = {  # name -> (case, slow)
    "training": (case_training, False),
    "data": (case_data, False),
    "prepare": (case_prepare, False),
    "diskfull": (case_diskfull, False),
    "permissions": (case_permissions, False),
    "sweep": (case_sweep, False),
    "export": (case_export, True),
    "load": (case_load, True),
    "tune": (case_tune, True),
}


def case_rows(name: str, work: Path) -> list[Row]:
    """One case's rows; a case that cannot run here is one skipped row, one that broke a failed row."""
    case, _ = CASES[name]
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return case(folder)
    except CaseSkipped as exc:
        return [Row(name, "(skipped)", f"skipped: {exc}", lost=False, ok=True)]
    except Exception as exc:  # noqa: BLE001 -- the table reports it
        traceback.print_exc()
        return [Row(name, "the case runs", f"{type(exc).__name__}: {exc}", lost=True, ok=False)]


def markdown(rows: list[tuple[str, Row, float]]) -> str:
    lines = ["| case | fault | expected | observed | data lost | survived |", "|---|---|---|---|---|---|"]
    for name, row, _ in rows:
        cells = [name, row.fault, row.expected, row.observed.replace("|", "/"), "yes" if row.lost else "no",
                 "yes" if row.ok else "NO"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fault injection for chest_tf; prints a table (see the docstring).")
    parser.add_argument("--all", action="store_true", help="also the slow cases (export, load, tune)")
    parser.add_argument("--only", nargs="+", choices=sorted(CASES), help="these cases only")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    names = args.only or [n for n, (_, slow) in CASES.items() if args.all or not slow]
    work = Path(tempfile.mkdtemp(prefix="chest_tf_faults_"))
    results = []
    try:
        for name in names:
            started = time.monotonic()
            rows = case_rows(name, work)
            seconds = time.monotonic() - started
            for row in rows:
                results.append((name, row, seconds))
            print(f"{name}: {sum(r.ok for r in rows)}/{len(rows)} survived in {seconds:.0f} s", file=sys.stderr,
                  flush=True)
    finally:
        if args.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown(results))
    survived = all(row.ok and not row.lost for _, row, _ in results)
    print(f"\n{sum(r.ok for _, r, _ in results)}/{len(results)} rows survived; data lost in "
          f"{sum(r.lost for _, r, _ in results)}")
    return 0 if survived else 1


if __name__ == "__main__":
    raise SystemExit(main())
