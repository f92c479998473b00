"""The package's layers and its freedom from import cycles, as declared in pyproject.toml ([tool.importlinter])."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    pytest.importorskip("importlinter")
    # In a child process: import-linter configures logging with dictConfig, which disables the loggers that already
    # exist in this process (and with them the log records other tests read through caplog).
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"an import breaks the layer contracts:\n{run.stdout[-4000:]}{run.stderr[-2000:]}"


def test_contracts_ignore_no_imports():
    """Exceptions to the layers would hide exactly the leaks the contracts exist to catch."""
    text = (ROOT / "pyproject.toml").read_text()
    assert "ignore_imports" not in text
