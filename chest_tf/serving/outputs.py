"""Prediction output formats (table, CSV, JSON) and the loop that writes them for a set of files."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Sequence, TextIO

from chest_tf import imageio
from chest_tf.errors import ConfigError
from chest_tf.serving.input_checks import DEFAULT_POLICY, InputPolicy, summary
from chest_tf.serving.predictor import DEFAULT_BATCH_SIZE, Prediction, Predictor, Stats, interpret, predict_files

FORMATS = ("table", "json", "csv")


def _shape_text(shape: tuple[int, int, int]) -> str:
    return f"{shape[1]} x {shape[0]} {'gray' if shape[2] == 1 else 'RGB'}"


def _ranked(names: Sequence[str], probs: Sequence[float], top_k: int) -> list[int]:
    order = sorted(range(len(names)), key=lambda k: -probs[k])
    return order[:top_k] if top_k > 0 else order


def reliability(pred: Prediction) -> dict:
    """What travels with every prediction besides the probabilities: the input checks' warnings,
    the OOD score and flag (None when the model has no OOD score), the ensemble's spread."""
    return {"checks": [c.to_dict() for c in pred.checks], "ood_score": pred.ood_score,
            "in_distribution": pred.in_distribution,
            "uncertainty": None if pred.uncertainty is None else [float(u) for u in pred.uncertainty]}


def _ood_note(metadata: dict) -> str:
    ood = metadata.get("ood") or {}
    if ood.get("method", "none") == "none":
        return "no OOD score (export the run to get one)"
    return f"OOD score {ood['method']}, in distribution up to {ood['threshold']:.3g} ({ood['percentile']:g}th pct of val)"


class TableWriter:
    def __init__(self, out: TextIO, metadata: dict, top_k: int):
        self.out, self.meta, self.top_k = out, metadata, top_k

    def start(self, predictor: Predictor) -> None:
        t = self.meta["thresholds"]
        chosen = f"chosen on {t['chosen_on']} ({t['method']})" if t.get("chosen_on") else "0.5 (none chosen on validation)"
        calibrated = " on calibrated probabilities" if self.meta["signature"]["outputs"]["probs"].get("calibrated") else ""
        print(f"model {predictor.path} ({self.meta.get('arch') or 'model'}, {self.meta['dataset']}, "
              f"{self.meta['input']['height']} px); thresholds {chosen}{calibrated}; {_ood_note(self.meta)}",
              file=self.out)

    def write(self, pred: Prediction) -> None:
        meta, calls = self.meta, interpret(pred.probs, self.meta)
        names, probs = meta["output_names"], [float(p) for p in pred.probs]
        thresholds = meta["thresholds"]["values"]
        if "positive" in calls:
            verdict = "positive: " + (", ".join(calls["positive"]) or "none")
        elif "call" in calls:
            verdict = f"call: {calls['call']}"
        else:
            verdict = f"predicted: {calls['predicted']}"
        lines = [f"\n{pred.path}  ({_shape_text(pred.shape)})  {verdict}"]
        if pred.in_distribution is not None:
            status = "in distribution" if pred.in_distribution else "NOT in distribution: unlike the training images"
            lines.append(f"  ood score {pred.ood_score:.3g} (threshold {meta['ood']['threshold']:.3g}): {status}")
        lines += [f"  {check.level} {check.check}: {check.message}" for check in pred.checks]
        width = max(len("finding"), *(len(n) for n in names))
        spread = pred.uncertainty is not None
        lines.append(f"  {'finding':<{width}}  {'prob':>6}  {'threshold':>9}" + ("  member sd" if spread else ""))
        for k in _ranked(names, probs, self.top_k):
            t = thresholds[k]
            mark = "  *" if t is not None and probs[k] >= t and "predicted" not in calls else ""
            t_text = "-" if t is None else f"{t:.3f}"
            sd = f"  {pred.uncertainty[k]:9.3f}" if spread else ""
            lines.append(f"  {names[k]:<{width}}  {probs[k]:6.3f}  {t_text:>9}{sd}{mark}")
        print("\n".join(lines), file=self.out)

    def finish(self, errors: list[dict], skipped: list[str]) -> None:
        pass


class CsvWriter:
    def __init__(self, out: TextIO, metadata: dict, top_k: int):
        self.out, self.meta = out, metadata
        self.writer = csv.writer(out, lineterminator="\n")

    def start(self, predictor: Predictor) -> None:
        task = self.meta["task"]
        call = "positive" if task.startswith("multi-label") else "call" if task == "binary-class" else "predicted"
        self.call_key = call
        names = self.meta["output_names"]
        self.spread = bool(self.meta.get("ensemble"))
        self.writer.writerow(["file", "width", "height", "channels", *names, call, "ood_score", "in_distribution",
                              "checks", *([f"{n}_sd" for n in names] if self.spread else [])])

    def write(self, pred: Prediction) -> None:
        calls = interpret(pred.probs, self.meta)
        value = calls[self.call_key]
        value = ";".join(value) if isinstance(value, list) else value
        ood = "" if pred.ood_score is None else f"{pred.ood_score:.6g}"
        flag = "" if pred.in_distribution is None else str(pred.in_distribution).lower()
        spread = [f"{float(u):.6f}" for u in pred.uncertainty] if self.spread and pred.uncertainty is not None else []
        self.writer.writerow([str(pred.path), pred.shape[1], pred.shape[0], pred.shape[2],
                              *(f"{float(p):.6f}" for p in pred.probs), value, ood, flag, summary(pred.checks),
                              *spread])

    def finish(self, errors: list[dict], skipped: list[str]) -> None:
        pass


class JsonWriter:
    def __init__(self, out: TextIO, metadata: dict, top_k: int):
        self.out, self.meta, self.top_k = out, metadata, top_k
        self.results: list[dict] = []

    def start(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def write(self, pred: Prediction) -> None:
        calls = interpret(pred.probs, self.meta)
        entry = {"file": str(pred.path), "width": pred.shape[1], "height": pred.shape[0], "channels": pred.shape[2],
                 **calls, **reliability(pred)}
        if self.top_k > 0:
            names, probs = self.meta["output_names"], [float(p) for p in pred.probs]
            entry["top"] = [{"name": names[k], "prob": probs[k]} for k in _ranked(names, probs, self.top_k)]
        self.results.append(entry)

    def finish(self, errors: list[dict], skipped: list[str]) -> None:
        meta = self.meta
        doc = {
            "model": {"path": str(self.predictor.path), "kind": self.predictor.kind, "arch": meta.get("arch"),
                      "dataset": meta["dataset"], "task": meta["task"], "input": meta["input"]},
            "output_names": meta["output_names"],
            "thresholds": meta["thresholds"],
            "decision": meta.get("decision"),
            "calibration": meta.get("calibration"),
            "ood": meta.get("ood"),
            "results": self.results,
            "errors": errors,
            "skipped": skipped,
        }
        json.dump(doc, self.out, indent=2)
        self.out.write("\n")


WRITERS = {"table": TableWriter, "json": JsonWriter, "csv": CsvWriter}


def run_predictions(
    predictor: Predictor,
    inputs: Sequence[str | Path],
    *,
    fmt: str = "table",
    batch_size: int = DEFAULT_BATCH_SIZE,
    top_k: int = 0,
    max_pixels: int = imageio.DEFAULT_MAX_PIXELS,
    workers: int = 2,
    out: TextIO | None = None,
    err: TextIO | None = None,
    stats: Stats | None = None,
    policy: InputPolicy = DEFAULT_POLICY,
) -> int:
    """Predict every image under ``inputs`` and print them; returns the exit status (0 or 1: some
    file could not be read or was refused by an input check). Files a folder holds that are not
    images are named on ``err`` and in the JSON output's ``skipped``."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    not_images: list[Path] = []
    paths = imageio.find_images(inputs, skipped=not_images)
    skipped = [str(path) for path in not_images]
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        print(f"skipped {len(skipped)} file(s) that are not images ({', '.join(imageio.IMAGE_EXTENSIONS)}): {shown}",
              file=err)
    if not paths:
        raise ConfigError(f"no images found in {', '.join(map(str, inputs))} ({', '.join(imageio.IMAGE_EXTENSIONS)})")
    errors: list[dict] = []

    def on_error(path: Path, message: str) -> None:
        errors.append({"file": str(path), "error": message})
        print(f"error: {message}", file=err, flush=True)

    writer = WRITERS[fmt](out, predictor.metadata, top_k)
    writer.start(predictor)
    stats = stats if stats is not None else Stats()
    for pred in predict_files(predictor, paths, batch_size=batch_size, max_pixels=max_pixels, workers=workers,
                              policy=policy, on_error=on_error, stats=stats):
        writer.write(pred)
    writer.finish(errors, skipped)
    out.flush()
    print(f"predicted {stats.images} image(s)" + (f", {stats.failed} failed" if stats.failed else ""), file=err)
    return 1 if errors else 0
