"""``python -m chest_tf.metrics bench``: time every metric, with bootstrap CIs, on a ChestMNIST-sized
synthetic val and test set (``chest_tf.evaluation.metrics.run_benchmark``)."""
from __future__ import annotations

import argparse
from collections.abc import Sequence

from chest_tf.evaluation.metrics import run_benchmark


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chest_tf.metrics", description="Benchmarks of chest_tf's metrics module.")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="time all metrics on a ChestMNIST-sized synthetic test set")
    bench.add_argument("--n-test", type=int, default=22433)
    bench.add_argument("--n-val", type=int, default=11219)
    bench.add_argument("--resamples", type=int, default=1000)
    bench.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    run_benchmark(args.n_test, args.n_val, args.resamples, args.seed)
    return 0

