"""The review page in Gradio, and the local server around it (``python -m chest_tf.app``).

The page (``build_page``) over a ``session.Reviewer``:

- a "research use only, not for clinical use" banner, always visible;
- Review tab: drop one or many PNG, JPEG or DICOM files; a summary of every file (calls, OOD flag,
  warnings, and the one-line error of a file that could not be read or was refused); for the
  chosen image, the original beside a heatmap overlay for a chosen finding and method; per finding
  a probability bar with its validation threshold marked, and the call; the input-check warnings
  and the OOD flag; the results as CSV or JSON (``predict``'s formats);
- Model tab: the metrics with 95% CIs, the operating points, calibration and the OOD evaluation,
  the report's figures (ROC, operating points, calibration) and the model card.

The server (``serve``) binds to 127.0.0.1 unless told otherwise, refuses uploads over
``max_file_bytes`` (Gradio) and images over ``max_pixels`` (``imageio``), reads only files that
Gradio wrote into the upload folder (a fresh temporary folder, removed when the app stops, on
Ctrl-C or SIGTERM), and keeps serving whatever an upload holds: errors are shown in the page, and
an unexpected one is printed as one line, never a traceback. Gradio's analytics and update check
are off (nothing leaves the machine) and the page needs no CDN.

Gradio is the optional extra ``.[app]``; it is imported only here, inside the functions that
need it.
"""
from __future__ import annotations

import collections
import contextlib
import html
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import TextIO

import numpy as np
from PIL import Image

from chest_tf import imageio
from chest_tf.errors import ChestTFError, ConfigError, error_line
from chest_tf.review.session import MOST_PROBABLE, Review, Reviewer, findings_html, summary_html
from chest_tf.serving.input_checks import DEFAULT_POLICY, InputPolicy

DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_FILE_MB = 64
IMAGE_HEIGHT = 420  # px on the page (the full image in fullscreen)
FIGURE_HEIGHT = 460
BANNER = ("<b>Research use only. Not for clinical use.</b> This model has not been validated for diagnosis, "
          "triage or any decision about a patient. Its calls are at thresholds chosen on validation data; "
          "heatmaps show where the model looks, not what is there.")
CSS = """
#ctf-banner {background: #fff3cd; color: #5c4400; border: 2px solid #d39e00; border-radius: 6px;
             padding: 8px 12px; font-size: 15px;}
.ctf-findings {border-collapse: collapse; width: 100%; font-size: 14px;}
.ctf-findings td, .ctf-findings th {padding: 2px 8px; text-align: left; border-bottom: 1px solid #ddd;}
.ctf-barcell {width: 45%;}
.ctf-bar {position: relative; display: block; height: 14px; background: #e9ecef; border-radius: 3px;}
.ctf-fill {position: absolute; left: 0; top: 0; bottom: 0; background: #6c8ebf; border-radius: 3px;}
.ctf-positive .ctf-fill {background: #d9534f;}
.ctf-positive td:last-child, .ctf-predicted td:last-child {font-weight: bold; color: #b52b27;}
.ctf-thr {position: absolute; top: -3px; bottom: -3px; width: 2px; background: #222;}
.ctf-out {color: #b52b27;} .ctf-in {color: #2d6a2d;} .ctf-none {color: #666;}
.ctf-error {color: #b52b27;} .ctf-warning {color: #8a5a00;}
.ctf-note {color: #666; font-size: 12px;}
.ctf-files {border-collapse: collapse; font-size: 13px;} .ctf-files td, .ctf-files th {padding: 1px 8px;}
"""
GRADIO_MISSING = "the review app needs Gradio: pip install 'chest_tf[app]' (or pip install gradio)"


def check_gradio() -> None:
    """A one-line error when Gradio is not installed (without importing it: that takes seconds)."""
    if importlib.util.find_spec("gradio") is None:
        raise ConfigError(GRADIO_MISSING)


def require_gradio():
    """The gradio module, or a one-line error saying how to install it."""
    try:
        import gradio  # noqa: PLC0415 (optional extra)
    except ImportError:
        raise ConfigError(GRADIO_MISSING) from None
    return gradio


def _quiet_gradio_environment(upload_dir: Path) -> None:
    """Set before Gradio is imported: uploads into ``upload_dir``, no analytics, no SSR (no Node)."""
    os.environ["GRADIO_TEMP_DIR"] = str(upload_dir)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("GRADIO_SSR_MODE", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _report_problem(what: str, exc: BaseException) -> str:
    """One line on the server's stderr and the same line for the page (no traceback anywhere)."""
    line = f"{what}: {error_line(exc)}"
    print(f"app error: {line}", file=sys.stderr, flush=True)
    return line


def _figure(path: Path, folder: Path) -> str | None:
    """A copy of a report figure where Gradio serves from (the report's folder itself is never served)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return str(shutil.copyfile(path, folder / path.name))
    except OSError:
        return None


class _Shown:
    """The images the page shows, written as PNGs (zlib level 1: lossless, and several times faster
    to write than Gradio's own level-6 encoding of an array) into a folder Gradio serves from; only
    the newest ``keep`` stay."""

    def __init__(self, folder: Path, keep: int = 256):
        self.folder, self.keep = folder, keep
        self.folder.mkdir(parents=True, exist_ok=True)
        self._written: collections.deque[Path] = collections.deque()
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray | None) -> str | None:
        if image is None:
            return None
        path = self.folder / f"{uuid.uuid4().hex}.png"
        Image.fromarray(image).save(path, compress_level=1)
        with self._lock:
            self._written.append(path)
            while len(self._written) > self.keep:
                with contextlib.suppress(OSError):
                    self._written.popleft().unlink()
        return str(path)


def build_page(reviewer: Reviewer, work_dir: Path):
    """The Gradio Blocks of the review page (see the module docstring); downloads and shown images
    are written under ``work_dir``, which must lie in Gradio's upload folder."""
    gr = require_gradio()
    downloads_dir = work_dir / "downloads"
    shown_png = _Shown(work_dir / "shown")
    meta = reviewer.metadata
    findings = [MOST_PROBABLE, *reviewer.findings]
    methods = list(reviewer.methods)

    def blank_outputs(summary: str = ""):
        return ([], summary, gr.update(choices=[], value=None), None, None, "", findings_html(None, meta),
                gr.update(value=None, interactive=False), gr.update(value=None, interactive=False))

    def on_upload(files, previous, finding, method):
        paths = [getattr(f, "name", f) for f in (files or [])]
        if not paths:
            return blank_outputs()
        try:
            reviews, shown = reviewer.update(previous or [], paths)
            choices = [(f"{i + 1}. {r.name}", i) for i, r in enumerate(reviews)]
            view = reviewer.view(reviews[shown], finding, method)
            csv_path, json_path = reviewer.downloads(reviews, downloads_dir / uuid.uuid4().hex)
            return (reviews, summary_html(reviews, meta), gr.update(choices=choices, value=shown),
                    shown_png(view.original), shown_png(view.overlay), view.caption,
                    findings_html(reviews[shown], meta), gr.update(value=str(csv_path), interactive=True),
                    gr.update(value=str(json_path), interactive=True))
        except Exception as exc:  # noqa: BLE001 (the page shows it; the server keeps serving)
            line = _report_problem("reviewing the upload failed", exc)
            return blank_outputs(f'<p class="ctf-error" id="ctf-errors">{html.escape(line)}</p>')

    def on_view(reviews: list[Review], index, finding, method):
        if not reviews:
            return None, None, "", findings_html(None, meta)
        try:
            review = reviews[int(index) if index is not None else 0]
            view = reviewer.view(review, finding, method)
            return shown_png(view.original), shown_png(view.overlay), view.caption, findings_html(review, meta)
        except Exception as exc:  # noqa: BLE001
            line = _report_problem("drawing the heatmap failed", exc)
            return None, None, line, findings_html(None, meta)

    with gr.Blocks(title="chest_tf review", analytics_enabled=False) as page:
        gr.HTML(BANNER, elem_id="ctf-banner", js_on_load=None)
        gr.Markdown(f"**chest_tf review** - {reviewer.describe()}", elem_id="ctf-model-line")
        reviews_state = gr.State([])
        with gr.Tabs():
            with gr.Tab("Review", id="review"):
                upload = gr.File(file_count="multiple", file_types=list(imageio.IMAGE_EXTENSIONS),
                                 label="Radiographs: drop PNG, JPEG or DICOM files here (several at once)",
                                 elem_id="ctf-upload", height=140)
                summary = gr.HTML("", elem_id="ctf-summary", js_on_load=None)
                with gr.Row():
                    choice = gr.Dropdown(choices=[], value=None, label="image", elem_id="ctf-image-choice",
                                         interactive=True)
                    finding = gr.Dropdown(choices=findings, value=MOST_PROBABLE, label="finding to explain",
                                          elem_id="ctf-finding")
                    method = gr.Dropdown(choices=methods, value=reviewer.default_method, label="heatmap method",
                                         elem_id="ctf-method", interactive=bool(methods))
                with gr.Row(equal_height=True):
                    original = gr.Image(label="original", format="png", interactive=False, elem_id="ctf-original",
                                        buttons=["fullscreen"], height=IMAGE_HEIGHT)
                    overlay = gr.Image(label="heatmap overlay", format="png", interactive=False,
                                       elem_id="ctf-overlay", buttons=["fullscreen"], height=IMAGE_HEIGHT)
                caption = gr.Markdown("", elem_id="ctf-caption")
                result = gr.HTML(findings_html(None, meta), elem_id="ctf-result", js_on_load=None)
                with gr.Row():
                    csv_button = gr.DownloadButton("Download results (CSV)", interactive=False, elem_id="ctf-csv",
                                                   size="md")
                    json_button = gr.DownloadButton("Download results (JSON)", interactive=False,
                                                    elem_id="ctf-json", size="md")
            with gr.Tab("Model", id="model"):
                gr.Markdown(reviewer.model_summary(), elem_id="ctf-model-summary")
                figures = reviewer.figures()
                for first in range(0, len(figures), 2):
                    with gr.Row():
                        for path, label in figures[first:first + 2]:
                            gr.Image(_figure(path, work_dir / "figures"), label=label, format="png",
                                     interactive=False, buttons=["fullscreen"], height=FIGURE_HEIGHT)
                if not figures:
                    gr.Markdown("No report figures: a run's `eval/` (python -m chest_tf.evaluate) or an export's "
                                "`report/` (python -m chest_tf.export) holds them.")
                card = reviewer.model_card()
                with gr.Accordion("Model card (MODEL_CARD.md)", open=card is not None):
                    gr.Markdown(card or "No model card: export the run (python -m chest_tf.export) to write one.",
                                elem_id="ctf-model-card")

        outputs = [reviews_state, summary, choice, original, overlay, caption, result, csv_button, json_button]
        upload.change(on_upload, [upload, reviews_state, finding, method], outputs, show_progress="minimal")
        view_outputs = [original, overlay, caption, result]
        for control in (choice, finding, method):
            control.input(on_view, [reviews_state, choice, finding, method], view_outputs, show_progress="minimal")
    return page


def warm_up(reviewer: Reviewer) -> None:
    """Trace the model's serving and heatmap functions once, so the first upload is not the one
    that pays for it."""
    rng = np.random.default_rng(0)
    folder = reviewer.upload_dir / "warm-up"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "warm-up.png"
    size = max(64, 2 * int(reviewer.metadata["input"]["height"]))
    gradient = np.linspace(40, 200, size, dtype=np.float32)[None, :] + rng.normal(0, 20, (size, size))
    Image.fromarray(np.clip(gradient, 0, 255).astype(np.uint8)).save(path)
    try:
        reviews = reviewer.review([path])
        if reviews[0].prediction is not None:
            reviewer.view(reviews[0])
    except Exception as exc:  # noqa: BLE001 (warming up is an optimisation: the first upload will say)
        print(f"warning: warming the model up failed: {error_line(exc)}", file=sys.stderr)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class _Stop:
    """SIGINT and SIGTERM while the app serves: set an event the main thread waits on, so the server
    closes and the upload folder goes. Before it serves (loading, warming up): a KeyboardInterrupt,
    which unwinds the same way."""

    def __init__(self):
        self.event = threading.Event()
        self.serving = False

    def __call__(self, signum, frame) -> None:
        self.event.set()
        if not self.serving:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self):
        previous = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def serve(model_path: str | Path, *, dataset: str | None = None, host: str = DEFAULT_HOST, port: int | None = None,
          max_pixels: int = imageio.DEFAULT_MAX_PIXELS, max_file_bytes: int = DEFAULT_MAX_FILE_MB * 2**20,
          policy: InputPolicy = DEFAULT_POLICY, out: TextIO | None = None) -> int:
    """Serve the review page for ``model_path`` until Ctrl-C or SIGTERM (call it from the main
    thread); the upload folder is removed when it returns. Prints the page's address on ``out``
    (stdout)."""
    out = out if out is not None else sys.stdout
    stopper = _Stop()
    with stopper.installed():
        upload_dir = Path(tempfile.mkdtemp(prefix="chest_tf_app_")).resolve()
        try:
            _quiet_gradio_environment(upload_dir)
            reviewer = Reviewer(model_path, dataset, upload_dir=upload_dir, max_pixels=max_pixels, policy=policy)
            warm_up(reviewer)
            gr = require_gradio()
            page = build_page(reviewer, upload_dir / "page")
            try:
                page.launch(server_name=host, server_port=port, share=False, quiet=True, prevent_thread_lock=True,
                            inbrowser=False, show_error=False, max_file_size=max_file_bytes, ssr_mode=False,
                            mcp_server=False, enable_monitoring=False, pwa=False, theme=gr.themes.Default(),
                            css=CSS, footer_links=[])
            except OSError as exc:
                reason = "the port is in use; choose another --port" if "empty port" in str(exc) else error_line(exc)
                raise ChestTFError(f"cannot start the server on {host}:{port or 'a free port'}: {reason}") from None
            try:
                stopper.serving = True
                where = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{page.server_port}/"
                print(f"review app for {reviewer.resolved.path} on {where} (uploads in {upload_dir}; research use "
                      f"only, not for clinical use); Ctrl-C stops it", file=out, flush=True)
                if host not in ("127.0.0.1", "localhost", "::1"):
                    print(f"warning: listening on {host}: anyone who can reach this machine can use the app",
                          file=sys.stderr)
                stopper.event.wait()
                print("stopping the review app", file=out, flush=True)
            finally:
                stopper.serving = False
                with contextlib.suppress(Exception):
                    page.close(verbose=False)
            return 0
        finally:
            shutil.rmtree(upload_dir, ignore_errors=True)
