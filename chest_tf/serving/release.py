"""What export adds to trained runs before they are served: calibration, an OOD score, ensembling,
and the evidence for each (measured on the run's own data, never on test for any choice).

``prepare_release(run_dirs, options)`` reads one run dir (or several, for a deep ensemble), loads
its dataset as training did, and

1. predicts val and test (and penultimate features of up to ``ood_fit_images`` training images);
2. fits temperature scaling on val (``calibration.py``) and reports ECE before and after on val
   and test;
3. chooses the decision thresholds on the calibrated val scores and evaluates test with CIs
   (``evaluation.metrics.evaluate_splits``; the full report goes to the export's ``report/``);
4. fits the OOD score on train, sets its threshold on val (``ood.py``), and measures how well it
   tells test images from sets made offline: far (another dataset, uniform noise, smooth random
   textures) and near (inverted, rotated 90 degrees, heavily cropped, low-contrast radiographs);
5. returns the model (an ensemble is one Keras model, ``models.ensemble``), its metadata and the
   serving extras, which ``savedmodel.export_release`` writes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from chest_tf.data import npz, phantom
from chest_tf.data.info import MULTI_LABEL, get_info
from chest_tf.data.pipeline import DatasetHandle, load_dataset
from chest_tf.errors import ConfigError
from chest_tf.evaluation import metrics, plots
from chest_tf.evaluation.report import report_from_predictions
from chest_tf.models.ensemble import build_ensemble, ensemble_members
from chest_tf.runs import ResolvedModel, read_json, resolve_model
from chest_tf.serving.calibration import calibrated_probabilities, fit_temperatures
from chest_tf.serving.metadata import build_metadata
from chest_tf.serving.ood import FEATURE_METHODS, OODScorer, features_and_logits_model, fit_scorer, ood_auroc
from chest_tf.serving.signature import ServingExtras, output_activation, serving_tf_function

REPORT_DIR = "report"


@dataclass
class ReleaseOptions:
    calibration: str = "global"  # global | per-label | none
    ood: str = "mahalanobis"  # mahalanobis | energy | none
    ood_percentile: float = 99.0
    ood_reference: str | None = None  # a MedMNIST-format npz of another dataset: its test split is a far set
    ood_fit_images: int = 20000  # training images for the OOD statistics (the first N in file order)
    ood_eval_images: int = 1000  # test images (and images per OOD set) for the AUROCs
    threshold_method: str | None = None  # default: the run's own (eval/metrics.json), else youden
    target: float | None = None
    batch_size: int = 256
    n_bootstrap: int = 1000

    @classmethod
    def plain(cls) -> ReleaseOptions:
        """No calibration and no OOD score: the model's own probabilities, the run's thresholds."""
        return cls(calibration="none", ood="none")

    @property
    def is_plain(self) -> bool:
        return self.calibration == "none" and self.ood == "none"


@dataclass
class Release:
    model: keras.Model
    metadata: dict
    extras: ServingExtras = field(default_factory=ServingExtras)
    keras_file: Path | None = None  # copied as model.keras (a single run's best.keras)
    evidence: dict = field(default_factory=dict)  # calibration and OOD measurements
    predictions: dict | None = None  # val/test labels and calibrated scores, for the report folder
    uncalibrated_test: np.ndarray | None = None


def resolve_runs(run_dirs: list[str | Path]) -> list[ResolvedModel]:
    """The run dirs as ``ResolvedModel``s; several must share dataset, size and outputs."""
    if not run_dirs:
        raise ConfigError("give at least one run dir to export")
    resolved = [resolve_model(path) for path in run_dirs]
    for r in resolved:
        if r.kind != "run":
            raise ConfigError(f"{r.path} is not a run dir (config.json + best.keras); export takes training runs")
    first = resolved[0].config.data
    for r in resolved[1:]:
        data = r.config.data
        if (data.dataset, data.size) != (first.dataset, first.size):
            raise ConfigError(f"an ensemble's runs must share dataset and size: {resolved[0].path} is {first.dataset} "
                              f"{first.size} px, {r.path} is {data.dataset} {data.size} px")
    return resolved


def _targets(labels: np.ndarray, task: str, num_outputs: int) -> np.ndarray:
    """Labels as the targets of the output columns (one-hot for softmax outputs)."""
    labels = np.asarray(labels)
    if task == MULTI_LABEL or num_outputs == 1:
        return labels.astype(np.float64).reshape(len(labels), -1)
    return np.eye(num_outputs)[labels.reshape(-1).astype(int)]


def _member_outputs(models: list[keras.Model], images: tf.data.Dataset, features: str | None):
    """(member logits (M, N, K), features [(N, D), ...] member by member and depth by depth, or
    None) for a dataset of normalised images; ``features`` is the OOD method that needs them."""
    logits, feats = [], []
    for model in models:
        if features:
            z, *taps = features_and_logits_model(model, depths=features == "mahalanobis").predict(images, verbose=0)
            feats += [np.asarray(f, np.float32) for f in taps]
        else:
            z = model.predict(images, verbose=0)
        logits.append(np.asarray(z, np.float32))
    return np.stack(logits), (feats if features else None)


def _combine(model: keras.Model, member_logits: np.ndarray) -> np.ndarray:
    """The model's logits from its members' (an ensemble's mean layer, or the one member's)."""
    if len(member_logits) == 1:
        return member_logits[0]
    average = model.get_layer("ensemble_mean")
    return np.asarray(average([tf.constant(z) for z in member_logits]), np.float32)


def _split_outputs(model, members, handle: DatasetHandle, split: str, batch_size: int, features: bool,
                   limit: int | None = None):
    images = handle.batches(split, batch_size).map(lambda x, y: x)
    if limit is not None:
        images = images.take(-(-limit // batch_size))
    member_logits, feats = _member_outputs(members, images, features)
    if limit is not None:
        member_logits, feats = member_logits[:, :limit], (None if feats is None else [f[:limit] for f in feats])
    return _combine(model, member_logits), feats


def _mean_ece(y_true, scores, task) -> float:
    Y, S = metrics.to_label_matrix(y_true, scores, task)
    return float(np.nanmean(metrics.expected_calibration_error(Y, S)))


def _test_images(handle: DatasetHandle, limit: int) -> np.ndarray:
    """The first ``limit`` test images as uint8 (N, H, W, C), as the file holds them."""
    rows, count = [], 0
    for chunk in npz.iter_rows(handle.npz_path, "test_images"):
        rows.append(chunk)
        count += len(chunk)
        if count >= limit:
            break
    images = np.concatenate(rows)[:limit]
    return images[..., None] if images.ndim == 3 else images


def _resize_square(images: np.ndarray, size: int) -> np.ndarray:
    resized = tf.image.resize(tf.cast(images, tf.float32), (size, size), method="bilinear", antialias=True)
    return np.clip(np.rint(resized.numpy()), 0, 255).astype(np.uint8)


def ood_sets(test_images: np.ndarray, dataset: str, size: int, reference: str | None, seed: int = 0) -> dict:
    """name -> (kind, uint8 images): the sets the OOD score is measured against, all made offline."""
    n, h, w, c = test_images.shape
    rng = np.random.default_rng(seed)
    x = test_images.astype(np.float32)
    crop = test_images[:, h // 4:h - h // 4, w // 4:w - w // 4]
    smooth = tf.image.resize(rng.uniform(0, 255, (n, 4, 4, c)).astype(np.float32), (h, w), method="bicubic").numpy()
    sets = {
        "uniform noise": ("far", rng.integers(0, 256, test_images.shape, dtype=np.uint8)),
        "smooth random textures": ("far", np.clip(np.rint(smooth), 0, 255).astype(np.uint8)),
        "inverted": ("near", (255 - test_images).astype(np.uint8)),
        "rotated 90 degrees": ("near", np.rot90(test_images, 1, axes=(1, 2)).copy()),
        "cropped to the central half": ("near", _resize_square(crop, h)),
        "low contrast (x 0.25)": ("near", np.clip(np.rint(x * 0.25 + x.mean() * 0.75), 0, 255).astype(np.uint8)),
    }
    if get_info(dataset).name != "phantom":
        images, _, _ = phantom.generate_split(size, n, seed, "test", 0)
        sets["phantom (generated)"] = ("far", images[..., None].repeat(c, axis=-1) if c > 1 else images[..., None])
    if reference is not None:
        path = Path(reference).expanduser()
        if not path.is_file():
            raise ConfigError(f"--ood-reference {path} does not exist")
        rows = np.concatenate([chunk for chunk, _ in zip(npz.iter_rows(path, "test_images"), range(-(-n // 1024)))])[:n]
        rows = rows[..., None] if rows.ndim == 3 else rows
        if rows.shape[1] != h:
            rows = _resize_square(rows, h)
        if rows.shape[-1] != c:
            rows = rows[..., :1].repeat(c, axis=-1) if c > 1 else rows.mean(axis=-1, keepdims=True).astype(np.uint8)
        sets[f"{path.stem} (test split)"] = ("far", rows)
    return sets


def _serve_in_batches(serve, images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    parts: dict[str, list] = {}
    for start in range(0, len(images), batch_size):
        for name, value in serve(tf.constant(images[start:start + batch_size])).items():
            parts.setdefault(name, []).append(value.numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


def measure_ood(model, task: str, extras: ServingExtras, handle: DatasetHandle, options: ReleaseOptions,
                dataset: str, size: int) -> dict:
    """AUROC of the OOD score between test images and each offline set, through the serving
    computation itself (uint8 in), and the share of each set flagged as not in distribution."""
    serve = serving_tf_function(model, task, extras)
    test_images = _test_images(handle, options.ood_eval_images)
    inside = _serve_in_batches(serve, test_images, options.batch_size)
    rows = {"test (in distribution)": {"kind": "in", "n": len(test_images), "auroc": None,
                                       "flagged": float(np.mean(~inside["in_distribution"]))}}
    for name, (kind, images) in ood_sets(test_images, dataset, size, options.ood_reference).items():
        outside = _serve_in_batches(serve, images, options.batch_size)
        rows[name] = {"kind": kind, "n": len(images), "auroc": ood_auroc(inside["ood_score"], outside["ood_score"]),
                      "flagged": float(np.mean(~outside["in_distribution"]))}
    return rows


def _run_thresholds(resolved: ResolvedModel) -> tuple[str, float]:
    path = resolved.path / "eval" / "metrics.json"
    thresholds = read_json(path).get("thresholds", {}) if path.is_file() else {}
    method = thresholds.get("method") or "youden"
    default = 0.5 if method == "fixed" else 0.9
    return method, float(thresholds.get("target") if thresholds.get("target") is not None else default)


def prepare_release(run_dirs: list[str | Path], options: ReleaseOptions | None = None) -> Release:
    """See the module docstring."""
    options = options or ReleaseOptions()
    resolved = resolve_runs(run_dirs)
    first = resolved[0]
    config = first.config
    if len(resolved) == 1 and options.is_plain:
        return Release(first.model, first.metadata, keras_file=first.keras_path)
    info = get_info(config.data.dataset)
    task = info.task
    num_outputs = int(first.model.output_shape[-1])
    activation = output_activation(task, num_outputs)
    if len(resolved) == 1:
        model = first.model
    else:
        model = build_ensemble([r.model for r in resolved], activation,
                               name=f"ensemble_{len(resolved)}x_{config.model.arch}")
    members = ensemble_members(model)
    handle = load_dataset(config.data.dataset, config.data.size, data_dir=config.data.data_dir,
                          records_dir=config.data.records_dir, npz_path=config.data.npz)
    with_features = options.ood if options.ood in FEATURE_METHODS else None
    val_logits, val_features = _split_outputs(model, members, handle, "val", options.batch_size, with_features)
    test_logits, _ = _split_outputs(model, members, handle, "test", options.batch_size, False)
    val_true, test_true = handle.labels("val"), handle.labels("test")

    evidence: dict = {}
    temperatures = None
    calibration = None
    if options.calibration != "none":
        temperatures = fit_temperatures(val_logits, _targets(val_true, task, num_outputs), activation,
                                        options.calibration)
    raw = {split: calibrated_probabilities(z, None, activation) for split, z in (("val", val_logits),
                                                                                  ("test", test_logits))}
    calibrated = {split: calibrated_probabilities(z, temperatures, activation)
                  for split, z in (("val", val_logits), ("test", test_logits))}
    ece = {f"{split}_{when}": _mean_ece(y, scores[split], task)
           for split, y in (("val", val_true), ("test", test_true))
           for when, scores in (("before", raw), ("after", calibrated))}
    if temperatures is not None:
        calibration = {"method": "temperature", "scope": options.calibration, "fitted_on": "val",
                       "temperatures": [float(t) for t in temperatures], "ece": ece,
                       "rule": "probs = activation(logits / temperature)"}
    evidence["ece"] = ece

    method, target = _run_thresholds(first)
    method = options.threshold_method or method
    target = options.target if options.target is not None else target
    evaluation = metrics.evaluate_splits((val_true, calibrated["val"]), (test_true, calibrated["test"]), task,
                                         list(info.labels), n_bootstrap=options.n_bootstrap, seed=config.train.seed,
                                         threshold_method=method, target=target)
    evaluation = metrics.to_jsonable(evaluation)  # plain JSON values (NaN -> None), as metadata.json holds them

    scorer: OODScorer | None = None
    if options.ood != "none":
        train_features = None
        if with_features:
            limit = min(options.ood_fit_images, handle.num_examples("train"))
            _, train_features = _split_outputs(model, members, handle, "train", options.batch_size, with_features, limit)
        scorer = fit_scorer(options.ood, activation, train_features, val_logits, val_features, options.ood_percentile)
    extras = ServingExtras(temperatures, scorer)
    if scorer is not None:
        evidence["ood"] = measure_ood(model, task, extras, handle, options, config.data.dataset, config.data.size)

    arch = config.model.arch if len(resolved) == 1 else f"ensemble of {len(resolved)} x {config.model.arch}"
    source = dict(first.metadata["source"]) if len(resolved) == 1 else {
        "members": [{"run_dir": str(r.path.resolve()), "arch": r.config.model.arch, "seed": r.config.train.seed}
                    for r in resolved],
        "dataset": config.data.dataset, "size": config.data.size}
    source["data"] = str(handle.npz_path)
    ood_meta = None
    if scorer is not None:
        ood_meta = {**scorer.to_metadata(), "evaluation": evidence["ood"],
                    "ood_fit_images": int(min(options.ood_fit_images, handle.num_examples("train")))
                    if with_features else 0}
    ensemble = None if len(resolved) == 1 else {
        "members": len(resolved), "combination": "mean of the members' probabilities",
        "uncertainty": "standard deviation of the members' probabilities (serve output 'uncertainty')"}
    metadata = build_metadata(model, info, arch=arch, metrics=evaluation, source=source, calibration=calibration,
                              ood=ood_meta, ensemble=ensemble)
    metadata["thresholds"]["chosen_after_calibration"] = temperatures is not None
    return Release(
        model, metadata, extras, keras_file=first.keras_path if len(resolved) == 1 else None, evidence=evidence,
        predictions={"val_true": val_true, "val_score": calibrated["val"], "test_true": test_true,
                     "test_score": calibrated["test"], "method": method, "target": target, "seed": config.train.seed},
        uncalibrated_test=raw["test"],
    )


def write_release_report(release: Release, directory: Path) -> dict | None:
    """The export's ``report/``: report.md, metrics.json and figures of the calibrated model on val
    and test (as ``python -m chest_tf.evaluate`` writes them), plus the reliability diagram before
    calibration. Returns the evaluation result (None for a plain export, which has no data)."""
    if release.predictions is None:
        return None
    p = release.predictions
    meta = release.metadata
    out = directory / REPORT_DIR
    result = report_from_predictions(
        out, p["val_true"], p["val_score"], p["test_true"], p["test_score"], meta["task"], meta["class_names"],
        meta["dataset"], meta["input"]["height"], meta["arch"], seed=p["seed"], threshold_method=p["method"],
        target=p["target"], run_info={"export": meta.get("name"), "calibration": meta.get("calibration"),
                                       "source": meta.get("source")})
    if release.uncalibrated_test is not None and meta.get("calibration", {}).get("method") == "temperature":
        plots.plot_reliability(p["test_true"], release.uncalibrated_test, meta["class_names"],
                               out / "calibration_uncalibrated.png", task=meta["task"],
                               title="Calibration before temperature scaling (test)")
    return result


def release_options(**overrides) -> ReleaseOptions:
    return dataclasses.replace(ReleaseOptions(), **{k: v for k, v in overrides.items() if v is not None})
