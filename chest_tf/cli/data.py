"""``python -m chest_tf.data``: the catalogue, the cache, download, prepare, phantom, bench.

    python -m chest_tf.data catalogue
    python -m chest_tf.data cache
    python -m chest_tf.data download chestmnist --size 28 64
    python -m chest_tf.data prepare chestmnist --size 28
    python -m chest_tf.data phantom --size 28 --out phantom.npz --train 4000 --val 800 --test 800
    python -m chest_tf.data bench --sizes 28 224 --prepare-images 20000

Data go to ``--data-dir``, else ``$CHEST_TF_DATA_DIR``, else ``~/.cache/chest_tf``: npz files at
the top, prepared TFRecord shards under ``tfrecords/`` (or ``--records-dir``).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from chest_tf.data import download, phantom
from chest_tf.data.bench import child_peak_rss_mb, measure_throughput
from chest_tf.data.info import CATALOGUE, SIZES, get_info
from chest_tf.data.pipeline import load_dataset


def _add_location_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="where npz files live (default $CHEST_TF_DATA_DIR or ~/.cache/chest_tf)")
    parser.add_argument("--records-dir", help="where TFRecord shards go (default DATA_DIR/tfrecords)")


def cmd_catalogue(args) -> int:
    print(f"{'name':<15} {'task':<26} {'labels':>6} {'ch':>3} {'train':>7} {'val':>6} {'test':>6}  license")
    for info in CATALOGUE.values():
        s = info.split_sizes
        print(
            f"{info.name:<15} {info.task:<26} {info.num_labels:>6} {info.n_channels:>3} "
            f"{s['train']:>7} {s['val']:>6} {s['test']:>6}  {info.license}"
        )
    if args.labels:
        info = get_info(args.labels)
        for i, name in enumerate(info.labels):
            print(f"  {i:>2} {name}")
    print("\nSizes: " + ", ".join(f"{s} px" for s in SIZES) + ". Data: MedMNIST v2 (Yang et al., Sci Data 2023).")
    return 0


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def cmd_cache(args) -> int:
    root = download.resolve_data_dir(args.data_dir)
    print(f"data dir: {root}")
    if not root.exists():
        print("  (empty: nothing downloaded or prepared yet)")
        return 0
    for path in sorted(root.glob("*.npz*")):
        if path.suffix == ".verified":
            continue
        state = "partial download" if path.name.endswith(".part") else (
            "verified" if path.with_name(path.name + ".verified").exists() else "not verified"
        )
        print(f"  {path.name:<32} {path.stat().st_size / 1e6:10.1f} MB  {state}")
    records = Path(args.records_dir) if args.records_dir else root / "tfrecords"
    configs = sorted(records.glob("chest_tf_medmnist/*/*/dataset_info.json"))
    print(f"records: {records}")
    for info_file in configs:
        folder = info_file.parent
        print(f"  {folder.parent.name:<20} v{folder.name:<7} {_dir_bytes(folder) / 1e6:10.1f} MB")
    if not configs:
        print("  (none prepared)")
    return 0


def cmd_download(args) -> int:
    info = get_info(args.name)
    for size in args.size:
        path = download.fetch(info, size, args.data_dir, url=args.url, progress=True)
        print(f"{info.name} {size} px: {path}")
    return 0


def cmd_prepare(args) -> int:

    for size in args.size:
        handle = load_dataset(
            args.name, size, data_dir=args.data_dir, records_dir=args.records_dir, npz_path=args.npz, force=args.force
        )
        counts = ", ".join(f"{split} {handle.num_examples(split)}" for split in ("train", "val", "test"))
        print(f"{args.name} {size} px: {counts} -> {handle.builder.data_dir}")
    return 0


def cmd_phantom(args) -> int:

    info = get_info("phantom")
    out = Path(args.out) if args.out else download.npz_path(info, args.size, args.data_dir)
    counts = {"train": args.train, "val": args.val, "test": args.test}
    started = time.perf_counter()
    path = phantom.write_phantom(out, size=args.size, counts=counts, seed=args.seed)
    took = time.perf_counter() - started
    total = sum(counts.values())
    print(f"wrote {path} ({total} images at {args.size} px, seed {args.seed}) in {took:.1f} s")
    return 0


def cmd_bench(args) -> int:

    workdir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="chest_tf_bench_"))
    print(f"bench data dir: {workdir}  (cpu cores: {os.cpu_count()})")
    for size in args.sizes:
        handle = load_dataset("phantom", size, data_dir=workdir, verbose=False)
        rates = measure_throughput(handle, args.batch, args.epochs)
        shown = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"pipeline phantom {size:>3} px batch {args.batch}: images/s per epoch [{shown}] "
              f"({'in memory: the split is read before the first epoch' if size <= 64 else 'streamed from records'})")
    if args.prepare_images:
        size = args.prepare_size
        n = args.prepare_images
        big = workdir / f"phantom_prepare_{size}_{n}.npz"
        if not big.exists():
            started = time.perf_counter()
            phantom.write_phantom(big, size=size, counts={"train": n, "val": 64, "test": 64}, seed=1)
            print(f"generated {n} phantom images at {size} px in {time.perf_counter() - started:.1f} s")
        raw_mb = n * size * size / 1e6
        records = workdir / "prepare_bench_records"
        shutil.rmtree(records, ignore_errors=True)  # measure a real preparation, not a reuse
        _, baseline = child_peak_rss_mb("baseline", size, big, records)
        seconds, peak = child_peak_rss_mb("prepare", size, big, records)
        print(
            f"prepare {n} images at {size} px (raw split {raw_mb:,.0f} MB): {seconds:.0f} s, peak RSS {peak:,.0f} MB "
            f"(the same process with TensorFlow and the builder loaded but not preparing: {baseline:,.0f} MB; "
            f"preparing adds {peak - baseline:,.0f} MB, {(peak - baseline) / raw_mb:.0%} of the raw split)"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chest_tf.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("catalogue", aliases=["list"], help="list the MedMNIST 2D sets")
    p.add_argument("--labels", metavar="NAME", help="also list this set's label names")
    p.set_defaults(func=cmd_catalogue)

    p = sub.add_parser("cache", help="show downloaded files and prepared records")
    _add_location_args(p)
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("download", help="download and verify a set's npz")
    p.add_argument("name")
    p.add_argument("--size", type=int, nargs="+", default=[28], choices=SIZES)
    p.add_argument("--data-dir")
    p.add_argument("--url", help="download from this URL instead (a mirror)")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("prepare", help="write TFRecord shards (downloads first if needed)")
    p.add_argument("name")
    p.add_argument("--size", type=int, nargs="+", default=[28], choices=SIZES)
    _add_location_args(p)
    p.add_argument("--npz", help="prepare from this npz file instead of the data dir's")
    p.add_argument("--force", action="store_true", help="rebuild records that already exist")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("phantom", help="write a phantom ChestMNIST-shaped npz (offline)")
    p.add_argument("--size", type=int, default=28, choices=SIZES)
    p.add_argument("--out", help="npz path (default: DATA_DIR/phantom[_SIZE].npz, where --dataset phantom looks)")
    p.add_argument("--data-dir")
    p.add_argument("--train", type=int, default=4000)
    p.add_argument("--val", type=int, default=800)
    p.add_argument("--test", type=int, default=800)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("bench", help="pipeline throughput and preparation memory (phantom data)")
    p.add_argument("--sizes", type=int, nargs="+", default=[28, 224], choices=SIZES)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--prepare-images", type=int, default=20000, help="0 to skip the memory benchmark")
    p.add_argument("--prepare-size", type=int, default=224, choices=SIZES)
    p.add_argument("--data-dir", help="work folder (default: a new temporary folder)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)

