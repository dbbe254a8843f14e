"""Sweeps: the experiment-file format, its one-line errors, and a killed two-run sweep that resumes
by skipping the finished run and still ranks both."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib

from chest_tf.cli.sweep import main
from chest_tf.config import RunConfig, config_to_toml, load_toml, parse_settings
from chest_tf.console import run_cli
from chest_tf.errors import ConfigError
from chest_tf.experiments.plan import parse_sweep, select_runs

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "pipelines"
# A one-block, 32-wide ViT: the cheapest model to build and trace on a CPU, so each run of the
# sweep below is a few seconds of real training, evaluation and reporting.
TINY_MODEL = {"depth": 1, "dim": 32, "heads": 2}


# ----------------------------------------------------------------------------------------------
# The format


def test_runs_grid_and_seeds_expand_in_seed_order_with_precedence():
    doc = {
        "sweep": {"name": "demo", "seeds": [0, 1], "grid": {"train.lr": [1e-3, 3e-3]}},
        "model": {"arch": "resnet18", "overrides": {"width": 8}},
        "train": {"epochs": 2, "lr": 5e-3},
        "runs": [
            {"name": "r18", "model": {"overrides": {"head_dropout": 0.1}}},
            {"name": "vit", "model": {"arch": "vit_tiny", "overrides": {"depth": 1}}, "train": {"epochs": 3},
             "seeds": [7]},
        ],
    }
    sweep = parse_sweep(doc)
    assert [r.name for r in sweep.runs] == [
        "r18_lr0.001_s0", "r18_lr0.003_s0", "vit_lr0.001_s7", "vit_lr0.003_s7",  # every config once first
        "r18_lr0.001_s1", "r18_lr0.003_s1",
    ]
    first = sweep.runs[0].config
    assert first.train.lr == 1e-3 and first.train.seed == 0 and first.train.epochs == 2  # grid beats base
    assert first.model.overrides == {"width": 8, "head_dropout": 0.1}  # overrides merge key by key
    vit = sweep.runs[2].config
    assert vit.model.arch == "vit_tiny" and vit.train.epochs == 3 and vit.train.seed == 7
    assert {r.config_name for r in sweep.runs} == {"r18_lr0.001", "r18_lr0.003", "vit_lr0.001", "vit_lr0.003"}
    # --set goes on top of runs and grid; --only picks runs or configs by pattern.
    forced = parse_sweep(doc, extra=parse_settings(["train.lr=1e-4", "model.overrides.width=4"]))
    assert {r.config.train.lr for r in forced.runs} == {1e-4}
    assert forced.runs[0].config.model.overrides["width"] == 4
    assert [r.name for r in select_runs(sweep.runs, ["vit_*"])] == ["vit_lr0.001_s7", "vit_lr0.003_s7"]
    assert [r.name for r in select_runs(sweep.runs, ["r18_lr0.001"])] == ["r18_lr0.001_s0", "r18_lr0.001_s1"]


def test_base_alone_is_one_config_named_after_the_sweep():
    sweep = parse_sweep({"train": {"seed": 3}}, default_name="plain")
    assert [(r.name, r.seed) for r in sweep.runs] == [("plain_s3", 3)]


@pytest.mark.parametrize("doc, message", [
    ({"sweep": {"name": "x", "seed": [0]}}, "unknown [sweep] key(s) ['seed']"),
    ({"sweeps": {}}, "unknown table(s) ['sweeps']"),
    ({"train": {"lrr": 1}}, "unknown [train] setting(s) ['lrr']"),
    ({"sweep": {"grid": {"train.lr": 0.1}}}, "grid 'train.lr' must be a non-empty list"),
    ({"sweep": {"grid": {"train.lr": []}}}, "grid 'train.lr' must be a non-empty list"),
    ({"sweep": {"grid": {"lr": [0.1]}}}, "must be dotted as section.field"),
    ({"sweep": {"grid": {"train.learning_rate": [0.1]}}}, "unknown setting 'train.learning_rate'"),
    ({"sweep": {"grid": {"train.seed": [0, 1]}}}, "set seeds in [sweep]"),
    ({"sweep": {"grid": ["train.lr"]}}, "grid must be a table"),
    ({"sweep": {"seeds": [0, 0]}}, "lists a seed twice"),
    ({"sweep": {"seeds": "0"}}, "seeds must be a non-empty list of integers"),
    ({"runs": [{"model": {"arch": "resnet18"}}]}, "[[runs]] #1 has no name"),
    ({"runs": [{"name": "a/b"}]}, "name 'a/b' must be"),
    ({"runs": [{"name": "a", "optim": {}}]}, "unknown key(s) ['optim']"),
    ({"runs": [{"name": "a", "train": {"batch": 3}}]}, "run 'a': unknown [train] setting(s) ['batch']"),
    ({"runs": [{"name": "a"}, {"name": "a"}]}, "run names repeat"),
    ({"runs": [{"name": "a", "train": {"epochs": 0}}]}, "epochs must be at least 1"),
])
def test_format_errors_are_one_line_config_errors(doc, message):
    with pytest.raises(ConfigError) as caught:
        parse_sweep(doc, source="exp.toml")
    text = str(caught.value)
    assert message in text and text.startswith("exp.toml: ") and "\n" not in text


def test_cli_reports_a_bad_file_on_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[sweep]\nname = "x"\ngrid = { "model.arch" = "resnet18" }\n')
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_cli(main, [str(bad), "--dry-run"])
    assert code == 2, out.getvalue() + err.getvalue()
    assert "Traceback" not in err.getvalue()
    assert err.getvalue().strip().splitlines()[-1] == (
        f"error: {bad}: grid 'model.arch' must be a non-empty list of values, got 'resnet18'")


@pytest.mark.parametrize("name", ["paper", "quick", "pneumonia"])
def test_shipped_pipelines_parse(name):
    sweep = parse_sweep(load_toml(PIPELINES / f"{name}.toml"), source=name)
    archs = {r.config.model.arch for r in sweep.runs}
    if name == "paper":
        assert archs == {"resnet18", "resnet34", "resnet50", "densenet121", "densenet169", "densenet201",
                         "vit_tiny", "vit_small", "vit_base"}
        assert {r.config.data.size for r in sweep.runs} == {224} and len(sweep.runs) == 27
        vit = next(r.config for r in sweep.runs if r.config.model.arch == "vit_base")
        assert vit.train.optimizer == "adamw" and vit.train.warmup_epochs > 1 and vit.train.lr < 1e-3
    elif name == "quick":
        assert {a[:3] for a in archs} == {"res", "den", "vit"}
        assert {r.config.data.size for r in sweep.runs} == {28}
    else:
        assert [r.seed for r in sweep.runs] == [0, 1, 2]
        config = sweep.runs[0].config
        assert config.data.npz == "../shared/data/pneumoniamnist.npz" and config.train.loss == "bce_weighted"


def test_config_toml_round_trip():
    config = RunConfig.from_dict({
        "data": {"dataset": "pneumoniamnist", "npz": 'C:\\data\\"x".npz'},
        "model": {"arch": "vit_tiny", "overrides": {"drop_path_rate": 0.15, "pool": "gap", "spt": True}},
        "train": {"lr": 3.2e-05, "weight_decay": 0.0, "steps_per_epoch": 7},
    })
    text = config_to_toml(config, ["a comment", "another"])
    assert text.startswith("# a comment\n# another\n")
    assert RunConfig.from_dict(tomllib.loads(text)) == config


# ----------------------------------------------------------------------------------------------
# A real sweep: killed after its first run, rerun, both ranked


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    from chest_tf.data import phantom

    data_dir = tmp_path_factory.mktemp("phantom_data")
    phantom.write_phantom(data_dir / "phantom.npz", size=28, counts={"train": 256, "val": 128, "test": 128}, seed=0)
    return data_dir


def _sweep_file(tmp_path: Path, data_dir: Path) -> Path:
    text = f"""
[sweep]
name = "tiny"
seeds = [0]

[data]
dataset = "phantom"
size = 28
data_dir = {json.dumps(str(data_dir))}

[model]
arch = "vit_tiny"
overrides = {{ depth = {TINY_MODEL['depth']}, dim = {TINY_MODEL['dim']}, heads = {TINY_MODEL['heads']} }}

[train]
epochs = 1
batch_size = 64
steps_per_epoch = 2

[[runs]]
name = "first"

[[runs]]
name = "second"
train = {{ lr = 1e-3 }}
"""
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    return path


def test_killed_sweep_skips_the_finished_run_and_ranks_both(phantom_dir, tmp_path, capsys):
    toml_path, out = _sweep_file(tmp_path, phantom_dir), tmp_path / "sweep"
    command = [sys.executable, "-m", "chest_tf.sweep", str(toml_path), "--out", str(out), "--verbose", "0"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    first_dir = out / "runs" / "first_s0"
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (first_dir / "finished.json").exists():
        if process.poll() is not None:
            pytest.fail(f"the sweep ended before its first run finished:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the first run did not finish in time")
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stdout.close()
    assert not (out / "leaderboard.csv").exists()  # killed before the end

    kept = ["finished.json", "best.keras", "history.csv", "config.json", "eval/metrics.json"]
    before = {name: (first_dir / name).stat().st_mtime_ns for name in kept}
    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"skipping first_s0: finished ({first_dir})" in second.stdout
    assert "running second_s0" in second.stdout or "resuming second_s0" in second.stdout
    assert {name: (first_dir / name).stat().st_mtime_ns for name in kept} == before  # untouched

    with open(out / "leaderboard.csv", newline="") as stream:
        rows = {row["run"]: row for row in csv.DictReader(stream)}
    assert set(rows) == {"first_s0", "second_s0"}
    for row in rows.values():
        assert row["status"] == "finished" and row["arch"] == "vit_tiny" and row["family"] == "vit"
        assert 0 <= float(row["test_auc_lo"]) <= float(row["test_auc"]) <= float(row["test_auc_hi"]) <= 1
        assert float(row["val_auc"]) > 0 and float(row["s_per_epoch"]) > 0 and int(row["params"]) > 0
        assert row["sensitivity"] and row["specificity"]
    with open(out / "leaderboard_by_config.csv", newline="") as stream:
        configs = list(csv.DictReader(stream))
    assert sorted(c["config"] for c in configs) == ["first", "second"]
    assert [c["rank"] for c in configs] == ["1", "2"]
    assert float(configs[0]["val_auc_mean"]) >= float(configs[1]["val_auc_mean"])  # ranked on validation
    markdown = (out / "leaderboard.md").read_text()
    assert "`first_s0`" in markdown and "`second_s0`" in markdown
    assert "No published results for phantom" in markdown
    assert (out / "auc_vs_time.png").stat().st_size > 0
    plan = json.loads((out / "sweep.json").read_text())
    assert [r["name"] for r in plan["runs"]] == ["first_s0", "second_s0"]

    # Each run is an HParams session: its hyperparameters and final metrics in its tensorboard/.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for run in ("first_s0", "second_s0"):
        logged = json.loads((out / "runs" / run / "hparams.json").read_text())
        assert logged["hparams"]["config"] == run[:-3] and logged["hparams"]["model.arch"] == "vit_tiny"
        assert set(logged["metrics"]) >= {"final/val_auc", "final/test_auc", "final/seconds_per_epoch"}
        events = EventAccumulator(str(out / "runs" / run / "tensorboard"))
        events.Reload()
        assert {"_hparams_/session_start_info", "final/val_auc"} <= set(events.Tags()["tensors"])
    assert list((out / "hparams").glob("events.out.tfevents*"))

    # The dry run sees both finished and trains nothing.
    assert main([str(toml_path), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.count(" finished ") == 2 and "dry run: nothing trained" in printed


def test_dataset_defaults_follow_each_runs_dataset():
    from chest_tf.config import DATASET_TRAIN_DEFAULTS, TrainConfig

    phantom = DATASET_TRAIN_DEFAULTS["phantom"]
    doc = {"sweep": {"name": "mixed", "grid": {"data.dataset": ["chestmnist", "phantom"]}},
           "train": {"lr": 0.001}}
    runs = {run.config.data.dataset: run.config.train for run in parse_sweep(doc).runs}
    assert runs["chestmnist"].epochs == TrainConfig().epochs
    assert {k: getattr(runs["phantom"], k) for k in phantom} == phantom and runs["phantom"].lr == 0.001
    # A setting given anywhere (base table, run, grid or --set) wins over the dataset's default.
    doc["train"]["epochs"] = 3
    runs = {r.config.data.dataset: r.config.train for r in parse_sweep(doc, extra={"train.batch_size": 8}).runs}
    assert (runs["phantom"].epochs, runs["phantom"].batch_size) == (3, 8)
    assert runs["phantom"].augment == phantom["augment"]
