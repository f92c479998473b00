"""Errors across the process boundary, and the errors of a dead or unreachable engine process.

An exception raised in the child comes back as the same class with the same message (and hint) when it can be
rebuilt in the caller (every PPDeployError subclass, builtins), otherwise as a RuntimeError naming the original
type; the child's traceback is attached as a note.
"""
from __future__ import annotations

import importlib
import os
import pickle
import traceback

from ppdeploy.core.errors import PPDeployError
from ppdeploy.serve.batcher import ServingError


class EngineProcessDied(ServingError):
    """The engine process exited while it ran a call (killed, out of memory, crashed in native code)."""

    status = 503  # the next call runs on a fresh engine process: worth retrying


class EngineProcessUnreachable(EngineProcessDied):
    """No engine process answered at a shared engine's address within the caller's timeout."""


def encode_error(exc: BaseException) -> dict:
    out = {"module": type(exc).__module__, "qualname": type(exc).__qualname__, "message": str(exc.args[0])
           if len(exc.args) == 1 else str(exc), "hint": getattr(exc, "hint", None),
           "traceback": "".join(traceback.format_exception(exc)), "pickled": None, "pid": os.getpid()}
    if isinstance(exc, PPDeployError) or type(exc).__module__ == "builtins":
        try:
            data = pickle.dumps(exc)
            pickle.loads(data)  # rebuildable (a subclass with its own __init__ signature may not be)
            out["pickled"] = data
        except Exception:
            pass
    return out


def rebuild_error(info: dict) -> BaseException:
    exc: BaseException | None = None
    if info.get("pickled") is not None:
        try:
            exc = pickle.loads(info["pickled"])
        except Exception:
            exc = None
    if exc is None:
        cls = _importable_class(info["module"], info["qualname"])
        if cls is not None and issubclass(cls, PPDeployError):
            exc = cls.__new__(cls)
            Exception.__init__(exc, info["message"])
            exc.hint = info.get("hint")
        else:
            exc = RuntimeError(f"{info['module']}.{info['qualname']}: {info['message']}")
    exc.add_note(f"raised in the engine process (pid {info.get('pid')}):\n{info.get('traceback', '')}")
    return exc


def _importable_class(module: str, qualname: str):
    if not (module == "builtins" or module.startswith("ppdeploy.")):
        return None  # never import a third-party library (onnxruntime, paddle) into the HTTP process for an error
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj if isinstance(obj, type) and issubclass(obj, BaseException) else None
    except Exception:
        return None


__all__ = ["EngineProcessDied", "EngineProcessUnreachable", "encode_error", "rebuild_error"]
