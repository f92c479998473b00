"""The package's layers and its freedom from import cycles, as declared in pyproject.toml ([tool.importlinter])."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold(monkeypatch):
    cli = pytest.importorskip("importlinter.cli")
    monkeypatch.chdir(ROOT)
    assert cli.lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0, \
        "an import breaks the layer contracts: run `lint-imports` to see which"


def test_contracts_ignore_no_imports():
    """Exceptions to the layers would hide exactly the leaks the contracts exist to catch."""
    text = (ROOT / "pyproject.toml").read_text()
    assert "ignore_imports" not in text
