"""Shared fixtures. Tests never touch the network."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_PNEUMONIA = REPO_ROOT.parent / "shared" / "data" / "pneumoniamnist.npz"


@pytest.fixture(scope="session")
def pneumonia_npz() -> Path:
    """The real PneumoniaMNIST 28 px file, read in place; tests using it skip where it is absent."""
    path = Path(os.environ.get("CHEST_TF_PNEUMONIA_NPZ", SHARED_PNEUMONIA))
    if not path.is_file():
        pytest.skip(f"real PneumoniaMNIST file not found at {path}")
    return path
