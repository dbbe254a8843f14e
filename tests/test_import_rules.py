"""Who may import whom (pyproject.toml [tool.importlinter], docs/ARCHITECTURE.md): commands sit on
the library and never on each other; entry points load nothing before TensorFlow is quieted;
models and augmentation stay Keras-only; metrics, plots and reports stay numpy-only."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "chest_tf"


def test_import_linter_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint) if lint.exists() else "lint-imports", "--no-cache"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout and "Contracts: 7 kept" in done.stdout, done.stdout


def _in_function_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    found += [alias.name for alias in inner.names]
                elif isinstance(inner, ast.ImportFrom) and inner.module:
                    found.append(inner.module)
    return found


# Imports inside functions are for optional extras only, plus the console's quiet TensorFlow import
# (which must happen after stderr is redirected).
OPTIONAL_EXTRAS = {"keras_tuner", "pydicom", "gradio"}
CONSOLE_ONLY = {"tensorflow", "tensorflow_datasets"}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_sit_at_module_top_except_optional_extras(path):
    allowed = OPTIONAL_EXTRAS | (CONSOLE_ONLY if path == PACKAGE / "console.py" else set())
    late = [name for name in _in_function_imports(path) if name.split(".")[0] not in allowed]
    assert not late, f"{path.relative_to(REPO)} imports {late} inside a function; import at the top"


def test_the_package_and_console_import_nothing_heavy():
    code = ("import sys, chest_tf, chest_tf.console, chest_tf.models, chest_tf.explain, chest_tf.data, "
            "chest_tf.evaluation, chest_tf.cli; "
            "heavy = [m for m in ('tensorflow', 'keras', 'tensorflow_datasets', 'numpy') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


COMMANDS = ("train", "evaluate", "export", "predict", "explain", "sweep", "tune", "data", "models", "metrics", "app",
            "doctor")


def test_every_command_help_prints_no_tensorflow_log_line():
    """``python -m chest_tf.X --help`` prints its help on stdout and nothing on stderr: TensorFlow's
    start-up lines (oneDNN, CUDA, cpu_feature_guard) are silenced by the entry point."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CHEST_TF_VERBOSE_TF")}
    running = {name: subprocess.Popen([sys.executable, "-m", f"chest_tf.{name}", "--help"], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name in COMMANDS}
    for name, proc in running.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: {err}"
        assert out.startswith(f"usage: python -m chest_tf.{name}"), f"{name}: {out[:200]}"
        assert err == "", f"python -m chest_tf.{name} --help printed on stderr:\n{err}"
