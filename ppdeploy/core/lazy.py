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

# Which extra of `pip install ppdeploy[...]` brings a module (longest dotted prefix wins). A module listed here is
# always hinted with its extra, whatever `install` a call site passed, so the base install names the one command.
EXTRAS: dict[str, str] = {
    "paddle": "paddle", "paddle2onnx": "paddle",
    "openvino": "openvino", "nncf": "openvino",
    "matplotlib": "bench",
    "ray": "ray",
    "tritonclient": "triton", "tritonclient.grpc": "grpc", "grpc": "grpc", "google.protobuf": "grpc",
    "tensorrt_rtx_bindings": "tensorrt-rtx",
    "cuda": "gpu",
}


def extra_for(module: str) -> str | None:
    """The extra that installs `module` ("openvino.runtime" -> "openvino"), or None for a base dependency."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        extra = EXTRAS.get(".".join(parts[:n]))
        if extra is not None:
            return extra
    return None


def install_hint(module: str, fallback: str | None = None) -> str | None:
    """The `pip install` that brings `module`: its ppdeploy extra where it has one, else `fallback`'s package."""
    extra = extra_for(module)
    if extra is not None:
        return f"pip install 'ppdeploy[{extra}]'"
    if fallback is None:
        return None
    return fallback if fallback.startswith("pip install") else f"pip install {fallback}"


def missing(module: str, exc: BaseException | None = None, install: str | None = None) -> BackendUnavailable:
    """The error for an optional module that is not installed, with the extra (and pip command) that adds it."""
    why = f" ({exc})" if exc is not None else ""
    return BackendUnavailable(f"{module} is not installed here{why}", hint=install_hint(module, install))


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
                raise missing(self.__name__, exc, self._lazy_install) from exc
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
    """A module proxy for `name`; `install` is what to `pip install` when it is missing and `name` has no extra."""
    return LazyModule(name, install, on_import)


def import_paddle():
    """`import paddle`, undoing what its import does to logging: it adds a StreamHandler to the root logger and sets
    it to INFO, which doubles every log line of an application that merely loads a model through ppdeploy."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        import paddle
    except ImportError as exc:
        raise BackendUnavailable(f"paddlepaddle is not installed here ({exc})", hint=install_hint("paddle")) from exc
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    return paddle
