"""The review app, measured in a real browser: time from upload to first result, and memory.

    python pipelines/bench_app.py                      # the demo model (28 px) and ResNet-18s at 224 px
    python pipelines/bench_app.py --repeats 5 --screenshot docs/app.png

For each model it starts ``python -m chest_tf.app MODEL`` on a free port, opens the page in headless
Chromium (Playwright, the Debian package's /usr/bin/chromium), and uploads a 1024 x 1024 PNG
radiograph (a phantom film, upsampled); "first result" is the time from handing the file to the
page until the findings table and the heatmap overlay (Grad-CAM, most probable finding) for that
file are shown. The first upload after the page loads is reported, then the median of the next
``--repeats`` uploads (different files, so nothing is cached). Memory is the server process's RSS
(/proc) once it has started and is idle, and again idle after the uploads.

The server-side share is measured in-process too: ``Reviewer.review`` (decode, input checks,
prediction) and ``Reviewer.view`` (decode for display, Grad-CAM, overlay) on the same file.

Models: the bundled demo (ResNet-18 at width 16, trained on the phantom set at 28 px, exported
with calibration and an OOD score; built on first use), and untrained ResNet-18s at 224 px (width
16 and the standard width 64) exported plainly: timing does not depend on the weights. With
``--screenshot PATH`` the demo page, after two phantom radiographs (one inverted) and a broken file
are dropped on it, is saved as a PNG (palette-quantised to stay small) for the README.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from chest_tf.console import quiet_tensorflow

quiet_tensorflow()  # TensorFlow's start-up lines, silenced as the commands do

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from chest_tf.data import phantom  # noqa: E402
from chest_tf.data.info import get_info  # noqa: E402
from chest_tf.models.registry import build_model  # noqa: E402
from chest_tf.review.demo import ensure_demo_model  # noqa: E402
from chest_tf.review.session import Reviewer  # noqa: E402
from chest_tf.serving.metadata import build_metadata  # noqa: E402
from chest_tf.serving.savedmodel import export_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def radiograph_1024(path: Path, seed: int) -> Path:
    """A phantom radiograph rendered at 224 px, upsampled to 1024 x 1024 (bicubic) with film grain."""
    image = phantom.generate(224, 1, seed=seed, split="test").images[0]
    big = np.asarray(Image.fromarray(image).resize((1024, 1024), Image.Resampling.BICUBIC), np.float32)
    big += np.random.default_rng(seed).normal(0, 3, big.shape)
    Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(path)
    return path


def plain_export(folder: Path, size: int, width: int) -> Path:
    model = build_model("resnet18", (size, size, 1), 14, width=width)
    out = folder / f"resnet18_w{width}_{size}"
    metadata = build_metadata(model, get_info("chestmnist"), arch=f"resnet18 (width {width}, untrained)")
    return export_model(model, metadata, out, verify=False)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    """``python -m chest_tf.app MODEL`` in a subprocess, until ``stop``."""

    def __init__(self, model: Path, temp: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.lines: list[str] = []
        start = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "chest_tf.app", str(model), "--port", str(self.port)],
                                     cwd=REPO, env={**os.environ, "TMPDIR": str(temp)}, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()
        while not any("review app for" in line for line in self.lines):
            if self.proc.poll() is not None:
                raise SystemExit("the app exited:\n" + "".join(self.lines))
            time.sleep(0.1)
        self.startup_s = time.perf_counter() - start

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def upload_and_wait(page, path: Path, previous_src: str | None, timeout_ms: int = 120_000) -> tuple[float, str]:
    """Seconds from handing ``path`` to the page until its findings table and a new overlay show."""
    start = time.perf_counter()
    page.set_input_files("#ctf-upload input[type=file]", str(path))
    page.wait_for_function(
        """([name, previous]) => {
            const result = document.querySelector('#ctf-result');
            const overlay = document.querySelector('#ctf-overlay img');
            return result && result.innerText.includes(name) && document.querySelector('#ctf-findings')
                && overlay && overlay.complete && overlay.naturalWidth > 0 && overlay.src !== previous;
        }""", arg=[path.name, previous_src or ""], timeout=timeout_ms)
    elapsed = time.perf_counter() - start
    return elapsed, page.locator("#ctf-overlay img").get_attribute("src")


def server_side(model: Path, image: Path, temp: Path, repeats: int) -> dict:
    """Reviewer.review and Reviewer.view in this process (after one warm-up), seconds (median)."""
    uploads = Path(tempfile.mkdtemp(dir=temp))
    target = uploads / image.name
    target.write_bytes(image.read_bytes())
    reviewer = Reviewer(model, upload_dir=uploads)
    reviewer.view(reviewer.review([target])[0])
    review_s, view_s = [], []
    for _ in range(repeats):
        reviewer._images.clear()  # the page decodes once more for display; count it every time
        t0 = time.perf_counter()
        (review,) = reviewer.review([target])
        t1 = time.perf_counter()
        reviewer.view(review)
        t2 = time.perf_counter()
        review_s.append(t1 - t0)
        view_s.append(t2 - t1)
    return {"review": statistics.median(review_s), "view": statistics.median(view_s)}


def bench_model(name: str, model: Path, images: list[Path], temp: Path, repeats: int, screenshot: Path | None,
                screenshot_images: list[Path]) -> dict:
    print(f"{name}: starting the app", file=sys.stderr, flush=True)
    app = App(model, temp)
    try:
        time.sleep(3)
        idle_start = rss_mb(app.proc.pid)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            t0 = time.perf_counter()
            page.goto(app.url)
            page.wait_for_selector("#ctf-upload input[type=file]", state="attached", timeout=60_000)
            page_load = time.perf_counter() - t0
            first, src = upload_and_wait(page, images[0], None)
            later = []
            for path in images[1:repeats + 1]:
                elapsed, src = upload_and_wait(page, path, src)
                later.append(elapsed)
            if screenshot is not None:
                take_screenshot(browser, app.url, screenshot_images, screenshot)
            browser.close()
        time.sleep(3)
        idle_after = rss_mb(app.proc.pid)
    except Exception:
        print("the app said:\n" + "".join(app.lines), file=sys.stderr)
        raise
    finally:
        app.stop()
    in_process = server_side(model, images[0], temp, repeats)
    return {"model": name, "startup_s": app.startup_s, "page_load_s": page_load, "first_s": first,
            "median_s": statistics.median(later) if later else float("nan"), "rss_idle_mb": idle_start,
            "rss_after_mb": idle_after, "server_review_s": in_process["review"],
            "server_view_s": in_process["view"]}


def screenshot_files(folder: Path) -> list[Path]:
    """Two phantom films (one with cardiomegaly and an effusion, one inverted, which the input checks
    and the OOD score flag) and a broken file."""
    first = folder / "chest_film_1.png"
    Image.fromarray(phantom.generate(224, 1, seed=3, split="test").images[0]).save(first)
    inverted = folder / "chest_film_2_inverted.png"
    Image.fromarray(255 - phantom.generate(224, 1, seed=8, split="test").images[0]).save(inverted)
    broken = folder / "scan_broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"cut off" * 10)
    return [first, inverted, broken]


def take_screenshot(browser, url: str, files: list[Path], out: Path) -> None:
    """A fresh page with ``files`` reviewed, from the banner down to the findings table."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    page.wait_for_selector("#ctf-upload input[type=file]", state="attached", timeout=60_000)
    page.set_input_files("#ctf-upload input[type=file]", [str(p) for p in files])
    page.wait_for_function("n => document.querySelector('#ctf-result') && "
                           "document.querySelector('#ctf-result').innerText.includes(n)",
                           arg=files[0].name, timeout=120_000)
    page.wait_for_timeout(1500)
    box = page.locator("#ctf-result").bounding_box()
    raw = out.with_suffix(".raw.png")
    page.screenshot(path=str(raw), full_page=True,
                    clip={"x": 0, "y": 0, "width": 1280, "height": box["y"] + box["height"] + 16})
    shrink(raw, out)
    raw.unlink()
    page.close()


def shrink(raw: Path, out: Path, limit_kb: int = 290) -> None:
    """The screenshot as an optimised PNG, in full colour when that fits ``limit_kb``, else as 256
    colours with error diffusion (which keeps the heatmap's gradients)."""
    image = Image.open(raw).convert("RGB")
    image.save(out, optimize=True)
    if out.stat().st_size > limit_kb * 1024:
        quantized = image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
        quantized.save(out, optimize=True)
    print(f"screenshot {out}: {image.width} x {image.height}, {out.stat().st_size / 1024:.0f} KB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="uploads after the first (median reported)")
    parser.add_argument("--screenshot", type=Path, help="save the demo page here (PNG) for the README")
    parser.add_argument("--skip-full-width", action="store_true", help="only the width-16 models")
    parser.add_argument("--demo-only", action="store_true", help="only the demo model (28 px)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_app_") as tmp:
        temp = Path(tmp)
        images = [radiograph_1024(temp / f"radiograph_1024_{i}.png", seed=i) for i in range(args.repeats + 1)]
        shots = screenshot_files(temp) if args.screenshot is not None else []
        models = [("demo: ResNet-18 w16, 28 px, phantom-trained, calibrated + OOD", ensure_demo_model(), True)]
        if not args.demo_only:
            models.append(("ResNet-18 w16, 224 px (untrained, plain export)", plain_export(temp, 224, 16), False))
        if not args.skip_full_width and not args.demo_only:
            models.append(("ResNet-18 w64, 224 px (untrained, plain export)", plain_export(temp, 224, 64), False))
        rows = [bench_model(name, model, images, temp, args.repeats, args.screenshot if shot else None, shots)
                for name, model, shot in models]
    print(f"\nreview app, 1024 x 1024 PNG, {os.cpu_count()} CPU cores (load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())})")
    print("| model | upload -> first result | next uploads (median) | server share: review + view | RSS idle | "
          "RSS idle after uploads | app start | page load |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['first_s']:.2f} s | {r['median_s']:.2f} s | "
              f"{r['server_review_s']:.2f} + {r['server_view_s']:.2f} s | {r['rss_idle_mb']:.0f} MB | "
              f"{r['rss_after_mb']:.0f} MB | {r['startup_s']:.0f} s | {r['page_load_s']:.1f} s |")

if __name__ == "__main__":
    main()
