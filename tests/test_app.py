"""The review app (``python -m chest_tf.app``, ``chest_tf.review``): the page's logic on a tiny export,
the demo model's cache and lock, the command's one-line errors, and the page itself in a real
browser (headless Chromium from the Debian package, driven by Playwright)."""
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from PIL import Image  # noqa: E402

from chest_tf.console import run_cli  # noqa: E402
from chest_tf.data import phantom  # noqa: E402
from chest_tf.data.info import get_info  # noqa: E402
from chest_tf.review import demo, session  # noqa: E402
from chest_tf.review import page as review_page  # noqa: E402
from chest_tf.serving.input_checks import CheckResult  # noqa: E402
from chest_tf.serving.predictor import Prediction  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LABELS = list(get_info("chestmnist").labels)
THRESHOLDS = [round(0.2 + 0.04 * k, 3) for k in range(14)]
THRESHOLDS[3] = None  # undefined on val
CHROMIUM = Path(os.environ.get("CHEST_TF_CHROMIUM", "/usr/bin/chromium"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# ----------------------------------------------------------------------------------------------
# Fixtures: a tiny exported CNN (Grad-CAM needs a feature map), a radiograph, a broken file
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    from chest_tf.models.registry import build_model
    from chest_tf.serving.release import ReleaseOptions
    from chest_tf.serving.savedmodel import export_run

    run = tmp_path_factory.mktemp("app") / "run"
    (run / "eval").mkdir(parents=True)
    build_model("resnet18", (28, 28, 1), 14, width=8).save(run / "best.keras")
    (run / "config.json").write_text(json.dumps(
        {"config": {"data": {"dataset": "chestmnist", "size": 28}, "model": {"arch": "resnet18"}}}))
    (run / "eval" / "metrics.json").write_text(json.dumps(
        {"thresholds": {"method": "youden", "chosen_on": "val", "values": THRESHOLDS},
         "headline": {"split": "test", "auc": 0.61, "auc_ci": [0.58, 0.64], "acc": 0.9, "acc_ci": [0.88, 0.92]},
         "test": {"n": 40, "auc": 0.61, "per_label": [
             {"label": name, "auc": 0.6, "auc_ci": [0.5, 0.7], "threshold": THRESHOLDS[k], "sensitivity": 0.7,
              "sensitivity_ci": [0.6, 0.8], "specificity": 0.5, "specificity_ci": [0.4, 0.6]}
             for k, name in enumerate(LABELS)]}}))
    return export_run(run, run.parent / "tiny_resnet_export", verify=False, options=ReleaseOptions.plain())


@pytest.fixture(scope="module")
def radiograph(tmp_path_factory) -> Path:
    """A 224 px phantom chest radiograph as a PNG."""
    path = tmp_path_factory.mktemp("images") / "chest_xray.png"
    Image.fromarray(phantom.generate(224, 1, seed=0, split="test").images[0]).save(path)
    return path


def _broken_png(folder: Path) -> Path:
    path = folder / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    return path


@pytest.fixture(scope="module")
def uploads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="module")
def reviewer(exported, uploads):
    return session.Reviewer(exported, upload_dir=uploads)


def _upload(uploads: Path, source: Path, name: str | None = None) -> Path:
    """As Gradio stores an upload: a folder of its own inside the upload folder, the file's name."""
    folder = Path(tempfile.mkdtemp(dir=uploads))
    target = folder / (name or source.name)
    shutil.copyfile(source, target)
    return target


# ----------------------------------------------------------------------------------------------
# The page's logic, without a browser
# ----------------------------------------------------------------------------------------------
def test_review_predicts_uploads_and_reports_bad_files_by_their_own_name(reviewer, uploads, radiograph, tmp_path):
    good = _upload(uploads, radiograph)
    broken = _upload(uploads, _broken_png(tmp_path))
    outside = tmp_path / "elsewhere.png"
    shutil.copyfile(radiograph, outside)
    reviews = reviewer.review([good, broken, outside])
    assert [r.name for r in reviews] == ["chest_xray.png", "broken.png", "elsewhere.png"]
    assert reviews[0].prediction is not None and reviews[0].prediction.probs.shape == (14,)
    assert reviews[0].error is None
    assert reviews[1].prediction is None
    assert reviews[1].error.startswith("broken.png: truncated or corrupt image"), reviews[1].error
    assert str(uploads) not in reviews[1].error  # no server path reaches the page
    assert reviews[2].error == "elsewhere.png: not an uploaded file"  # never read
    html = session.summary_html(reviews, reviewer.metadata)
    assert "1 image(s) reviewed" in html and "broken.png: truncated or corrupt image" in html


def test_input_check_refusal_and_file_limit_are_one_line_errors(exported, uploads, tmp_path):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(blank)
    limited = session.Reviewer(exported, upload_dir=uploads, max_files=1)
    reviews = limited.review([_upload(uploads, blank), _upload(uploads, blank, "second.png")])
    assert reviews[0].error.startswith("blank.png: the image is blank or near-constant"), reviews[0].error
    assert "python -m chest_tf.app --check blank=warning" in reviews[0].error
    assert reviews[1].error == "second.png: not reviewed: at most 1 files at a time (remove some)"


def test_files_added_to_the_page_are_reviewed_once_and_shown(reviewer, uploads, radiograph, tmp_path):
    first = _upload(uploads, radiograph, "first.png")
    broken = _upload(uploads, _broken_png(tmp_path))
    second = _upload(uploads, radiograph, "second.png")
    reviews, shown = reviewer.update([], [first])
    assert shown == 0 and reviews[0].prediction is not None
    more, shown = reviewer.update(reviews, [first, broken, second])
    assert more[0] is reviews[0]  # not predicted again
    assert [r.name for r in more] == ["first.png", "broken.png", "second.png"] and shown == 2  # the new one
    fewer, shown = reviewer.update(more, [broken])  # files removed on the page
    assert fewer == [more[1]] and shown == 0


def test_pixel_limit_comes_from_imageio(exported, uploads, radiograph):
    small_limit = session.Reviewer(exported, upload_dir=uploads, max_pixels=100 * 100)
    (review,) = small_limit.review([_upload(uploads, radiograph)])
    assert review.prediction is None and "exceeds the limit of 10,000" in review.error


def test_view_draws_the_overlay_for_the_chosen_finding_and_method(reviewer, uploads, radiograph):
    (review,) = reviewer.review([_upload(uploads, radiograph)])
    assert reviewer.methods[0] == "gradcam" and "occlusion" in reviewer.methods
    view = reviewer.view(review)
    assert view.original.shape == (448, 448) and view.original.dtype == np.uint8  # 224 px, shown twice as large
    assert view.overlay.shape == (448, 448, 3) and view.overlay.dtype == np.uint8
    top = LABELS[int(np.argmax(review.prediction.probs))]
    assert view.caption.startswith(f"Grad-CAM for {top} (p = ")
    other = reviewer.view(review, "effusion", "hirescam")
    assert other.caption.startswith("HiResCAM for effusion")
    assert reviewer.view(review, "effusion", "not-a-method").caption.startswith("Grad-CAM for effusion")


def test_large_images_are_shown_downscaled_small_ones_enlarged_pixel_for_pixel():
    image = np.zeros((2000, 1000, 1), np.uint8)
    assert session.display_image(image).shape == (session.DISPLAY_SIDE, session.DISPLAY_SIDE // 2)
    assert session.display_image(np.zeros((500, 600, 3), np.uint8)).shape == (500, 600, 3)
    small = np.arange(28 * 28, dtype=np.uint16).reshape(28, 28, 1).astype(np.uint8)
    shown = session.display_image(small)
    assert shown.shape == (448, 448) and (shown[::16, ::16] == small[..., 0]).all()


def _prediction(**kw) -> Prediction:
    probs = np.linspace(0.9, 0.05, 14).astype(np.float32)
    return Prediction(Path("x.png"), (300, 200, 1), probs, **kw)


def test_findings_html_bars_thresholds_calls_checks_and_ood(reviewer):
    meta = {**reviewer.metadata, "ood": {"method": "mahalanobis", "threshold": 10.0}}
    warn = CheckResult("inverted", "warning", "likely inverted polarity <b>")
    review = session.Review('<img src=x onerror="alert(1)">.png', Path("x"),
                            _prediction(checks=[warn], ood_score=15.2, in_distribution=False))
    html = session.findings_html(review, meta)
    assert "<img src=x" not in html and "&lt;img src=x" in html  # names are escaped
    assert "likely inverted polarity &lt;b&gt;" in html
    assert "Not like the training images" in html and "15.2" in html and "threshold 10" in html
    assert html.count("<tr class=") == 14
    # the first finding: p 0.9 against 0.2: positive, with its threshold marked on the bar
    assert re.search(r'<tr class="ctf-positive"><td>atelectasis</td>.*?left:20\.0%.*?<td>0\.900</td><td>0\.200</td>'
                     r"<td>positive</td>", html)
    assert "<td>-</td><td>negative</td>" in html  # the undefined threshold: never positive
    assert "In distribution" in session.findings_html(
        session.Review("a.png", Path("a"), _prediction(ood_score=1.0, in_distribution=True)), meta)
    assert "No OOD score" in session.findings_html(session.Review("a.png", Path("a"), _prediction()), meta)


def test_downloads_are_predicts_csv_and_json_with_uploaded_names(reviewer, uploads, radiograph, tmp_path):
    reviews = reviewer.review([_upload(uploads, radiograph), _upload(uploads, _broken_png(tmp_path))])
    csv_path, json_path = reviewer.downloads(reviews, tmp_path / "out")
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("file,width,height,channels,atelectasis,") and len(lines) == 2
    assert lines[1].startswith("chest_xray.png,224,224,1,")
    doc = json.loads(json_path.read_text())
    assert doc["results"][0]["file"] == "chest_xray.png" and "positive" in doc["results"][0]
    assert doc["errors"][0]["file"] == "broken.png" and "corrupt" in doc["errors"][0]["error"]
    assert str(uploads) not in csv_path.read_text() + json_path.read_text()


def test_model_tab_metrics_with_cis_operating_points_calibration_and_ood(reviewer):
    text = reviewer.model_summary()
    assert "| AUC (mean per-label ROC-AUC) | 0.610 (0.580-0.640) |" in text
    assert "| atelectasis | 0.600 | 0.200 | 0.700 | 0.500 |" in text  # the metadata's rows carry no CIs
    assert "**Calibration**: none" in text and "**Out-of-distribution score**: none" in text
    meta = {**reviewer.metadata,
            "calibration": {"method": "temperature", "scope": "global", "ece": {"test_before": 0.05,
                                                                                 "test_after": 0.01}},
            "ood": {"method": "mahalanobis", "threshold": 11.9, "percentile": 99,
                    "evaluation": {"uniform noise": {"kind": "far", "n": 800, "auroc": 1.0, "flagged": 1.0}}}}
    report = {"test": {"n": 40, "per_label": [{"label": "atelectasis", "auc": 0.6, "auc_ci": [0.5, 0.7],
                                               "threshold": 0.2, "sensitivity": 0.7, "sensitivity_ci": [0.6, 0.8],
                                               "specificity": 0.5, "specificity_ci": [0.4, 0.6]}]}}
    text = session.model_summary_markdown(meta, report, "export")  # an export's report/metrics.json
    assert "| atelectasis | 0.600 (0.500-0.700) | 0.200 | 0.700 (0.600-0.800) | 0.500 (0.400-0.600) |" in text
    assert "mean ECE on test 0.0500 before, 0.0100 after" in text
    assert "| uniform noise | far | 800 | 1.000 | 100.0% |" in text
    assert reviewer.model_card().startswith("# tiny_resnet_export: resnet18 on chestmnist at 28 px")
    assert reviewer.figures() == []  # a plain export has no report


def test_a_run_dir_is_reviewed_through_the_same_serving_computation(exported, uploads, radiograph):
    from_run = session.Reviewer(exported.parent / "run", upload_dir=uploads)
    assert from_run.resolved.kind == "run" and from_run.methods[0] == "gradcam"
    path = _upload(uploads, radiograph)
    (a,) = from_run.review([path])
    (b,) = session.Reviewer(exported, upload_dir=uploads).review([path])
    np.testing.assert_allclose(a.prediction.probs, b.prediction.probs, atol=1e-5)
    assert from_run.model_card() is None and "AUC (mean per-label ROC-AUC) | 0.610 (0.580-0.640)" in \
        from_run.model_summary()


# ----------------------------------------------------------------------------------------------
# The demo model: cached, built once, never twice at the same time
# ----------------------------------------------------------------------------------------------
def _fake_export(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"")


def test_demo_model_is_built_once_then_cached(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setenv("CHEST_TF_DATA_DIR", str(tmp_path))

    def fake_train(config, run_dir, **kw):
        calls.append(("train", config.data.dataset, config.model.overrides))
        (Path(run_dir) / "finished.json").parent.mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "finished.json").write_text("{}")

    def fake_export(run_dirs, out, **kw):
        calls.append(("export", kw["options"].ood))
        _fake_export(Path(out))
        return Path(out)

    monkeypatch.setattr(demo, "train", fake_train)
    monkeypatch.setattr(demo, "export_runs", fake_export)
    model = demo.ensure_demo_model()
    assert model == tmp_path / "demo" / f"v{demo.DEMO_VERSION}" / demo.DEMO_EXPORT
    assert calls == [("train", "phantom", {"width": 16}), ("export", "mahalanobis")]
    assert "building the demo model on first use" in capsys.readouterr().err
    assert demo.ensure_demo_model() == model and len(calls) == 2  # cached: nothing built
    shutil.rmtree(model)  # an export that went missing after training: exported again, not retrained
    demo.ensure_demo_model()
    assert [c[0] for c in calls] == ["train", "export", "export"]


def test_a_second_app_waits_for_the_demo_build_of_the_first(tmp_path, monkeypatch):
    root = demo.demo_root(tmp_path)
    root.mkdir(parents=True)
    builder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from chest_tf.locks import hold
        with hold(Path({str(root / demo.LOCK_NAME)!r}), "demo"):
            print("holding", flush=True)
            time.sleep(1.5)
            out = Path({str(root / demo.DEMO_EXPORT)!r})
            out.mkdir()
            (out / "saved_model.pb").write_bytes(b"")
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert builder.stdout.readline().strip() == "holding"
        monkeypatch.setattr(demo, "train", lambda *a, **k: pytest.fail("built twice"))
        monkeypatch.setattr(demo, "export_runs", lambda *a, **k: pytest.fail("built twice"))
        messages = []
        out = type("Out", (), {"write": lambda self, s: messages.append(s), "flush": lambda self: None})()
        assert demo.ensure_demo_model(tmp_path, out=out) == root / demo.DEMO_EXPORT
        assert re.search(r"being built by PID \d+ on .*; waiting", "".join(messages)), messages
    finally:
        builder.wait(timeout=60)


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------
def test_command_errors_are_one_line(capsys, tmp_path, monkeypatch):
    from chest_tf.cli import app as app_cli

    assert run_cli(app_cli.main, ["--port", "70000"]) == 2
    assert capsys.readouterr().err.strip() == "error: --port must be in 1..65535, got 70000"
    assert run_cli(app_cli.main, ["--check", "bogus=error"]) == 2
    assert "unknown input check 'bogus'" in capsys.readouterr().err
    if importlib.util.find_spec("gradio") is None:
        assert run_cli(app_cli.main, []) == 2  # said before a demo model is built
        assert capsys.readouterr().err.strip() == f"error: {review_page.GRADIO_MISSING}"
        return
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert run_cli(app_cli.main, [str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model not found:") and err.count("\n") == 1
    assert not list(tmp_path.glob("chest_tf_app_*"))  # the upload folder went with it


# ----------------------------------------------------------------------------------------------
# The page in a real browser
# ----------------------------------------------------------------------------------------------
def _browser_or_skip():
    """Playwright's sync API, or a skip naming what is missing (a failure in CI, which installs both)."""
    missing = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
        missing.append("playwright (pip install playwright)")
    try:
        import gradio  # noqa: F401
    except ImportError:
        missing.append("gradio (pip install '.[app]')")
    if not CHROMIUM.is_file():
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    if missing:
        message = "the browser test needs " + ", ".join(missing)
        if IN_CI:
            pytest.fail(message + "; .ci/run installs them")
        pytest.skip(message)
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Lines:
    """A process's output lines, collected in a thread."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream):
        for line in stream:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)


@pytest.mark.slow
def test_review_page_in_a_real_browser(exported, radiograph, tmp_path):
    sync_playwright = _browser_or_skip()
    port = _free_port()
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    env = {**os.environ, "TMPDIR": str(temp_root)}
    env.pop("CHEST_TF_VERBOSE_TF", None)
    server = subprocess.Popen([sys.executable, "-m", "chest_tf.app", str(exported), "--port", str(port),
                               "--max-file-mb", "1"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    out, err = _Lines(server.stdout), _Lines(server.stderr)
    url = f"http://127.0.0.1:{port}/"
    screenshot = Path(os.environ.get("CHEST_TF_TEST_ARTIFACTS", tmp_path)) / "app_test.png"
    try:
        deadline = time.monotonic() + 120
        while "review app for" not in out.text():
            assert server.poll() is None, f"the app exited: {err.text()}"
            assert time.monotonic() < deadline, f"the app did not start in 120 s: {out.text()} {err.text()}"
            time.sleep(0.2)
        assert url in out.text()
        uploads = [p for p in temp_root.iterdir() if p.name.startswith("chest_tf_app_")]
        assert len(uploads) == 1
        broken = _broken_png(tmp_path)
        too_big = tmp_path / "too_big.png"
        too_big.write_bytes(np.random.default_rng(0).bytes(2 * 2**20))
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                outside = []
                page.on("request", lambda r: outside.append(r.url)
                        if not r.url.startswith((url, "data:", "blob:")) else None)
                page.goto(url)
                page.wait_for_selector("#ctf-upload input[type=file]", state="attached", timeout=60_000)
                assert "Not for clinical use" in page.inner_text("#ctf-banner")

                page.set_input_files("#ctf-upload input[type=file]", str(radiograph))
                page.wait_for_selector("#ctf-findings", timeout=60_000)
                page.wait_for_selector("#ctf-overlay img", timeout=60_000)
                assert page.locator("#ctf-findings tbody tr").count() == 14
                assert page.locator("#ctf-overlay img").get_attribute("src")
                assert "chest_xray.png" in page.inner_text("#ctf-result")
                assert page.locator("#ctf-csv").is_enabled()
                page.screenshot(path=str(screenshot), full_page=True)

                page.set_input_files("#ctf-upload input[type=file]", str(broken))
                page.wait_for_selector("#ctf-errors", timeout=60_000)
                assert "broken.png: truncated or corrupt image" in page.inner_text("#ctf-errors")

                page.set_input_files("#ctf-upload input[type=file]", str(too_big))  # Gradio refuses it
                page.get_by_text("exceed the maximum allowed size").wait_for(timeout=30_000)

                # nothing from the client is a server path: Gradio's file route refuses what it did not store
                assert page.request.get(f"{url}gradio_api/file=/etc/passwd").status in (403, 404)
                assert page.request.get(f"{url}gradio_api/file={exported / 'MODEL_CARD.md'}").status in (403, 404)
                assert outside == []  # the page needs nothing from the internet
            finally:
                browser.close()
        assert server.poll() is None, "the server stopped after the broken upload"
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        assert "Traceback" not in err.text(), err.text()
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert server.returncode == 0, err.text()
    assert "Traceback" not in err.text(), err.text()
    assert not [p for p in temp_root.iterdir() if p.name.startswith("chest_tf_app_")]  # uploads removed
    assert screenshot.is_file()
