"""Data benchmarks for ``python -m chest_tf.data bench``: pipeline throughput, and the peak memory of
preparing records (measured in a child process, against a baseline with TensorFlow loaded)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from chest_tf.errors import ConfigError


def measure_throughput(handle, batch_size: int, epochs: int) -> list[float]:
    """Images/s for each pass over the training split (a cached split is read into memory when
    its batches are made, before the first pass)."""
    ds = handle.batches("train", batch_size, training=True, seed=0, deterministic=False)
    rates = []
    for _ in range(epochs):
        started, seen = time.perf_counter(), 0
        for images, _labels in ds:
            seen += int(images.shape[0])
        rates.append(seen / (time.perf_counter() - started))
    return rates


# The peak is read from /proc/self/status (VmHWM: this process image's high-water mark). The
# getrusage maxrss of a child is useless here: Linux carries the parent's peak across fork+exec.
_PREPARE_CHILD = """
import sys, time
import tensorflow  # loaded in both modes, so the difference is what preparing itself costs
from chest_tf.data import builder
if sys.argv[1] == "prepare":
    started = time.perf_counter()
    builder.prepare("phantom", int(sys.argv[2]), sys.argv[3], sys.argv[4], verbose=False)
    print(f"{time.perf_counter() - started:.1f}")
else:  # the same imports and builder object, without preparing: TF + TFDS cost ~750 MB alone
    builder.make_builder("phantom", int(sys.argv[2]), sys.argv[3], sys.argv[4])
    print("0")
peak_kb = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(peak_kb)
"""


def child_peak_rss_mb(mode: str, size: int, npz_file: Path, records: Path) -> tuple[float, float]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(
        [sys.executable, "-c", _PREPARE_CHILD, mode, str(size), str(npz_file), str(records)],
        capture_output=True, text=True, env=env, check=False,
    )
    if done.returncode != 0:
        raise ConfigError(f"bench child failed: {done.stderr.strip().splitlines()[-1:]}")
    seconds, rss_kb = done.stdout.split()[-2:]
    return float(seconds), int(rss_kb) / 1024
