"""Errors across the process boundary, and the errors of a dead or unreachable engine process.

An exception raised in the child crosses as plain data: its class's name, message, hint and traceback text
(`encode_error`); nothing is pickled. The caller rebuilds it (`rebuild_error`) only as a class on an allow-list:
ppdeploy's own errors (a PPDeployError subclass already imported in the caller: nothing is imported for an
error) and a few builtins; any other class comes back as a RuntimeError naming the original type. The child's
traceback is attached as a note.
"""
from __future__ import annotations

import builtins
import os
import traceback

from ppdeploy.core.errors import PPDeployError
from ppdeploy.serve.batcher import ServingError

# builtin exceptions rebuilt as themselves (class(message)); anything else that is not a PPDeployError is a
# RuntimeError naming it
_BUILTINS = frozenset({
    "ArithmeticError", "AssertionError", "BufferError", "FileNotFoundError", "IndexError", "KeyError", "LookupError",
    "MemoryError", "NotImplementedError", "OSError", "OverflowError", "PermissionError", "RuntimeError",
    "TimeoutError", "TypeError", "ValueError", "ZeroDivisionError"})
_TEXT_LIMIT = 64 << 10  # message and traceback are cut to this many characters


class EngineProcessDied(ServingError):
    """The engine process exited while it ran a call (killed, out of memory, crashed in native code)."""

    status = 503  # the next call runs on a fresh engine process: worth retrying


class EngineProcessUnreachable(EngineProcessDied):
    """No engine process answered at a shared engine's address within the caller's timeout."""


def encode_error(exc: BaseException) -> dict:
    """The plain-data form of `exc`: {"cls": "module.qualname", "message", "hint", "traceback", "pid"}."""
    message = exc.args[0] if len(exc.args) == 1 else str(exc)
    hint = getattr(exc, "hint", None)
    return {"cls": f"{type(exc).__module__}.{type(exc).__qualname__}", "message": str(message)[:_TEXT_LIMIT],
            "hint": str(hint)[:_TEXT_LIMIT] if hint is not None else None,
            "traceback": "".join(traceback.format_exception(exc))[-_TEXT_LIMIT:], "pid": os.getpid()}


def rebuild_error(info: dict) -> BaseException:
    """The exception `encode_error` described, as a class of the allow-list (module docstring)."""
    if not isinstance(info, dict):
        info = {}
    name = str(info.get("cls", "builtins.RuntimeError"))
    message = str(info.get("message", ""))
    hint = info.get("hint")
    cls = allowed_class(name)
    if cls is None:
        exc: BaseException = RuntimeError(f"{name}: {message}")
    elif issubclass(cls, PPDeployError):
        exc = cls.__new__(cls)  # never its __init__: subclasses take other arguments (QueueFull's retry_after_s)
        Exception.__init__(exc, message)
        exc.hint = hint if isinstance(hint, str) else None
    else:
        exc = cls(message)
    exc.add_note(f"raised in the engine process (pid {info.get('pid')}):\n{info.get('traceback', '')}")
    return exc


def allowed_class(name: str) -> type[BaseException] | None:
    """The exception class called `name` ("module.qualname") if it is on the allow-list, else None."""
    module, _, qualname = name.rpartition(".")
    if module == "builtins":
        return getattr(builtins, qualname) if qualname in _BUILTINS else None
    if not module.startswith("ppdeploy."):
        return None
    return _ppdeploy_errors().get(name)


def _ppdeploy_errors() -> dict[str, type[BaseException]]:
    """Every PPDeployError subclass defined by ppdeploy and imported so far, by 'module.qualname'."""
    out: dict[str, type[BaseException]] = {}
    todo = [PPDeployError]
    while todo:
        cls = todo.pop()
        if cls.__module__.startswith("ppdeploy."):
            out[f"{cls.__module__}.{cls.__qualname__}"] = cls
        todo.extend(cls.__subclasses__())
    return out


__all__ = ["EngineProcessDied", "EngineProcessUnreachable", "allowed_class", "encode_error", "rebuild_error"]
