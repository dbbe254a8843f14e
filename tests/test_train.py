"""Training: a short phantom run learns, bad input gets one-line errors. (A killed, preempted or
colliding run, and its resume: tests/test_faults.py.)"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chest_tf.config import RunConfig, apply_overrides
from chest_tf.errors import ConfigError
from chest_tf.training.runtime import cpu_description

REPO = Path(__file__).resolve().parents[1]
# A narrow ResNet-18 keeps CPU steps short; everything else is the real training path.
TINY_MODEL = {"width": 16}


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    """A data dir holding a small phantom set where --dataset phantom looks for it."""
    from chest_tf.data import phantom

    data_dir = tmp_path_factory.mktemp("phantom_data")
    phantom.write_phantom(data_dir / "phantom.npz", size=28, counts={"train": 1024, "val": 256, "test": 256}, seed=0)
    return data_dir


def tiny_config(data_dir: Path, **train) -> RunConfig:
    config = RunConfig()
    config = apply_overrides(config, "data", {"dataset": "phantom", "size": 28, "data_dir": str(data_dir)})
    config = apply_overrides(config, "model", {"arch": "resnet18", "overrides": TINY_MODEL})
    settings = {"epochs": 12, "batch_size": 32, "lr": 2e-3, "warmup_epochs": 0.5, "augment": "light",
                "deterministic": True}
    return apply_overrides(config, "train", {**settings, **train})


def _history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv") as stream:
        return list(csv.DictReader(stream))


def test_short_phantom_run_learns_and_writes_the_run_dir(phantom_dir, tmp_path):
    from chest_tf.training import train

    run_dir = tmp_path / "run"
    result = train(tiny_config(phantom_dir), run_dir, verbose=0)
    for name in ("config.json", "history.csv", "best.keras", "best.json", "timing.json", "finished.json",
                 "eval/metrics.json", "eval/predictions.npz", "eval/report.md"):
        assert (run_dir / name).exists(), name
    assert not (run_dir / "backup").exists()  # removed once training finished
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents*"))
    assert list((run_dir / "tensorboard" / "validation").glob("events.out.tfevents*"))  # Grad-CAM panel
    saved = json.loads((run_dir / "config.json").read_text())
    # auto on this CPU (training/runtime.py): mixed_bfloat16 where it computes bfloat16 natively
    precision = "mixed_bfloat16" if cpu_description()[1] else "float32"
    assert saved["runtime"]["precision"] == precision and saved["runtime"]["jit_compile"] is False
    rows = _history(run_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(12))
    assert {"loss", "auc", "val_loss", "val_auc", "learning_rate"} <= set(rows[0])
    # Clearly above chance after ~12k images seen (about 0.78 is typical here; the README's
    # 30-epoch width-16 run on 4,000 images reaches 0.97).
    assert result.metrics["headline"]["auc"] > 0.7
    assert result.timing["train_images_per_second"] > 0


def _cli_error(args: list[str]) -> str:
    """The command run in this process (argparse errors exit 2 through SystemExit); its last stderr line."""
    from chest_tf.cli.train import main
    from chest_tf.console import run_cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = run_cli(main, args)
        except SystemExit as exc:
            code = exc.code
    assert code == 2, out.getvalue() + err.getvalue()
    assert "Traceback" not in err.getvalue()
    return err.getvalue().strip().splitlines()[-1]


def test_unknown_arch_and_dataset_are_one_line_errors():
    assert "invalid choice: 'resnet9'" in _cli_error(["--arch", "resnet9"])
    assert "invalid choice: 'chest'" in _cli_error(["--dataset", "chest"])


def test_bad_size_batch_and_run_dir(phantom_dir, tmp_path):
    common = ["--dataset", "phantom", "--data-dir", str(phantom_dir), "--model-arg", "width=16"]
    assert "no 32 px version" in _cli_error([*common, "--size", "32", "--run-dir", str(tmp_path / "a")])
    assert "larger than the train split" in _cli_error([*common, "--batch-size", "5000", "--run-dir", str(tmp_path / "b")])
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.geteuid() != 0:
            assert "not writable" in _cli_error([*common, "--run-dir", str(locked / "run")])
            return
        # Root writes anywhere: run the command as nobody (setpriv keeps only CAP_DAC_READ_SEARCH, so
        # the interpreter under /root and the data stay readable and nothing is writable but what
        # anyone may write).
        assert shutil.which("setpriv"), "setpriv (util-linux) is needed to test permissions as root"
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=+dac_read_search",
             "--ambient-caps=+dac_read_search", sys.executable, "-m", "chest_tf.train", *common,
             "--run-dir", str(locked / "run")],
            cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().splitlines()[-1] == (
            f"error: run dir {locked / 'run'} is not writable (Permission denied); choose another --run-dir")
    finally:
        locked.chmod(0o700)


def test_foreign_or_different_run_dir_is_not_overwritten(phantom_dir, tmp_path):
    from chest_tf.training import prepare_run_dir

    config = tiny_config(phantom_dir)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="holds no chest_tf run"):
        prepare_run_dir(other, config, resume=False, overwrite=False)
    assert (other / "notes.txt").read_text() == "keep me"
    interrupted = tmp_path / "interrupted"
    prepare_run_dir(interrupted, config, resume=False, overwrite=False)
    (interrupted / "config.json").write_text(json.dumps({"config": config.to_dict()}))
    assert prepare_run_dir(interrupted, config, resume=False, overwrite=False) is True
    changed = apply_overrides(config, "train", {"lr": 0.1})
    with pytest.raises(ConfigError, match=r"other settings \(train.lr: 0.002 -> 0.1\)"):
        prepare_run_dir(interrupted, changed, resume=False, overwrite=False)
    with pytest.raises(ConfigError, match="nothing to resume"):
        prepare_run_dir(tmp_path / "fresh", config, resume=True, overwrite=False)


def test_nan_loss_is_a_clear_error(phantom_dir, tmp_path):
    from chest_tf.errors import ChestTFError
    from chest_tf.training import train

    config = tiny_config(phantom_dir, epochs=2, lr=1e12, optimizer="sgd", schedule="constant", steps_per_epoch=3)
    with pytest.raises(ChestTFError, match="loss became NaN"):
        train(config, tmp_path / "nan", verbose=0)


def test_toml_config_and_flags_layer(tmp_path):
    from chest_tf.cli.train import build_parser
    from chest_tf.config import config_from_arguments as config_from_args

    toml = tmp_path / "run.toml"
    toml.write_text('[data]\ndataset = "pneumoniamnist"\n[model]\narch = "vit_tiny"\noverrides = { depth = 2 }\n'
                    "[train]\nepochs = 7\nlr = 0.01\n")
    args = build_parser().parse_args(["--config", str(toml), "--lr", "0.5", "--model-arg", "pool=gap"])
    config = config_from_args(args)
    assert (config.data.dataset, config.model.arch, config.train.epochs, config.train.lr) == ("pneumoniamnist", "vit_tiny", 7, 0.5)
    assert config.model.overrides == {"depth": 2, "pool": "gap"}
    toml.write_text('train = "fast"\n')
    with pytest.raises(ConfigError, match=r"\[train\] must be a table"):
        config_from_args(build_parser().parse_args(["--config", str(toml), "--epochs", "2"]))
    toml.write_text("[train]\nepoch = 3\n")
    with pytest.raises(ConfigError, match=r"unknown \[train\] setting\(s\) \['epoch'\]"):
        config_from_args(build_parser().parse_args(["--config", str(toml)]))


def test_dataset_defaults_sit_under_toml_and_flags(tmp_path):
    from chest_tf.cli.train import build_parser
    from chest_tf.config import DATASET_TRAIN_DEFAULTS, TrainConfig
    from chest_tf.config import config_from_arguments as config_from_args

    phantom = DATASET_TRAIN_DEFAULTS["phantom"]
    assert phantom and all(getattr(TrainConfig(), k) != v for k, v in phantom.items())

    def parsed(*argv):
        return config_from_args(build_parser().parse_args(list(argv))).train

    assert {k: getattr(parsed("--dataset", "phantom"), k) for k in phantom} == phantom
    assert parsed("--dataset", "phantom", "--epochs", "30").epochs == 30
    assert parsed("--dataset", "phantom", "--epochs", "30").batch_size == phantom["batch_size"]
    assert parsed().epochs == TrainConfig().epochs  # chestmnist: the general defaults
    toml = tmp_path / "phantom.toml"
    toml.write_text('[data]\ndataset = "phantom"\n[train]\nbatch_size = 64\n')
    from_toml = parsed("--config", str(toml))
    assert (from_toml.batch_size, from_toml.epochs) == (64, phantom["epochs"])
    assert parsed("--config", str(toml), "--dataset", "pneumoniamnist").epochs == TrainConfig().epochs


@pytest.mark.parametrize("alias, arch, overrides", [
    ("vit", "vit_small", ["dim=32", "depth=1", "heads=2"]),
    ("resnet", "resnet18", ["width=8"]),
    ("densenet", "densenet121", ["growth_rate=4"]),
])
def test_family_alias_trains_under_the_resolved_name(phantom_dir, tmp_path, monkeypatch, alias, arch, overrides):
    """``--arch vit`` is vit_small: the run dir, config.json and the start line say so."""
    from chest_tf.cli.train import main

    monkeypatch.chdir(tmp_path)
    args = ["--arch", alias, "--dataset", "phantom", "--data-dir", str(phantom_dir), "--epochs", "1",
            "--steps-per-epoch", "2", "--batch-size", "16", "--explain-every", "0", "--no-eval"]
    for override in overrides:
        args += ["--model-arg", override]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    run_dir = tmp_path / "runs" / "phantom_28" / f"{arch}_s0"
    assert (run_dir / "finished.json").is_file() and (run_dir / "best.keras").is_file()
    assert json.loads((run_dir / "config.json").read_text())["config"]["model"]["arch"] == arch
    assert f"starting {Path('runs') / 'phantom_28' / f'{arch}_s0'}: {arch} on phantom" in out.getvalue()


def test_a_run_stopped_during_its_final_evaluation_resumes_there(phantom_dir, tmp_path, monkeypatch, capsys):
    """The backup outlives training until finished.json: the rerun evaluates, it does not retrain."""
    from chest_tf.training import engine, train

    config = tiny_config(phantom_dir, epochs=1, steps_per_epoch=3, explain_every=0)
    run_dir = tmp_path / "run"

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "evaluate_best", stopped)
    with pytest.raises(KeyboardInterrupt):
        train(config, run_dir, verbose=0)
    assert not (run_dir / "finished.json").exists() and list((run_dir / "backup").glob("state-e0001-s000000.*"))
    history = (run_dir / "history.csv").read_text()
    monkeypatch.undo()
    capsys.readouterr()
    train(config, run_dir, verbose=0)
    assert "all 1 epochs were trained; the final evaluation follows" in capsys.readouterr().out
    assert (run_dir / "history.csv").read_text() == history  # no epoch trained again
    assert (run_dir / "finished.json").exists() and (run_dir / "eval" / "metrics.json").exists()
    assert not (run_dir / "backup").exists()
