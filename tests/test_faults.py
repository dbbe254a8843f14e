"""The fault cases of pipelines/faults.py that fit CI (the same code prints the fault table):
colliding trainings, SIGTERM / SIGKILL and resume, damaged backups and shards, an npz changed after
preparation, concurrent and killed preparation, a full disk, missing permissions (as an unprivileged
user), and a sweep shared by two processes. Each case starts the real commands; it passes when
every row survived with nothing lost."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("chest_tf_faults", REPO / "pipelines" / "faults.py")
faults = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = faults  # its dataclasses look their module up
_spec.loader.exec_module(faults)

CI_CASES = [name for name, (_, slow) in faults.CASES.items() if not slow]


@pytest.mark.slow
@pytest.mark.parametrize("name", CI_CASES)
def test_fault_case_survives(name, tmp_path):
    rows = faults.case_rows(name, tmp_path)
    skipped = [row for row in rows if row.expected == "(skipped)"]
    if skipped:
        pytest.skip(skipped[0].observed)
    table = faults.markdown([(name, row, 0.0) for row in rows])
    assert all(row.ok and not row.lost for row in rows), "\n" + table
