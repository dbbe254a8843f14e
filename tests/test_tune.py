"""Tuning: keras-tuner proposes, chest_tf trains; two tiny trials plus the default, best.toml, resume."""
from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from chest_tf.config import RunConfig, load_toml
from chest_tf.errors import ChestTFError

REPO = Path(__file__).resolve().parents[1]

TINY_ARGS = ["--model-arg", "depth=1", "--model-arg", "dim=32", "--model-arg", "heads=2",
             "--epochs", "1", "--batch-size", "64", "--steps-per-epoch", "2", "--verbose", "0"]


def test_missing_keras_tuner_names_the_extra(monkeypatch):
    from chest_tf.cli import tune

    monkeypatch.setitem(sys.modules, "keras_tuner", None)  # makes `import keras_tuner` fail
    with pytest.raises(ChestTFError) as caught:
        tune.main(["--arch", "resnet18", "--dataset", "phantom"])
    assert str(caught.value) == "chest_tf.tune needs keras-tuner: pip install 'chest_tf[tune]'"


def test_search_space_follows_the_arch_and_task():
    kt = pytest.importorskip("keras_tuner")
    from chest_tf.experiments.tuning import declare_space, trial_config

    base = RunConfig()
    cnn, vit = kt.HyperParameters(), kt.HyperParameters()
    declare_space(cnn, "resnet18", "multi-label, binary-class", base)
    declare_space(vit, "vit_small", "multi-class", base)
    assert [p.name for p in cnn.space] == ["lr", "weight_decay", "augment", "loss", "head_dropout"]
    assert [p.name for p in vit.space][-1] == "drop_path_rate"
    assert set(next(p for p in vit.space if p.name == "loss").values) == {"bce", "focal"}
    config = trial_config(base, {"lr": 0.0012345678, "augment": "strong", "head_dropout": 0.30000000000000004})
    assert config.train.lr == 0.001235 and config.train.augment == "strong"
    assert config.model.overrides == {"head_dropout": 0.3}


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    from chest_tf.data import phantom

    data_dir = tmp_path_factory.mktemp("phantom_data")
    phantom.write_phantom(data_dir / "phantom.npz", size=28, counts={"train": 256, "val": 128, "test": 128}, seed=0)
    return data_dir


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # keras-tuner's own threading calls
def test_two_trials_write_best_toml_and_resume(phantom_dir, tmp_path, capsys):
    pytest.importorskip("keras_tuner")
    from chest_tf.cli import tune

    out = tmp_path / "tune"
    args = ["--arch", "vit_tiny", "--dataset", "phantom", "--data-dir", str(phantom_dir), "--trials", "2",
            "--oracle", "random", "--out", str(out), *TINY_ARGS]
    assert tune.main(args) == 0
    printed = capsys.readouterr().out
    assert "default config: val AUC" in printed and "best trial" in printed

    best = RunConfig.from_dict(load_toml(out / "best.toml"))  # a plain config file
    with open(out / "trials.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert sorted(r["trial"] for r in rows) == ["0", "1", "default"]
    assert [r["rank"] for r in rows] == ["1", "2", "3"]
    trials = [r for r in rows if r["trial"] != "default"]
    top = trials[0]
    assert float(top["val_auc"]) >= float(trials[1]["val_auc"])
    assert best.model.arch == "vit_tiny" and best.train.epochs == 1 and best.data.dataset == "phantom"
    assert best.train.lr == float(top["lr"]) and best.train.loss == top["loss"]
    assert best.model.overrides["drop_path_rate"] == float(top["drop_path_rate"])
    assert best.model.overrides["depth"] == 1  # fixed overrides are kept
    assert "validation AUC" in (out / "best.toml").read_text().splitlines()[0]

    # Trials are ordinary run dirs scored on validation only; test numbers only for default and best.
    for row in rows:
        run_dir = Path(row["run_dir"])
        assert (run_dir / "finished.json").exists() and (run_dir / "hparams.json").exists()
        assert json.loads((run_dir / "val.json").read_text())["val_auc"] == pytest.approx(float(row["val_auc"]))
        evaluated = row["trial"] in ("default", top["trial"])
        assert (run_dir / "eval" / "metrics.json").exists() == evaluated
    assert list((out / "hparams").glob("events.out.tfevents*"))

    # The same command again trains nothing: every trial and the default are finished.
    finished = {r["run_dir"]: (Path(r["run_dir"]) / "finished.json").stat().st_mtime_ns for r in rows}
    assert tune.main(args) == 0
    again = capsys.readouterr().out
    assert "running" not in again and "resuming" not in again
    assert {d: (Path(d) / "finished.json").stat().st_mtime_ns for d in finished} == finished


@pytest.mark.slow
def test_distributed_chief_and_two_workers_share_the_trials(phantom_dir, tmp_path):
    """keras-tuner's distributed mode on 127.0.0.1: the chief serves the oracle, each worker trains
    trials it is given (each trial once), and the chief writes the results when all are done."""
    pytest.importorskip("keras_tuner")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "tune"
    args = [sys.executable, "-m", "chest_tf.tune", "--arch", "vit_tiny", "--dataset", "phantom", "--data-dir",
            str(phantom_dir), "--trials", "2", "--oracle", "random", "--out", str(out), "--no-default",
            "--explain-every", "0", *TINY_ARGS, "--oracle-address", f"127.0.0.1:{port}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")
    procs = {role: subprocess.Popen([*args, "--tuner-id", role], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
             for role in ("chief", "worker0", "worker1")}
    outputs = {role: proc.communicate(timeout=900)[0] for role, proc in procs.items()}
    assert all(proc.returncode == 0 for proc in procs.values()), outputs
    trained = {role: re.findall(r"^running (trial_\S+) ->", text, re.M) for role, text in outputs.items()}
    assert trained["chief"] == []  # the chief only serves
    assert sorted(trained["worker0"] + trained["worker1"]) == ["trial_0", "trial_1"]  # each trial once
    assert "no trials left; the chief writes the results" in outputs["worker0"]
    with open(out / "trials.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert sorted(r["trial"] for r in rows) == ["0", "1"] and all(r["status"] == "COMPLETED" for r in rows)
    assert (out / "best.toml").exists() and "best trial" in outputs["chief"]
