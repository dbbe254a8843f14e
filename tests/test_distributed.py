"""MirroredStrategy over two logical CPU devices: the training model (augmentation, mixup in the
training step, the fused BatchNorm kernel) runs in replica context and updates its state.

Logical devices must be set before TensorFlow starts, so the check runs in a subprocess. XLA is
off: XLA on logical CPU devices cannot reach the other replica's variables (even for a plain
model), so mirrored + XLA needs real GPUs.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np

from chest_tf import augment
from chest_tf.training import fused_batchnorm
from chest_tf.models.layers import BatchNorm
from chest_tf.models.registry import build_model

if sys.argv[1] == "fused":
    fused_batchnorm.install()
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    classifier = build_model("resnet18", (28, 28, 1), 14, width=8)
    model = augment.attach_augmentation(classifier, augment.build_augmentation("light", seed=0),
                                        mixup_alpha=0.2, mixup_seed=3)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True), jit_compile=False)
rng = np.random.default_rng(0)
images = rng.uniform(-1, 1, (64, 28, 28, 1)).astype("float32")
labels = (rng.random((64, 14)) < 0.3).astype("float32")
dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16, drop_remainder=True)
norm = next(layer for layer in classifier._flatten_layers() if isinstance(layer, BatchNorm))
state = lambda: [np.asarray(v.value).copy() for v in (norm.moving_mean, model.mixup_seed_generator.state)]
before = state()
history = model.fit(dataset, epochs=2, verbose=0, shuffle=False)
after = state()
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "loss": history.history["loss"],
                  "moving_mean_moved": bool(not np.allclose(before[0], after[0])),
                  "mixup_seed_moved": bool(not np.array_equal(before[1], after[1]))}))
"""


@pytest.mark.parametrize("batchnorm", ["fused", "keras"])
def test_mirrored_training_step_on_two_logical_cpus(batchnorm):
    done = subprocess.run([sys.executable, "-c", SCRIPT, batchnorm], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert all(value == value and value < 10 for value in result["loss"])  # finite
    assert result["moving_mean_moved"] and result["mixup_seed_moved"]
