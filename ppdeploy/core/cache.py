"""Content-addressed cache for converted models and built engines.

An entry is a directory ``<root>/<kind>/<key>/`` holding the artifact files and ``entry.json``, which
records every part of the key plus the size and sha256 of each file. The key is the sha256 of the
canonical JSON of those parts, so anything that changes the engine (model bytes, backend version,
precision, shapes, options, device) changes the directory. Entries are written to a temporary directory
and renamed into place, so a crash mid-build never leaves a half entry under a real key. On lookup the
sidecar and the file hashes are checked; a corrupt, truncated or mismatched entry is removed and rebuilt
with a warning — never loaded.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

log = logging.getLogger("ppdeploy.core.cache")

SIDECAR = "entry.json"
FORMAT = 1


def default_root() -> Path:
    env = os.environ.get("PPDEPLOY_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ppdeploy"


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def key_of(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()[:32]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_files(paths: list[Path]) -> str:
    """One digest over several files (name-independent, order-dependent): e.g. .pdmodel + .pdiparams."""
    h = hashlib.sha256()
    for p in paths:
        h.update(sha256_file(p).encode())
    return h.hexdigest()


@dataclass
class CacheResult:
    path: Path  # the entry directory; artifact files live inside it
    key: str
    hit: bool
    build_s: float  # time spent building now (0 on a hit)
    meta: dict


@dataclass
class EntryInfo:
    kind: str
    key: str
    path: Path
    size: int
    created: str
    label: str
    valid: bool
    problem: str | None


class EngineCache:
    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root else default_root()

    def entry_dir(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def get_or_build(
        self,
        kind: str,
        parts: Mapping[str, Any],
        build: Callable[[Path], None],
        *,
        label: str = "",
        rebuild: bool = False,
    ) -> CacheResult:
        """Return the valid entry for `parts`, building it with `build(tmp_dir)` when absent or broken."""
        parts = json.loads(canonical_json(parts))  # normalise tuples etc. so comparisons with the sidecar are exact
        key = key_of(parts)
        final = self.entry_dir(kind, key)
        if final.exists() and not rebuild:
            problem = self.check(final, parts)
            if problem is None:
                return CacheResult(final, key, True, 0.0, self._read_meta(final))
            log.warning("cache entry %s/%s is unusable (%s); rebuilding", kind, key, problem)
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=final.parent))
        start = time.perf_counter()
        try:
            build(tmp)
            build_s = time.perf_counter() - start
            files = {
                str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
                for p in sorted(tmp.rglob("*")) if p.is_file()
            }
            if not files:
                raise RuntimeError(f"building {kind} entry produced no files")
            meta = {
                "format": FORMAT, "kind": kind, "key": key, "label": label, "parts": parts, "files": files,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "build_s": round(build_s, 3),
            }
            _atomic_write(tmp / SIDECAR, json.dumps(meta, indent=2, sort_keys=True))
            try:
                os.rename(tmp, final)
            except OSError:  # another process finished the same key first: keep theirs if it is sound
                if self.check(final, parts) is not None:
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
                return CacheResult(final, key, True, 0.0, self._read_meta(final))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return CacheResult(final, key, False, build_s, meta)

    def check(self, entry: Path, parts: Mapping[str, Any] | None = None) -> str | None:
        """None if the entry is sound, else a short description of what is wrong with it."""
        try:
            meta = self._read_meta(entry)
        except FileNotFoundError:
            return "sidecar missing"
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "sidecar is not valid JSON"
        if meta.get("format") != FORMAT:
            return f"written by another cache format ({meta.get('format')})"
        if parts is not None and meta.get("parts") != parts:
            return "sidecar records different key parts"
        for name, info in meta.get("files", {}).items():
            path = entry / name
            if not path.is_file():
                return f"{name} missing"
            if path.stat().st_size != info["size"]:
                return f"{name} truncated or grown ({path.stat().st_size} != {info['size']} bytes)"
            if sha256_file(path) != info["sha256"]:
                return f"{name} content does not match its recorded sha256"
        return None

    def entries(self) -> list[EntryInfo]:
        out = []
        if not self.root.exists():
            return out
        for kind_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for entry in sorted(p for p in kind_dir.iterdir() if p.is_dir() and not p.name.startswith(".tmp-")):
                problem = self.check(entry)
                try:
                    meta = self._read_meta(entry)
                except Exception:
                    meta = {}
                size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
                out.append(EntryInfo(kind_dir.name, entry.name, entry, size, meta.get("created", "?"),
                                     meta.get("label", ""), problem is None, problem))
        return out

    def clear(self, kind: str | None = None) -> int:
        """Remove all entries (of one kind); returns how many were removed."""
        removed = 0
        targets = [self.root / kind] if kind else ([p for p in self.root.iterdir() if p.is_dir()] if self.root.exists() else [])
        for kind_dir in targets:
            if kind_dir.exists():
                removed += sum(1 for p in kind_dir.iterdir() if p.is_dir())
                shutil.rmtree(kind_dir)
        return removed

    def annotate(self, entry: Path, name: str, value: Any) -> dict:
        """Record `value` under notes[name] in the entry's sidecar and return the updated metadata. Notes are facts
        learnt after the build (an engine's measured speed against FP32): not part of the key, not checked, kept
        with the entry and removed with it."""
        meta = self._read_meta(entry)
        meta.setdefault("notes", {})[name] = json.loads(canonical_json(value))
        _atomic_write(entry / SIDECAR, json.dumps(meta, indent=2, sort_keys=True))
        return meta

    @staticmethod
    def _read_meta(entry: Path) -> dict:
        return json.loads((entry / SIDECAR).read_text())


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def folder_digest(folder: str | Path) -> str:
    """sha256 over the names and bytes of every file in `folder` (recursively), in sorted order: the identity of a
    data folder in a cache key (a task gate's pages, a calibration set)."""
    digest = hashlib.sha256()
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()
