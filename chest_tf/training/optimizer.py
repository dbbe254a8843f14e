"""Optimiser and learning-rate schedule from a ``RunConfig``."""
from __future__ import annotations

import keras

from chest_tf.config import RunConfig

# Weight decay skips normalisation scales/offsets, biases and embeddings (usual AdamW practice).
NO_DECAY_NAMES = ["bias", "gamma", "beta", "embedding", "token", "temperature"]


def learning_rate_schedule(config: RunConfig, steps_per_epoch: int):
    train = config.train
    total = train.epochs * steps_per_epoch
    if train.schedule == "constant":
        return train.lr
    if train.schedule == "step":  # MedMNIST's: x0.1 at 50% and 75% of training
        bounds = [int(total * 0.5), int(total * 0.75)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(bounds, [train.lr, train.lr * 0.1, train.lr * 0.01])
    warmup = min(int(round(train.warmup_epochs * steps_per_epoch)), max(total - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else train.lr,
        decay_steps=max(total - warmup, 1),
        warmup_target=train.lr if warmup else None,
        warmup_steps=warmup,
    )


def build_optimizer(config: RunConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    train = config.train
    schedule = learning_rate_schedule(config, steps_per_epoch)
    if train.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True)
    if train.optimizer == "adam":
        return keras.optimizers.Adam(schedule)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=train.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=NO_DECAY_NAMES)
    return optimizer

