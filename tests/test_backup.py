"""training.backup: a backup is written whole or not at all, a damaged one is detected and the one
before it used, SIGTERM saves the step it arrived at; history.csv is cut back to the resumed epoch."""
from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
from pathlib import Path

import keras
import numpy as np
import pytest

from chest_tf.console import run_cli
from chest_tf.errors import Interrupted
from chest_tf.training.backup import BackupDamaged, RunBackup, SignalCatcher
from chest_tf.training.engine import trim_history

STEPS = 8


def tiny_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    noisy = keras.layers.GaussianNoise(0.1, seed=seed)(inputs)  # a seed generator, as augmentation has
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(8, activation="relu")(noisy)))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return model


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(STEPS * 4, 4)).astype("float32"), rng.normal(size=(STEPS * 4, 2)).astype("float32")


def trained(backup: RunBackup, epochs: int = 1, callbacks=()) -> keras.Model:
    model = tiny_model()
    x, y = data()
    backup.begin(0, 0)
    model.fit(x, y, batch_size=4, epochs=epochs, callbacks=[*callbacks, backup], verbose=0, shuffle=False)
    return model


def test_saved_state_restores_weights_optimizer_and_seeds_and_keeps_two(tmp_path):
    backup = RunBackup(tmp_path / "backup", STEPS, 3)
    model = trained(backup, epochs=3)
    assert [(e, s) for e, s, _ in backup.records()] == [(3, 0), (2, 0)]  # the two newest
    assert sorted(p.name for p in backup.dir.iterdir()) == [
        "state-e0002-s000000.json", "state-e0002-s000000.keras",
        "state-e0003-s000000.json", "state-e0003-s000000.keras"]
    fresh = tiny_model(seed=1)
    state = RunBackup(tmp_path / "backup", STEPS, 3).restore(fresh)
    assert (state.epoch, state.step) == (3, 0)
    assert int(fresh.optimizer.iterations.numpy()) == 3 * STEPS
    for a, b in zip(model.variables, fresh.variables):  # weights, and the noise layer's seed state
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    for a, b in zip(model.optimizer.variables, fresh.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


@pytest.mark.parametrize("saved, resumed", [("float32", "mixed_bfloat16"), ("mixed_bfloat16", "float32")])
def test_a_backup_restores_under_the_other_precision(tmp_path, saved, resumed):
    """``auto`` is resolved again on resume, and differs between CPUs with and without native
    bfloat16 (training/runtime.py): a run moved between them restores exactly and trains on."""
    try:
        keras.mixed_precision.set_global_policy(saved)
        model = trained(RunBackup(tmp_path / "backup", STEPS, 3), epochs=2)
        keras.mixed_precision.set_global_policy(resumed)
        fresh = tiny_model(seed=1)
        state = RunBackup(tmp_path / "backup", STEPS, 3).restore(fresh)
        assert (state.epoch, state.step) == (2, 0)
        for a, b in zip(model.variables + model.optimizer.variables, fresh.variables + fresh.optimizer.variables):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
        x, y = data()
        fresh.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
        assert int(fresh.optimizer.iterations.numpy()) == 3 * STEPS and fresh.compute_dtype == resumed.split("_")[-1]
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_newest_backup_falls_back_to_the_one_before(tmp_path, damage):
    backup = RunBackup(tmp_path / "backup", STEPS, 2)
    trained(backup, epochs=2)
    newest = backup.dir / "state-e0002-s000000.keras"
    data_bytes = bytearray(newest.read_bytes())
    if damage == "flip":
        data_bytes[len(data_bytes) // 2] ^= 0xFF
        newest.write_bytes(bytes(data_bytes))
    elif damage == "truncate":
        newest.write_bytes(bytes(data_bytes[: len(data_bytes) // 3]))
    else:
        newest.unlink()
    fresh = tiny_model(seed=1)
    with pytest.warns(UserWarning, match=r"backup state-e0002-s000000 is unusable \(.*\): resuming from the one "
                                         r"before, state-e0001-s000000 \(end of epoch 1\)"):
        state = RunBackup(tmp_path / "backup", STEPS, 2).restore(fresh)
    assert (state.epoch, state.step) == (1, 0) and int(fresh.optimizer.iterations.numpy()) == STEPS
    assert not list(backup.dir.glob("state-e0002-*"))  # the unusable one is gone


def test_no_usable_backup_says_what_is_lost_in_one_line(tmp_path):
    backup = RunBackup(tmp_path / "backup", STEPS, 2)
    trained(backup, epochs=2)
    for weights in backup.dir.glob("*.keras"):
        weights.write_bytes(b"not a zip")
    with pytest.raises(BackupDamaged) as caught:
        RunBackup(tmp_path / "backup", STEPS, 2).restore(tiny_model())
    message = str(caught.value)
    assert "\n" not in message and "the 2 epochs trained so far cannot be resumed" in message
    assert message.endswith("start the run again with --overwrite")


def test_a_crash_mid_write_leaves_the_previous_backup(tmp_path, monkeypatch):
    backup = RunBackup(tmp_path / "backup", STEPS, 2)
    model = trained(backup, epochs=1)
    before = {p.name: p.read_bytes() for p in backup.dir.iterdir()}

    def disk_full(path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model, "save", disk_full)
    backup.set_model(model)
    with pytest.raises(OSError, match="No space left"):
        backup.save(2, 0)
    assert {p.name: p.read_bytes() for p in backup.dir.iterdir()} == before  # no temp file, nothing replaced
    # A half-written file left by a killed process (never renamed, no record) is ignored, then removed.
    (backup.dir / ".state-e0002-s000000.99.abcd.tmp.keras").write_bytes(b"PK")
    state = RunBackup(tmp_path / "backup", STEPS, 2).restore(tiny_model())
    assert (state.epoch, state.step) == (1, 0) and sorted(before) == sorted(p.name for p in backup.dir.iterdir())


def test_sigterm_saves_the_step_it_arrived_at_and_stops(tmp_path):
    with SignalCatcher() as signals:
        os.kill(os.getpid(), signal.SIGTERM)  # caught: only noted
        assert signals.signum == signal.SIGTERM

        class Preempted(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if batch == 2:
                    signals.signum = signal.SIGTERM

        signals.signum = None
        backup = RunBackup(tmp_path / "backup", STEPS, 3, signals=signals)
        with pytest.raises(Interrupted) as caught:
            trained(backup, epochs=3, callbacks=[Preempted()])
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler given back
    assert caught.value.exit_status == 143
    assert str(caught.value) == (f"SIGTERM in epoch 1 of 3 (step 3 of {STEPS}): state saved in {tmp_path / 'backup'}; "
                                 "run the same command to resume")
    assert [(e, s) for e, s, _ in backup.records()] == [(0, 3)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = run_cli(lambda argv: (_ for _ in ()).throw(caught.value), [])
    assert code == 143 and err.getvalue() == f"interrupted: {caught.value}\n"


def test_history_is_cut_back_to_the_resumed_epoch(tmp_path):
    history = tmp_path / "history.csv"
    history.write_text("epoch,loss,val_auc\n0,0.5,0.6\n1,0.4,0.7\n2,0.3,0.8\n3,0.2,0.")  # row 3 cut by a kill
    assert trim_history(history, 2) == 3
    assert history.read_text() == "epoch,loss,val_auc\n0,0.5,0.6\n1,0.4,0.7\n"
    assert trim_history(history, 5) == 2  # nothing beyond: unchanged
    assert history.read_text() == "epoch,loss,val_auc\n0,0.5,0.6\n1,0.4,0.7\n"
