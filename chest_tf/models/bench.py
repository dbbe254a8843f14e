"""``python -m chest_tf.models bench``: parameters, analytic FLOPs and training throughput per
architecture on random data. Keras APIs only, so it runs on any backend (``KERAS_BACKEND=jax``)."""
from __future__ import annotations

import json
import os
import platform
import time

import keras
import numpy as np

from chest_tf.models.flops import estimate_flops
from chest_tf.models.registry import build_model

JIT_CHOICES = {"auto": "auto", "on": True, "off": False}


def measure_training_speed(name, size, channels, classes, batch, steps, warmup, jit, max_seconds=None,
                           model=None):
    """Images per second of ``model.train_on_batch`` (Adam, BCE on logits) on a fixed random
    batch; returns (images/s, seconds per step, timed steps, resolved jit_compile). ``model``:
    time this model instead of building ``name``."""
    model = model if model is not None else build_model(name, (size, size, channels), classes)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True), jit_compile=jit)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (batch, size, size, channels)).astype("float32")
    labels = (rng.uniform(size=(batch, classes)) < 0.1).astype("float32")
    for _ in range(warmup):
        model.train_on_batch(images, labels)
    done, start = 0, time.perf_counter()
    while done < steps:
        model.train_on_batch(images, labels)  # returns a host float: the step has finished
        done += 1
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    elapsed = time.perf_counter() - start
    return batch * done / elapsed, elapsed / done, done, model.jit_compile


def bench(args) -> list[dict]:
    """Print and return one row per ``args.archs`` (``args``: the bench flags as the command parses
    them; see ``chest_tf.cli.models``)."""
    print(f"# chest_tf.models bench: backend={keras.backend.backend()} keras={keras.__version__} "
          f"policy={keras.config.dtype_policy().name} cpus={os.cpu_count()} "
          f"machine={platform.machine()} python={platform.python_version()}")
    print(f"# config: archs={args.archs} train size={args.size} batch={args.batch} steps={args.steps} "
          f"warmup={args.warmup} max_seconds={args.max_seconds} jit={args.jit} "
          f"channels={args.channels} classes={args.classes} flops_sizes={args.flops_sizes}")
    print("# FLOPs: analytic, 2 x multiply-adds of conv/dense/attention layers, one image, forward")
    rows = []
    for name in args.archs:
        row = {"arch": name}
        for size in args.flops_sizes:
            model = build_model(name, (size, size, args.channels), args.classes)
            row[f"params_{size}"] = model.count_params()
            row[f"gflops_{size}"] = estimate_flops(model) / 1e9
            del model
            keras.backend.clear_session()
        if not args.no_train:
            speed, step_s, steps, jit = measure_training_speed(
                name, args.size, args.channels, args.classes, args.batch, args.steps, args.warmup,
                JIT_CHOICES[args.jit], args.max_seconds)
            row.update(train_images_per_s=speed, step_s=step_s, timed_steps=steps, jit_compile=jit)
            keras.backend.clear_session()
        rows.append(row)
        print(f"# done {name}: {json.dumps(row)}", flush=True)
    print(format_table(rows, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "backend": keras.backend.backend(), "rows": rows}, f, indent=2)
    return rows


def format_table(rows, args) -> str:
    """A markdown table of the bench rows."""
    params_size = args.flops_sizes[0] if args.flops_sizes else None
    header = ["arch"]
    if params_size is not None:
        header.append(f"params ({params_size} px)")
    header += [f"GFLOPs/img {s} px" for s in args.flops_sizes]
    if not args.no_train:
        header += [f"train img/s ({args.size} px, batch {args.batch})", "s/step", "timed steps"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["arch"]]
        if params_size is not None:
            cells.append(f"{row[f'params_{params_size}']:,}")
        cells += [f"{row[f'gflops_{s}']:.3f}" for s in args.flops_sizes]
        if not args.no_train:
            cells += [f"{row['train_images_per_s']:.1f}", f"{row['step_s']:.2f}", str(row["timed_steps"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
