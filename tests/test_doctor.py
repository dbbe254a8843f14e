"""python -m chest_tf.doctor: the report a user pastes into a bug report, on a CPU."""
from __future__ import annotations

import contextlib
import io

from chest_tf.cli.doctor import main
from chest_tf.data import phantom
from chest_tf.training.doctor import run_doctor


def test_doctor_reports_versions_settings_and_speed(tmp_path):
    phantom.write_phantom(tmp_path / "phantom.npz", size=28, counts={"train": 64, "val": 16, "test": 16}, seed=0)
    text, probes = run_doctor(["resnet", "vit_tiny"], steps=2, batch_size=8, data_dir=str(tmp_path),
                              overrides={"resnet18": {"width": 8}, "vit_tiny": {"dim": 32, "depth": 1, "heads": 2}})
    assert [p.arch for p in probes] == ["resnet18", "vit_tiny"]
    assert all(p.error is None and p.images_per_second > 0 and p.steps == 2 for p in probes)
    assert all(p.params > 0 and p.gflops > 0 for p in probes)
    # on a CPU, auto trains ViTs with XLA and CNNs without (measured; training/runtime.py)
    assert "| tensorflow | " in text
    assert "| kernels | fused_batchnorm_training; small_map_conv |" in text  # a CPU: both plugged in
    assert "`auto` resolves to: precision **float32**, XLA **off** for resnet18, **on** for vit_tiny" in text
    assert [p.jit_compile for p in probes] == [False, True]
    assert "| resnet18 | " in text and "| vit_tiny | " in text


def test_doctor_command_prints_the_report(tmp_path):
    phantom.write_phantom(tmp_path / "phantom.npz", size=28, counts={"train": 64, "val": 16, "test": 16}, seed=0)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--archs", "vit_tiny", "--steps", "1", "--batch-size", "4", "--jit", "off",
                     "--data-dir", str(tmp_path)]) == 0
    assert out.getvalue().startswith("## chest_tf doctor") and "| vit_tiny | " in out.getvalue()
