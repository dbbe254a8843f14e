"""What the review page does, without the web framework: a ``Reviewer`` over one model.

    reviewer = Reviewer("saved_models/resnet18_chestmnist_224", upload_dir=folder)
    reviews = reviewer.review(paths)                  # files inside ``upload_dir`` -> Review each
    reviews, shown = reviewer.update(reviews, more)   # files added to the page: only those predicted
    view = reviewer.view(reviews[0], "effusion", "gradcam")   # the original, the overlay, a caption
    html = findings_html(reviews[0], reviewer.metadata)       # bars, thresholds, calls, checks, OOD
    reviewer.downloads(reviews, out_dir)              # results.csv and results.json

Everything is the library's: files are read and guarded as ``predict`` reads them
(``serving.predictor.predict_files``: ``imageio`` decoding with the pixel limit, the input checks,
one-line messages for bad files), the calls are ``predictor.interpret``'s, the downloads are
``serving.outputs``' CSV and JSON writers, the heatmaps ``explain.methods.Explainer``'s and the
overlays ``explain.render.blend_overlay``. A file's name as uploaded is only ever displayed; the
server reads nothing outside ``upload_dir`` and no server path reaches the page.
"""
from __future__ import annotations

import dataclasses
import html
import io
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from chest_tf import imageio
from chest_tf.errors import ChestTFError, error_line
from chest_tf.explain.files import choose_targets
from chest_tf.explain.methods import ANY_METHODS, METHOD_TITLES, Explainer, family_methods, prepare_images
from chest_tf.explain.render import blend_overlay, resize_heatmap
from chest_tf.runs import ResolvedModel, resolve_model
from chest_tf.serving.input_checks import DEFAULT_POLICY, InputPolicy
from chest_tf.serving.model_card import CARD_NAME
from chest_tf.serving.outputs import CsvWriter, JsonWriter
from chest_tf.serving.predictor import Prediction, Predictor, interpret, load_predictor, predict_files
from chest_tf.serving.release import REPORT_DIR

MAX_FILES = 64  # on the page at a time
DISPLAY_SIDE = 768  # the page shows images at most this many px on a side
DISPLAY_MIN_SIDE = 448  # and small ones enlarged to about this
MOST_PROBABLE = "most probable finding"
FIGURES = (("roc_curves.png", "ROC curves (dot: the operating point at the validation-chosen threshold)"),
           ("operating_points.png", "Sensitivity and specificity at the validation-chosen thresholds"),
           ("calibration.png", "Reliability diagram (calibration) on test"),
           ("calibration_uncalibrated.png", "Reliability diagram before temperature scaling"),
           ("pr_curves.png", "Precision-recall curves"))


@dataclass
class Review:
    """One uploaded file: its prediction, or the one-line reason it has none."""

    name: str  # the file's name as uploaded: shown, never used as a path
    path: Path  # the server's copy, inside the upload folder
    prediction: Prediction | None = None
    error: str | None = None


@dataclass
class View:
    """What the page shows for one image, finding and method."""

    original: np.ndarray | None  # uint8 (h, w) or (h, w, 3), at most DISPLAY_SIDE px
    overlay: np.ndarray | None  # uint8 (h, w, 3)
    caption: str


def _client_text(message: str, path: Path, name: str) -> str:
    """A library message with the server's path of an upload replaced by the file's own name."""
    return message.replace(str(path), name)


def display_image(image: np.ndarray, side: int = DISPLAY_SIDE, min_side: int = DISPLAY_MIN_SIDE) -> np.ndarray:
    """uint8 (H, W, C) -> (h, w) gray or (h, w, 3) for the page: downscaled (antialiased) to at most
    ``side`` px, or a small image (a MedMNIST-sized one) enlarged by a whole factor, pixel for pixel,
    to about ``min_side`` px."""
    image = np.asarray(image)
    image = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image[..., :3]
    height, width = image.shape[:2]
    longest = max(height, width)
    if longest < min_side:
        factor = min_side // longest
        return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1) if factor > 1 else image
    if longest <= side:
        return np.ascontiguousarray(image)
    scale = side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))


class Reviewer:
    """One model, as the page uses it: predictions (``Predictor``: an export's SavedModel, or a run's
    Keras model through the same serving computation), heatmaps (the Keras model), metadata."""

    def __init__(self, model_path: str | Path, dataset: str | None = None, *, upload_dir: str | Path,
                 max_pixels: int = imageio.DEFAULT_MAX_PIXELS, policy: InputPolicy = DEFAULT_POLICY,
                 max_files: int = MAX_FILES):
        self.upload_dir = Path(upload_dir).resolve()
        self.max_pixels, self.policy, self.max_files = max_pixels, policy, max_files
        self.resolved: ResolvedModel = resolve_model(model_path, dataset)
        self.predictor: Predictor = load_predictor(model_path, dataset)
        self.metadata: dict = self.predictor.metadata
        self._lock = threading.Lock()  # one explainer call at a time (shared traced functions)
        self._explainers: dict[str, Explainer] = {}
        self._images: OrderedDict[str, np.ndarray] = OrderedDict()  # a few decoded uploads, for the overlay
        self.keras_model, self.explain_problem = None, None
        try:  # a run or .keras predictor is the Keras model already; an export keeps model.keras beside it
            self.keras_model = self.predictor.handle if self.predictor.kind != "savedmodel" else self.resolved.model
            self.methods = tuple(family_methods(self.keras_model))
        except ChestTFError as exc:
            self.explain_problem, self.methods = str(exc), ()
        except Exception as exc:  # noqa: BLE001 (a model the explain library cannot read: no heatmaps)
            self.explain_problem, self.methods = f"heatmaps unavailable: {error_line(exc)}", ANY_METHODS

    # -- what the page offers -------------------------------------------------------------------
    @property
    def default_method(self) -> str | None:
        return self.methods[0] if self.methods else None

    @property
    def findings(self) -> list[str]:
        """What the finding menu offers after ``MOST_PROBABLE``: the outputs, or a one-logit binary
        model's two classes."""
        names = list(self.metadata["output_names"])
        classes = list(self.metadata.get("class_names") or [])
        return classes if len(names) == 1 and len(classes) == 2 else names

    def describe(self) -> str:
        """One line about the model for the page's header."""
        meta = self.metadata
        t = meta["thresholds"]
        chosen = (f"thresholds chosen on {t['chosen_on']} ({t['method']})" if t.get("chosen_on")
                  else "thresholds 0.5 (none chosen on validation)")
        calibrated = "calibrated probabilities" if (meta.get("calibration") or {}).get("method") == "temperature" \
            else "uncalibrated probabilities"
        ood = meta.get("ood") or {}
        ood_text = f"OOD score {ood['method']}" if ood.get("method", "none") != "none" else "no OOD score"
        return (f"{meta.get('name') or self.resolved.path.name}: {meta.get('arch') or 'model'} on {meta['dataset']} at "
                f"{meta['input']['height']} px ({self.resolved.kind}); {chosen}; {calibrated}; {ood_text}")

    # -- reviewing uploads ----------------------------------------------------------------------
    def _inside_uploads(self, path: Path) -> bool:
        try:
            return path.resolve().is_relative_to(self.upload_dir)
        except (OSError, RuntimeError):
            return False

    def review(self, paths: Sequence[str | Path]) -> list[Review]:
        """Predict the uploaded files (each must lie inside ``upload_dir``; anything else is refused
        unread), in order; unreadable and refused files get their one-line message."""
        reviews = [Review(Path(p).name, Path(p)) for p in paths]
        for r in reviews[self.max_files:]:
            r.error = f"{r.name}: not reviewed: at most {self.max_files} files at a time (remove some)"
        wanted = []
        for r in reviews[:self.max_files]:
            if self._inside_uploads(r.path):
                wanted.append(r)
            else:
                r.error = f"{r.name}: not an uploaded file"
        by_path = {str(r.path): r for r in wanted}

        def on_error(path: Path, message: str) -> None:
            r = by_path[str(path)]
            r.error = _client_text(message, r.path, r.name).replace(
                "; --check ", "; python -m chest_tf.app --check ")  # predict's hint, in the app's words

        for pred in predict_files(self.predictor, [r.path for r in wanted], batch_size=8, max_pixels=self.max_pixels,
                                  policy=self.policy, on_error=on_error):
            by_path[str(pred.path)].prediction = pred
        return reviews

    def update(self, previous: Sequence[Review], paths: Sequence[str | Path]) -> tuple[list[Review], int]:
        """The page's file list changed to ``paths`` (files are added to it, or removed): reviews for
        all of them, reusing ``previous`` ones, and the index of the image to show (the first new
        file that was reviewed, else the first reviewed one, else 0). Beyond ``max_files`` files
        nothing more is reviewed."""
        known = {str(r.path): r for r in previous}
        paths = [Path(p) for p in paths]
        fresh = [p for p in paths[:self.max_files] if str(p) not in known]
        new = {str(r.path): r for r in self.review(fresh)} if fresh else {}
        reviews = []
        for k, path in enumerate(paths):
            if str(path) in known or str(path) in new:
                reviews.append(known.get(str(path)) or new[str(path)])
            else:
                reviews.append(Review(path.name, path, error=f"{path.name}: not reviewed: at most {self.max_files} "
                                                             "files at a time (remove some)"))
        done = [k for k, r in enumerate(reviews) if r.prediction is not None]
        focus = next((k for k in done if str(reviews[k].path) in new), done[0] if done else 0)
        return reviews, focus

    def _image(self, review: Review) -> np.ndarray:
        key = str(review.path)
        with self._lock:
            if key in self._images:
                self._images.move_to_end(key)
                return self._images[key]
        # Decoded again for display: predict_files hands back predictions, not pixels.
        image = imageio.read_image(review.path, self.max_pixels)
        with self._lock:
            self._images[key] = image
            while len(self._images) > 4:
                self._images.popitem(last=False)
        return image

    def _explainer(self, method: str) -> Explainer:
        if method not in self._explainers:
            self._explainers[method] = Explainer(self.keras_model, method)
        return self._explainers[method]

    def view(self, review: Review | None, finding: str | None = None, method: str | None = None) -> View:
        """The original and its heatmap overlay for ``finding`` (None or ``MOST_PROBABLE``: the most
        probable output) by ``method`` (None: the model family's default)."""
        if review is None:
            return View(None, None, "")
        if review.prediction is None:
            return View(None, None, review.error or "")
        try:
            image = self._image(review)
        except ChestTFError as exc:
            return View(None, None, _client_text(str(exc), review.path, review.name))
        shown = display_image(image)
        if self.keras_model is None or not self.methods:
            return View(shown, None, self.explain_problem or "no heatmaps for this model")
        method = method if method in self.methods else self.default_method
        labels = None if finding in (None, "", MOST_PROBABLE) else [finding]
        try:
            target = choose_targets(review.prediction.probs, self.metadata, labels, top_k=1)[0]
            with self._lock:
                explainer = self._explainer(method)
                heatmap = explainer.heatmaps(prepare_images(image[None], self.keras_model), [target.index],
                                             [target.sign])[0]
        except ChestTFError as exc:
            return View(shown, None, str(exc))
        overlay = blend_overlay(shown, resize_heatmap(heatmap, *shown.shape[:2]))
        empty = "" if heatmap.max() > 0 else " (empty map: no positive evidence)"
        caption = f"{METHOD_TITLES.get(method, method)} for {target.name} (p = {target.prob:.3f}){empty}"
        return View(shown, np.clip(np.rint(overlay * 255), 0, 255).astype(np.uint8), caption)

    # -- downloads ------------------------------------------------------------------------------
    def results_text(self, reviews: Sequence[Review], fmt: str) -> str:
        """The results as ``predict --format csv|json`` writes them, files named as uploaded."""
        out = io.StringIO()
        writer = {"csv": CsvWriter, "json": JsonWriter}[fmt](out, self.metadata, 0)
        writer.start(self.predictor)
        for r in reviews:
            if r.prediction is not None:
                writer.write(dataclasses.replace(r.prediction, path=Path(r.name)))
        writer.finish([{"file": r.name, "error": r.error} for r in reviews if r.error], [])
        return out.getvalue()

    def downloads(self, reviews: Sequence[Review], folder: str | Path) -> tuple[Path, Path]:
        """``results.csv`` and ``results.json`` written into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        csv_path, json_path = folder / "chest_tf_results.csv", folder / "chest_tf_results.json"
        csv_path.write_text(self.results_text(reviews, "csv"))
        json_path.write_text(self.results_text(reviews, "json"))
        return csv_path, json_path

    # -- the model tab --------------------------------------------------------------------------
    def report_folder(self) -> Path | None:
        """Where the model's report lives: an export's report/, a run's eval/."""
        resolved = self.resolved
        if resolved.metadata_dir is not None:
            folder = resolved.metadata_dir / REPORT_DIR
        elif resolved.config is not None:
            folder = resolved.keras_path.parent / "eval"
        else:
            return None
        return folder if folder.is_dir() else None

    def model_card(self) -> str | None:
        """MODEL_CARD.md of an export without its YAML front matter (None without one)."""
        folder = self.resolved.metadata_dir
        path = folder / CARD_NAME if folder is not None else None
        if path is None or not path.is_file():
            return None
        text = path.read_text()
        if text.startswith("---\n"):
            end = text.find("\n---\n", 4)
            text = text[end + 5:] if end >= 0 else text
        return text.strip()

    def report_metrics(self) -> dict | None:
        folder = self.report_folder()
        path = folder / "metrics.json" if folder is not None else None
        if path is None or not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def figures(self) -> list[tuple[Path, str]]:
        folder = self.report_folder()
        if folder is None:
            return []
        return [(folder / name, caption) for name, caption in FIGURES if (folder / name).is_file()]

    def model_summary(self) -> str:
        """Markdown: headline metrics with CIs, the per-finding operating points, calibration, OOD."""
        return model_summary_markdown(self.metadata, self.report_metrics(), self.resolved.kind)


# ----------------------------------------------------------------------------------------------
# HTML and Markdown (plain functions of the results and the metadata)
# ----------------------------------------------------------------------------------------------
def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _ood_html(pred: Prediction, meta: dict) -> str:
    if pred.in_distribution is None:
        return ('<p class="ctf-ood ctf-none">No OOD score for this model (an export has one: '
                'python -m chest_tf.export).</p>')
    threshold = (meta.get("ood") or {}).get("threshold")
    limit = f" (threshold {threshold:.3g})" if isinstance(threshold, (int, float)) else ""
    if pred.in_distribution:
        return (f'<p class="ctf-ood ctf-in">In distribution: OOD score {pred.ood_score:.3g}{limit}.</p>')
    return (f'<p class="ctf-ood ctf-out" id="ctf-ood-flag"><b>Not like the training images</b>: OOD score '
            f'{pred.ood_score:.3g}{limit}. Treat these probabilities with suspicion.</p>')


def findings_html(review: Review | None, meta: dict) -> str:
    """One image's result: the calls, the OOD flag, the input checks' warnings, and per finding a
    probability bar with its threshold marked, the value, the threshold and the call."""
    if review is None:
        return '<div class="ctf-result ctf-empty">Drop one or more radiographs above (PNG, JPEG or DICOM).</div>'
    if review.prediction is None:
        return f'<div class="ctf-result"><p class="ctf-error">{_e(review.error)}</p></div>'
    pred = review.prediction
    calls = interpret(pred.probs, meta)
    names, thresholds = meta["output_names"], meta["thresholds"]["values"]
    probs = [float(p) for p in pred.probs]
    if "positive" in calls:
        verdict = "positive: " + (", ".join(calls["positive"]) or "none above its threshold")
    elif "call" in calls:
        verdict = f"call: {calls['call']}"
    else:
        verdict = f"predicted: {calls['predicted']}"
    h, w, c = pred.shape
    parts = [f'<div class="ctf-result"><p class="ctf-verdict"><b>{_e(review.name)}</b> '
             f'({w} x {h} {"gray" if c == 1 else "RGB"}): {_e(verdict)}</p>', _ood_html(pred, meta)]
    if pred.checks:
        parts.append('<ul class="ctf-checks">' + "".join(
            f'<li class="ctf-{_e(c.level)}">{_e(c.level)} {_e(c.check)}: {_e(c.message)}</li>' for c in pred.checks)
            + "</ul>")
    calibrated = meta["signature"]["outputs"]["probs"].get("calibrated")
    t = meta["thresholds"]
    source = (f"chosen on {t['chosen_on']} ({t['method']})" if t.get("chosen_on")
              else "0.5, none chosen on validation")
    spread = pred.uncertainty is not None
    rows = []
    for k in sorted(range(len(names)), key=lambda i: -probs[i]):
        threshold = thresholds[k]
        if "predicted" in calls:
            call = "predicted" if names[k] == calls["predicted"] else ""
        else:
            call = "positive" if threshold is not None and probs[k] >= threshold else "negative"
        mark = ("" if threshold is None
                else f'<span class="ctf-thr" style="left:{100 * min(threshold, 1.0):.1f}%"></span>')
        sd = f"<td>{pred.uncertainty[k]:.3f}</td>" if spread else ""
        rows.append(
            f'<tr class="ctf-{call or "none"}"><td>{_e(names[k])}</td>'
            f'<td class="ctf-barcell"><span class="ctf-bar"><span class="ctf-fill" style="width:{100 * probs[k]:.1f}%">'
            f'</span>{mark}</span></td><td>{probs[k]:.3f}</td>'
            f'<td>{"-" if threshold is None else f"{threshold:.3f}"}</td>{sd}<td>{call}</td></tr>')
    head = ("<tr><th>finding</th><th>probability (| threshold)</th><th>p</th><th>threshold</th>"
            + ("<th>member sd</th>" if spread else "") + "<th>call</th></tr>")
    parts.append(f'<table class="ctf-findings" id="ctf-findings"><thead>{head}</thead><tbody>{"".join(rows)}'
                 f'</tbody></table><p class="ctf-note">{"Calibrated" if calibrated else "Uncalibrated"} '
                 f'probabilities; thresholds {_e(source)}.</p></div>')
    return "".join(parts)


def summary_html(reviews: Sequence[Review], meta: dict) -> str:
    """All files of an upload: the calls, OOD flag and warnings per image, and every error."""
    if not reviews:
        return ""
    done = [r for r in reviews if r.prediction is not None]
    failed = [r for r in reviews if r.prediction is None]
    parts = [f'<div class="ctf-summary"><p>{len(done)} image(s) reviewed'
             + (f", <b>{len(failed)} not reviewed</b>" if failed else "") + "</p>"]
    if failed:
        parts.append('<ul class="ctf-errors" id="ctf-errors">'
                     + "".join(f'<li class="ctf-error">{_e(r.error)}</li>' for r in failed) + "</ul>")
    if done:
        rows = []
        for r in done:
            calls = interpret(r.prediction.probs, meta)
            value = calls.get("positive", calls.get("call", calls.get("predicted")))
            value = (", ".join(value) or "none") if isinstance(value, list) else value
            ood = ("-" if r.prediction.in_distribution is None
                   else "in" if r.prediction.in_distribution else "<b>OUT</b>")
            warn = len([c for c in r.prediction.checks if c.level == "warning"])
            rows.append(f"<tr><td>{_e(r.name)}</td><td>{_e(value)}</td><td>{ood}</td><td>{warn or ''}</td></tr>")
        parts.append('<table class="ctf-files"><thead><tr><th>file</th><th>calls</th><th>distribution</th>'
                     f'<th>warnings</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')
    return "".join(parts) + "</div>"


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def _with_ci(value, ci) -> str:
    text = _num(value)
    if ci and len(ci) == 2 and all(v is not None and np.isfinite(v) for v in ci):
        text += f" ({ci[0]:.3f}-{ci[1]:.3f})"
    return text


def model_summary_markdown(meta: dict, report: dict | None, kind: str) -> str:
    """The model tab's numbers: headline metrics with 95% CIs, per-finding operating points (the
    report's test rows, else the metadata's), calibration and the OOD evaluation."""
    metrics = meta.get("metrics") or {}
    head = (report or {}).get("headline") or metrics.get("headline") or {}
    test = (report or {}).get("test") or metrics.get("test") or {}
    lines = [f"**{meta.get('arch') or 'model'}** on **{meta['dataset']}** at {meta['input']['height']} px "
             f"({kind}); outputs: {len(meta['output_names'])}; {meta['activation']} probabilities.", ""]
    if head.get("auc") is not None:
        lines += ["| test | value (95% CI) |", "|---|---|",
                  f"| AUC (mean per-label ROC-AUC) | {_with_ci(head.get('auc'), head.get('auc_ci'))} |",
                  f"| ACC (at 0.5) | {_with_ci(head.get('acc'), head.get('acc_ci'))} |",
                  f"| images | {test.get('n', 'n/a')} |", ""]
    else:
        lines += ["No test metrics: evaluate the run (python -m chest_tf.evaluate) or export it.", ""]
    rows = test.get("per_label") or []
    t = meta["thresholds"]
    if rows:
        lines += [f"**Operating points** (test; thresholds chosen on {t.get('chosen_on') or 'nothing'}, "
                  f"{t.get('method')}):", "",
                  "| finding | AUC (95% CI) | threshold | sensitivity (95% CI) | specificity (95% CI) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r.get('label')} | {_with_ci(r.get('auc'), r.get('auc_ci'))} | {_num(r.get('threshold'))} | "
                  f"{_with_ci(r.get('sensitivity'), r.get('sensitivity_ci'))} | "
                  f"{_with_ci(r.get('specificity'), r.get('specificity_ci'))} |" for r in rows]
        lines.append("")
    calibration = meta.get("calibration") or {}
    if calibration.get("method") == "temperature":
        ece = calibration.get("ece") or {}
        lines += [f"**Calibration**: temperature scaling ({calibration.get('scope')}, fitted on val); mean ECE on "
                  f"test {_num(ece.get('test_before'), 4)} before, {_num(ece.get('test_after'), 4)} after.", ""]
    else:
        lines += ["**Calibration**: none; the probabilities are the model's own.", ""]
    ood = meta.get("ood") or {}
    if ood.get("method", "none") != "none":
        lines += [f"**Out-of-distribution score**: {ood['method']}; in distribution up to {ood['threshold']:.4g} "
                  f"(the {ood.get('percentile', 99):g}th percentile of val). AUROC against each set:", "",
                  "| set | kind | images | AUROC | flagged |", "|---|---|---|---|---|"]
        for name, row in (ood.get("evaluation") or {}).items():
            flagged = row.get("flagged")
            lines.append(f"| {name} | {row.get('kind')} | {row.get('n')} | {_num(row.get('auroc'))} | "
                         f"{'n/a' if flagged is None else f'{flagged:.1%}'} |")
        lines.append("")
    else:
        lines += ["**Out-of-distribution score**: none (export the run to get one).", ""]
    return "\n".join(lines)
