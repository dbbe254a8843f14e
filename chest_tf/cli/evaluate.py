"""``python -m chest_tf.evaluate``: a trained model on val and test through the shared metrics,
with report.md, figures, metrics.json and predictions.npz.

    python -m chest_tf.evaluate RUN_DIR [--out DIR] [--bootstrap 1000]
        [--threshold youden|sensitivity|specificity|fixed] [--target 0.9] [--batch-size N]
        [--data-dir DIR] [--records-dir DIR] [--npz FILE]
    python -m chest_tf.evaluate MODEL.keras --dataset pneumoniamnist [--size 28] [--npz FILE]
        [--out DIR] [--history history.csv] [...]
    python -m chest_tf.evaluate EXPORT_DIR [--out DIR] [...]

A run dir (written by ``python -m chest_tf.train``) supplies the dataset, size, data locations,
architecture, batch size and seed from its config.json, the model from best.keras and the training
curves from history.csv; the report goes to RUN_DIR/eval unless ``--out`` says otherwise. A bare
.keras file needs ``--dataset``; its size defaults to the model's input size and its report goes
to ``<model stem>_eval`` next to the file. An export folder supplies its dataset from its
metadata. Models are read by ``chest_tf.runs.resolve_model``; the model's input shape and number
of outputs are checked against the dataset before anything is predicted.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chest_tf.checks import check_dataset
from chest_tf.data.info import get_info
from chest_tf.data.pipeline import load_dataset
from chest_tf.errors import ConfigError, DataError
from chest_tf.evaluation.evaluator import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_TARGET,
    THRESHOLD_CHOICES,
    check_model_matches,
    evaluate_model,
    headline_text,
    size_from_model,
)
from chest_tf.runs import ResolvedModel, read_json, resolve_model


@dataclass
class Target:
    """What the command line asked for: the model and where its data and report go."""

    resolved: ResolvedModel
    dataset: str
    size: int | None  # None: the model's input size
    data_dir: str | None = None
    records_dir: str | None = None
    npz: str | None = None
    out_dir: Path | None = None
    model_name: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0
    history_csv: Path | None = None
    run_info: dict[str, Any] = field(default_factory=dict)


def _run_target(args: argparse.Namespace, resolved: ResolvedModel) -> Target:
    path, config = resolved.path, resolved.config
    data = config.data
    dataset = args.dataset or data.dataset
    size = args.size or data.size
    changed = (dataset, size) != (data.dataset, data.size)
    run_info = {"run_dir": str(path), "model_file": str(resolved.keras_path),
                "model": {"arch": config.model.arch, "overrides": config.model.overrides},
                "trained_on": f"{data.dataset} {data.size} px"}
    if (path / "best.json").is_file():
        run_info["best"] = read_json(path / "best.json")
    if "runtime" in resolved.run_payload:
        run_info["runtime"] = resolved.run_payload["runtime"]
    npz = args.npz if args.npz is not None else (data.npz if not changed else None)
    if args.npz is None and npz is not None and not Path(npz).expanduser().is_file():
        raise DataError(f"{npz} (the npz in {path / 'config.json'}) does not exist; pass --npz FILE")
    return Target(
        resolved, dataset=dataset, size=size,
        data_dir=args.data_dir or data.data_dir, records_dir=args.records_dir or data.records_dir, npz=npz,
        out_dir=Path(args.out) if args.out else path / ("eval" if not changed else f"eval_{dataset}_{size}"),
        model_name=config.model.arch, batch_size=args.batch_size or config.train.batch_size,
        seed=config.train.seed if args.seed is None else args.seed,
        history_csv=Path(args.history) if args.history else path / "history.csv", run_info=run_info,
    )


def resolve_target(args: argparse.Namespace) -> Target:
    """Turn the arguments into a ``Target``; every mistake found here is a one-line error."""
    path = Path(args.model).expanduser()
    if args.dataset is not None:
        check_dataset(args.dataset, args.size)
    elif args.size is not None:
        check_dataset("chestmnist", args.size)  # the size list is the same for every set
    if path.is_file() and path.suffix != ".keras":
        raise ConfigError(f"{path} is neither a run dir nor a .keras file (nor an export folder)")
    if path.is_file() and not args.dataset:
        raise ConfigError("--dataset is required with a .keras file (e.g. --dataset pneumoniamnist)")
    resolved = resolve_model(path, args.dataset)
    if resolved.kind == "run":
        target = _run_target(args, resolved)
    else:
        dataset = args.dataset or resolved.metadata["dataset"]
        npz = args.npz
        if npz is None and resolved.kind == "export" and dataset == resolved.metadata["dataset"]:
            exported_from = (resolved.metadata.get("source") or {}).get("data")  # the npz export measured on
            npz = exported_from if exported_from and Path(exported_from).is_file() else None
        target = Target(
            resolved, dataset=dataset, size=args.size, data_dir=args.data_dir, records_dir=args.records_dir,
            npz=npz,
            out_dir=Path(args.out) if args.out else path.with_name(f"{path.stem}_eval"),
            model_name=resolved.metadata.get("arch") if resolved.kind == "export" else None, batch_size=args.batch_size or DEFAULT_BATCH_SIZE,
            seed=args.seed or 0, history_csv=Path(args.history) if args.history else None,
            run_info={"model_file": str(resolved.keras_path)},
        )
    target.dataset = check_dataset(target.dataset, target.size)
    if target.npz is not None and not Path(target.npz).expanduser().is_file():
        raise DataError(f"{target.npz} does not exist")
    if target.history_csv is not None and args.history and not target.history_csv.is_file():
        raise ConfigError(f"{target.history_csv} does not exist")
    return target


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m chest_tf.evaluate",
        description="Evaluate a trained model on val and test: metrics.json, predictions.npz and a report "
                    "(report.md + PNG figures) compared with the published results.",
    )
    p.add_argument("model", metavar="RUN_DIR|MODEL.keras|EXPORT_DIR",
                   help="a run dir written by python -m chest_tf.train, a .keras file (then --dataset) or an "
                        "export folder")
    p.add_argument("--out", help="report folder (default RUN_DIR/eval, or <model stem>_eval next to the file)")
    g = p.add_argument_group("data (a run dir supplies these; flags override)")
    g.add_argument("--dataset", help="e.g. pneumoniamnist, chestmnist, phantom (required with a .keras file)")
    g.add_argument("--size", type=int, help="image size 28, 64, 128 or 224 (default: the model's input size)")
    g.add_argument("--data-dir", help="npz files (default $CHEST_TF_DATA_DIR or ~/.cache/chest_tf)")
    g.add_argument("--records-dir", help="TFRecord shards (default DATA_DIR/tfrecords)")
    g.add_argument("--npz", help="read this npz file in place instead of the data dir's")
    g = p.add_argument_group("metrics")
    g.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples for the 95%% CIs (0 = none; default 1000)")
    g.add_argument("--threshold", choices=THRESHOLD_CHOICES, default="youden",
                   help="how the per-label thresholds are chosen on val (default youden)")
    g.add_argument("--target", type=float,
                   help="target sensitivity/specificity (default 0.9), or the fixed threshold (default 0.5)")
    g.add_argument("--seed", type=int, help="bootstrap seed (default: the run's seed, or 0)")
    g.add_argument("--batch-size", type=int, help="prediction batch size (default: the run's, or 256)")
    g.add_argument("--history", help="a history.csv for the training-curves figure (default RUN_DIR/history.csv)")
    return p


def check_args(args: argparse.Namespace) -> float:
    """Validate the numeric flags; returns the target to use."""
    if args.bootstrap < 0:
        raise ConfigError(f"--bootstrap must be 0 or more, got {args.bootstrap}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    target = DEFAULT_TARGET[args.threshold] if args.target is None else args.target
    if not 0.0 < target <= 1.0:
        raise ConfigError(f"--target must be in (0, 1], got {target}")
    return target


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    threshold_target = check_args(args)
    target = resolve_target(args)
    model, model_path = target.resolved.model, target.resolved.keras_path
    name = target.model_name or model.name
    size = target.size or size_from_model(model, model_path.name)
    check_model_matches(model, get_info(target.dataset), size, f"{model_path.name} ({name})")
    handle = load_dataset(target.dataset, size, data_dir=target.data_dir, records_dir=target.records_dir,
                          npz_path=target.npz)
    print(f"evaluating {model_path} ({name}) on {handle.info.name} {size} px: "
          f"val {handle.num_examples('val')}, test {handle.num_examples('test')} images")
    result = evaluate_model(
        model, handle, target.out_dir, model_name=name, batch_size=target.batch_size, seed=target.seed,
        temperatures=target.resolved.extras.temperatures if target.resolved.kind == "export" else None,
        n_bootstrap=args.bootstrap, threshold_method=args.threshold, target=threshold_target,
        history_csv=target.history_csv,
        run_info={**target.run_info, "evaluated_by": "python -m chest_tf.evaluate", "data": str(handle.npz_path)},
    )
    print(headline_text(result, name, handle.info.name, size))
    print(f"report: {target.out_dir / 'report.md'}")
    return 0
