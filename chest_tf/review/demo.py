"""The review app's bundled demo model: ``python -m chest_tf.app`` without a model serves it.

A ResNet-18 at a quarter width (0.7 M parameters) trained on the generated phantom set at 28 px
with the phantom set's own short schedule (6 epochs), then exported with calibration and an OOD
score like any release. It is built on first use, with progress messages on stderr (a few minutes:
3 min 36 s on 2 busy CPU cores, generating the phantom set included), and cached under the data
dir (``$CHEST_TF_DATA_DIR`` or ``~/.cache/chest_tf``) in ``demo/v<N>/``: ``run/`` (the training
run) and ``demo_resnet18_phantom_28/`` (the export, which the app loads).

Building is safe against interruption and against two apps starting at once: a lock file
(``chest_tf.locks``) lets one process build while the other waits; training resumes an
interrupted run (``training.train``), and the export appears whole or not at all
(``serving.savedmodel``, a folder renamed into place). The phantom set is far easier than
ChestMNIST: the demo's numbers say nothing about real radiographs.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TextIO

from chest_tf.config import RunConfig
from chest_tf.data.download import default_data_dir
from chest_tf.locks import Holder, hold
from chest_tf.runs import FINISHED_MARKER
from chest_tf.serving.release import ReleaseOptions
from chest_tf.serving.savedmodel import export_runs
from chest_tf.training import train

DEMO_VERSION = 1  # a new recipe gets a new folder; an old cache is left as it is
DEMO_SETTINGS = {
    "data": {"dataset": "phantom", "size": 28},
    "model": {"arch": "resnet18", "overrides": {"width": 16}},
    "train": {"explain_every": 0},  # the phantom defaults: 6 epochs, batch 32, no augmentation
}
LOCK_NAME = ".build.lock"
DEMO_EXPORT = "demo_resnet18_phantom_28"  # the export folder (its name shows on the page)


def demo_root(data_dir: str | Path | None = None) -> Path:
    """``DATA_DIR/demo/v<N>`` (DATA_DIR: ``data_dir``, else ``$CHEST_TF_DATA_DIR`` or ~/.cache/chest_tf)."""
    base = Path(data_dir).expanduser() if data_dir else default_data_dir()
    return base / "demo" / f"v{DEMO_VERSION}"


def demo_config() -> RunConfig:
    return RunConfig.from_dict(DEMO_SETTINGS)


def _is_export(path: Path) -> bool:
    return (path / "saved_model.pb").is_file()


def ensure_demo_model(data_dir: str | Path | None = None, *, out: TextIO | None = None) -> Path:
    """The demo export folder, built first if it is not cached (see the module docstring); progress
    messages go to ``out`` (default stderr)."""
    out = out if out is not None else sys.stderr
    root = demo_root(data_dir)
    model_dir = root / DEMO_EXPORT
    if _is_export(model_dir):
        return model_dir
    root.mkdir(parents=True, exist_ok=True)

    def waiting(holder: Holder | None) -> None:
        who = holder.describe() if holder is not None else "another process"
        print(f"the demo model is being built by {who}; waiting for it ...", file=out, flush=True)

    with hold(root / LOCK_NAME, f"demo model {root}", wait=True, on_wait=waiting):
        if _is_export(model_dir):  # built by the process we waited for
            return model_dir
        config = demo_config()
        run_dir = root / "run"
        print(f"building the demo model on first use: {config.model.arch} (width 16) trained on the phantom set "
              f"at {config.data.size} px for {config.train.epochs} epochs, then exported (a few minutes on 2 CPU "
              f"cores); cached in {root}", file=out, flush=True)
        if not (run_dir / FINISHED_MARKER).is_file():
            train(config, run_dir, verbose=2)  # resumes a build that was interrupted
        command = f"python -m chest_tf.export {shlex.quote(str(run_dir))} --out {shlex.quote(str(model_dir))}"
        export_runs([run_dir], model_dir, overwrite=True, options=ReleaseOptions(), commands=[command])
        print(f"demo model ready: {model_dir}", file=out, flush=True)
    return model_dir
