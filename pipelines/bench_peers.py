"""Training speed beside a PyTorch peer, one table: every architecture at every size, chest_tf's
end-to-end training images/s (the path of ``chest_tf.train``: phantom records through the tf.data
pipeline, light augmentation on the model, fused BatchNorm, ``model.fit``; float32) and the
peer's (``../shared/tools/peer_torch.py``: the same architecture in plain PyTorch, Adam, random
tensors, no input pipeline), measured alternately in one session, with the ratio, both trainable
parameter counts (they must agree within 1%: the same configuration) and the analytic GFLOPs per image.

    python3 -m venv ../peer-venv && ../peer-venv/bin/pip install torch==2.13.0 numpy
    python pipelines/bench_peers.py --peer ../peer-venv/bin/python            # the README's table
    python pipelines/bench_peers.py --peer ../peer-venv/bin/python --archs resnet18 --sizes 28

Each measurement times at least ``--min-steps`` steps of batch ``--batch`` after 3 warm-up steps,
and stops after ``--seconds``; the peer then times the same number of steps. That pair is one
round; ``--rounds`` rounds alternate ours and the peer's on the same compiled model, and the table
gives the median of each side and the median ratio with the range of the per-round ratios. The
machine is shared and its speed drifts by 10-20% over minutes: compare the ratios, read the range
and the load averages printed beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from chest_tf.console import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import keras  # noqa: E402

from chest_tf.files import write_json_atomic  # noqa: E402
from chest_tf.training.runtime import resolve_runtime  # noqa: E402
from chest_tf.training.speed import measure_training  # noqa: E402

ARCHS = ("resnet18", "resnet50", "densenet121", "vit_tiny", "vit_small")
PEER_SCRIPT = REPO.parent / "shared" / "tools" / "peer_torch.py"
PEER_LINE = re.compile(r"params=(\d+) img/s ([\d.]+)")
PARAMS_TOLERANCE = 0.01


def run_peer(python: str, script: Path, arch: str, size: int, batch: int, steps: int) -> tuple[int, float]:
    """(parameters, images/s) printed by the peer script."""
    command = [python, str(script), "--arch", arch, "--size", str(size), "--batch", str(batch), "--steps", str(steps)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    match = PEER_LINE.search(done.stdout)
    if done.returncode or not match:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"peer failed ({' '.join(command)}): {tail[0]}")
    return int(match.group(1)), float(match.group(2))


def format_table(rows: list[dict]) -> str:
    lines = ["| arch | size | trainable params (chest_tf / torch) | GFLOPs/img | XLA | chest_tf img/s | torch img/s | ratio [range] |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['arch']} | {r['size']} | | | | failed: {r['error']} | | |")
            continue
        mismatch = "" if abs(r["params"] / r["peer_params"] - 1) <= PARAMS_TOLERANCE else " (**differ**)"
        lines.append(f"| {r['arch']} | {r['size']} | {r['params'] / 1e6:.2f} M / {r['peer_params'] / 1e6:.2f} M{mismatch} | "
                     f"{r['gflops']:.3f} | {'on' if r['xla'] else 'off'} | {r['images_per_second']:.1f} | {r['peer_images_per_second']:.1f} | "
                     f"**{r['ratio']:.2f}x** [{min(r['round_ratios']):.2f}, {max(r['round_ratios']):.2f}] |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", required=True, help="the Python of the peer's virtual environment (has torch)")
    parser.add_argument("--peer-script", type=Path, default=PEER_SCRIPT)
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[28, 64])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--min-steps", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="alternations of ours and the peer's per row")
    parser.add_argument("--seconds", type=float, default=25.0, help="stop timing chest_tf after this long")
    parser.add_argument("--jit", choices=("auto", "on", "off"), default="auto", help="XLA (auto: off on a CPU)")
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "chest_tf_bench"))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if not args.peer_script.is_file():
        parser.error(f"no peer script at {args.peer_script}; pass --peer-script")
    runtime = resolve_runtime("float32", "off", "none")  # for the header; each arch resolves its own XLA
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"# bench_peers: {platform.machine()} {os.cpu_count()} cores, keras {keras.__version__} "
          f"({keras.backend.backend()}), {runtime.device}, float32, XLA {args.jit}, batch {args.batch}, "
          f"OMP_NUM_THREADS={threads}; load average at start {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for size in args.sizes:
        for arch in args.archs:
            row = {"arch": arch, "size": size, "load_before": os.getloadavg()[0]}
            peer_rounds = []

            def run_peer_round(probe, arch=arch, size=size, peer_rounds=peer_rounds):
                steps = max(args.min_steps, probe.steps)
                peer_rounds.append((*run_peer(args.peer, args.peer_script, arch, size, args.batch, steps), steps))

            probe = measure_training(arch, resolve_runtime("float32", args.jit, "none", arch), size=size,
                                     batch_size=args.batch, steps=args.max_steps, max_seconds=args.seconds,
                                     data_dir=args.data_dir, rounds=args.rounds, after_round=run_peer_round)
            if probe.error:
                row["error"] = probe.error
            else:
                peer_speeds = [speed for _, speed, _ in peer_rounds]
                ratios = [ours / peer for ours, peer in zip(probe.round_images_per_second, peer_speeds)]
                row.update(xla=probe.jit_compile, params=probe.params, peer_params=peer_rounds[0][0], gflops=probe.gflops,
                           images_per_second=probe.images_per_second, steps=probe.steps,
                           round_images_per_second=probe.round_images_per_second,
                           peer_images_per_second=statistics.median(peer_speeds), peer_steps=peer_rounds[-1][2],
                           peer_round_images_per_second=peer_speeds,
                           ratio=statistics.median(ratios), round_ratios=ratios)
            row["load_after"] = os.getloadavg()[0]
            rows.append(row)
            print(f"# {json.dumps(row)}", flush=True)
    print(format_table(rows))
    print(f"\nload average 1 min at the end: {os.getloadavg()[0]:.2f}")
    if args.json:
        write_json_atomic(args.json, {"argv": sys.argv[1:], "rows": rows})
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
