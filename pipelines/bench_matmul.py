"""Matrix-product speed on the shapes of one model's training step: XLA (how a ViT trains on a
CPU), TensorFlow without XLA (oneDNN's kernels) and, with ``--peer``, PyTorch; one table, and the
images/s a step made of nothing but its matrix products would reach on each.

    python pipelines/bench_matmul.py --arch vit_tiny --size 64 --peer ../peer-venv/bin/python

Why: a ViT step on a CPU is ~80% matrix products, so the speed a backend multiplies at bounds
the speed it trains at, and comparing the backends' figures says where a faster step must come
from (pipelines/bench_peers.py times whole steps).

For every distinct product of the forward pass (``chest_tf.models.flops.matrix_products``: Dense
layers, attention projections and the per-head score and value products) at batch ``--batch``,
it times the three products training runs: the forward A @ B (NN), the first operand's gradient
dC @ B^T (NT) and the second's A^T @ dC (TN). Each is the median of calls repeated for at least
``--min-seconds``; ``--rounds`` rounds alternate the backends, and each cell is the median over
rounds. The step total weighs every product by how often the model has it. Products are timed
one at a time, as written (XLA may fuse or rewrite them inside a whole step; the attention core
kernel rewrites the TN forms of attention into NN ones), so the step figures are estimates (a whole XLA step may beat its own).
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from chest_tf.console import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from chest_tf.models.flops import matrix_products  # noqa: E402
from chest_tf.models.registry import build_model  # noqa: E402

# (name, transpose the first operand, transpose the second): the three products of training.
FORMS = (("NN", False, False), ("NT", False, True), ("TN", True, False))

# Runs in the peer's interpreter: argv[1] is {"shapes": [[first, second, transpose_a,
# transpose_b], ...], "min_seconds": s}; prints {"threads": n, "seconds": [...]}.
TORCH_TIMER = """
import json, statistics, sys, time, torch
spec = json.loads(sys.argv[1])
def timed(a, b):
    a @ b
    times, start = [], time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < spec["min_seconds"]:
        begin = time.perf_counter(); a @ b; times.append(time.perf_counter() - begin)
    return statistics.median(times)
seconds = []
for first, second, transpose_a, transpose_b in spec["shapes"]:
    a, b = torch.randn(*first), torch.randn(*second)
    a = a.transpose(-1, -2) if transpose_a else a
    b = b.transpose(-1, -2) if transpose_b else b
    seconds.append(timed(a, b))
print(json.dumps({"threads": torch.get_num_threads(), "seconds": seconds}))
"""


def step_products(arch: str, size: int, batch: int) -> list[tuple[tuple, int]]:
    """[((rows, inner, cols, count), occurrences per step)] of the model's forward pass at
    ``batch``: rows are per product, i.e. batch x rows-per-image for a single product and rows
    per image for ``count`` = batch x heads independent ones."""
    model = build_model(arch, input_shape=(size, size, 1), num_classes=14)
    shapes = collections.Counter()
    for product in matrix_products(model):
        if product.count == 1:
            shapes[(batch * product.rows, product.inner, product.cols, 1)] += 1
        else:
            shapes[(product.rows, product.inner, product.cols, batch * product.count)] += 1
    return sorted(shapes.items(), key=lambda item: -item[1] * _macs(item[0]))


def operand_shapes(shape: tuple, form: tuple) -> tuple[list, list, bool, bool]:
    """The stored operand shapes of one training form of the product ``shape``: for A (rows x
    inner) @ B (inner x cols), NN multiplies A and B, NT dC (rows x cols) and B stored (inner x
    cols), TN A stored (rows x inner) and dC; a leading batch axis when count > 1."""
    rows, inner, cols, count = shape
    _, transpose_a, transpose_b = form
    lead = [count] if count > 1 else []
    if transpose_a:  # A^T @ dC
        return lead + [rows, inner], lead + [rows, cols], True, False
    if transpose_b:  # dC @ B^T
        return lead + [rows, cols], lead + [inner, cols], False, True
    return lead + [rows, inner], lead + [inner, cols], False, False


def time_tensorflow(first, second, transpose_a: bool, transpose_b: bool, jit: bool, min_seconds: float) -> float:
    """Median seconds of one product (TensorFlow runs eager calls synchronously on a CPU)."""
    rng = np.random.default_rng(0)
    a = tf.constant(rng.standard_normal(first, dtype=np.float32))
    b = tf.constant(rng.standard_normal(second, dtype=np.float32))
    product = tf.function(lambda x, y: tf.linalg.matmul(x, y, transpose_a=transpose_a, transpose_b=transpose_b),
                          jit_compile=jit)
    product(a, b)
    times, start = [], time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < min_seconds:
        begin = time.perf_counter()
        product(a, b)
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def time_peer(python: str, specs: list, min_seconds: float) -> tuple[int, list[float]]:
    """(torch threads, median seconds per spec) from the peer's interpreter."""
    payload = json.dumps({"shapes": specs, "min_seconds": min_seconds})
    try:
        done = subprocess.run([python, "-c", TORCH_TIMER, payload], capture_output=True, text=True, check=False)
    except OSError as error:
        raise SystemExit(f"error: cannot run the peer's interpreter {python}: {error.strerror}; pass --peer "
                         "the Python of a virtual environment with torch") from None
    if done.returncode:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"error: the peer's interpreter {python} failed: {tail[0]} (it needs torch installed)")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["threads"], result["seconds"]


def measure(products, backends: list[str], peer: str | None, rounds: int, min_seconds: float) -> dict:
    """{(shape, form name): {backend: median seconds over rounds}}."""
    cells = [(shape, form) for shape, _ in products for form in FORMS]
    specs = [operand_shapes(shape, form) for shape, form in cells]
    samples = {(shape, form[0]): collections.defaultdict(list) for shape, form in cells}
    tensorflow = [backend for backend in backends if backend != "torch"]
    for _ in range(rounds):
        # A TensorFlow call costs tens of microseconds before it multiplies (a whole compiled
        # step pays that once): take a 1 x 1 product's time off every product's.
        overhead = {b: time_tensorflow([1, 1], [1, 1], False, False, b == "xla", min_seconds) for b in tensorflow}
        for (shape, form), spec in zip(cells, specs):
            for backend in tensorflow:
                seconds = time_tensorflow(*spec, backend == "xla", min_seconds) - overhead[backend]
                samples[shape, form[0]][backend].append(max(seconds, 1e-7))
        if peer:
            _, seconds = time_peer(peer, specs, min_seconds)
            for (shape, form), second in zip(cells, seconds):
                samples[shape, form[0]]["torch"].append(second)
    return {key: {backend: statistics.median(times) for backend, times in by.items()} for key, by in samples.items()}


def format_report(products, timings: dict, backends: list[str], batch: int) -> str:
    """The per-product table, then each backend's step total and product-only bound."""
    header = "| rows x inner x cols | batch of products | per step | form | " + " | ".join(
        f"{b} GFLOP/s" for b in backends) + " |"
    lines = [header, "|" + "---|" * (4 + len(backends))]
    step_seconds = collections.Counter()
    step_flops = 0
    for shape, occurrences in products:
        flops = 2 * _macs(shape)
        for name, _, _ in FORMS:
            cell = timings[shape, name]
            rates = " | ".join(f"{flops / cell[b] / 1e9:.0f}" for b in backends)
            lines.append(f"| {shape[0]} x {shape[1]} x {shape[2]} | {shape[3]} | {occurrences} | {name} | {rates} |")
            for backend in backends:
                step_seconds[backend] += occurrences * cell[backend]
            step_flops += occurrences * flops
    lines.append("")
    lines.append(f"All matrix products of one training step at batch {batch}: {step_flops / 1e9:.1f} GFLOP.")
    for backend in backends:
        seconds = step_seconds[backend]
        lines.append(f"- {backend}: {seconds:.3f} s per step ({step_flops / seconds / 1e9:.0f} GFLOP/s), "
                     f"a bound of {batch / seconds:.1f} img/s for a step of nothing else")
    if "torch" in backends:
        for backend in backends:
            if backend != "torch":
                lines.append(f"- {backend} bound / torch bound: {step_seconds['torch'] / step_seconds[backend]:.2f}x")
    return "\n".join(lines)


def _macs(shape: tuple) -> int:
    rows, inner, cols, count = shape
    return rows * inner * cols * count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="vit_tiny")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--peer", help="the Python of the peer's virtual environment (has torch)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--min-seconds", type=float, default=0.3, help="time each product at least this long")
    args = parser.parse_args(argv)
    products = step_products(args.arch, args.size, args.batch)
    if not products:
        raise SystemExit(f"error: {args.arch} has no Dense or attention products to time; pick a ViT (vit_tiny)")
    backends = ["xla", "tf"] + (["torch"] if args.peer else [])
    timings = measure(products, backends, args.peer, args.rounds, args.min_seconds)
    print(f"{args.arch} at {args.size} px, batch {args.batch}, float32, {tf.config.threading.get_intra_op_parallelism_threads() or 'all'} threads")
    print(format_report(products, timings, backends, args.batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
