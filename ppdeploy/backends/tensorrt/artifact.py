"""The engine artifact: the serialized engine, its metadata (I/O, profiles, settings) and the timing/runtime caches
kept beside the engine cache entry."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

from ppdeploy.backends.tensorrt.library import LibraryTraits
from ppdeploy.core.device import identity
from ppdeploy.core.errors import BuildError
from ppdeploy.core.shapes import InputRange
from ppdeploy.core.tensors import IOSpec, TensorSpec

ENGINE_FILE = "model.engine"
META_FILE = "engine.json"


def aux_cache_path(artifact_dir: Path, what: str, traits: LibraryTraits) -> Path:
    """Where a timing cache (build) or runtime cache (RTX run) lives: beside the engine cache entry, one file per
    library version and GPU, since both caches are only valid for that pair."""
    gpu = identity("gpu").get("gpu") or {}
    tag = re.sub(r"[^A-Za-z0-9.]+", "-", f"{gpu.get('name', 'nogpu')}-sm{gpu.get('compute_capability', '')}")
    return artifact_dir.parent / f"_{what}-{traits.flavour.name}-{traits.version}-{tag}.bin"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_meta(artifact_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(artifact_dir) / META_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise BuildError(f"TensorRT artifact in {artifact_dir} has no readable {META_FILE}: {exc}") from exc


def meta_io(meta: Mapping[str, Any]) -> IOSpec:
    def spec(d) -> TensorSpec:
        return TensorSpec(d["name"], d["dtype"], tuple(d["shape"]))

    return IOSpec(tuple(spec(d) for d in meta["inputs"]), tuple(spec(d) for d in meta["outputs"]))


def meta_profiles(meta: Mapping[str, Any]) -> list[dict[str, InputRange]]:
    return [{n: InputRange(tuple(r["min"]), tuple(r["opt"]), tuple(r["max"])) for n, r in p.items()}
            for p in meta["profiles"]]
