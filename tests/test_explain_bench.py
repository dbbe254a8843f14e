"""The localisation benchmark (chest_tf.explain.bench, ``python -m chest_tf.explain bench``) on a
handful of phantom version-2 images: tables, report, figures, baselines, the prior fitted on train
masks only, the randomisation checks and the shortcut analysis."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from chest_tf.cli import explain as explain_command  # noqa: E402
from chest_tf.console import run_cli  # noqa: E402
from chest_tf.data import phantom  # noqa: E402
from chest_tf.explain import api as explain  # noqa: E402
from chest_tf.explain import bench  # noqa: E402
from chest_tf.models.registry import build_model  # noqa: E402

SIZE = 28
COUNTS = {"train": 40, "val": 10, "test": 12}


def _run_dir(root: Path, dataset: str, model) -> Path:
    data_dir = root / "data"
    phantom.write_phantom(data_dir / f"{dataset}.npz", size=SIZE, counts=COUNTS, seed=5)
    run = root / f"run_{dataset}_{model.name}"
    run.mkdir(parents=True)
    model.save(run / "best.keras")
    arch = "vit_tiny" if "vit" in model.name else "resnet18"
    (run / "config.json").write_text(json.dumps({"config": {
        "data": {"dataset": dataset, "size": SIZE, "data_dir": str(data_dir)}, "model": {"arch": arch}}}))
    return run


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    keras.utils.set_random_seed(0)
    return _run_dir(tmp_path_factory.mktemp("bench"), "phantom2", build_model("resnet18", (SIZE, SIZE, 1), 14, width=4))


SMALL = {"bootstrap": 50, "steps": 4, "faithfulness": 6, "sanity": 3, "val_images": 6, "examples": 3,
         "options": {"occlusion": {"window": 7, "stride": 7}, "integrated-gradients": {"steps": 4},
                     "smoothgrad": {"samples": 3}}}


def test_bench_runs_on_a_handful_of_images(cnn_run, tmp_path):
    methods = ["gradcam", "occlusion", "smoothgrad"]
    # the model itself as the "label-randomised" one: its maps are the same (Spearman 1, fails)
    settings = explain.BenchSettings(**SMALL, methods=methods, cascade=False, label_random=str(cnn_run))
    result = explain.run_bench(cnn_run, settings, log=lambda line: None)
    assert list(result["methods"]) == methods
    masks = phantom.read_masks(result["npz"], "test")
    assert result["n_instances"] == len(bench.instances(masks)) > 0 and result["n_test_images"] == COUNTS["test"]
    for method, r in result["methods"].items():
        for key in ("hit_rate", "strict_hit_rate", "energy", "iou", "insertion_auc", "deletion_auc"):
            mean, lo, hi = r[key]
            assert 0.0 <= lo <= mean <= hi <= 1.0, (method, key, r[key])
        assert set(r["per_finding"]) <= set(phantom.LOCALISABLE)
        detected = r["hit_rate_detected"]  # over the instances the model finds: a subset, so NaN only if none
        assert (result["n_found"] == 0) == bool(np.isnan(detected[0]))
        checks = r["randomisation"]
        assert [step["randomized"] for step in checks["steps"]] == ["all (full re-initialisation)"]
        label = checks["label_randomisation"]
        if label["constant_maps"] < settings.sanity:   # an untrained net may give empty Grad-CAMs
            assert label["spearman_mean"] == pytest.approx(1.0, abs=1e-5) and label["ssim_mean"] == pytest.approx(1.0)
            assert checks["passes_label_randomisation"] is False and "**fails**" in bench._verdict(checks)
    b = result["baselines"]
    assert b["uniform_image"]["hit_rate"][0] < b["uniform_lungs"]["hit_rate"][0] <= 1.0
    assert 0.0 <= b["prior"]["hit_rate"][0] <= 1.0 and 0.0 < b["random_order"]["deletion_auc"][0] < 1.0

    report = explain.write_report(result, tmp_path / "out", "python -m chest_tf.explain bench RUN")
    text = report.read_text()
    for method in methods:
        assert explain.METHOD_TITLES[method] in text
        assert (tmp_path / "out" / f"examples_{method.replace('+', 'p')}.png").stat().st_size > 3000
    assert "image-blind prior (train masks)" in text and "Randomisation checks" in text
    saved = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert saved["methods"]["gradcam"]["hit_rate"] == result["methods"]["gradcam"]["hit_rate"]
    assert '"_maps"' not in json.dumps(saved) and '"_examples"' not in json.dumps(saved)


def test_the_prior_is_fitted_on_train_masks_only(cnn_run, monkeypatch):
    npz_path = Path(bench.run_npz(cnn_run)[0])
    read = []
    original = phantom.read_masks

    def spy(path, split):
        read.append(split)
        return original(path, split)

    monkeypatch.setattr(phantom, "read_masks", spy)
    prior = explain.fit_prior(npz_path)
    assert read == ["train"]
    train = phantom.generate(SIZE, COUNTS["train"], 5, "train", variant="phantom2")
    np.testing.assert_array_equal(prior, explain.mask_prior(train.masks, train.mask_index[:, 1], 14))
    # the same train split with another test split gives the same prior
    other = phantom.write_phantom(npz_path.with_name("other") / "phantom2.npz", size=SIZE,
                                  counts={**COUNTS, "test": 3}, seed=5)
    np.testing.assert_array_equal(explain.fit_prior(other), prior)


def test_command_line_and_one_line_errors(cnn_run, tmp_path, capsys):
    out = tmp_path / "report"
    status = run_cli(explain_command.main, ["bench", str(cnn_run), "--methods", "layercam", "--bootstrap", "20",
                                            "--steps", "2", "--faithfulness", "4", "--sanity", "2", "--val-images",
                                            "4", "--no-cascade", "--out", str(out)])
    assert status == 0
    printed = capsys.readouterr().out
    assert "| LayerCAM (fused stages) |" in printed and "| Grad-CAM |" not in printed
    assert (out / "report.md").is_file() and (out / "examples_layercam.png").is_file()
    assert run_cli(explain_command.main, ["bench", str(cnn_run), "--methods", "rollout"]) == 2
    assert run_cli(explain_command.main, ["bench", str(cnn_run), "--methods", "lime"]) == 2
    assert run_cli(explain_command.main, ["bench", str(cnn_run), "--occlusion-window", "0"]) == 2
    assert "--occlusion-window must be at least 1" in capsys.readouterr().err
    status = run_cli(explain_command.main, ["bench", str(cnn_run), "--methods", "occlusion", "--occlusion-window", "5",
                                            "--occlusion-stride", "3", "--bootstrap", "20", "--steps", "2",
                                            "--faithfulness", "4", "--sanity", "2", "--val-images", "4",
                                            "--no-cascade", "--max-images", "4", "--out", str(tmp_path / "occ")])
    assert status == 0
    saved = json.loads((tmp_path / "occ" / "bench.json").read_text())
    assert saved["settings"]["options"] == {"occlusion": {"window": 5, "stride": 3}}
    v1 = tmp_path / "v1run"
    v1.mkdir()
    (v1 / "best.keras").write_bytes(b"")
    (v1 / "config.json").write_text(json.dumps({"config": {"data": {"dataset": "phantom", "size": SIZE}}}))
    assert run_cli(explain_command.main, ["bench", str(v1)]) == 2
    assert "phantom version-2" in capsys.readouterr().err
    # the prior table, generated on first use
    assert run_cli(explain_command.main, ["prior", "phantom2", "--data-dir", str(Path(bench.run_npz(cnn_run)[0]).parent)]) == 0
    assert "localisable (focal) findings" in capsys.readouterr().out


def test_shortcut_analysis_and_vit_methods(tmp_path):
    keras.utils.set_random_seed(1)
    vit = build_model("vit_tiny", (SIZE, SIZE, 1), 14, dim=16, depth=2, heads=2, patch_size=7)
    run = _run_dir(tmp_path, "phantom2_shortcut", vit)
    settings = explain.BenchSettings(**{**SMALL, "methods": ["grad-rollout", "rollout"], "cascade": False})
    result = explain.run_bench(run, settings, log=lambda line: None)
    shortcut = result["shortcut"]
    assert shortcut["label"] == "pneumonia" and set(shortcut["methods"]) == {"grad-rollout", "rollout"}
    masks = phantom.read_masks(result["npz"], "test")
    assert shortcut["marked_test_images"] == int(masks.marker.sum())
    for s in shortcut["methods"].values():
        assert 0.0 <= s["on_marker"] <= 1.0 and 0.0 <= s["energy_on_marker"] <= 1.0
    assert [s["randomized"] for s in result["methods"]["rollout"]["randomisation"]["steps"]] == [
        "all (full re-initialisation)"]
    assert "Shortcut marker (pneumonia)" in explain.format_tables(result)
