"""Evaluate a trained model on val and test through the shared metrics module.

``evaluate_model`` is the one path from a Keras model and a ``DatasetHandle`` to metrics.json,
predictions.npz and a report; training's final step uses it too. ``python -m chest_tf.evaluate``
runs it on a training run dir or on a bare .keras file::

    python -m chest_tf.evaluate RUN_DIR [--out DIR] [--bootstrap 1000]
        [--threshold youden|sensitivity|specificity|fixed] [--target 0.9] [--batch-size N]
        [--data-dir DIR] [--records-dir DIR] [--npz FILE]
    python -m chest_tf.evaluate MODEL.keras --dataset pneumoniamnist [--size 28] [--npz FILE]
        [--out DIR] [--history history.csv] [...]

A run dir (written by ``python -m chest_tf.train``) supplies the dataset, size, data locations,
architecture, batch size and seed from its config.json, the model from best.keras and the training
curves from history.csv; the report goes to RUN_DIR/eval unless ``--out`` says otherwise. A bare
.keras file needs ``--dataset``; its size defaults to the model's input size and its report goes
to ``<model stem>_eval`` next to the file. The model's input shape and number of outputs are
checked against the dataset before anything is predicted. Keras and TensorFlow are imported only
once the arguments and files have been checked, so mistakes fail fast.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chest_tf.cli import quiet_tensorflow, run_cli
from chest_tf.data.info import BINARY, CATALOGUE, MULTI_LABEL, SIZES, DatasetInfo
from chest_tf.errors import ChestTFError, ConfigError, DataError
from chest_tf.runs import load_keras_model, read_run_dir  # noqa: F401 (load_keras_model: part of this API)

quiet_tensorflow()

import numpy as np  # noqa: E402

from chest_tf import metrics as metrics_lib  # noqa: E402
from chest_tf.report import report_from_predictions  # noqa: E402

if TYPE_CHECKING:
    import keras

    from chest_tf.data.pipeline import DatasetHandle

THRESHOLD_CHOICES = ("youden", "sensitivity", "specificity", "fixed")
DEFAULT_TARGET = {"youden": 0.9, "sensitivity": 0.9, "specificity": 0.9, "fixed": 0.5}
DEFAULT_BATCH_SIZE = 256


# ----------------------------------------------------------------------------------------------
# Library: model checks, predictions, the report


def model_io_shapes(model: keras.Model, name: str = "the model") -> tuple[tuple, tuple]:
    """The model's input shape (H, W, C) and output shape (K,), without the batch axis. Models with
    several inputs or outputs, or without known shapes, are refused."""
    try:
        in_shape, out_shape = model.input_shape, model.output_shape
    except (AttributeError, ValueError):
        raise ConfigError(f"{name} has no known input/output shape; save a functional Keras model") from None
    if isinstance(in_shape, list) and len(in_shape) == 1:
        in_shape = in_shape[0]
    if isinstance(out_shape, list) and len(out_shape) == 1:
        out_shape = out_shape[0]
    if not isinstance(in_shape, tuple) or len(in_shape) != 4:
        raise ConfigError(f"{name} takes inputs of shape {in_shape}; expected one image input (batch, H, W, C)")
    if not isinstance(out_shape, tuple) or len(out_shape) != 2:
        raise ConfigError(f"{name} returns outputs of shape {out_shape}; expected one logit vector (batch, K)")
    return tuple(in_shape[1:]), tuple(out_shape[1:])


def _dims(shape: tuple) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)


def check_model_matches(model: keras.Model, info: DatasetInfo, size: int, name: str = "the model") -> None:
    """Raise ``ConfigError`` (one line) unless ``model`` takes ``info``'s images at ``size`` px and
    emits one logit per output column (binary sets: 1, or 2 softmax logits)."""
    (h, w, c), (k,) = model_io_shapes(model, name)
    expected = (size, size, info.n_channels)
    if any(got is not None and got != want for got, want in zip((h, w, c), expected)):
        hint = (f"; evaluate with --size {h}" if h == w and h in SIZES and c in (None, info.n_channels)
                else "; was it trained on another dataset?")
        raise ConfigError(f"{name} takes {_dims((h, w, c))} images but {info.name} at {size} px has "
                          f"{_dims(expected)}{hint}")
    allowed = (1, 2) if info.task == BINARY else (info.num_outputs,)
    if k not in allowed:
        kind = "labels" if info.task == MULTI_LABEL else "classes"
        needs = "1 (or 2 softmax logits)" if info.task == BINARY else str(info.num_outputs)
        raise ConfigError(f"{name} has {k} output{'' if k == 1 else 's'} but {info.name} ({info.task}, "
                          f"{info.num_labels} {kind}) needs {needs}; was it trained on another dataset?")


def predict_split(model: keras.Model, handle: DatasetHandle, split: str, batch_size: int = 256) -> np.ndarray:
    """Logits for ``split`` in file order (aligned with ``handle.labels(split)``)."""
    images = handle.batches(split, batch_size).map(lambda x, y: x)
    logits = np.asarray(model.predict(images, verbose=0))
    n = handle.num_examples(split)
    if logits.shape[0] != n:
        raise ChestTFError(f"got {logits.shape[0]} predictions for the {n} {split} images")
    return logits


def evaluate_model(
    model: keras.Model,
    handle: DatasetHandle,
    out_dir: str | Path,
    *,
    model_name: str,
    batch_size: int = 256,
    seed: int = 0,
    n_bootstrap: int = 1000,
    threshold_method: str = "youden",
    target: float = 0.9,
    history_csv: str | Path | None = None,
    run_info: dict | None = None,
) -> dict:
    """Predict val and test, then write the report folder (see ``chest_tf.report``); returns the
    ``chest_tf.metrics.evaluate_splits`` result. Thresholds are chosen on val only."""
    check_model_matches(model, handle.info, handle.size, model_name)
    task = handle.info.task
    scores = {
        split: metrics_lib.scores_from_logits(predict_split(model, handle, split, batch_size), task)
        for split in ("val", "test")
    }
    history = Path(history_csv) if history_csv is not None and Path(history_csv).exists() else None
    return report_from_predictions(
        out_dir,
        handle.labels("val"), scores["val"], handle.labels("test"), scores["test"],
        task, list(handle.info.labels), handle.info.name, handle.size, model_name,
        n_bootstrap=n_bootstrap, seed=seed, threshold_method=threshold_method, target=target,
        history_csv=history, run_info=run_info,
    )


def headline_text(result: dict, model_name: str, dataset: str, size: int) -> str:
    """One line: test AUC and ACC with 95% CIs, labels defined, how thresholds were chosen."""
    head, test, thresholds = result["headline"], result["test"], result["thresholds"]

    def with_ci(value, ci):
        text = "n/a" if value is None or not np.isfinite(value) else f"{value:.4f}"
        if ci is not None and np.all(np.isfinite(np.asarray(ci, dtype=float))):
            text += f" (95% CI {ci[0]:.4f}-{ci[1]:.4f})"
        return text

    method = thresholds["method"]
    if thresholds["target"] is not None:
        method += f" {thresholds['target']:g}"
    return (f"{model_name} on {dataset} {size} px, test (n = {test['n']}): AUC {with_ci(head['auc'], head['auc_ci'])}"
            f" | ACC {with_ci(head['acc'], head['acc_ci'])} | labels defined {test['n_labels_defined']} of "
            f"{len(test['per_label'])} | thresholds: {method}, chosen on val")


# ----------------------------------------------------------------------------------------------
# CLI: what to evaluate


@dataclass
class Target:
    """What the command line asked for, resolved before Keras is imported."""

    model_path: Path
    dataset: str
    size: int | None  # None: the model's input size (bare .keras only)
    data_dir: str | None = None
    records_dir: str | None = None
    npz: str | None = None
    out_dir: Path | None = None
    model_name: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0
    history_csv: Path | None = None
    run_info: dict[str, Any] = field(default_factory=dict)


def resolve_target(args: argparse.Namespace) -> Target:
    """Turn the arguments into a ``Target``; every mistake found here is a one-line error."""
    path = Path(args.model).expanduser()
    if path.is_dir():
        config, payload = read_run_dir(path)
        data = config.data
        dataset = args.dataset or data.dataset
        size = args.size or data.size
        changed = (dataset, size) != (data.dataset, data.size)
        default_out = path / ("eval" if not changed else f"eval_{dataset}_{size}")
        best = path / "best.json"
        run_info = {"run_dir": str(path), "model_file": str(path / "best.keras"),
                    "model": {"arch": config.model.arch, "overrides": config.model.overrides},
                    "trained_on": f"{data.dataset} {data.size} px"}
        if best.is_file():
            run_info["best"] = json.loads(best.read_text())
        if "runtime" in payload:
            run_info["runtime"] = payload["runtime"]
        npz = args.npz if args.npz is not None else (data.npz if not changed else None)
        if args.npz is None and npz is not None and not Path(npz).expanduser().is_file():
            raise DataError(f"{npz} (the npz in {path / 'config.json'}) does not exist; pass --npz FILE")
        history = Path(args.history) if args.history else path / "history.csv"
        target = Target(
            model_path=path / "best.keras", dataset=dataset, size=size,
            data_dir=args.data_dir or data.data_dir, records_dir=args.records_dir or data.records_dir, npz=npz,
            out_dir=Path(args.out) if args.out else default_out, model_name=config.model.arch,
            batch_size=args.batch_size or config.train.batch_size,
            seed=config.train.seed if args.seed is None else args.seed,
            history_csv=history, run_info=run_info,
        )
    elif path.is_file():
        if path.suffix != ".keras":
            raise ConfigError(f"{path} is neither a run dir nor a .keras file")
        if not args.dataset:
            raise ConfigError("--dataset is required with a .keras file (e.g. --dataset pneumoniamnist)")
        target = Target(
            model_path=path, dataset=args.dataset, size=args.size, data_dir=args.data_dir,
            records_dir=args.records_dir, npz=args.npz,
            out_dir=Path(args.out) if args.out else path.with_name(f"{path.stem}_eval"),
            batch_size=args.batch_size or DEFAULT_BATCH_SIZE, seed=args.seed or 0,
            history_csv=Path(args.history) if args.history else None, run_info={"model_file": str(path)},
        )
    elif path.suffix == ".keras":
        raise ConfigError(f"{path} does not exist")
    else:
        raise ConfigError(f"{path} does not exist (expected a run dir or a .keras file)")
    if target.dataset.lower() not in CATALOGUE:
        raise ConfigError(f"unknown dataset '{target.dataset}'; known: {', '.join(sorted(CATALOGUE))}")
    target.dataset = target.dataset.lower()
    if target.size is not None and target.size not in SIZES:
        raise ConfigError(f"{target.dataset} has no {target.size} px version; choose one of "
                          f"{', '.join(map(str, SIZES))}")
    if target.npz is not None and not Path(target.npz).expanduser().is_file():
        raise DataError(f"{target.npz} does not exist")
    if target.history_csv is not None and args.history and not target.history_csv.is_file():
        raise ConfigError(f"{target.history_csv} does not exist")
    return target


def size_from_model(model: keras.Model, name: str) -> int:
    (h, w, _), _ = model_io_shapes(model, name)
    if h is None or h != w or h not in SIZES:
        raise ConfigError(f"cannot tell the image size from {name} (input {_dims((h, w))}); pass --size")
    return int(h)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m chest_tf.evaluate",
        description="Evaluate a trained model on val and test: metrics.json, predictions.npz and a report "
                    "(report.md + PNG figures) compared with the published results.",
    )
    p.add_argument("model", metavar="RUN_DIR|MODEL.keras",
                   help="a run dir written by python -m chest_tf.train, or a .keras file (then --dataset)")
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

    model = load_keras_model(target.model_path)
    name = target.model_name or model.name
    size = target.size or size_from_model(model, target.model_path.name)
    from chest_tf.data.info import get_info  # noqa: PLC0415

    check_model_matches(model, get_info(target.dataset), size, f"{target.model_path.name} ({name})")

    from chest_tf.data.pipeline import load_dataset  # noqa: PLC0415 (TensorFlow)

    try:
        handle = load_dataset(target.dataset, size, data_dir=target.data_dir, records_dir=target.records_dir,
                              npz_path=target.npz)
    except ValueError as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
    print(f"evaluating {target.model_path} ({name}) on {handle.info.name} {size} px: "
          f"val {handle.num_examples('val')}, test {handle.num_examples('test')} images")
    result = evaluate_model(
        model, handle, target.out_dir, model_name=name, batch_size=target.batch_size, seed=target.seed,
        n_bootstrap=args.bootstrap, threshold_method=args.threshold, target=threshold_target,
        history_csv=target.history_csv,
        run_info={**target.run_info, "evaluated_by": "python -m chest_tf.evaluate",
                  "data": str(handle.npz_path)},
    )
    print(headline_text(result, name, handle.info.name, size))
    print(f"report: {target.out_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
