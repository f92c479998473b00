"""`lazy_import`: third-party heavy libraries named at module top, imported on first attribute access.

This keeps every dependency visible where a reader (and import-linter) expects it, Polygraphy-style, while
`import ppdeploy` and the CLI stay fast and an optional library that is missing fails only the feature that needs
it, with the `pip install` that fixes it.
"""
from __future__ import annotations

import importlib
import logging
import types
from typing import Any

from ppdeploy.core.errors import BackendUnavailable


class LazyModule(types.ModuleType):
    """A stand-in for `name` that imports the real module on first attribute access."""

    def __init__(self, name: str, install: str | None = None, on_import=None):
        super().__init__(name)
        self._lazy_install = install
        self._lazy_on_import = on_import
        self._lazy_module: types.ModuleType | None = None

    def _load(self) -> types.ModuleType:
        if self._lazy_module is None:
            try:
                module = importlib.import_module(self.__name__)
            except ImportError as exc:
                hint = f"pip install {self._lazy_install}" if self._lazy_install else None
                raise BackendUnavailable(f"{self.__name__} is not installed here ({exc})", hint=hint) from exc
            if self._lazy_on_import is not None:
                self._lazy_on_import()
            self._lazy_module = module
        return self._lazy_module

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_lazy_"):
            raise AttributeError(attr)
        return getattr(self._load(), attr)

    def available(self) -> bool:
        """True when the module imports (without raising)."""
        try:
            self._load()
        except BackendUnavailable:
            return False
        return True


def lazy_import(name: str, install: str | None = None, on_import=None) -> Any:
    """A module proxy for `name`; `install` is what to `pip install` when it is missing."""
    return LazyModule(name, install, on_import)


def import_paddle():
    """`import paddle`, undoing what its import does to logging: it adds a StreamHandler to the root logger and sets
    it to INFO, which doubles every log line of an application that merely loads a model through ppdeploy."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        import paddle
    except ImportError as exc:
        raise BackendUnavailable(f"paddlepaddle is not installed here ({exc})",
                                 hint="pip install paddlepaddle") from exc
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    return paddle
