"""Model zoo command line: ``python -m chest_tf.models {list,bench}``.

    python -m chest_tf.models list
    python -m chest_tf.models bench [--size 28] [--batch 128] [--archs resnet18 vit_tiny] [--steps 10]

``bench`` prints one row per architecture: parameters, FLOPs per image (analytic: 2 x the
multiply-adds of conv, dense and attention layers; see ``estimate_flops``) at each
``--flops-sizes``, and training throughput (images/s) of compiled train steps on random data,
warm-up steps excluded. Keras APIs only, so it runs on any backend (``KERAS_BACKEND=jax``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import keras
import numpy as np

from chest_tf.models.registry import ARCHS, build_model, estimate_flops

JIT_CHOICES = {"auto": "auto", "on": True, "off": False}


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m chest_tf.models", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print the registered architectures")
    bench = sub.add_parser("bench", help="params, FLOPs and training speed per architecture")
    bench.add_argument("--archs", nargs="+", choices=sorted(ARCHS), default=sorted(ARCHS), metavar="ARCH",
                       help=f"architectures (default: all of {', '.join(sorted(ARCHS))})")
    bench.add_argument("--size", type=int, default=28, help="image side for the training speed (px)")
    bench.add_argument("--batch", type=int, default=128, help="batch size of the timed train steps")
    bench.add_argument("--steps", type=int, default=10, help="timed train steps per arch (after warm-up)")
    bench.add_argument("--warmup", type=int, default=2, help="untimed train steps first (compilation)")
    bench.add_argument("--max-seconds", type=float, default=None,
                       help="stop timing an arch after this long (at least one timed step)")
    bench.add_argument("--flops-sizes", type=int, nargs="*", default=[28, 224],
                       help="image sides to count FLOPs at")
    bench.add_argument("--channels", type=int, default=1, help="image channels (1 for ChestMNIST)")
    bench.add_argument("--classes", type=int, default=14, help="outputs (14 ChestMNIST findings)")
    bench.add_argument("--jit", choices=sorted(JIT_CHOICES), default="auto",
                       help="XLA for the train step (auto: Keras decides per backend)")
    bench.add_argument("--no-train", action="store_true", help="only params and FLOPs")
    bench.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.command == "bench":
        for value, what in ((args.size, "--size"), (args.batch, "--batch"), (args.steps, "--steps"),
                            (args.channels, "--channels"), (args.classes, "--classes")):
            if value < 1:
                parser.error(f"{what} must be >= 1, got {value}")
        if args.warmup < 0:
            parser.error("--warmup must be >= 0")
    return args


def measure_training_speed(name, size, channels, classes, batch, steps, warmup, jit, max_seconds=None):
    """Images per second of ``model.train_on_batch`` (Adam, BCE on logits) on a fixed random
    batch; returns (images/s, seconds per step, timed steps, resolved jit_compile)."""
    model = build_model(name, (size, size, channels), classes)
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


def main(argv=None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.command == "list":
        print("\n".join(sorted(ARCHS)))
    else:
        bench(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
