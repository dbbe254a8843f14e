"""The GPU speed table, for a machine with JAX but no TensorFlow: the five architectures at 28 and
224 px in bfloat16 (mixed precision, float32 head), and the ViTs with and without fused attention,
in one run. Model code only (keras.ops), so it runs on the JAX backend from a copy of the repo and
the keras wheel:

    KERAS_BACKEND=jax python pipelines/bench_gpu_jax.py                  # the whole table
    KERAS_BACKEND=jax python pipelines/bench_gpu_jax.py --archs vit_small --sizes 224 --steps 20

Random data on the device (no input pipeline), ``train_on_batch`` with XLA (JAX always compiles),
warm-up steps untimed. "fused" is the model as built (``keras.ops.dot_product_attention``: cuDNN
flash attention where JAX has it); "unfused" trains the same weights through
``vit_with_attention``'s explain graph, which keeps every block's probability tensor ((B, heads,
T, T); the last block's class-token row, (B, heads, 1, T)).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import keras  # noqa: E402

from chest_tf.models.bench import measure_training_speed  # noqa: E402
from chest_tf.models.flops import estimate_flops  # noqa: E402
from chest_tf.models.registry import build_model  # noqa: E402
from chest_tf.models.vit import vit_with_attention  # noqa: E402

ARCHS = ("resnet18", "resnet50", "densenet121", "vit_tiny", "vit_small")


def unfused(model: keras.Model) -> keras.Model:
    """The same ViT (shared weights) with the attention probabilities materialised."""
    traced = vit_with_attention(model)
    return keras.Model(traced.input, traced.outputs[-1], name=f"{model.name}_unfused")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[28, 224])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=20.0)
    parser.add_argument("--policy", default="mixed_bfloat16", help="Keras dtype policy (float32 to compare)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    devices = []
    if keras.backend.backend() == "jax":
        import jax  # noqa: PLC0415 (only on the JAX backend)

        devices = [str(d) for d in jax.devices()]
    print(f"# bench_gpu_jax: backend={keras.backend.backend()} keras={keras.__version__} devices={devices} "
          f"policy={args.policy} batch={args.batch} cpus={os.cpu_count()} {platform.machine()}", flush=True)
    keras.mixed_precision.set_global_policy(args.policy)
    rows = []
    for size in args.sizes:
        for arch in args.archs:
            variants = ("fused", "unfused") if arch.startswith("vit") else ("-",)
            for attention in variants:
                model = build_model(arch, (size, size, 1), 14)
                row = {"arch": arch, "size": size, "attention": attention, "params": model.count_params(),
                       "gflops": estimate_flops(model) / 1e9}
                timed = unfused(model) if attention == "unfused" else model
                try:
                    speed, step_s, steps, _ = measure_training_speed(
                        arch, size, 1, 14, args.batch, args.steps, args.warmup, "auto", args.max_seconds, model=timed)
                    row.update(images_per_second=speed, step_s=step_s, timed_steps=steps)
                except Exception as exc:  # noqa: BLE001 (one table: a failed row says why and the rest run)
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                rows.append(row)
                print(f"# {json.dumps(row)}", flush=True)
                keras.backend.clear_session()
    print("| arch | size | attention | params | GFLOPs/img | train img/s | s/step | timed steps |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        result = (f"{r['images_per_second']:.0f} | {r['step_s']:.4f} | {r['timed_steps']}" if "error" not in r
                  else f"failed: {r['error']} | | ")
        print(f"| {r['arch']} | {r['size']} | {r['attention']} | {r['params'] / 1e6:.2f} M | {r['gflops']:.3f} | {result} |")
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv[1:], "devices": devices, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
