"""Prediction output formats (table, CSV, JSON) and the loop that writes them for a set of files."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Sequence, TextIO

from chest_tf import imageio
from chest_tf.errors import ConfigError
from chest_tf.serving.predictor import DEFAULT_BATCH_SIZE, Prediction, Predictor, Stats, interpret, predict_files

FORMATS = ("table", "json", "csv")


def _shape_text(shape: tuple[int, int, int]) -> str:
    return f"{shape[1]} x {shape[0]} {'gray' if shape[2] == 1 else 'RGB'}"


def _ranked(names: Sequence[str], probs: Sequence[float], top_k: int) -> list[int]:
    order = sorted(range(len(names)), key=lambda k: -probs[k])
    return order[:top_k] if top_k > 0 else order


class TableWriter:
    def __init__(self, out: TextIO, metadata: dict, top_k: int):
        self.out, self.meta, self.top_k = out, metadata, top_k

    def start(self, predictor: Predictor) -> None:
        t = self.meta["thresholds"]
        chosen = f"chosen on {t['chosen_on']} ({t['method']})" if t.get("chosen_on") else "0.5 (none chosen on validation)"
        print(f"model {predictor.path} ({self.meta.get('arch') or 'model'}, {self.meta['dataset']}, "
              f"{self.meta['input']['height']} px); thresholds {chosen}", file=self.out)

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
        width = max(len("finding"), *(len(n) for n in names))
        lines.append(f"  {'finding':<{width}}  {'prob':>6}  {'threshold':>9}")
        for k in _ranked(names, probs, self.top_k):
            t = thresholds[k]
            mark = "  *" if t is not None and probs[k] >= t and "predicted" not in calls else ""
            t_text = "-" if t is None else f"{t:.3f}"
            lines.append(f"  {names[k]:<{width}}  {probs[k]:6.3f}  {t_text:>9}{mark}")
        print("\n".join(lines), file=self.out)

    def finish(self, errors: list[dict]) -> None:
        pass


class CsvWriter:
    def __init__(self, out: TextIO, metadata: dict, top_k: int):
        self.out, self.meta = out, metadata
        self.writer = csv.writer(out, lineterminator="\n")

    def start(self, predictor: Predictor) -> None:
        task = self.meta["task"]
        call = "positive" if task.startswith("multi-label") else "call" if task == "binary-class" else "predicted"
        self.call_key = call
        self.writer.writerow(["file", "width", "height", "channels", *self.meta["output_names"], call])

    def write(self, pred: Prediction) -> None:
        calls = interpret(pred.probs, self.meta)
        value = calls[self.call_key]
        value = ";".join(value) if isinstance(value, list) else value
        self.writer.writerow([str(pred.path), pred.shape[1], pred.shape[0], pred.shape[2],
                              *(f"{float(p):.6f}" for p in pred.probs), value])

    def finish(self, errors: list[dict]) -> None:
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
                 **calls}
        if self.top_k > 0:
            names, probs = self.meta["output_names"], [float(p) for p in pred.probs]
            entry["top"] = [{"name": names[k], "prob": probs[k]} for k in _ranked(names, probs, self.top_k)]
        self.results.append(entry)

    def finish(self, errors: list[dict]) -> None:
        meta = self.meta
        doc = {
            "model": {"path": str(self.predictor.path), "kind": self.predictor.kind, "arch": meta.get("arch"),
                      "dataset": meta["dataset"], "task": meta["task"], "input": meta["input"]},
            "output_names": meta["output_names"],
            "thresholds": meta["thresholds"],
            "decision": meta.get("decision"),
            "results": self.results,
            "errors": errors,
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
) -> int:
    """Predict every image under ``inputs`` and print them; returns the exit status (0 or 1)."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    paths = imageio.find_images(inputs)
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
                              on_error=on_error, stats=stats):
        writer.write(pred)
    writer.finish(errors)
    out.flush()
    print(f"predicted {stats.images} image(s)" + (f", {stats.failed} failed" if stats.failed else ""), file=err)
    return 1 if errors else 0
