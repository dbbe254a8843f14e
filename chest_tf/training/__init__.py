"""The training engine: ``train(config, run_dir)`` runs model.fit with XLA, mixed precision,
on-device augmentation, exact validation, checkpoints and resume (engine.py); what ``auto``
resolves to (runtime.py); optimiser and schedule (optimizer.py); callbacks (callbacks.py); TF's
fused BatchNorm kernel (fused_batchnorm.py)."""

from chest_tf.training.engine import TrainResult, default_run_dir, evaluate_best, prepare_run_dir, train
from chest_tf.training.runtime import Runtime, resolve_runtime

__all__ = ["Runtime", "TrainResult", "default_run_dir", "evaluate_best", "prepare_run_dir", "resolve_runtime",
           "train"]
