"""pipelines/bench_matmul.py: the matrix products of a model's training step, timed per backend."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "pipelines" / "bench_matmul.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_matmul", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_products_count_each_shape_of_a_vit_once_per_occurrence():
    bench = load_bench()
    products = dict(bench.step_products("vit_tiny", 28, batch=2))
    # 12 blocks; the last queries with the class token only: Q/K/V/O of 11 full blocks + K/V of the last.
    assert products[(2 * 50, 192, 192, 1)] == 11 * 4 + 2
    assert products[(2 * 1, 192, 192, 1)] == 2  # the last block's query and output projections
    assert products[(50, 64, 50, 2 * 3)] == 11  # per-head scores of the full blocks
    assert products[(1, 64, 50, 2 * 3)] == 1
    assert products[(2 * 50, 192, 768, 1)] == 11 and products[(2, 768, 192, 1)] == 1


def test_operand_shapes_of_the_three_training_forms():
    bench = load_bench()
    shape = (6, 4, 5, 3)  # 3 products of (6 x 4) @ (4 x 5)
    forms = {form[0]: bench.operand_shapes(shape, form) for form in bench.FORMS}
    assert forms["NN"] == ([3, 6, 4], [3, 4, 5], False, False)
    assert forms["NT"] == ([3, 6, 5], [3, 4, 5], False, True)  # dC @ B^T -> (6 x 4)
    assert forms["TN"] == ([3, 6, 4], [3, 6, 5], True, False)  # A^T @ dC -> (4 x 5)


def test_bench_prints_each_backends_products_and_step_bound(capsys):
    bench = load_bench()
    assert bench.main(["--arch", "vit_tiny", "--size", "28", "--batch", "2", "--rounds", "1",
                       "--min-seconds", "0"]) == 0
    out = capsys.readouterr().out
    assert "| 100 x 192 x 192 | 1 | 46 | TN |" in out
    assert "All matrix products of one training step at batch 2:" in out
    assert "- xla: " in out and "- tf: " in out and "img/s for a step of nothing else" in out


def test_a_peer_without_torch_or_missing_is_a_one_line_error():
    bench = load_bench()
    products = bench.step_products("vit_tiny", 28, batch=1)[:1]
    with pytest.raises(SystemExit, match=r"^error: cannot run the peer's interpreter .*-missing: No such file"):
        bench.measure(products, ["xla", "torch"], sys.executable + "-missing", rounds=1, min_seconds=0)
    if importlib.util.find_spec("torch") is None:
        with pytest.raises(SystemExit, match=r"^error: the peer's interpreter .* failed: .*needs torch installed"):
            bench.measure(products, ["xla", "torch"], sys.executable, rounds=1, min_seconds=0)
