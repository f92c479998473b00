"""`Registry`: an ordered table of named capabilities (backends, precisions, tasks).

Entries are either objects or `"module:attr"` strings that are imported only when the entry is first asked for, so
`import ppdeploy` stays cheap and a missing optional library is an error with a hint, not an ImportError at start.
Everything that lists capabilities (CLI choices, config schema, cache keys, routes, `doctor`) iterates a registry
instead of spelling names, which is why adding a backend, a precision or a task is one `register` line.
"""
from __future__ import annotations

import importlib
import threading
from typing import Callable, Generic, Iterator, TypeVar

from ppdeploy.core.errors import PPDeployError

T = TypeVar("T")


class Registry(Generic[T]):
    """name -> entry, in registration order (the order is meaningful: e.g. the backend fallback chain)."""

    def __init__(self, kind: str, error: type[PPDeployError] = PPDeployError):
        self.kind = kind
        self._error = error
        self._targets: dict[str, str | T] = {}
        self._loaded: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._lock = threading.Lock()

    def register(self, name: str, target: str | T, *, aliases: tuple[str, ...] = (), replace: bool = False) -> None:
        """Add `name`. `target` is the entry itself or "module:attr" to import on first use."""
        name = name.strip().lower()
        with self._lock:
            if name in self._targets and not replace:
                raise self._error(f"{self.kind} '{name}' is already registered")
            self._targets[name] = target
            self._loaded.pop(name, None)
            for alias in aliases:
                self._aliases[alias.strip().lower()] = name

    def unregister(self, name: str) -> None:
        name = self.canonical(name)
        with self._lock:
            self._targets.pop(name, None)
            self._loaded.pop(name, None)
            for alias in [a for a, n in self._aliases.items() if n == name]:
                del self._aliases[alias]

    def canonical(self, name: str) -> str:
        """The registered spelling of `name` (case-insensitive, aliases resolved), or an error listing the choices."""
        key = str(name).strip().lower()
        key = self._aliases.get(key, key)
        if key not in self._targets:
            raise self._error(f"unknown {self.kind} '{name}'", hint=f"choose from {', '.join(self._targets)}")
        return key

    def get(self, name: str) -> T:
        """The entry for `name`, importing it on first use."""
        key = self.canonical(name)
        if key in self._loaded:
            return self._loaded[key]
        target = self._targets[key]
        if isinstance(target, str):
            module_name, _, attr = target.partition(":")
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                    raise self._error(f"{self.kind} '{key}' is not part of this ppdeploy build ({exc})") from exc
                raise
            target = getattr(module, attr)
        with self._lock:
            self._loaded[key] = target
        return target

    def names(self) -> list[str]:
        return list(self._targets)

    def items(self) -> Iterator[tuple[str, T]]:
        for name in self.names():
            yield name, self.get(name)

    def where(self, predicate: Callable[[T], bool]) -> list[str]:
        """Names whose entry satisfies `predicate` (entries that fail to import are left out)."""
        out = []
        for name in self.names():
            try:
                entry = self.get(name)
            except PPDeployError:
                continue
            if predicate(entry):
                out.append(name)
        return out

    def __contains__(self, name: object) -> bool:
        key = str(name).strip().lower()
        return self._aliases.get(key, key) in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._targets)
