"""The localisation benchmark in one command: train the reference runs of
``pipelines/localisation.toml`` (skipping finished ones) and bench each of them.

    python pipelines/localisation.py                       # train what is missing, then bench
    python pipelines/localisation.py --dry-run             # print the commands only
    python pipelines/localisation.py --only resnet18 vit   # a subset (sweep run names or patterns)
    python pipelines/localisation.py --bench-args "--max-images 300"   # passed to every bench

Training is ``python -m chest_tf.sweep pipelines/localisation.toml`` (its run dirs go to
``runs/sweeps/localisation/runs/<name>_s<seed>``); then, for each run that is not itself a
label-randomised twin, ``python -m chest_tf.explain bench RUN [--label-random RUN_TWIN]`` where
``RUN_TWIN`` is the run named ``<name>_randlabels`` with the same seed. Each bench writes
``RUN/explain_bench/report.md`` and prints its tables; this script prints them all again at the
end, with the commands that made them.
"""
from __future__ import annotations

import argparse
import fnmatch
import shlex
import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
TOML = REPO / "pipelines" / "localisation.toml"
TWIN = "_randlabels"


def planned_runs(toml: Path) -> list[str]:
    """``<name>_s<seed>`` of every [[runs]] entry and seed, as the sweep names its run dirs."""
    spec = tomllib.loads(toml.read_text())
    seeds = spec.get("sweep", {}).get("seeds", [0])
    names = []
    for run in spec.get("runs", []):
        for seed in run.get("seeds", seeds):
            names.append(f"{run['name']}_s{seed}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", default=str(TOML), help="experiment file (default pipelines/localisation.toml)")
    parser.add_argument("--out", help="sweep dir (default runs/sweeps/<sweep name>)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these runs (names or shell patterns)")
    parser.add_argument("--bench-args", default="", help="extra arguments for every bench (one quoted string)")
    parser.add_argument("--no-train", action="store_true", help="bench the runs that are there; train nothing")
    parser.add_argument("--dry-run", action="store_true", help="print the commands; run nothing")
    args = parser.parse_args(argv)
    toml = Path(args.file)
    spec = tomllib.loads(toml.read_text())
    out = Path(args.out) if args.out else Path("runs") / "sweeps" / spec.get("sweep", {}).get("name", toml.stem)
    out = out.resolve()
    names = planned_runs(toml)
    if args.only:
        wanted = [n for n in names if any(fnmatch.fnmatch(n, p) or fnmatch.fnmatch(n.rsplit("_s", 1)[0], p)
                                          for p in args.only)]
        # a bench needs its label-randomised twin
        wanted += [_twin(n) for n in wanted if _twin(n) in names]
        names = [n for n in names if n in set(wanted)]
    commands = []
    if not args.no_train:
        train = [sys.executable, "-m", "chest_tf.sweep", str(toml), "--out", str(out)]
        if args.only:
            train += ["--only", *names]
        commands.append(train)
    for name in names:
        if TWIN + "_s" in name:
            continue
        bench = [sys.executable, "-m", "chest_tf.explain", "bench", str(out / "runs" / name)]
        if _twin(name) in planned_runs(toml):
            bench += ["--label-random", str(out / "runs" / _twin(name))]
        commands.append(bench + shlex.split(args.bench_args))
    for command in commands:
        print("$", shlex.join(command), flush=True)
        if not args.dry_run:
            subprocess.run(command, check=True, cwd=REPO)
    if not args.dry_run:
        print("\n# Reports")
        for command in commands[0 if args.no_train else 1:]:
            report = Path(command[4]) / "explain_bench" / "report.md"
            print(f"\n$ {shlex.join(command)}\n")
            print(report.read_text() if report.is_file() else f"(no report at {report})")
    return 0


def _twin(name: str) -> str:
    """``resnet18_s0`` -> ``resnet18_randlabels_s0``."""
    base, seed = name.rsplit("_s", 1)
    return f"{base}{TWIN}_s{seed}"


if __name__ == "__main__":
    sys.exit(main())
