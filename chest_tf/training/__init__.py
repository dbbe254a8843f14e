"""The training engine: ``train(config, run_dir)`` runs model.fit with XLA, mixed precision,
on-device augmentation, exact validation, checkpoints and resume (engine.py); the state a run
resumes from and stopping on SIGTERM/SIGINT (backup.py); what ``auto`` resolves to (runtime.py);
optimiser and schedule (optimizer.py); callbacks (callbacks.py); the TF kernels plugged into the
models (kernels.py: fused BatchNorm, small-map convolutions); the speed probe (speed.py)."""

from chest_tf.training.engine import (
    TrainResult,
    default_run_dir,
    evaluate_best,
    lock_run_dir,
    prepare_run_dir,
    run_lock,
    train,
)
from chest_tf.training.runtime import Runtime, resolve_runtime

__all__ = ["Runtime", "TrainResult", "default_run_dir", "evaluate_best", "lock_run_dir", "prepare_run_dir",
           "resolve_runtime", "run_lock", "train"]
