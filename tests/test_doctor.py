"""python -m chest_tf.doctor: the report a user pastes into a bug report, on a CPU."""
from __future__ import annotations

import contextlib
import io
import statistics

from chest_tf.cli.doctor import main
from chest_tf.data import phantom
from chest_tf.training import runtime as runtime_lib
from chest_tf.training.doctor import report, run_doctor
from chest_tf.training.runtime import cpu_description, resolve_runtime
from chest_tf.training.speed import measure_training


def test_doctor_reports_versions_settings_and_speed(tmp_path):
    phantom.write_phantom(tmp_path / "phantom.npz", size=28, counts={"train": 64, "val": 16, "test": 16}, seed=0)
    text, probes = run_doctor(["resnet", "vit_tiny"], steps=2, batch_size=8, data_dir=str(tmp_path),
                              overrides={"resnet18": {"width": 8}, "vit_tiny": {"dim": 32, "depth": 1, "heads": 2}})
    assert [p.arch for p in probes] == ["resnet18", "vit_tiny"]
    assert all(p.error is None and p.images_per_second > 0 and p.steps == 2 for p in probes)
    assert all(p.params > 0 and p.gflops > 0 for p in probes)
    assert "| tensorflow | " in text and "| cpu | " in text and "| cpu_bfloat16 | " in text
    assert "computes bfloat16 natively" not in text  # said only where float32 was asked for there
    assert ("| kernels | fused_batchnorm_training; small_map_conv; self_attention_core; layer_norm_kernel; "
            "gelu_kernel |") in text  # a CPU: all
    # on a CPU (measured; training/runtime.py): native bfloat16 -> mixed_bfloat16 without XLA for every
    # family; otherwise float32 without XLA
    precision = "mixed_bfloat16" if cpu_description()[1] else "float32"
    assert f"`auto` resolves to: precision **{precision}**, XLA **off**" in text
    assert [p.jit_compile for p in probes] == [False, False]
    assert "| resnet18 | " in text and "| vit_tiny | " in text


def test_doctor_command_prints_the_report(tmp_path):
    phantom.write_phantom(tmp_path / "phantom.npz", size=28, counts={"train": 64, "val": 16, "test": 16}, seed=0)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--archs", "vit_tiny", "--steps", "1", "--batch-size", "4", "--jit", "off",
                     "--data-dir", str(tmp_path)]) == 0
    assert out.getvalue().startswith("## chest_tf doctor") and "| vit_tiny | " in out.getvalue()


def test_speed_probe_times_rounds_of_one_model_around_a_hook(tmp_path):
    """bench_peers alternates rounds of ours with the peer: each round is timed on the same compiled
    model, the hook runs after each, and the probe's figure is the median round."""
    phantom.write_phantom(tmp_path / "phantom.npz", size=28, counts={"train": 64, "val": 16, "test": 16}, seed=0)
    runtime = resolve_runtime("float32", "off", "none")
    seen = []
    probe = measure_training("resnet18", runtime, steps=2, batch_size=8, data_dir=str(tmp_path), rounds=3,
                             after_round=lambda p: seen.append(list(p.round_images_per_second)),
                             overrides={"width": 8})
    assert probe.error is None and probe.steps == 2
    assert [len(s) for s in seen] == [1, 2, 3]
    assert probe.images_per_second == statistics.median(probe.round_images_per_second) > 0

    def failing_peer(_probe):
        raise RuntimeError("peer failed (python peer_torch.py): no torch")

    failed = measure_training("resnet18", runtime, steps=1, batch_size=8, data_dir=str(tmp_path), rounds=2,
                              after_round=failing_peer, overrides={"width": 8})
    assert failed.error == "RuntimeError: peer failed (python peer_torch.py): no torch"
    assert len(failed.round_images_per_second) == 1


def test_cpu_description_names_the_model_and_its_native_bfloat16(tmp_path):
    """The doctor says whether mixed_bfloat16 runs natively here (README, Speed: on CPUs with
    avx512_bf16 or amx_bf16 it trained ResNet-18 1.3-2x faster; without, it is emulated). One file
    per CPU: the answer is cached per path (a machine's CPU does not change)."""
    cpus = {
        "zen4": ("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f avx512_bf16 fma\n\n"
                 "processor\t: 1\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f avx512_bf16 fma\n"),
        "sapphire": "model name\t: Intel(R) Xeon(R) Platinum 8488C\nflags\t\t: avx512f avx512_bf16 amx_bf16 amx_tile\n",
        "broadwell": "model name\t: Intel(R) Xeon(R) CPU E5-2686 v4\nflags\t\t: avx2 fma\n",
    }
    for name, text in cpus.items():
        (tmp_path / name).write_text(text)
    assert cpu_description(str(tmp_path / "zen4")) == ("AMD EPYC 9R14", ("avx512_bf16",))
    assert cpu_description(str(tmp_path / "sapphire")) == ("Intel(R) Xeon(R) Platinum 8488C",
                                                          ("avx512_bf16", "amx_bf16"))
    assert cpu_description(str(tmp_path / "broadwell")) == ("Intel(R) Xeon(R) CPU E5-2686 v4", ())
    assert cpu_description(str(tmp_path / "missing")) == ("unknown", ())


def test_auto_trains_in_bfloat16_without_xla_on_a_cpu_that_computes_it(monkeypatch):
    """Measured (training/runtime.py, README "bfloat16 on a CPU"): with native bfloat16, every family
    trains fastest in mixed_bfloat16 without XLA; without it, in float32 without XLA (the ViTs'
    LayerNorm and GELU run as XLA-compiled kernels inside the graph)."""
    monkeypatch.setattr(runtime_lib, "cpu_description", lambda: ("Zen 4", ("avx512_bf16",)))
    for arch in ("resnet18", "densenet121", "vit_tiny"):
        resolved = resolve_runtime("auto", "auto", "none", arch)
        assert (resolved.precision, resolved.jit_compile) == ("mixed_bfloat16", False), arch
    asked = resolve_runtime("float32", "auto", "none", "vit_tiny")  # float32 asked for
    assert (asked.precision, asked.jit_compile) == ("float32", False)
    assert resolve_runtime("float32", "on", "none", "vit_tiny").jit_compile is True
    monkeypatch.setattr(runtime_lib, "cpu_description", lambda: ("Broadwell", ()))
    assert [(r.precision, r.jit_compile) for r in (resolve_runtime("auto", "auto", "none", a)
                                                  for a in ("resnet18", "vit_tiny"))] == [("float32", False),
                                                                                         ("float32", False)]
    # where float32 was asked for on such a CPU, the doctor's report says what auto would do
    text = report({"cpu_bfloat16": ["avx512_bf16"]}, {"vit_tiny": asked}, [], 128, 28)
    assert "computes bfloat16 natively (avx512_bf16): `--precision auto` trains in mixed_bfloat16" in text
